"""Weight-only asymmetric quantization (8-bit per channel, 4-bit group-wise) for PyTorch modules."""

from .modules import LayerReport, QuantizedConv2d, QuantizedLinear, QuantReport, quantize_model
from .weights import QuantizedTensor, dequantize_tensor, quantize_tensor

__all__ = [
    "LayerReport",
    "QuantReport",
    "QuantizedConv2d",
    "QuantizedLinear",
    "QuantizedTensor",
    "dequantize_tensor",
    "quantize_model",
    "quantize_tensor",
]
