"""Quantize / dequantize error bounds, packing, modules and whole-model quantization."""

import pytest
import torch

from sanaedit.export.weight_quant import dequantize_tensor, quantize_tensor


@pytest.mark.parametrize("bits,group_size", [(8, None), (8, 32), (4, 64), (4, 16), (4, None)])
def test_error_within_half_a_step(bits, group_size):
    w = torch.randn(24, 130)  # 130 is not a multiple of any group size: padding path
    q = quantize_tensor(w, bits, group_size)
    back = dequantize_tensor(q)
    assert back.shape == w.shape
    step = q.scale.expand(-1, -1, group_size or 130).reshape(24, -1)[:, :130]
    assert ((back - w).abs() <= step / 2 + 1e-6).all()  # rounding error of an asymmetric grid


def test_relative_error_levels_and_size():
    w = torch.randn(256, 1024)
    q8 = quantize_tensor(w, 8)
    q4 = quantize_tensor(w, 4, 64)
    err8 = ((dequantize_tensor(q8) - w).norm() / w.norm()).item()
    err4 = ((dequantize_tensor(q4) - w).norm() / w.norm()).item()
    assert err8 < 0.01 and err4 < 0.12 and err8 < err4 / 8
    assert q8.nbytes < w.numel() * 4 / 3.9  # ~1 byte per weight + one scale/zero per row
    assert q4.nbytes < w.numel() * 4 / 6  # half a byte + scale/zero per 64 weights


def test_asymmetric_range_uses_all_codes():
    w = torch.rand(4, 64) * 3 + 1  # all positive: a symmetric grid would waste half its codes
    q = quantize_tensor(w - 1, 8)  # min 0 -> zero point 0, max -> 255
    assert q.codes.max() == 255 and q.zero.max() == 0


def test_zero_is_exact_and_bad_arguments():
    w = torch.zeros(3, 8)
    w[0, 0] = 1.0
    assert torch.equal(dequantize_tensor(quantize_tensor(w, 4, 4)), w)
    with pytest.raises(ValueError, match="bits"):
        quantize_tensor(w, 3)
    with pytest.raises(ValueError, match="group_size"):
        quantize_tensor(w, 4, 3)
