"""The training loop on `accelerate`: one CPU, one GPU, or many processes (DDP/FSDP via `accelerate launch` or
`torchrun`), mixed precision, gradient accumulation, gradient checkpointing, EMA, periodic samples, tqdm + JSONL
(+ TensorBoard) logs, atomic checkpoints, bit-exact `--resume`, export to the pipeline's model folder.

Determinism: every random draw is a function of (seed, micro-step, rank) -- see sampler.py. A checkpoint therefore
only needs the weights, optimizer, scheduler, EMA and the step counters to continue on exactly the same trajectory.

The pieces: config.py (the checked settings), model.py (start and export), parts.py (the loss module),
sources.py (data and pre-encoding), sampler.py (data order and draws), checkpoints.py, previews.py.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from sanaedit.core.atomic import copy_folder
from sanaedit.models.lora import add_lora, save_lora
from sanaedit.pipeline import SanaEditPipeline
from sanaedit.train.checkpoints import Progress, checkpoint_dir, load_checkpoint, save_checkpoint
from sanaedit.train.config import StageConfig, load_config
from sanaedit.train.data import collate
from sanaedit.train.ema import EMA
from sanaedit.train.model import build_model, export_pipeline, set_latent_scale
from sanaedit.train.optim import build_optimizer, warmup_constant
from sanaedit.train.parts import TrainParts
from sanaedit.train.previews import Previews
from sanaedit.train.sampler import StreamBatches, control_draws, distill_draws, first_position, sample_draws
from sanaedit.train.sources import build_dataset, pre_encoded
from sanaedit.train.stages import apply_stage

logger = logging.getLogger(__name__)

DONE_FILE = "done.json"


class Trainer:
    """One stage: `Trainer(cfg).run()` trains it and returns its exported model folder."""

    def __init__(self, cfg: StageConfig, resume: bool = False):
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState
        from accelerate.utils import set_seed

        # accelerate keeps one global state per process; each stage (or test) may choose its own precision.
        AcceleratorState._reset_state()
        self.cfg, self.t, self.stage = cfg, cfg.train, cfg.stage
        self.dir = cfg.stage_dir
        self.accel = Accelerator(
            mixed_precision=self.t.mixed_precision,
            gradient_accumulation_steps=self.t.grad_accum,
            cpu=cfg.device == "cpu",
        )
        set_seed(cfg.seed)  # model init only; training draws use their own per-step generators
        self.main = self.accel.is_main_process
        self.resume = resume

    def log(self, msg: str) -> None:
        if self.main:
            logger.info(msg)

    # ------------------------------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg, t = self.cfg, self.t
        self.pipe = build_model(cfg.model)
        self.resolution = cfg.data.resolution or self.pipe.config.resolution  # what this stage trains on
        # The size the model edits at is its DiT's: a stage that leaves the DiT alone (the autoencoders are fully
        # convolutional and train on views of any size; the refiner) exports the model's own resolution.
        trains_dit = bool({"transformer", "lora"} & set(self.stage.trainable))
        self.edit_resolution = self.resolution if trains_dit else self.pipe.config.resolution
        if self.resolution != self.pipe.config.resolution:
            self.pipe.config.resolution = self.resolution
        if "lora" in self.stage.trainable:
            add_lora(self.pipe.transformer, t.lora.rank, t.lora.alpha, t.lora.targets)
        if self.stage.name == "distill":
            from sanaedit.train.distill import DistillParts

            parts = DistillParts(self.pipe, self.stage, t.distill)
        else:
            parts = TrainParts(self.pipe, self.stage, t.reconstruction, t.refiner, t.controlnet)
        trainable = apply_stage(parts, self.stage)
        if t.gradient_checkpointing and {"transformer", "controlnet"} & set(self.stage.trainable):
            parts.transformer.enable_gradient_checkpointing()  # a ControlNet's gradients pass through the DiT too
            if parts.controlnet is not None:
                parts.controlnet.enable_gradient_checkpointing()
        self.parts = parts
        self.log(
            f"stage {self.stage.name}: training {', '.join(self.stage.trainable)} "
            f"({sum(p.numel() for p in parts.parameters() if p.requires_grad) / 1e6:.2f}M parameters, "
            f"{len(trainable)} tensors); frozen: the rest"
        )
        self.dataset = self._dataset()
        groups = parts.param_groups(t.lr) if hasattr(parts, "param_groups") else parts.parameters()  # own rates
        self.optimizer = build_optimizer(groups, t.optimizer, lr=t.lr, **t.optimizer_args)
        self.scheduler = warmup_constant(self.optimizer, t.warmup)
        self.ema = EMA([p for p in parts.parameters() if p.requires_grad], t.ema) if t.ema else None
        self.model, self.optimizer = self.accel.prepare(parts, self.optimizer)
        # Our own objects ride along in accelerate's checkpoints (the scheduler is stepped by us, once per
        # optimizer step, not by accelerate -- which would step it once per process).
        self.accel.register_for_checkpointing(self.scheduler)
        if self.ema is not None:
            self.accel.register_for_checkpointing(self.ema)

    def _dataset(self) -> Dataset:
        if self.stage.data == "full_res":
            return self._refiner_dataset()
        with self.accel.main_process_first():  # building / pre-encoding happens once, on the main process
            dataset, sources = build_dataset(self.cfg, self.stage, self.resolution)
            self.previews = Previews(sources.preview_manifest, self.stage, self.resolution, self.cfg.sample)
            if not self.cfg.data.pre_encode:
                return dataset
            bar = self.main and self.cfg.log.progress
            latents = pre_encoded(dataset, self.parts, self.dir / "latents", progress=bar)
            done = "reused the pre-encoded" if latents.reused else "pre-encoded"  # same data and weights
            self.log(f"{done} {len(latents)} samples in {self.dir / 'latents'} ({latents.skipped} skipped)")
            return latents

    def _refiner_dataset(self) -> Dataset:
        from sanaedit.train.refiner_data import bundled_pictures, manifest_pictures, refiner_crops

        d, r = self.cfg.data, self.t.refiner
        if r.crop % r.unshuffle:
            raise ValueError(f"train.refiner.crop {r.crop} must be a multiple of train.refiner.unshuffle {r.unshuffle}")
        self.previews = None  # crops at full resolution: no preview grid; `sanaedit.train.evaluate` scores it
        with self.accel.main_process_first():
            if d.manifest:
                pictures = manifest_pictures(d.manifest)
            elif d.build == "comic":
                pictures = bundled_pictures(r.style, r.synthetic, self.cfg.seed)
            else:
                raise ValueError("the refiner stage needs data.manifest (editing pairs) or data.build: comic")
            bar = self.main and self.cfg.log.progress
            crops = refiner_crops(self.pipe, pictures, self.dir / "refiner-data", r.crop, r.crops_per_picture,
                                  self.cfg.seed, bar)  # fmt: skip
        self.log(f"refiner data: {len(crops)} crops of {len(pictures)} pictures")
        return crops

    # ------------------------------------------------------------------------------------------------ run
    def run(self) -> Path:
        cfg, t = self.cfg, self.t
        self.dir.mkdir(parents=True, exist_ok=True)
        self.setup()
        steps = t.steps
        at = self._load() if self.resume else Progress()
        step, micro, skipped = at
        rank, world = self.accel.process_index, self.accel.num_processes
        sampler = StreamBatches(len(self.dataset), t.batch_size, cfg.seed, micro, steps * t.grad_accum, rank, world)
        loader = DataLoader(self.dataset, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.data.num_workers)
        log_path = self.dir / "log.jsonl"
        writer = self._tensorboard()
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=step, desc=self.stage.name, disable=not (self.main and cfg.log.progress))
        losses: list[float] = []
        started, seen = time.perf_counter(), 0
        self.model.train()
        for batch in loader:
            skipped += batch["skipped"]
            loss = self._micro_step(batch, micro, rank)
            micro += 1
            seen += batch["size"]
            losses.append(loss)
            if not self.accel.sync_gradients:
                continue
            step += 1
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update()
            mean_loss = self.accel.reduce(torch.tensor(sum(losses) / len(losses), device=self.accel.device), "mean")
            losses = []
            bar.update(1)
            if self.main and (step % cfg.log.every == 0 or step == steps):
                record = {
                    "step": step,
                    "loss": float(mean_loss),
                    "lr": self.scheduler.get_last_lr()[0],
                    "samples_per_s": round(seen * world / (time.perf_counter() - started), 3),
                    "skipped": skipped,
                    **getattr(self.unwrapped(), "last_terms", {}),  # an objective's own terms, last micro-step
                }
                with log_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                if writer is not None:
                    writer.add_scalar("loss", record["loss"], step)
                    writer.add_scalar("lr", record["lr"], step)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
            if cfg.sample.every and self.previews is not None and step % cfg.sample.every == 0:
                if self.main:
                    self._with_ema(lambda s=step: self.write_samples(s))
                self.accel.wait_for_everyone()
            if cfg.checkpoint.every and step % cfg.checkpoint.every == 0 and step < steps:
                at = Progress(step, micro, skipped)
                save_checkpoint(self.accel, self.dir, at, self.stage.name, cfg.checkpoint.keep)
        bar.close()
        if skipped:
            self.log(f"skipped {skipped} bad sample(s) (data.skip_bad)")
        return self.finish(Progress(step, micro, skipped))

    def _load(self) -> Progress:
        ckpt, at = load_checkpoint(self.accel, self.dir)
        if ckpt is None:
            self.log(f"--resume: no checkpoint in {checkpoint_dir(self.dir)}, starting from step 0")
        else:
            self.log(f"resumed from {ckpt} (step {at.step})")
        return at

    def _micro_step(self, batch: dict[str, Any], micro: int, rank: int) -> float:
        t = self.t
        device = self.accel.device
        batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        noise = t_draw = None
        if self.stage.data not in ("images", "full_res"):
            first = first_position(micro, t.batch_size, rank, self.accel.num_processes)
            shape = self._latent_shape(batch)
            draws = [sample_draws(self.cfg.seed, first + j, shape, t) for j in range(batch["size"])]
            t_draw = torch.cat([d[0] for d in draws])
            noise = torch.stack([d[1] for d in draws])
            if self.stage.name == "distill":
                extra = [distill_draws(self.cfg.seed, first + j, shape) for j in range(batch["size"])]
                batch["level_u"] = torch.cat([e[0] for e in extra]).to(device)
                batch["fresh_noise"] = torch.stack([e[1] for e in extra]).to(device)
                batch["ladd_u"] = torch.cat([e[2] for e in extra]).to(device)
                batch["ladd_noise"] = torch.stack([e[3] for e in extra]).to(device)
                self.unwrapped().step = micro // t.grad_accum
            if self.stage.data == "control" and t.controlnet.dropout:
                dropped = [control_draws(self.cfg.seed, first + j, t.controlnet.dropout) for j in range(batch["size"])]
                batch["control_dropped"] = torch.tensor(dropped, device=device)
            if t.text_dropout:
                drop = [d[2] for d in draws]
                negative = self.pipe.config.negative_prompt
                batch["prompt"] = [negative if d else p for d, p in zip(drop, batch["prompt"])]
                if any(drop):
                    batch.pop("llm_features", None)
        with self.accel.accumulate(self.model):
            with self.accel.autocast():
                loss = self.model(batch, noise, t_draw)
            self.accel.backward(loss)
            if self.accel.sync_gradients and t.grad_clip:
                self.accel.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], t.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"loss is {value} at micro-step {micro}; lower train.lr or check the data")
        return value

    def _latent_shape(self, batch: dict[str, Any]) -> tuple[int, ...]:
        if "target_latents" in batch:
            return tuple(batch["target_latents"].shape[1:])
        size = self.resolution // self.pipe.vae_scale
        return (self.pipe.latent_channels, size, size)

    # ---------------------------------------------------------------------------------- samples, export
    def unwrapped(self) -> TrainParts:
        return self.accel.unwrap_model(self.model)

    def export_pipeline(self) -> SanaEditPipeline:
        parts = self.unwrapped()
        export = {**getattr(parts, "export_defaults", dict)(), **self.cfg.export}  # a student names its sampler
        return export_pipeline(parts, self.pipe.config, self.edit_resolution, export)

    def write_samples(self, step: int) -> Path:
        path = self.dir / "samples" / f"step-{step:08d}.png"
        return self.previews.write(path, self.unwrapped(), self.export_pipeline, self.accel.device)

    def _with_ema(self, fn) -> None:
        if self.ema is None:
            fn()
        else:
            with self.ema.swapped_in():
                fn()

    def _tensorboard(self):
        if not (self.main and self.cfg.log.tensorboard):
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.dir / "tensorboard"))

    def finish(self, at: Progress) -> Path:
        out = stage_output(self.cfg)
        self.accel.wait_for_everyone()
        if self.main:
            if "vae" in self.stage.trainable:  # the DC-AE's own stage (tiny-vae keeps the DiT's latent scale)
                scale = set_latent_scale(self.unwrapped().vae, self.dataset, self.accel.device)
                self.log(f"autoencoder latent std {1 / scale:.4f}: scaling_factor set to {scale:.5f}")
            if "lora" in self.stage.trainable:  # a style file in diffusers' Sana LoRA format, not a model
                self._with_ema(lambda: save_lora(self.unwrapped().transformer, out))
            elif "controlnet" in self.stage.trainable:  # diffusers' SanaControlNetModel folder, not a model
                self._with_ema(lambda: save_controlnet(self.unwrapped().controlnet, out))
            else:
                self._with_ema(lambda: self.export_pipeline().save_pretrained(out))
            done = self.dir / f".{DONE_FILE}.tmp"
            done.write_text(json.dumps({**at._asdict(), "stage": self.stage.name}))
            done.replace(self.dir / DONE_FILE)
            self.log(f"exported {out}")
        self.accel.wait_for_everyone()
        self.accel.end_training()
        return out


def stage_output(cfg: StageConfig) -> Path:
    """What a stage exports: its model folder; the `lora` stage the folder of its LoRA file, the `controlnet` stage
    its ControlNet folder."""
    for kind in ("lora", "controlnet"):
        if kind in cfg.stage.trainable:
            return cfg.stage_dir / kind
    return cfg.stage_dir / "model"


def save_controlnet(controlnet: torch.nn.Module, out: Path) -> Path:
    """The trained ControlNet as diffusers writes it (`SanaControlNetModel.from_pretrained` reads it), atomically."""
    from sanaedit.core.atomic import atomic_folder

    with atomic_folder(out) as tmp:
        controlnet.save_pretrained(tmp)
    return out


def train(config: str | Path | Mapping[str, Any], overrides: Sequence[str] | None = None, resume: bool = False) -> Path:
    """Run every stage of a config in order; returns the final model folder (the LoRA folder after a `lora`
    stage, which must come last). Finished stages are skipped on `resume`; the stage in progress continues from
    its latest checkpoint."""
    stages = load_config(config, overrides)
    for kind, writes in (("lora", "a LoRA file"), ("controlnet", "a ControlNet folder")):
        if any(kind in cfg.stage.trainable for cfg in stages[:-1]):
            raise ValueError(f"a {kind} stage writes {writes}, not a model folder: it must be the last stage")
    previous: Path | None = None
    for cfg in stages:
        if previous is not None:
            cfg = cfg.starting_from(previous)
        if resume and (cfg.stage_dir / DONE_FILE).is_file() and stage_output(cfg).is_dir():
            previous = stage_output(cfg)
            continue
        previous = Trainer(cfg, resume=resume).run()
    final = Path(stages[-1].output_dir) / stage_output(stages[-1]).name
    if len(stages) > 1 and previous is not None and previous.resolve() != final.resolve():
        copy_folder(previous, final)  # atomic: an older final model stays whole until the new one is complete
    return final
