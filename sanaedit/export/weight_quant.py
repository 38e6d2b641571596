"""Asymmetric weight quantization of one tensor: per-output-channel or group-wise, 8 or 4 bits.

A weight [out, ...] is flattened to rows [out, K] (K = in * kh * kw for a conv). Each row is cut into groups of
`group_size` values (one group per row for per-channel); each group stores uint codes q, a float scale and an
integer zero point: w ~ (q - zero) * scale, with the group's min and max mapping to 0 and 2^bits - 1. This is the
scheme MNN's `--weightQuantAsymmetric` and the published 4-bit block-64 LLM use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class QuantizedTensor:
    codes: torch.Tensor  # uint8 [out, groups, group_size] (4-bit: two codes per byte, [out, groups, group_size/2])
    scale: torch.Tensor  # float32 [out, groups, 1]
    zero: torch.Tensor  # uint8 [out, groups, 1]
    bits: int
    shape: tuple[int, ...]  # the original weight shape

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.codes, self.scale, self.zero))


def _group_rows(weight: torch.Tensor, group_size: int | None) -> tuple[torch.Tensor, int]:
    rows = weight.detach().float().reshape(weight.shape[0], -1)
    size = rows.shape[1] if group_size is None else group_size
    pad = -rows.shape[1] % size
    if pad:  # pad with the row's last value: it never widens a group's range
        rows = torch.cat([rows, rows[:, -1:].expand(-1, pad)], dim=1)
    return rows.reshape(rows.shape[0], -1, size), pad


def quantize_tensor(weight: torch.Tensor, bits: int = 8, group_size: int | None = None) -> QuantizedTensor:
    """Quantize `weight` asymmetrically; `group_size=None` means one group per output channel."""
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    if group_size is not None and (group_size < 2 or (bits == 4 and group_size % 2)):
        raise ValueError(f"group_size must be >= 2 (and even for 4-bit), got {group_size}")
    groups, _ = _group_rows(weight, group_size)
    qmax = 2**bits - 1
    lo = groups.amin(-1, keepdim=True).clamp(max=0)  # keep 0 exactly representable (zero padding, biases)
    hi = groups.amax(-1, keepdim=True).clamp(min=0)
    scale = ((hi - lo) / qmax).clamp(min=1e-12)
    zero = torch.round(-lo / scale).clamp(0, qmax)
    codes = torch.round(groups / scale + zero).clamp(0, qmax).to(torch.uint8)
    if bits == 4:
        if codes.shape[-1] % 2:  # per-channel 4-bit with an odd row length: pad one code
            codes = torch.cat([codes, codes[..., -1:]], dim=-1)
        codes = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return QuantizedTensor(codes.contiguous(), scale, zero.to(torch.uint8), bits, tuple(weight.shape))


def unpack_codes(q: QuantizedTensor) -> torch.Tensor:
    if q.bits == 8:
        return q.codes
    return torch.stack([q.codes & 0x0F, q.codes >> 4], dim=-1).flatten(-2)


def dequantize_tensor(q: QuantizedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Back to a float weight of the original shape."""
    codes = unpack_codes(q)
    groups = (codes.to(dtype) - q.zero.to(dtype)) * q.scale.to(dtype)
    out = q.shape[0]
    k = 1
    for d in q.shape[1:]:
        k *= d
    return groups.reshape(out, -1)[:, :k].reshape(q.shape)
