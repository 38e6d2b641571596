"""Gaussian noise that matches ``torch.randn`` on the CPU, computed with NumPy only.

Why: the ONNX Runtime and MNN runtimes never import torch, yet a seed must give
the same starting latent there as in the PyTorch runtime, or the same edit
request gives a different picture per backend. This module reproduces
``torch.randn(shape, generator=torch.Generator().manual_seed(seed))`` for
float32, bit for bit, including how the generator state carries over between
calls. It must not import torch (not even lazily): that is its reason to exist.

What torch does (checked against the torch 2.13 sources and the compiled
``libtorch_cpu.so``):

* The engine is a 32-bit Mersenne Twister seeded with ``init_genrand(seed &
  0xffffffff)``; NumPy's legacy ``RandomState(int)`` seeds MT19937 the same way,
  and its ``MT19937.random_raw`` gives the raw 32-bit outputs.
* A contiguous tensor of 16 or more elements is filled with uniforms (24 bits of
  one draw each), then turned into normals by Box-Muller in blocks of 16. If the
  size is not a multiple of 16, the last 16 values are redone from 16 fresh
  uniforms.
* Under 16 elements, each value is a double-precision Box-Muller draw from two
  53-bit uniforms; the second (sine) value of each pair is cached in the
  generator for the next small draw.
* The block-of-16 kernel depends on the CPU torch runs on. x86-64 with AVX2 or
  AVX-512 (which reuses the AVX2 kernel) uses float32 Cephes-style ``log256_ps``
  and ``sincos256_ps`` from ``avx_mathfun.h``, compiled with fused multiply-adds.
  That is pure float32 arithmetic, reproduced here exactly (``kernel="avx2"``,
  the default, so every runtime on every machine draws the same noise). Other
  CPUs (ARM, x86 without AVX2, ``ATEN_CPU_CAPABILITY=default``) call the C
  library's ``logf``/``sincosf``, which vary by libm; ``kernel="scalar"``
  approximates them with correctly rounded float32 values, and differs from
  glibc's ``logf``/``sincosf`` by one float32 ulp in about 1.5% of elements.
"""

from __future__ import annotations

import math
import os
from typing import Literal

import numpy as np

__all__ = ["Generator", "randn"]

Kernel = Literal["avx2", "scalar"]

_F32 = np.float32
_F64 = np.float64
_U32 = np.uint32

# Seeds torch.Generator.manual_seed accepts: int64 or uint64 range, stored as uint64.
_SEED_MIN = -(2**63)
_SEED_MAX = 2**64 - 1

# Constants of avx_mathfun.h, rounded to float32 as the C++ compiler does.
_MIN_NORM_POS = np.array(0x00800000, dtype=_U32).view(_F32)
_INV_MANT_MASK = _U32(0x807FFFFF)
_HALF_BITS = _U32(0x3F000000)
_SQRTHF = _F32(0.707106781186547524)
_LOG_P = [
    _F32(v)
    for v in (
        7.0376836292e-2,
        -1.1514610310e-1,
        1.1676998740e-1,
        -1.2420140846e-1,
        1.4249322787e-1,
        -1.6668057665e-1,
        2.0000714765e-1,
        -2.4999993993e-1,
        3.3333331174e-1,
    )
]
_LOG_Q1 = _F32(-2.12194440e-4)
_LOG_Q2 = _F32(0.693359375)
_DP1 = _F32(-0.78515625)
_DP2 = _F32(-2.4187564849853515625e-4)
_DP3 = _F32(-3.77489497744594108e-8)
_SINCOF = [_F32(-1.9515295891e-4), _F32(8.3321608736e-3), _F32(-1.6666654611e-1)]
_COSCOF = [_F32(2.443315711809948e-005), _F32(-1.388731625493765e-003), _F32(4.166664568298827e-002)]
_FOPI = _F32(1.27323954473516)
_TWO_PI_F32 = _F32(2.0 * math.pi)


def _fma(a: np.ndarray | np.float32, b: np.ndarray | np.float32, c: np.ndarray | np.float32) -> np.ndarray:
    """float32 fused multiply-add a * b + c, as vfmadd*ps computes it in torch's AVX2 kernel.

    Why: that kernel was compiled with FMA contraction, so a float32 multiply
    then add would differ in the last bit in about 1% of the values. The float32
    product is exact in float64, so only the float64 add rounds before the
    float32 rounding. Such double rounding can in general be off when the
    float64 sum lands exactly halfway between two float32 values; for the
    polynomials here it never is, over every input they can get (the uniforms
    have 24 bits, so there are 2**24 of each): tests/core/test_noise.py checks that
    exhaustively against an exactly rounded FMA.
    """
    s = np.multiply(a, b, dtype=_F64)
    s += c
    return s.astype(_F32)


