"""int8 compute for the DiT's matmuls on CPUs with VNNI: `quantize_dit_int8(transformer)`.

Weights: int8, symmetric per output channel. Activations: int8, symmetric per token (row), quantized on the fly.
The product runs in `torch._int_mm` (oneDNN's int8 GEMM, int32 accumulation) and is rescaled by both scales.
Measured on this project's 2-core AVX512-VNNI EPYC, a 512x1152 @ 1152x5760 product (the Mix-FFN's first layer at
CFG batch 2): bf16 17-19 ms, this 11 ms; relative error 0.9% vs fp32, where PyTorch's own dynamic quantization
(`quantize_dynamic`, fbgemm, per-tensor activations) takes the same 11 ms at 2.2% error and is deprecated in favour
of torchao, whose CPU int8 path needs torch.compile to fuse its activation quantization (minutes at load). So the
~40 lines here: faster than bf16, more accurate than the library path, no compiler.

Only the DiT blocks' Linear and 1x1 Conv layers change (95% of a step's FLOPs); the timestep and caption
embedders, the patch embedding and the output layer stay float. Results change (it is quantization): the
benchmark reports PSNR against fp32 (bench/edit_speed.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

# What a DiT stored in int8 records under formats/index.STORED_INT8 (`sanaedit export DIR --format int8`): its blocks'
# Linear and 1x1 Conv layers hold `weight` (int8 codes), `weight_scale` and `bias` (float32), loaded as they are.
STORED_INT8_SCHEME = {
    "layers": "transformer_blocks: Linear and 1x1 Conv",
    "weights": "int8, symmetric per output channel (weight_scale)",
    "activations": "int8, symmetric per token, quantized on the fly",
}


def _int8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (int8 codes, float32 scale per row [M, 1]), symmetric."""
    scale = x.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / 127
    return (x / scale).round_().to(torch.int8), scale


class Int8Linear(nn.Module):
    """`nn.Linear` as an int8 x int8 -> int32 product (see module docstring). Its state: `weight` (int8 codes,
    [out, in]), `weight_scale` (float32 per output channel) and `bias` (float32): what a stored-int8 folder holds."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        codes, scale = _int8_rows(weight.detach().reshape(weight.shape[0], -1).float())
        self.register_buffer("weight", codes)
        self.register_buffer("weight_scale", scale.reshape(1, -1))
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.in_features, self.out_features = codes.shape[1], codes.shape[0]

    @classmethod
    def shell(cls, module: nn.Module) -> Int8Linear:
        """An empty layer (meta tensors) of `module`'s shape, for a stored-int8 folder's values to stream into."""
        out_features, in_features = module.weight.shape[0], module.weight[0].numel()
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8, device="meta"))
        layer.register_buffer("weight_scale", torch.empty(1, out_features, device="meta"))
        bias = None if module.bias is None else torch.empty(out_features, device="meta")
        layer.register_buffer("bias", bias)
        layer.in_features, layer.out_features = in_features, out_features
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        codes, scale = _int8_rows(rows)
        # weight.t(): a transposed view of the [out, in] codes is what oneDNN reads fastest
        out = torch._int_mm(codes, self.weight.t()).float() * (scale * self.weight_scale)
        if self.bias is not None:
            out += self.bias
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


class Int8Conv1x1(Int8Linear):
    """A 1x1 `nn.Conv2d` (the Mix-FFN's point-wise layers) as the same product over pixels: [B,C,H,W] in and out."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _is_pointwise(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv2d)
        and module.kernel_size == (1, 1)
        and module.stride == (1, 1)
        and module.groups == 1
        and module.padding in ((0, 0), "valid")
    )


def _int8_kind(name: str, module: nn.Module) -> type[Int8Linear] | None:
    """Which int8 layer replaces the DiT's module `name` (a path from the transformer), None where it stays float."""
    if not name.startswith("transformer_blocks."):
        return None
    if isinstance(module, nn.Linear):
        return Int8Linear
    if _is_pointwise(module):
        return Int8Conv1x1
    return None


def int8_layer(name: str, module: nn.Module) -> nn.Module | None:
    """The int8 layer that replaces the DiT's module `name`, or None where it stays: for `quantize_dit_int8`, and
    for streaming loads that quantize each layer as it arrives (backends/torch_loading.py)."""
    kind = _int8_kind(name, module)
    return None if kind is None else kind(module.weight, module.bias)


def int8_shell(name: str, module: nn.Module) -> nn.Module | None:
    """An empty int8 layer where `int8_layer` would put one: the skeleton a stored-int8 DiT loads into."""
    kind = _int8_kind(name, module)
    return None if kind is None else kind.shell(module)


def quantize_dit_int8(transformer: nn.Module) -> int:
    """Swap the Linear and 1x1 Conv layers of `transformer.transformer_blocks` for int8 ones; returns how many."""
    return replace_layers(transformer, int8_layer)


def replace_layers(model: nn.Module, replace: Callable[[str, nn.Module], nn.Module | None]) -> int:
    """Swap each module of an already loaded `model` for what `replace(name, module)` returns (None: it stays), as
    `load_model(..., replace=...)` does while streaming. Returns how many were swapped."""
    swapped = 0
    for name, module in list(model.named_modules()):
        new = replace(name, module)
        if new is not None:
            model.set_submodule(name, new)
            swapped += 1
    return swapped
