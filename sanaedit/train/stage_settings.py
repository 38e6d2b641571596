"""The settings sections of the stages that have their own (`train.lora`, `train.reconstruction`, `train.distill`,
`train.refiner`, `train.controlnet`), and `spec`, a config field with its checks (read by config.py's parser)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


def spec(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **checks: Any) -> Any:
    """A field with checks: choices=(...), min=number, aliases={yaml value: value}, derived=True (not a key)."""
    return field(default=default, default_factory=factory, metadata=checks)


@dataclass(frozen=True)
class LoraSettings:
    """Adapters of the `lora` stage (diffusers' Sana LoRA trainer's defaults: q/k/v, gaussian A, zero B)."""

    rank: int = spec(16, min=1)
    alpha: float | None = spec(None, min=0)  # default: the rank (scale 1)
    targets: tuple[str, ...] = ("to_q", "to_k", "to_v")  # module-name suffixes; also "to_out.0", "conv_point"...


@dataclass(frozen=True)
class Reconstruction:
    """Loss weights of the autoencoder stage."""

    l1: float = 1.0
    mse: float = 1.0


@dataclass(frozen=True)
class DistillSettings:
    """The `distill` stage (train/distill.py): a few-step student of the starting model."""

    objective: str = spec("ode", choices=("ode", "scm"))
    steps: int = spec(2, min=1)  # the student's default step count (recorded in its model folder)
    max_steps: int = spec(4, min=1)  # trained for the scm schedules of 1..max_steps steps
    teacher_steps: int | None = spec(None, min=1)  # ode: the teacher's steps per target (default: its own)
    guidance: float | None = spec(None, min=0)  # the teacher's CFG scale (default: its own); > 1: embedded
    tangent_warmup: int = spec(1000, min=0)  # scm: optimizer steps until the dv/ds term is fully on
    tangent_norm: float = spec(0.1, min=0)  # scm: g / (|g| + c)
    adaptive_weight: bool = True  # scm: a learned per-noise-level weight, loss / exp(logvar) + logvar (SANA-Sprint)
    ladd: float = spec(0.0, min=0)  # weight of LADD's adversarial term (SANA-Sprint: 0.5); 0 = no discriminator
    ladd_lr: float | None = spec(None, min=0)  # the heads' rate (default 10 x train.lr: they start from scratch)
    ladd_blocks: tuple[int, ...] | None = None  # the teacher blocks the heads read (default: Sprint's 4, spread)


@dataclass(frozen=True)
class RefinerSettings:
    """The `refiner` stage (models/refiner.py, train/refiner_data.py)."""

    width: int = spec(24, min=1)  # a new refiner's channels (a model that has one keeps its own layout)
    unshuffle: int = spec(1, min=1)  # a new refiner's pixel-block size (2: 4x fewer conv positions)
    crop: int = spec(128, min=16)  # training crops' side, at the pictures' own resolution
    crops_per_picture: int = spec(48, min=1)
    synthetic: int = spec(12, min=0)  # synthetic scenes besides the bundled photos (data.build: comic)
    style: str = spec("comic", choices=("comic", "ghibli"))  # the bundled pictures' targets (data.build: comic)


@dataclass(frozen=True)
class ControlNetSettings:
    """The `controlnet` stage (models/controlnet.py, train/control_data.py)."""

    layers: int = spec(7, min=1)  # a new ControlNet's copied DiT blocks (NVlabs/Sana: 7; at most the DiT's - 1)
    dropout: float = spec(0.1, min=0)  # chance of training on an empty (black) control image instead
    # data.photos' targets: "teacher" (the starting model's own edit of each photo) or "comic" (the bundled model's
    # filter, sanaedit/train/filters/comic.py)
    targets: str = spec("teacher", choices=("teacher", "comic"))
    teacher: str | None = None  # the model folder whose edits are the targets (default: model.from)
