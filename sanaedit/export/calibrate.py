"""int8 compute for the DC-AE graphs (`--quant vae_encoder=w8a8,vae_decoder=w8a8`): ONNX Runtime's `quantize_static`
on activation ranges measured on real photos.

Why static and only the convolutions: with ranges fixed at export, ORT fuses each QDQ-wrapped Conv into a
QLinearConv (u8 activations x s8 per-channel weights, VNNI kernels); dynamic quantization computes ranges per call
and ran DC-AE 4x slower here. The rest (RMSNorms, linear attention's matmuls of two activations, element-wise ops)
stays float: those are not where DC-AE spends its time (~65% convolutions) and int8 there costs more accuracy.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .onnx_export import _quiet_logs

W8A8 = "w8a8"  # a --quant value: 8-bit weights *and* activations, ranges calibrated at export
W8A8_GRAPHS = ("vae_encoder", "vae_decoder")  # the graphs it applies to: DC-AE, where convolutions dominate
CALIBRATION_PHOTOS = 8  # MinMax ranges settle within a few pictures; each costs a float pass at export time


@dataclass
class Calibration:
    samples: list[torch.Tensor]  # the graph's input for each calibration picture
    check: torch.Tensor  # its input for a held-out picture: the exported graph is compared with PyTorch on it


def calibration_photos() -> tuple[Path, list[Path]]:
    """(held-out photo, calibration photos): the bundled sample photo is kept out to check the graphs on; the
    ranges come from the first of scikit-image's photos by name (a portrait, a cat, coffee, coins, a grey camera
    shot, colour charts, textures)."""
    from ..defaults import SAMPLE_PHOTO
    from ..train.comic_data import package_photos

    try:
        photos = list(package_photos().values())[:CALIBRATION_PHOTOS]
    except ImportError:
        photos = []
    if not photos:
        raise RuntimeError(f"{W8A8} calibration needs scikit-image's sample photos: pip install scikit-image")
    return SAMPLE_PHOTO, photos


def vae_calibration(encoder: nn.Module, resolution: int) -> dict[str, Calibration]:
    """Inputs of the DC-AE graphs for real photos, preprocessed as an edit preprocesses them: pixels for the encoder,
    and for the decoder the latents `encoder` (PyTorch, scaled as the decoder graph takes them) makes of them."""
    from ..image_io import load_image, preprocess

    held_out, photos = calibration_photos()
    pixels = [torch.from_numpy(preprocess(load_image(p), resolution)[0]) for p in [held_out, *photos]]
    with torch.no_grad():
        latents = [encoder(x).float() for x in pixels]
    return {
        "vae_encoder": Calibration(pixels[1:], pixels[0]),
        "vae_decoder": Calibration(latents[1:], latents[0]),
    }


class _Reader:
    """A CalibrationDataReader (ORT counts any class with `get_next` as one): one feed per picture, then None."""

    def __init__(self, name: str, samples: list[torch.Tensor]):
        self.feeds = iter([{name: x.detach().float().numpy()} for x in samples])

    def get_next(self) -> dict | None:
        return next(self.feeds, None)


def quantize_onnx_static(path: Path, input_name: str, samples: list[torch.Tensor]) -> dict:
    """Static int8 Conv (QDQ: uint8 activations, int8 weights per output channel, MinMax ranges over `samples`), in
    place; returns the manifest's description of it."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not samples:
        raise ValueError(f"{W8A8} needs at least one calibration sample")
    path = Path(path)
    data = Path(str(path) + ".data")
    reader = _Reader(input_name, samples)
    # Into a scratch folder first: quantize_static writes its weight file as OUTPUT_NAME.data, so the graph keeps
    # its own name there and both move into place together.
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch, _quiet_logs(), _quiet_root():
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
            calibrate_method=CalibrationMethod.MinMax,
            use_external_data_format=data.is_file(),
        )
        data.unlink(missing_ok=True)
        out.replace(path)
        if Path(str(out) + ".data").is_file():
            shutil.move(str(out) + ".data", data)
    return {
        "bits": 8,
        "activation_bits": 8,
        "scheme": "static int8 Conv (QDQ): uint8 activations calibrated (MinMax) on photos, int8 per-channel weights",
        "calibration_pictures": len(samples),
    }


@contextlib.contextmanager
def _quiet_root():
    """quantize_static warns on the root logger that the graph was not pre-processed; ORT's pre-processing
    (symbolic shape inference) crashes on these dynamo graphs, and the session optimizes the graph at load anyway."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
