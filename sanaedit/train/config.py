"""Training config: a YAML file, `--key=value` overrides (dotted keys, YAML values), defaults, and stages.

A config is one stage, or a list under `stages:` run in order: each entry is merged over the top-level settings,
starts from the previous stage's exported model folder and writes `output_dir/<i>-<stage>/`. Command-line
overrides apply to every stage (`--train.steps=10`), or to one (`--stages.1.train.steps=10`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

DEFAULTS: dict[str, Any] = {
    "output_dir": "runs/train",
    "seed": 0,
    "device": "auto",  # "cpu" forces the CPU even where a GPU is present
    "model": {"from": None, "variant": None, "seed": 0},
    "data": {
        "manifest": None,  # a JSONL/CSV file or a folder holding manifest.jsonl
        "hf": None,  # a Hugging Face dataset name or a save_to_disk folder (needs `datasets`)
        "split": "train",
        "columns": None,
        "eval_manifest": None,  # images for the periodic samples
        "build": None,  # "comic": build the bundled comic training set into `data.root` first
        "build_args": {},
        "root": None,
        "resolution": None,  # default: the model's
        "default_prompt": None,
        "skip_bad": False,
        "pre_encode": False,
        "num_workers": 0,
    },
    "train": {
        "stage": "stage3",
        "trainable": None,
        "steps": 100,
        "batch_size": 4,
        "grad_accum": 1,
        "optimizer": "came",
        "optimizer_args": {},
        "lr": 1e-4,
        "warmup": 0,
        "grad_clip": 0.1,
        "t_sampling": "logit_normal",
        "shift": 3.0,
        "text_dropout": 0.0,  # chance of training on the negative prompt instead (needed for CFG)
        "mixed_precision": "no",  # "bf16" / "fp16" as accelerate names them
        "gradient_checkpointing": False,
        "ema": 0.0,  # EMA decay; 0 = off
        "reconstruction": {"l1": 1.0, "mse": 1.0},  # autoencoder stage loss weights
    },
    "log": {"every": 10, "tensorboard": False, "progress": True},
    "sample": {"every": 0, "count": 4, "steps": 10},
    "checkpoint": {"every": 100, "keep": 2},
    "export": {},  # PipelineConfig fields for the exported model (prompt, guidance_scale, num_inference_steps, ...)
}


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
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
        node[leaf] = yaml.safe_load(value)
    return out


def _check_keys(cfg: dict[str, Any], ref: dict[str, Any], where: str = "") -> None:
    for k, v in cfg.items():
        if k in ("stages", "name"):
            continue
        if k not in ref:
            raise ValueError(f"unknown config key {where + k!r}; known: {', '.join(sorted(ref))}")
        if isinstance(ref[k], dict) and ref[k] and isinstance(v, dict) and k not in ("export", "optimizer_args"):
            _check_keys(v, ref[k], f"{where}{k}.")


def load_config(path: str | Path | dict[str, Any], overrides: list[str] | None = None) -> list[dict[str, Any]]:
    """The resolved settings of each stage to run, in order."""
    if isinstance(path, dict):
        raw = copy.deepcopy(path)
    else:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"training config not found: {path}")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: a training config is a YAML mapping")
    over = parse_overrides(overrides or [])
    for key, value in (over.pop("stages", None) or {}).items():  # --stages.<i>.key=value
        stages = raw.get("stages") or []
        if not str(key).isdigit() or int(key) >= len(stages):
            raise ValueError(f"override stages.{key}: the config has {len(stages)} stage(s)")
        stages[int(key)] = deep_merge(stages[int(key)], value)
    base = deep_merge(DEFAULTS, {k: v for k, v in raw.items() if k != "stages"})
    entries = raw.get("stages") or [{}]
    resolved = []
    for i, entry in enumerate(entries):
        cfg = deep_merge(deep_merge(base, entry), over)
        _check_keys(cfg, DEFAULTS)
        name = entry.get("name") or cfg["train"]["stage"]
        cfg["stage_dir"] = str(Path(cfg["output_dir"]) / f"{i}-{name}") if len(entries) > 1 else cfg["output_dir"]
        cfg["stage_index"], cfg["num_stages"] = i, len(entries)
        resolved.append(cfg)
    return resolved
