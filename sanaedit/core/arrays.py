"""The few array operations the shared pipeline code needs, for both kinds of arrays it meets.

PyTorch networks take and return torch tensors; exported graphs (ONNX Runtime, MNN) take and return NumPy arrays.
Sampling, CFG batching, the prompt cache and pre/post-processing are one code path for both (`pipeline.py`,
`flow.py`, `sampling.py`), written against the same methods of `TorchArrays` (PyTorch networks) and `NumpyArrays`
(graphs), which `FlowModel.arrays` holds. An exported folder's edit therefore never imports torch (~1 s of a CLI
edit, and a dependency a deployment need not load). Hand-written, not the array-API standard: these nine methods
are all we use, and device, dtype and the seeded noise (`noise.py`) are not part of that standard anyway.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from sanaedit.core.noise import Generator

F = TypeVar("F", bound=Callable[..., Any])


def is_torch(a: Any) -> bool:
    """Whether `a` is a torch tensor (checked without importing torch)."""
    return type(a).__module__.startswith("torch")


def float32(a: Any) -> Any:
    """A tensor or an array as float32 of its own kind (the sampler's arithmetic dtype)."""
    return a.float() if is_torch(a) else np.asarray(a, np.float32)


def to_numpy(a: Any) -> np.ndarray:
    """A tensor (any device or dtype) or an array -> a float32 NumPy array."""
    if is_torch(a):
        return a.detach().float().cpu().numpy()
    return np.asarray(a, np.float32)


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 values stored as uint16 -> float32 (a bf16 value is the top half of a float32; NumPy has no bf16)."""
    return (np.asarray(bits, np.uint16).astype(np.uint32) << 16).view(np.float32)


def no_grad(fn: F) -> F:
    """`torch.no_grad()` around `fn` when torch is loaded; without torch there is no autograd to turn off."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        torch = sys.modules.get("torch")
        if torch is None:
            return fn(*args, **kwargs)
        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


class NumpyArrays:
    """Arrays for exported graphs: float32 NumPy on the CPU. Noise from a `noise.Generator` (the numbers
    torch.randn draws for that seed, without torch) or a torch.Generator (its caller has torch loaded anyway)."""

    def input(self, a: Any) -> np.ndarray:
        """What a network is fed: float32 (graphs are exported in float32)."""
        return to_numpy(a)

    def full(self, n: int, value: Any) -> np.ndarray:
        """n copies of `value` (a scalar, or already n values), float32."""
        return np.broadcast_to(np.asarray(value, np.float32).reshape(-1), (n,)).copy()

    def cat(self, parts: Sequence[Any]) -> np.ndarray:
        return np.concatenate([np.asarray(p) for p in parts])

    def rows(self, a: Any, n: int) -> Any:
        """`a` (one row) seen as n rows, without copying."""
        return None if a is None else np.broadcast_to(a, (n, *a.shape[1:]))

    def repeat(self, a: Any, n: int) -> np.ndarray:
        """Each row n times in a row: [a0, a0, a1, a1] (torch's repeat_interleave)."""
        return np.repeat(a, n, axis=0)

    def zeros(self, shape: Sequence[int]) -> np.ndarray:
        return np.zeros(tuple(shape), np.float32)

    def randn(self, shape: Sequence[int], generator: Any = None) -> np.ndarray:
        """Standard normal float32 noise; the same numbers torch.randn draws for a torch.Generator of that seed. A list
        of generators draws row i with generator i (diffusers' per-image seeds)."""
        if isinstance(generator, list):
            return np.concatenate([self.randn((1, *shape[1:]), g) for g in generator])
        if generator is None or isinstance(generator, Generator):
            return (generator or Generator()).randn(tuple(shape))
        torch = sys.modules["torch"]  # a torch.Generator (diffusers' convention): its caller has torch loaded
        return torch.randn(tuple(shape), generator=generator, dtype=torch.float32).numpy()

    def all_finite(self, a: Any) -> bool:
        return bool(np.isfinite(a).all())

    def generator(self, seed: int) -> Generator:
        """A seeded generator for `randn` (the CLI's and the server's --seed)."""
        return Generator(seed)


class TorchArrays:
    """Arrays for PyTorch networks: tensors on the (device, dtype) of `owner` (the FlowModel); noise drawn on the CPU
    in float32, so a seed gives the same image on every device and dtype."""

    def __init__(self, owner: Any):
        self.owner = owner  # not a callback: a deep copy of the FlowModel must place on the copy

    @property
    def torch(self) -> Any:
        import torch

        return torch

    def place(self) -> tuple[Any, Any]:
        """(device, dtype) as torch objects (networks without parameters say "cpu", "float32")."""
        device, dtype = self.owner.device, self.owner.dtype
        return self.torch.device(device), getattr(self.torch, dtype) if isinstance(dtype, str) else dtype

    def input(self, a: Any) -> Any:
        device, dtype = self.place()
        return self.torch.as_tensor(a).to(device, dtype)

    def full(self, n: int, value: Any) -> Any:
        device, _ = self.place()
        return self.torch.as_tensor(value).to(device, self.torch.float32).reshape(-1).expand(n)

    def cat(self, parts: Sequence[Any]) -> Any:
        """The parts in one tensor on the device (prompt-cache entries live on the CPU, new ones where computed)."""
        device, _ = self.place()
        return self.torch.cat([self.torch.as_tensor(p).to(device) for p in parts])

    def rows(self, a: Any, n: int) -> Any:
        return None if a is None else a.expand(n, *a.shape[1:])

    def repeat(self, a: Any, n: int) -> Any:
        return a.repeat_interleave(n, 0)

    def zeros(self, shape: Sequence[int]) -> Any:
        device, dtype = self.place()
        return self.torch.zeros(tuple(shape), device=device, dtype=dtype)

    def randn(self, shape: Sequence[int], generator: Any = None) -> Any:
        device, _ = self.place()
        if isinstance(generator, list):  # row i from generator i (diffusers' per-image seeds)
            return self.torch.cat([self.randn((1, *shape[1:]), g) for g in generator])
        if isinstance(generator, Generator):
            return self.torch.from_numpy(generator.randn(tuple(shape))).to(device)
        return self.torch.randn(tuple(shape), generator=generator, dtype=self.torch.float32).to(device)

    def all_finite(self, a: Any) -> bool:
        return bool(self.torch.isfinite(a).all())

    def generator(self, seed: int) -> Any:
        return self.torch.Generator().manual_seed(seed)


def randn_like(a: Any, generator: Any = None) -> Any:
    """Standard normal float32 noise of `a`'s shape, of its kind and on its device (drawn as the pipeline's own)."""
    if is_torch(a):
        return TorchArrays(a).randn(a.shape, generator)  # a tensor has the .device and .dtype an owner needs
    return NumpyArrays().randn(a.shape, generator)
