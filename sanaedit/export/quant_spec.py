"""What `--quant` may say, and its parsing: torch-free, so `sanaedit export` refuses a bad --quant before any heavy
import (the export itself is export/folder.py)."""

from __future__ import annotations

from sanaedit.formats.index import TINY_GRAPHS

COMPONENTS = ["llm", "connector", "projector", "transformer", "vae_encoder", "vae_decoder", *TINY_GRAPHS]
W8A8 = "w8a8"  # a --quant value: 8-bit weights *and* activations (ranges calibrated at export, or per call)
# The graphs it applies to. Convolutional autoencoders: activation ranges calibrated on photos at export.
W8A8_CALIBRATED = ("vae_encoder", "vae_decoder", "tiny_vae_encoder", "tiny_vae_decoder")
W8A8_DYNAMIC = ("transformer",)  # matmuls: ranges measured per call (ORT's DynamicQuantizeMatMul)
W8A8_GRAPHS = (*W8A8_CALIBRATED, *W8A8_DYNAMIC)
W8A8_WHERE = f"{', '.join(W8A8_GRAPHS[:-1])} and {W8A8_GRAPHS[-1]}"  # for messages


def parse_quant(text: str | None) -> dict[str, int | str | None]:
    """'llm=4,rest=8' -> bits per component (None = fp32). Keys: components or 'rest'; values 4, 8 or 32 (weight
    bits), or 'w8a8' for the DiT and autoencoder graphs: int8 compute, 8-bit weights and activations (the DiT's
    ranged per call, onnx_export.quantize_onnx_dynamic; the autoencoders' calibrated, export/calibrate.py).

    w8a8 is a value, not a new key, because it is one more way to store a graph, chosen per graph like the bits;
    it is not a bit count for the weights alone, so `rest=` cannot spread it to graphs it does not fit."""
    bits: dict[str, int | str | None] = dict.fromkeys(COMPONENTS)
    if not text:
        return bits
    rest = None
    given = {}
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or key not in [*COMPONENTS, "rest"] or value not in ("4", "8", "32", W8A8):
            raise ValueError(
                f"bad --quant entry {part!r}: use NAME=BITS with NAME in {COMPONENTS + ['rest']} and BITS 4, 8 or 32 "
                f"(or {' / '.join(W8A8_GRAPHS)}={W8A8}: int8 compute, 8-bit weights and activations)"
            )
        if value == W8A8 and key not in W8A8_GRAPHS:
            raise ValueError(
                f"bad --quant entry {part!r}: {W8A8} (int8 compute, 8-bit weights and activations) is for "
                f"{W8A8_WHERE} only, e.g. --quant llm=4,rest=8,transformer={W8A8},tiny_vae_decoder={W8A8}"
            )
        number = None if value == "32" else value if value == W8A8 else int(value)
        if key == "rest":
            rest = number
        else:
            given[key] = number
    return {name: given.get(name, rest) for name in COMPONENTS}
