"""Asymmetric (min/max affine) weight quantization of one tensor, and 4-bit packing.

A weight of any shape is viewed as rows = output channels, columns = everything else (a conv's in x kh x kw).
Each row is split into groups of `group_size` columns (None: the whole row, i.e. per output channel).
Per group: scale = (max - min) / (2^bits - 1), integer zero point z = round(-min / scale), code = round(w / scale) + z,
so w ~ (code - z) * scale. The range always includes 0, so zeros (padding, pruned weights) stay exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SUPPORTED_BITS = (4, 8)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes in [0, 15], last dim even -> half as many bytes (element 2i in the low nibble)."""
    if codes.shape[-1] % 2:
        raise ValueError(f"pack_int4 needs an even last dimension, got {tuple(codes.shape)}")
    if codes.numel() and int(codes.max()) > 15:
        raise ValueError("pack_int4: codes must be in [0, 15]")
    codes = codes.to(torch.uint8)
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of `pack_int4`."""
    low, high = packed & 0x0F, packed >> 4
    return torch.stack([low, high], dim=-1).flatten(-2)


@dataclass
class QuantizedWeight:
    """Codes (4-bit ones packed two per byte), per-group fp32 scale and uint8 zero point, and the original shape."""

    codes: torch.Tensor  # uint8 [rows, groups, group_size] (or [..., group_size // 2] packed for 4 bits)
    scale: torch.Tensor  # float32 [rows, groups, 1]
    zero: torch.Tensor  # uint8 [rows, groups, 1]
    shape: tuple[int, ...]
    bits: int
    group_size: int | None

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.codes, self.scale, self.zero))

    def int_codes(self) -> torch.Tensor:
        return unpack_int4(self.codes) if self.bits == 4 else self.codes

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        rows = self.shape[0]
        cols = int(torch.Size(self.shape[1:]).numel())
        w = (self.int_codes().to(torch.float32) - self.zero.to(torch.float32)) * self.scale
        return w.reshape(rows, -1)[:, :cols].reshape(self.shape).to(dtype)


def quantize_weight(weight: torch.Tensor, bits: int = 8, group_size: int | None = None) -> QuantizedWeight:
    """Quantize `weight` (first dim = output channels). bits 8 or 4; `group_size` None = per output channel."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits}")
    if group_size is not None and (group_size <= 0 or group_size % 2):
        raise ValueError(f"group_size must be a positive even number or None, got {group_size}")
    if bits == 4 and group_size is None and weight[0].numel() % 2:
        raise ValueError("4-bit per-channel quantization needs an even row length; give a group_size")
    shape = tuple(weight.shape)
    w = weight.detach().to(torch.float32).reshape(shape[0], -1)
    cols = w.shape[1]
    size = group_size or cols
    pad = (-cols) % size
    if pad:  # zero columns: exact under this scheme, cut away again on dequantize
        w = torch.nn.functional.pad(w, (0, pad))
    w = w.reshape(shape[0], -1, size)
    qmax = 2**bits - 1
    low = w.amin(dim=-1, keepdim=True).clamp(max=0)
    high = w.amax(dim=-1, keepdim=True).clamp(min=0)
    scale = ((high - low) / qmax).clamp(min=torch.finfo(torch.float32).tiny)
    zero = torch.round(-low / scale).clamp(0, qmax)
    codes = (torch.round(w / scale) + zero).clamp(0, qmax).to(torch.uint8)
    if bits == 4:
        codes = pack_int4(codes)
    return QuantizedWeight(codes, scale, zero.to(torch.uint8), shape, bits, group_size)
