"""Pick the compute dtype and thread count from what this CPU really has.

bf16 only pays where the CPU has bf16 dot-product instructions (AVX512_BF16 or AMX). Without them PyTorch
emulates bf16 and is several times *slower* than fp32: on an AVX2-only 2-core EPYC (an earlier machine of this
project) a 512x1152x2304 GEMM took 115 ms in fp32 and 631 ms in bf16 (torch 2.13). So the default is fp32 unless
the flags say otherwise; today's machine (AVX512_BF16) gets bf16. fp16 is the same story with AVX512_FP16 / AMX-FP16
(an explicit dtype the CPU only emulates is honoured, and said: plan.warn_if_emulated).
"""

from __future__ import annotations

import os
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
FP16_FLAGS = ("avx512_fp16", "amx_fp16")


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where it does not exist, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def has_fast_bf16() -> bool:
    return any(flag in cpu_flags() for flag in BF16_FLAGS)


def has_fast_fp16() -> bool:
    return any(flag in cpu_flags() for flag in FP16_FLAGS)


def physical_cores() -> int:
    """Cores this process may run on (affinity / cgroup aware where the OS says so)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_threads(n: int | None = None) -> int:
    """Intra-op threads = cores (PyTorch's default can exceed the cores a container grants)."""
    import torch  # only PyTorch pipelines set it: graphs get their threads at load

    n = n or physical_cores()
    torch.set_num_threads(n)
    return n
