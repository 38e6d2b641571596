"""Training config: a YAML file, `--key=value` overrides (dotted keys, YAML values), defaults, and stages.

A config is one stage, or a list under `stages:` run in order: each entry is merged over the top-level settings,
starts from the previous stage's exported model folder and writes `output_dir/<i>-<name>/`. Command-line
overrides apply to every stage (`--train.steps=10`), or to one (`--stages.1.train.steps=10`).

`load_config` parses and checks everything once, into the frozen dataclasses below: an unknown key or a value of
the wrong type is a ValueError naming the dotted key (and the expected type). Integers are accepted where a number
is expected, and so are numeric strings (PyYAML reads `1e-4` -- no dot -- as a string). `mixed_precision: no`
(which YAML reads as false) means "no". The free-form mappings stay dicts: `export` (PipelineConfig fields, keys
checked), `train.optimizer_args`, `data.build_args`, `data.columns`, and `model.variant` (a name or a Variant's
fields, keys checked). Nothing here changes the mapping it was given.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sanaedit.core.flow import T_SAMPLING
from sanaedit.train.optim import OPTIMIZERS
from sanaedit.train.stage_settings import (
    ControlNetSettings,
    DistillSettings,
    LoraSettings,
    Reconstruction,
    RefinerSettings,
    spec,
)
from sanaedit.train.stages import STAGES, Stage, get_stage

PRECISIONS = ("no", "fp16", "bf16", "fp8")  # accelerate's names
DATA_BUILDERS = ("comic",)


# ------------------------------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class ModelConfig:
    from_: str | None = None  # `model.from`: a model folder to start from
    variant: str | dict[str, Any] | None = None  # a named size or a Variant's fields: start from random weights
    seed: int = 0


@dataclass(frozen=True)
class DataConfig:
    manifest: str | None = None  # a JSONL/CSV file or a folder holding manifest.jsonl
    hf: str | None = None  # a Hugging Face dataset name or a save_to_disk folder (needs `datasets`)
    split: str = "train"
    columns: dict[str, str] | None = None
    eval_manifest: str | None = None  # images for the periodic samples
    build: str | None = spec(None, choices=DATA_BUILDERS)  # build a bundled training set into `root` first
    photos: str | None = None  # a folder of photos: editing pairs made into `root` (train.controlnet.targets)
    build_args: dict[str, Any] = spec(factory=dict)
    root: str | None = None  # where `build` writes (default: <output_dir>/data)
    resolution: int | None = spec(None, min=1)  # default: the model's
    default_prompt: str | None = None
    skip_bad: bool = False
    pre_encode: bool = False
    num_workers: int = spec(0, min=0)


@dataclass(frozen=True)
class TrainSettings:
    stage: str = spec("stage3", choices=tuple(STAGES))
    trainable: tuple[str, ...] | None = None  # overrides the stage's list
    steps: int = spec(100, min=1)
    batch_size: int = spec(4, min=1)  # per process
    grad_accum: int = spec(1, min=1)
    optimizer: str = spec("came", choices=OPTIMIZERS)
    optimizer_args: dict[str, Any] = spec(factory=dict)
    lr: float = spec(1e-4, min=0)
    warmup: int = spec(0, min=0)
    grad_clip: float = spec(0.1, min=0)  # 0 = off
    t_sampling: str = spec("logit_normal", choices=T_SAMPLING)
    shift: float = spec(3.0, min=0)
    text_dropout: float = spec(0.0, min=0)  # chance of training on the negative prompt instead (needed for CFG)
    mixed_precision: str = spec("no", choices=PRECISIONS, aliases={False: "no"})
    gradient_checkpointing: bool = False
    ema: float = spec(0.0, min=0)  # EMA decay; 0 = off
    reconstruction: Reconstruction = spec(factory=Reconstruction)
    lora: LoraSettings = spec(factory=LoraSettings)
    distill: DistillSettings = spec(factory=DistillSettings)
    refiner: RefinerSettings = spec(factory=RefinerSettings)
    controlnet: ControlNetSettings = spec(factory=ControlNetSettings)


@dataclass(frozen=True)
class LogConfig:
    every: int = spec(10, min=1)
    tensorboard: bool = False
    progress: bool = True


@dataclass(frozen=True)
class SampleConfig:
    every: int = spec(0, min=0)  # 0 = never
    count: int = spec(4, min=1)
    steps: int = spec(10, min=1)


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = spec(100, min=0)  # 0 = never
    keep: int = 2  # <= 0 keeps all


@dataclass(frozen=True)
class StageConfig:
    """The resolved settings of one stage: what `load_config` returns, one per stage."""

    output_dir: str = "runs/train"
    seed: int = 0
    device: str = spec("auto", choices=("auto", "cpu"))  # "cpu" forces the CPU even where a GPU is present
    name: str | None = None  # the stage's folder name (default: train.stage)
    model: ModelConfig = spec(factory=ModelConfig)
    data: DataConfig = spec(factory=DataConfig)
    train: TrainSettings = spec(factory=TrainSettings)
    log: LogConfig = spec(factory=LogConfig)
    sample: SampleConfig = spec(factory=SampleConfig)
    checkpoint: CheckpointConfig = spec(factory=CheckpointConfig)
    export: dict[str, Any] = spec(factory=dict)  # PipelineConfig fields for the exported model
    # derived by load_config (not config keys)
    stage: Stage = spec(STAGES["stage3"], derived=True)  # train.stage with train.trainable applied
    stage_dir: Path = spec(Path("runs/train"), derived=True)
    stage_index: int = spec(0, derived=True)
    num_stages: int = spec(1, derived=True)

    def starting_from(self, folder: str | Path) -> StageConfig:
        """This stage, starting from a model folder (the previous stage's export) instead of `model.*`."""
        return dataclasses.replace(self, model=dataclasses.replace(self.model, from_=str(folder), variant=None))


# --------------------------------------------------------------------------------------------------- parsing
class _WrongType(Exception):
    pass


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return "a list of strings"
    if typing.get_origin(hint) is dict or hint is dict or dataclasses.is_dataclass(hint):
        return "a mapping"
    return _TYPE_NAMES.get(hint, str(hint))


def _convert(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            try:
                return _convert(arg, value, key)
            except _WrongType:
                continue
        raise _WrongType
    if hint is type(None):
        if value is None:
            return None
        raise _WrongType
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise _WrongType
        return _parse(hint, value, key + ".")
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise _WrongType
        return copy.deepcopy(dict(value))
    if origin is tuple:  # tuple[str, ...]: a YAML list of strings
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise _WrongType
        return tuple(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _WrongType
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _WrongType
    if hint is float:
        if isinstance(value, bool):
            raise _WrongType
        if isinstance(value, int | float):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise _WrongType from None
        else:
            raise _WrongType
        if not math.isfinite(number):
            raise _WrongType
        return number
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):  # a Path in a config given as a dict
            return os.fspath(value)
        raise _WrongType
    raise TypeError(f"config field type {hint!r} not handled")  # a bug here, not in the config


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    """Config key -> field (`from_` is the key `from`), derived fields left out."""
    return {f.name.rstrip("_"): f for f in dataclasses.fields(cls) if not f.metadata.get("derived")}


def _parse(cls: type, raw: Mapping[str, Any], where: str = "") -> Any:
    fields, hints = _fields(cls), typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            raise ValueError(f"unknown config key {where + str(key)!r}; known: {', '.join(fields)}")
    values = {}
    for key, f in fields.items():
        if key not in raw:
            continue
        name, value = where + key, raw[key]
        aliases = f.metadata.get("aliases", {})
        if isinstance(value, bool) and value in aliases:
            value = aliases[value]
        try:
            value = _convert(hints[f.name], value, name)
        except _WrongType:
            raise ValueError(
                f"config key {name!r} must be {_describe(hints[f.name])}, got {value!r} ({type(value).__name__})"
            ) from None
        choices = f.metadata.get("choices")
        if choices and value is not None and value not in choices:
            raise ValueError(f"config key {name!r} is {value!r}; choose one of {', '.join(choices)}")
        low = f.metadata.get("min")
        if low is not None and value is not None and value < low:
            raise ValueError(f"config key {name!r} must be >= {low}, got {value!r}")
        values[f.name] = value
    return cls(**values)


def _check(cfg: StageConfig) -> StageConfig:
    """Checks across keys; returns the config with its derived `stage`."""
    try:
        stage = get_stage(cfg.train.stage, cfg.train.trainable)
    except ValueError as err:
        raise ValueError(f"config key 'train.trainable': {err}") from None
    if cfg.train.ema and not cfg.train.ema < 1:
        raise ValueError(f"config key 'train.ema' is an EMA decay: 0 (off) or in (0, 1), got {cfg.train.ema}")
    if cfg.train.text_dropout > 1:
        raise ValueError(f"config key 'train.text_dropout' is a probability, got {cfg.train.text_dropout}")
    if cfg.train.controlnet.dropout > 1:
        raise ValueError(f"config key 'train.controlnet.dropout' is a probability, got {cfg.train.controlnet.dropout}")
    if stage.name == "controlnet" and stage.trainable != ("controlnet",):
        raise ValueError("config key 'train.trainable': the controlnet stage trains the ControlNet only ([controlnet])")
    if cfg.data.photos and (cfg.data.build or cfg.data.manifest or cfg.data.hf):
        raise ValueError("config key 'data.photos': give one data source (photos, build, manifest or hf), not several")
    if stage.name == "distill" and stage.trainable != ("transformer",):
        raise ValueError("config key 'train.trainable': the distill stage trains the student DiT only ([transformer])")
    if cfg.train.distill.steps > cfg.train.distill.max_steps:
        raise ValueError(
            f"config key 'train.distill.steps' ({cfg.train.distill.steps}) is more than the steps it is trained "
            f"for (train.distill.max_steps = {cfg.train.distill.max_steps})"
        )
    if cfg.data.pre_encode and ("vae" in stage.trainable or stage.data == "images"):
        raise ValueError("config key 'data.pre_encode' needs a frozen autoencoder (not the autoencoder stage)")
    if isinstance(cfg.model.variant, dict):
        from sanaedit.models.variants import Variant

        known = [f.name for f in dataclasses.fields(Variant) if f.name != "name"]
        for key in cfg.model.variant:
            if key not in known:
                raise ValueError(f"unknown config key 'model.variant.{key}'; known: {', '.join(known)}")
    from sanaedit.pipeline import PipelineConfig

    known = [f.name for f in dataclasses.fields(PipelineConfig)]
    for key in cfg.export:
        if key not in known:
            raise ValueError(f"unknown config key 'export.{key}' (PipelineConfig fields: {', '.join(known)})")
    return dataclasses.replace(cfg, stage=stage)


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """A new mapping: `over` merged into `base`, recursively (neither is changed)."""
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        both = isinstance(v, Mapping) and isinstance(out.get(k), Mapping)
        out[k] = deep_merge(out[k], v) if both else copy.deepcopy(v)
    return out


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """['--train.steps=5', 'data.skip_bad=true'] -> nested dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.removeprefix("--").partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not of the form --key=value")
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r} conflicts with another override of {p!r}")
        node[leaf] = yaml.safe_load(value)
    return out


def read_config(path: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """The raw mapping of a YAML file, or a copy of the mapping given."""
    if isinstance(path, Mapping):
        return copy.deepcopy(dict(path))
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training config not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a training config is a YAML mapping")
    return raw


def load_config(config: str | Path | Mapping[str, Any], overrides: Sequence[str] | None = None) -> list[StageConfig]:
    """The checked settings of each stage to run, in order (new objects: `config` is left as it was)."""
    raw = read_config(config)
    over = parse_overrides(overrides or [])
    entries = raw.get("stages") or [{}]
    if not isinstance(entries, list) or not all(isinstance(e, Mapping) for e in entries):
        raise ValueError("config key 'stages' must be a list of mappings (one per stage)")
    entries = list(entries)
    for key, value in (over.pop("stages", None) or {}).items():  # --stages.<i>.key=value
        if not str(key).isdigit() or int(key) >= len(raw.get("stages") or []):
            raise ValueError(f"override stages.{key}: the config has {len(raw.get('stages') or [])} stage(s)")
        if not isinstance(value, dict):
            raise ValueError(f"override stages.{key} must set keys of the stage (--stages.{key}.train.steps=10)")
        entries[int(key)] = deep_merge(entries[int(key)], value)
    base = {k: v for k, v in raw.items() if k != "stages"}
    resolved = []
    for i, entry in enumerate(entries):
        where = f" (stage {i})" if len(entries) > 1 else ""
        try:
            cfg = _check(_parse(StageConfig, deep_merge(deep_merge(base, entry), over)))
        except ValueError as err:
            raise ValueError(f"{err}{where}") from None
        name = cfg.name or cfg.train.stage
        stage_dir = Path(cfg.output_dir) / f"{i}-{name}" if len(entries) > 1 else Path(cfg.output_dir)
        resolved.append(
            dataclasses.replace(cfg, name=name, stage_dir=stage_dir, stage_index=i, num_stages=len(entries))
        )
    return resolved
