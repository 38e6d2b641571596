"""Every choice a run makes, as one typed vocabulary: the values of `--vae`, `--upsample`, `--sampler`, ... and of
model_index.json's "pipeline" entries. String enums: a member equals its text ("tiny" == Vae.TINY), so JSON files,
command lines and the Python API keep speaking plain strings while the code compares against one definition."""

from __future__ import annotations

from enum import StrEnum


class Vae(StrEnum):
    """The autoencoder an edit runs on."""

    FULL = "full"  # the DC-AE
    TINY = "tiny"  # the folder's light TAESANA-style autoencoder (models/tiny_vae.py)


class Upsample(StrEnum):
    """How an edit made at the model's resolution comes back to the photo's size (image/upsample.py)."""

    PLAIN = "plain"  # bilinear
    GUIDED = "guided"  # the fast guided filter, guided by the photo's colour
    GUIDED_GREY = "guided-grey"  # guided by its luminance only
    REFINE = "refine"  # guided, then the folder's learned full-resolution refiner (models/refiner.py)


class Sampler(StrEnum):
    """Sampling functions (core/sampling.py)."""

    EULER = "euler"  # flow matching
    DPM = "dpm"  # flow DPM-Solver++ 2M
    SCM = "scm"  # SANA-Sprint's few-step sampler, for distilled students


class Schedule(StrEnum):
    """Sigma schedules (core/sampling.py)."""

    DEFAULT = "default"
    PUBLISHED = "published"  # the MNN engine's
    LINEAR = "linear"  # SANA's DPM-Solver schedule
    SCM = "scm"  # SANA-Sprint's TrigFlow times


class Padding(StrEnum):
    """What fills the square around a non-square photo (image/io.py)."""

    BLACK = "black"  # the published engine's
    REFLECT = "reflect"


class Control(StrEnum):
    """What steers an edit through the model's ControlNet besides a control image file (`--control-image`)."""

    EDGES = "edges"  # the input photo's own edges (image/edges.py)
    NONE = "none"  # no control image: the ControlNet is not run


class Backend(StrEnum):
    """What runs the networks."""

    TORCH = "torch"
    ONNXRUNTIME = "onnxruntime"
    MNN = "mnn"


class Format(StrEnum):
    """What a folder on disk holds (formats/)."""

    TORCH = "torch"  # a PyTorch model folder (diffusers / transformers components)
    ONNX = "onnx"  # our export of ONNX graphs
    MNN = "mnn"  # MNN graphs: the published release's files, or our export in its layout
    WEB = "web"  # a static folder that edits inside a browser (export/web.py); sanaedit itself does not run it


# the backend that runs each format by default, and the formats each backend runs
DEFAULT_BACKEND = {Format.TORCH: Backend.TORCH, Format.ONNX: Backend.ONNXRUNTIME, Format.MNN: Backend.MNN}
SAMPLER_SCHEDULE = {Sampler.DPM: Schedule.LINEAR, Sampler.SCM: Schedule.SCM}  # a sampler's own schedule


def parse(kind: type[StrEnum], value: str, what: str | None = None) -> StrEnum:
    """`value` as a member of `kind`, or a one-line ValueError naming the choices."""
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(m.value for m in kind)
        raise ValueError(f"unknown {what or kind.__name__.lower()} {value!r}; use one of {choices}") from None
