"""CPU capability helpers: bf16 only where the CPU has native bf16 instructions."""

from __future__ import annotations

import torch

from sanaedit.core import cpu


def test_bf16_only_with_native_flags(monkeypatch):
    """--dtype auto plans bf16 only where the CPU computes it natively (emulated bf16 is slower than fp32)."""
    from sanaedit.core.choices import Format
    from sanaedit.core.config import PipelineConfig
    from sanaedit.plan import FolderInfo, make_plan

    info = FolderInfo(folder=None, format=Format.TORCH, config=PipelineConfig())
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert not cpu.has_fast_bf16() and make_plan(info).dtype == "float32"
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert cpu.has_fast_bf16() and make_plan(info).dtype == "bfloat16"


def test_set_threads_defaults_to_cores():
    before = torch.get_num_threads()
    try:
        assert cpu.set_threads() == cpu.physical_cores() == torch.get_num_threads()
        assert cpu.set_threads(1) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