def _log_avx2(x: np.ndarray) -> np.ndarray:
    """log256_ps of avx_mathfun.h for x in (0, 1], with torch's FMA contractions."""
    bits = np.maximum(x, _MIN_NORM_POS).view(_U32)
    e = ((bits >> _U32(23)).astype(np.int32) - 0x7F).astype(_F32) + _F32(1)
    x = ((bits & _INV_MANT_MASK) | _HALF_BITS).view(_F32)
    # x is in [0.5, 1), so multiplying by the 0/1 mask is the C code's bitwise select.
    below = (x < _SQRTHF).astype(_F32)
    tmp = x * below
    x = x - _F32(1)
    e -= below
    x += tmp
    z = x * x
    y = _fma(_LOG_P[0], x, _LOG_P[1])
    for coef in _LOG_P[2:]:
        y = _fma(y, x, coef)
    y = _fma(y * x, z, e * _LOG_Q1)
    y -= z * _F32(0.5)  # an FMA in torch, but z * 0.5 is exact
    x += y
    return _fma(e, _LOG_Q2, x)


def _sincos_avx2(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sincos256_ps of avx_mathfun.h for x >= 0, with torch's FMA contractions.

    The C code also handles negative x and picks each polynomial with bitwise
    masks and adds of +0; here x >= 0, and the adds only change the sign of a
    zero, which the final ``+ 0`` of NormalFill16 erases anyway.
    """
    j = ((x * _FOPI).astype(np.int32) + 1) & ~1
    y = j.astype(_F32)
    sign_sin = ((j & 4) << 29).view(_U32)
    sign_cos = ((~(j - 2) & 4) << 29).view(_U32)
    use_sin_poly = (j & 2) == 0
    x = _fma(y, _DP1, x)
    x = _fma(y, _DP2, x)
    x = _fma(y, _DP3, x)
    z = x * x
    yc = _fma(_COSCOF[0], z, _COSCOF[1])
    yc = _fma(yc, z, _COSCOF[2])
    yc = _fma(z, z * yc, -(z * _F32(0.5)))
    yc += _F32(1)
    ys = _fma(_SINCOF[0], z, _SINCOF[1])
    ys = _fma(ys, z, _SINCOF[2])
    ys = _fma(x, z * ys, x)
    sin = (np.where(use_sin_poly, ys, yc).view(_U32) ^ sign_sin).view(_F32)
    cos = (np.where(use_sin_poly, yc, ys).view(_U32) ^ sign_cos).view(_F32)
    return sin, cos


def _box_muller_avx2(u: np.ndarray, out: np.ndarray) -> None:
    """NormalFill16<float> of torch's AVX2 build: uniforms (blocks, 16) into out."""
    radius = np.sqrt(_F32(-2) * _log_avx2((_F32(1) - u[:, :8]).reshape(-1)))
    sin, cos = _sincos_avx2((_TWO_PI_F32 * u[:, 8:]).reshape(-1))
    # fma(n, std=1, mean=0) in torch: the + 0 turns -0 into +0.
    np.add((radius * cos).reshape(-1, 8), _F32(0), out=out[:, :8])
    np.add((radius * sin).reshape(-1, 8), _F32(0), out=out[:, 8:])


def _box_muller_scalar(u: np.ndarray, out: np.ndarray) -> None:
    """NormalFill16<float> of torch's generic build (libm logf/sincosf), correctly rounded."""
    radius = np.sqrt(_F32(-2) * np.log((_F32(1) - u[:, :8]).astype(_F64)).astype(_F32))
    theta = ((2.0 * math.pi) * u[:, 8:].astype(_F64)).astype(_F32).astype(_F64)
    np.add(radius * np.cos(theta).astype(_F32), _F32(0), out=out[:, :8])
    np.add(radius * np.sin(theta).astype(_F32), _F32(0), out=out[:, 8:])


# Blocks of 16 per Box-Muller pass: small enough that the temporaries stay in
# cache (about 2x faster than one pass over a (1, 32, 64, 64) draw).
_CHUNK_BLOCKS = 2048


_KERNELS = {"avx2": _box_muller_avx2, "scalar": _box_muller_scalar}


def _check_seed(seed: int) -> int:
    """Validate like torch.Generator.manual_seed and return the seed as uint64."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    seed = int(seed)
    if not _SEED_MIN <= seed <= _SEED_MAX:
        raise ValueError(f"seed {seed} is outside [-2**63, 2**64 - 1]")
    return seed % 2**64


class Generator:
    """mt19937 state that draws exactly what torch.Generator on the CPU draws."""

    def __init__(self, seed: int | None = None, *, kernel: Kernel = "avx2") -> None:
        """seed None picks a random 64-bit seed from the OS, like torch's Generator.seed().

        (A bare torch.Generator() starts from the fixed seed 67280421310721 instead.)

        kernel picks which torch CPU build to match (see the module docstring):
        "avx2" (bitwise, x86-64 torch) or "scalar" (approximate, other CPUs).
        """
        if kernel not in _KERNELS:
            raise ValueError(f"kernel must be one of {sorted(_KERNELS)}, got {kernel!r}")
        self._box_muller = _KERNELS[kernel]
        self.kernel: Kernel = kernel
        if seed is None:
            self.seed()
        else:
            self.manual_seed(seed)

    def manual_seed(self, seed: int) -> Generator:
        """Reset the state to init_genrand(seed & 0xffffffff), as torch does; returns self."""
        self._seed = _check_seed(seed)
        key = np.random.RandomState(self._seed & 0xFFFFFFFF).get_state(legacy=False)["state"]
        self._bits = np.random.MT19937(0)
        self._bits.state = {"bit_generator": "MT19937", "state": key}
        # torch's cached second value of the small-tensor double Box-Muller.
        self._next_normal: float | None = None
        return self

    def seed(self) -> int:
        """Reseed from OS entropy and return the new seed (torch.Generator.seed)."""
        seed = int.from_bytes(os.urandom(8), "little")
        self.manual_seed(seed)
        return seed

    def initial_seed(self) -> int:
        """The seed this state started from, as torch reports it (uint64)."""
        return self._seed

    def _raw(self, n: int) -> np.ndarray:
        """The next n raw 32-bit mt19937 outputs."""
        return self._bits.random_raw(n).astype(_U32)

    def randn(self, shape: tuple[int, ...] | list[int]) -> np.ndarray:
        """Standard normal float32 array, C-contiguous, equal to torch.randn(shape, generator=g)."""
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"negative dimension in shape {shape}")
        size = math.prod(shape)
        if size < 16:
            return self._randn_small(size).reshape(shape)
        extra = 16 if size % 16 else 0
        uniform = (self._raw(size + extra) & _U32(0xFFFFFF)).astype(_F32) * _F32(2.0**-24)
        out = np.empty(size, dtype=_F32)
        blocks = out[: size - size % 16].reshape(-1, 16)
        u = uniform[: blocks.size].reshape(-1, 16)
        for i in range(0, len(blocks), _CHUNK_BLOCKS):
            self._box_muller(u[i : i + _CHUNK_BLOCKS], blocks[i : i + _CHUNK_BLOCKS])
        if extra:
            # torch transforms the whole blocks, then redoes the last 16 elements
            # (they cover the partial block) from 16 fresh uniforms.
            self._box_muller(uniform[size:].reshape(1, 16), out[size - 16 :].reshape(1, 16))
        return out.reshape(shape)

    def _uniform53(self) -> float:
        """at::uniform_real_distribution<double>(0, 1): 53 bits of one random64()."""
        hi, lo = (int(v) for v in self._raw(2))
        return (((hi << 32) | lo) & ((1 << 53) - 1)) * 2.0**-53

    def _randn_small(self, size: int) -> np.ndarray:
        """at::normal_distribution<double>, torch's path for tensors under 16 elements.

        Python's math calls the C library's log1p/sin/cos in double precision as
        torch does; the cast to float32 hides any last-bit difference between
        libms (it would take one landing within 2**-29 of a float32 rounding boundary).
        """
        out = np.empty(size, dtype=_F32)
        for i in range(size):
            if self._next_normal is not None:
                value, self._next_normal = self._next_normal, None
            else:
                u1 = self._uniform53()
                u2 = self._uniform53()
                radius = math.sqrt(-2.0 * math.log1p(-u2))
                theta = 2.0 * math.pi * u1
                self._next_normal = radius * math.sin(theta)
                value = radius * math.cos(theta)
            out[i] = value
        return out


def randn(shape: tuple[int, ...] | list[int], seed: int, *, kernel: Kernel = "avx2") -> np.ndarray:
    """torch.randn(shape, generator=torch.Generator().manual_seed(seed)) without torch."""
    return Generator(seed, kernel=kernel).randn(shape)
