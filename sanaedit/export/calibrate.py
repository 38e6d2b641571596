"""int8 compute for the autoencoder graphs (`--quant vae_encoder=w8a8,vae_decoder=w8a8`, and the light
autoencoder's `tiny_vae_encoder` / `tiny_vae_decoder`): ONNX Runtime's `quantize_static` on activation ranges
measured on real photos. (The DiT's `transformer=w8a8` needs no calibration: onnx_export.quantize_onnx_dynamic.)

Why static and only the convolutions: with ranges fixed at export, ORT fuses each QDQ-wrapped Conv into a
QLinearConv (u8 activations x s8 per-channel weights, VNNI kernels); dynamic quantization computes ranges per call
and ran DC-AE 4x slower here. The rest (RMSNorms, linear attention's matmuls of two activations, element-wise ops)
stays float: those are not where DC-AE spends its time (~65% convolutions) and int8 there costs more accuracy.
The light autoencoder is all 3x3 convolutions and ReLUs: its w8a8 decoder ran 4x its float one (published size).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from sanaedit.export.onnx_export import W8A8_REDUCE_RANGE, move_graph, quiet_logs, quiet_root
from sanaedit.export.quant_spec import W8A8

CALIBRATION_PHOTOS = 8  # MinMax ranges settle within a few pictures; each costs a float pass at export time


@dataclass
class Calibration:
    samples: list[torch.Tensor]  # the graph's input for each calibration picture
    check: torch.Tensor  # its input for a held-out picture: the exported graph is compared with PyTorch on it


def calibration_photos() -> tuple[Path, list[Path]]:
    """(held-out photo, calibration photos): the bundled sample photo is kept out to check the graphs on; the
    ranges come from the first of scikit-image's photos by name (a portrait, a cat, coffee, coins, a grey camera
    shot, colour charts, textures). scikit-learn's photos are left out even where it is installed: the same ranges
    on every machine, so the same graph and the same verdict of its check."""
    from sanaedit.image.photos import SKIMAGE_PHOTOS, package_photos
    from sanaedit.load import SAMPLE_PHOTO

    try:
        photos = [path for name, path in package_photos().items() if name in SKIMAGE_PHOTOS][:CALIBRATION_PHOTOS]
    except ImportError:
        photos = []
    if not photos:
        raise RuntimeError(f"{W8A8} calibration needs scikit-image's sample photos: pip install scikit-image")
    return SAMPLE_PHOTO, photos


def vae_calibration(encoder, resolution: int, prefix: str = "vae", decoder: bool = True) -> dict[str, Calibration]:
    """Inputs of one autoencoder's graphs (`{prefix}_encoder`, and `{prefix}_decoder` with `decoder`) for real
    photos, preprocessed as an edit preprocesses them: pixels for the encoder, and for the decoder the scaled latents
    `encoder` (PyTorch, as the decoder graph takes them) makes of them."""
    from sanaedit.image.io import load_image, preprocess

    held_out, photos = calibration_photos()
    pixels = [torch.from_numpy(preprocess(load_image(p), resolution)[0]) for p in [held_out, *photos]]
    found = {f"{prefix}_encoder": Calibration(pixels[1:], pixels[0])}
    if decoder:
        with torch.no_grad():
            latents = [encoder(x).float() for x in pixels]
        found[f"{prefix}_decoder"] = Calibration(latents[1:], latents[0])
    return found


def autoencoder_calibration(pipe, names: list[str]) -> dict[str, Calibration]:
    """`vae_calibration` for the autoencoder graphs `names` of `pipe`, each decoder on its own autoencoder's latents:
    the light autoencoder is trained to make the DC-AE's, so its own serve its decoder, at ~1/150 of the DC-AE
    encoder's cost (minutes at the published size)."""
    from sanaedit.models.tiny_vae import TinyVaeEncoder

    tiny = getattr(pipe.flow, "tiny_vae", None)
    encoders = {"vae": pipe.vae_encoder, "tiny_vae": None if tiny is None else TinyVaeEncoder(tiny)}
    found: dict[str, Calibration] = {}
    for prefix, encoder in encoders.items():
        if encoder is not None and {f"{prefix}_encoder", f"{prefix}_decoder"} & set(names):
            found.update(vae_calibration(encoder, pipe.config.resolution, prefix, f"{prefix}_decoder" in names))
    return found


class _Reader:
    """A CalibrationDataReader (ORT counts any class with `get_next` as one): one feed per picture, then None."""

    def __init__(self, name: str, samples: list[torch.Tensor]):
        self.feeds = iter([{name: x.detach().float().numpy()} for x in samples])

    def get_next(self) -> dict | None:
        return next(self.feeds, None)


def quantize_onnx_static(path: Path, input_name: str, samples: list[torch.Tensor]) -> dict:
    """Static int8 Conv (QDQ: uint8 activations, int8 weights per output channel in a 7-bit range as
    onnx_export.W8A8_REDUCE_RANGE says why, MinMax ranges over `samples`), in place; returns the manifest's
    description of it."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not samples:
        raise ValueError(f"{W8A8} needs at least one calibration sample")
    path = Path(path)
    reader = _Reader(input_name, samples)
    # Into a scratch folder first: quantize_static writes its weight file as OUTPUT_NAME.data, so the graph keeps
    # its own name there and both move into place together.
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch, quiet_logs(), quiet_root():
        out = Path(scratch) / path.name
        quantize_static(
            str(path),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv"],
            per_channel=True,
            activation_type=QuantType.QUInt8,  # u8 x s8: the pair ORT's x86 int8 kernels (VNNI) are built for
            weight_type=QuantType.QInt8,
            reduce_range=W8A8_REDUCE_RANGE,  # 7-bit weights: the same integers on every x86 CPU
            calibrate_method=CalibrationMethod.MinMax,
            use_external_data_format=Path(str(path) + ".data").is_file(),
        )
        move_graph(out, path)
    return {
        "bits": 8,
        "activation_bits": 8,
        "scheme": "static int8 Conv (QDQ): uint8 activations calibrated (MinMax) on photos, int8 (7-bit) per-channel "
        "weights",
        "calibration_pictures": len(samples),
    }
