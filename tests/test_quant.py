"""Quantize / dequantize error bounds, packing, modules and whole-model quantization."""

import pytest
import torch
from torch import nn

from sanaedit.backends.torch_weight_quant import QuantizedConv2d, QuantizedLinear, quantize_model
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


def test_modules_match_float_layers():
    torch.manual_seed(0)
    lin, conv, dw = nn.Linear(64, 48), nn.Conv2d(16, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1, groups=32)
    x, img = torch.randn(5, 64), torch.randn(2, 16, 8, 8)
    for module, inp, cls in [(lin, x, QuantizedLinear), (conv, img, QuantizedConv2d)]:
        ref = module(inp)
        out = cls(module, 8)(inp)
        assert ((out - ref).norm() / ref.norm()) < 0.01
        out4 = cls(module, 4, 16)(inp)
        assert ((out4 - ref).norm() / ref.norm()) < 0.12
    ref = dw(torch.randn(1, 32, 8, 8).clone())
    assert QuantizedConv2d(dw, 8)(torch.zeros(1, 32, 8, 8)).shape == ref.shape
    out_bf16 = QuantizedLinear(lin, 8, compute_dtype=torch.bfloat16)(x)
    assert out_bf16.dtype == torch.float32 and ((out_bf16 - lin(x)).norm() / lin(x).norm()) < 0.02


def test_quantize_model_report_and_state_dict():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Conv2d(1, 4, 3), nn.Linear(64, 8))
    report = quantize_model(model, bits=8, min_params=100)
    assert [layer.name for layer in report.layers] == ["0", "3"]  # the 36-weight conv stays float
    assert isinstance(model[0], QuantizedLinear) and isinstance(model[2], nn.Conv2d)
    assert report.quant_bytes < report.float_bytes / 3.5
    assert all(layer.rel_error < 0.01 for layer in report.layers)
    assert "total (2 layers)" in report.table()

    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 8))
    x = torch.randn(3, 32)
    ref = model(x)
    report4 = quantize_model(model, bits=4, group_size=16)
    assert 0.01 < report4.rel_error < 0.12
    out = model(x)
    assert ((out - ref).norm() / ref.norm()) < 0.15
    state = model.state_dict()
    assert state["0.codes"].dtype == torch.uint8
    fresh = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 8))
    quantize_model(fresh, bits=4, group_size=16)
    fresh.load_state_dict(state)
    assert torch.equal(fresh(x), out)


def test_quantized_tiny_transformer_stays_close():
    from sanaedit.runtime.random_model import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    t = pipe.transformer
    args = (
        torch.randn(2, 4, 2, 2),
        torch.randn(2, 32, 24),
        torch.tensor([500.0, 20.0]),
        torch.ones(2, 32),
        torch.randn(2, 4, 2, 2),
    )
    with torch.no_grad():
        ref = t(*args)
        report = quantize_model(t, bits=8)
        out = t(*args)
    assert len(report.layers) > 10
    assert ((out - ref).norm() / ref.norm()) < 0.02
