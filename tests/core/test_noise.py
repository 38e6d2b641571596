"""sanaedit.core.noise draws what torch.randn draws on the CPU, without importing torch."""

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from sanaedit.core import noise
from sanaedit.core.noise import Generator

REPO = Path(__file__).resolve().parents[2]
SEEDS = [0, 42, 2**40 + 7, 2**63 - 1]
SHAPES = [
    (1, 32, 16, 16),
    (2, 32, 8, 8),
    (1, 32, 64, 64),
    (1, 4, 3, 3),  # 36: not a multiple of 16, the last 16 are redrawn
    (1, 3, 111, 111),  # several Box-Muller chunks and a partial block
    (16,),
    (17,),
    (2, 5),  # under 16 elements: torch's double-precision path
    (1,),
    (),
    (0, 3),
]
# x86-64 torch with AVX2 or AVX-512 runs the AVX2 kernel (AVX-512 reuses it), which the
# default kernel reproduces bit for bit; elsewhere torch calls libm's logf/sincosf, which
# the "scalar" kernel approximates.
TORCH_AVX2 = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
KERNEL = "avx2" if TORCH_AVX2 else "scalar"


def torch_randn(shape, gen):
    return torch.randn(shape, generator=gen, dtype=torch.float32).numpy()


def assert_same(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.dtype == np.float32 and ours.flags.c_contiguous
    assert ours.shape == theirs.shape
    if TORCH_AVX2:
        np.testing.assert_array_equal(ours.view(np.uint32), theirs.view(np.uint32))
    else:
        # Other CPUs: libm's logf/sincosf are within 1 ulp of the correctly rounded
        # values the scalar kernel uses, so a value differs by a few float32 ulps at
        # most (|x| < 8: 1 ulp <= 4.8e-7); glibc measured: 1 ulp in ~1.5% of values.
        np.testing.assert_allclose(ours, theirs, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_torch(shape, seed):
    assert_same(Generator(seed, kernel=KERNEL).randn(shape), torch_randn(shape, torch.Generator().manual_seed(seed)))


def test_list_shape_and_function():
    expected = torch_randn((2, 32, 8, 8), torch.Generator().manual_seed(7))
    assert_same(Generator(7, kernel=KERNEL).randn([2, 32, 8, 8]), expected)
    assert_same(noise.randn((2, 32, 8, 8), seed=7, kernel=KERNEL), expected)


@pytest.mark.parametrize("seed", [0, 2**40 + 7])
def test_consecutive_draws_continue_the_stream(seed):
    # Mixed sizes: odd small draws leave a cached double sample in the generator,
    # which the next small draw uses and the block path leaves alone.
    shapes = [(1, 32, 16, 16), (1, 32, 16, 16), (1, 32, 16, 16), (3,), (1, 4, 3, 3), (5,), (1,), (2, 32, 8, 8), (2,)]
    ours, theirs = Generator(seed, kernel=KERNEL), torch.Generator().manual_seed(seed)
    for shape in shapes:
        assert_same(ours.randn(shape), torch_randn(shape, theirs))


def test_manual_seed_resets_state_and_returns_self():
    g = Generator(1)
    first = g.randn((3,))  # leaves a cached sample behind
    assert g.manual_seed(1) is g
    np.testing.assert_array_equal(g.randn((3,)), first)
    assert g.initial_seed() == 1


def test_seeds_are_taken_like_torch():
    for seed in (-1, -(2**63), 2**64 - 1, 2**32 + 5):
        ours, theirs = Generator(seed, kernel=KERNEL), torch.Generator().manual_seed(seed)
        assert ours.initial_seed() == theirs.initial_seed()
        assert_same(ours.randn((2, 32, 8, 8)), torch_randn((2, 32, 8, 8), theirs))
    # Only the low 32 bits seed the engine, in torch as here.
    np.testing.assert_array_equal(Generator(2**32 + 5).randn((64,)), Generator(5).randn((64,)))
    for bad in (2**64, -(2**63) - 1):
        with pytest.raises(ValueError):
            Generator(bad)
    for bad in (1.5, True, "3"):
        with pytest.raises(TypeError):
            Generator(bad)
    with pytest.raises(ValueError):
        Generator(0).randn((2, -1))


def test_unseeded_generators_differ_and_report_their_seed():
    a, b = Generator(kernel=KERNEL), Generator(kernel=KERNEL)
    assert a.initial_seed() != b.initial_seed()
    draw_a, draw_b = a.randn((1, 32, 16, 16)), b.randn((1, 32, 16, 16))
    assert not np.array_equal(draw_a, draw_b)
    np.testing.assert_array_equal(Generator(a.initial_seed(), kernel=KERNEL).randn((1, 32, 16, 16)), draw_a)
    assert_same(draw_a, torch_randn((1, 32, 16, 16), torch.Generator().manual_seed(a.initial_seed())))
    assert a.seed() == a.initial_seed() != b.initial_seed()


def fma_exact(a, b, c) -> np.ndarray:
    """float32 a * b + c rounded once (nearest, ties to even), vectorised.

    The float32 product is exact in float64; of the float64 sum, TwoSum gives the
    exact error, which decides the float32 rounding where the sum sits exactly
    halfway between two float32 values (the one case double rounding gets wrong).
    """
    a, b, c = np.broadcast_arrays(*(np.asarray(v, dtype=np.float32) for v in (a, b, c)))
    p = a.astype(np.float64) * b
    s = p + c
    bb = s - p
    err = (p - (s - bb)) + (c - bb)
    r = s.astype(np.float32)
    tie = (s.view(np.uint64) & np.uint64(0x1FFFFFFF)) == np.uint64(0x10000000)
    up = tie & (err > 0) & (r < s)
    down = tie & (err < 0) & (r > s)
    r[up] = np.nextafter(r[up], np.float32(np.inf))
    r[down] = np.nextafter(r[down], np.float32(-np.inf))
    return r


def fma_fraction(a, b, c) -> np.float32:
    """float32 a * b + c rounded once (nearest, ties to even), from exact rationals."""
    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    guess = np.float32(float(exact))
    candidates = [np.nextafter(guess, np.float32(-np.inf)), guess, np.nextafter(guess, np.float32(np.inf))]
    return min(candidates, key=lambda v: (abs(Fraction(float(v)) - exact), int(np.float32(v).view(np.uint32)) & 1))


def test_exact_fma_reference_handles_double_rounding_ties():
    # (1 + 2**-18) * (1 - 2**-18) * 2**-24 = 2**-24 - 2**-60: added to an odd float32 r in
    # [1, 2), the float64 sum rounds onto the float32 midpoint r + 2**-24, and rounding
    # that again to float32 goes the wrong way, which fma_exact must not.
    a = np.float32(2**-12 * (1 + 2**-18))
    b = np.float32(2**-12 * (1 - 2**-18))
    rng = np.random.default_rng(0)
    odd = (rng.integers(0x3F800000, 0x40000000, 32, dtype=np.uint32) | 1).view(np.float32)
    for c in (odd, -odd):
        want = np.array([fma_fraction(a, b, v) for v in c], dtype=np.float32)
        np.testing.assert_array_equal(fma_exact(a, b, c).view(np.uint32), want.view(np.uint32))
        assert not np.array_equal(noise._fma(a, b, c), want)  # plain double rounding is off here
    x, y, z = (rng.standard_normal(200, dtype=np.float32) * np.float32(s) for s in (1e-3, 1, 1))
    want = np.array([fma_fraction(*t) for t in zip(x, y, z)], dtype=np.float32)
    np.testing.assert_array_equal(fma_exact(x, y, z), want)


@pytest.mark.slow
def test_double_rounding_fma_is_exact_on_every_possible_input(monkeypatch):
    # The AVX2 log and sincos only ever see 2**24 inputs each (24-bit uniforms): run them
    # all and check every FMA on the way against an exactly rounded one (~300M FMAs).
    fma_calls = []
    fast_fma = noise._fma

    def checked_fma(a, b, c):
        got = fast_fma(a, b, c)
        assert np.array_equal(got.view(np.uint32), fma_exact(a, b, c).view(np.uint32))
        fma_calls.append(got.size)
        return got

    monkeypatch.setattr(noise, "_fma", checked_fma)
    chunk = 2**20
    for start in range(0, 2**24, chunk):
        u = np.arange(start, start + chunk, dtype=np.uint32).astype(np.float32) * np.float32(2.0**-24)
        noise._log_avx2(np.float32(1) - u)
        noise._sincos_avx2(np.float32(2 * np.pi) * u)
    assert sum(fma_calls) == 19 * 2**24


def test_scalar_kernel_is_close_to_torch_default_build(tmp_path):
    # torch's generic kernel (non-x86 CPUs) calls libm's logf/sincosf; the "scalar"
    # kernel uses correctly rounded values instead. Run torch with that kernel here.
    code = (
        "import torch, numpy as np, sys\n"
        "g = torch.Generator().manual_seed(42)\n"
        "np.save(sys.argv[1], torch.randn((1, 32, 16, 16), generator=g).numpy())\n"
    )
    out = tmp_path / "default.npy"
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, env=env, timeout=120)
    theirs = np.load(out)
    ours = Generator(42, kernel="scalar").randn((1, 32, 16, 16))
    # glibc's logf/sincosf are within 1 ulp; measured: ~1.5% of values differ, by 1-2 ulp.
    np.testing.assert_allclose(ours, theirs, rtol=2e-6, atol=2e-6)
    assert np.mean(ours != theirs) < 0.05
    with pytest.raises(ValueError):
        Generator(0, kernel="neon")


def test_does_not_import_torch():
    code = (
        "import json, sys\n"
        "sys.modules['torch'] = None  # any import of torch now fails\n"
        "from sanaedit.core.noise import Generator\n"
        f"g = Generator(0, kernel={KERNEL!r})\n"
        "small, big = g.randn((2, 3)), g.randn((1, 4, 3, 3))\n"
        "print(json.dumps([small.tolist(), big.ravel().tolist(), Generator().randn((17,)).shape[0]]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    small, big, n = json.loads(result.stdout)
    gen = torch.Generator().manual_seed(0)
    np.testing.assert_array_equal(np.float32(small), torch_randn((2, 3), gen))  # [[1.5410, -0.2934, ...
    assert_same(np.float32(big).reshape(1, 4, 3, 3), torch_randn((1, 4, 3, 3), gen))
    assert n == 17
