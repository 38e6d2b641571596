"""The training loop on `accelerate`: one CPU, one GPU, or many processes (DDP/FSDP via `accelerate launch` or
`torchrun`), mixed precision, gradient accumulation, gradient checkpointing, EMA, periodic samples, tqdm + JSONL
(+ TensorBoard) logs, atomic checkpoints, bit-exact `--resume`, export to the pipeline's model folder.

Determinism: every random draw is a function of (seed, micro-step, rank) -- data order comes from a per-epoch
permutation of a seeded stream, noise and t from a generator seeded per micro-step. A checkpoint therefore only
needs the weights, optimizer, scheduler, EMA and the step counter to continue on exactly the same trajectory.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from ..flow import FlowModel, sample_t
from ..pipeline import PipelineConfig, SanaEditPipeline
from .data import LatentDataset, ManifestDataset, collate, pre_encode
from .ema import EMA
from .optim import build_optimizer, warmup_constant
from .stages import Stage, apply_stage, get_stage

DONE_FILE = "done.json"


# ----------------------------------------------------------------------------------------------------- model
class TrainParts(nn.Module):
    """Everything one training step touches, as one module (what DDP/FSDP wrap); `forward` returns the loss."""

    def __init__(self, pipe: SanaEditPipeline, stage: Stage, cfg: dict[str, Any]):
        super().__init__()
        self.transformer, self.vae, self.text_encoder = pipe.transformer, pipe.vae, pipe.text_encoder
        self.stage, self.cfg = stage, cfg["train"]
        self.flow = FlowModel.from_torch(self.transformer, self.vae)  # what sampling calls too: one convention
        # The frozen LLM with frozen queries maps a prompt to fixed features: compute each prompt once.
        self.cache_text = "meta_queries" not in stage.trainable
        self._text_cache: dict[str, torch.Tensor] = {}

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.flow.encode(pixels)

    def llm_features(self, prompts: list[str]) -> torch.Tensor:
        if not self.cache_text:
            return self.text_encoder.llm_features(prompts)
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            with torch.no_grad():
                feats = self.text_encoder.llm_features(missing)
            self._text_cache.update({p: f.detach() for p, f in zip(missing, feats)})
        return torch.stack([self._text_cache[p] for p in prompts])

    def forward(self, batch: dict[str, Any], noise: torch.Tensor | None = None, t: torch.Tensor | None = None):
        if self.stage.data == "images":
            return self.reconstruction_loss(batch["target"])
        if "target_latents" in batch:
            x0, ref = batch["target_latents"], batch.get("ref_latents")
        else:
            with torch.no_grad():  # the autoencoder is frozen outside its own stage
                x0 = self.encode_images(batch["target"])
                ref = self.encode_images(batch["source"]) if self.stage.data == "edit" else None
        feats = batch["llm_features"] if "llm_features" in batch else self.llm_features(batch["prompt"])
        hidden, mask = self.text_encoder.condition(feats)
        if self.stage.data != "edit":
            ref = None  # text-to-image through the editing model: zeros, as the published runtime passes
        return self.flow.loss(x0, noise, t, hidden, mask, ref)

    def reconstruction_loss(self, pixels: torch.Tensor) -> torch.Tensor:
        recon = self.vae(pixels).sample.float()
        w = self.cfg["reconstruction"]
        return w.get("l1", 1.0) * F.l1_loss(recon, pixels) + w.get("mse", 0.0) * F.mse_loss(recon, pixels)


def build_model(cfg: dict[str, Any]) -> SanaEditPipeline:
    """The starting pipeline: a model folder (`model.from`) or fresh random weights of a variant."""
    m = cfg["model"]
    if m.get("from"):
        pipe = SanaEditPipeline.from_pretrained(m["from"])
        pipe.text_encoder  # noqa: B018 - load the LLM path now (training needs it)
        return pipe
    if not m.get("variant"):
        raise ValueError("config needs model.from (a model folder) or model.variant (a size to start from scratch)")
    from ..random_model import build_random_pipeline
    from ..variants import Variant

    variant = m["variant"]
    if isinstance(variant, dict):
        variant = Variant(name="custom", **variant)
    return build_random_pipeline(variant, seed=int(m.get("seed", 0)))


# ------------------------------------------------------------------------------------------------------ data
class StreamBatches(Sampler[list[int]]):
    """Batches of a seeded, endless, epoch-permuted stream of indices, starting at any micro-step.

    Micro-step m on rank r reads stream positions [(m * world + r) * B, ... + B): all ranks together read
    consecutive global batches, and a resumed run reads exactly what the uninterrupted one would have.
    """

    def __init__(self, n: int, batch: int, seed: int, start: int, stop: int, rank: int = 0, world: int = 1):
        self.n, self.batch, self.seed, self.start, self.stop, self.rank, self.world = (
            n,
            batch,
            seed,
            start,
            stop,
            rank,
            world,
        )
        self._perm: tuple[int, torch.Tensor] | None = None

    def _index(self, k: int) -> int:
        epoch, pos = divmod(k, self.n)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch)))
        return int(self._perm[1][pos])

    def __iter__(self) -> Iterator[list[int]]:
        for m in range(self.start, self.stop):
            first = (m * self.world + self.rank) * self.batch
            yield [self._index(k) for k in range(first, first + self.batch)]

    def __len__(self) -> int:
        return self.stop - self.start


def build_dataset(cfg: dict[str, Any], stage: Stage, resolution: int) -> Dataset:
    d = cfg["data"]
    if d.get("build") == "comic":
        from .comic_data import build_comic_dataset

        root = Path(d.get("root") or Path(cfg["output_dir"]) / "data")
        build_comic_dataset(root, resolution=resolution, **(d.get("build_args") or {}))
        d.setdefault("manifest", None)
        d["manifest"] = d["manifest"] or str(root / "train")
        d["eval_manifest"] = d["eval_manifest"] or str(root / "eval")
    elif d.get("build"):
        raise ValueError(f"unknown data.build {d['build']!r} (known: comic)")
    common = dict(kind=stage.data, resolution=resolution, skip_bad=d["skip_bad"], default_prompt=d["default_prompt"])
    if d.get("hf"):
        from .data import HFDataset

        return HFDataset(d["hf"], split=d["split"], columns=d["columns"], **common)
    if not d.get("manifest"):
        raise ValueError("config needs data.manifest (a JSONL/CSV manifest or its folder) or data.hf")
    return ManifestDataset(d["manifest"], **common)


def _tensor_digest(modules: list[nn.Module | torch.Tensor]) -> str:
    h = hashlib.sha256()
    for m in modules:
        tensors = [m] if isinstance(m, torch.Tensor) else list(m.state_dict().values())
        for t in tensors:
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------- checkpoints
def latest_checkpoint(stage_dir: Path) -> Path | None:
    ckpts = sorted((stage_dir / "checkpoints").glob("step-*"))
    ckpts = [c for c in ckpts if (c / "trainer.json").is_file()]
    return ckpts[-1] if ckpts else None


class Trainer:
    def __init__(self, cfg: dict[str, Any], resume: bool = False):
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState
        from accelerate.utils import set_seed

        # accelerate keeps one global state per process; each stage (or test) may choose its own precision.
        AcceleratorState._reset_state()
        self.cfg, self.t = cfg, cfg["train"]
        self.stage = get_stage(self.t["stage"], self.t["trainable"])
        self.dir = Path(cfg["stage_dir"])
        self.accel = Accelerator(
            mixed_precision=self.t["mixed_precision"],
            gradient_accumulation_steps=int(self.t["grad_accum"]),
            cpu=cfg["device"] == "cpu",
        )
        set_seed(int(cfg["seed"]))  # model init only; training draws use their own per-step generators
        self.main = self.accel.is_main_process
        self.resume = resume

    def log(self, msg: str) -> None:
        if self.main:
            print(msg, file=sys.stderr, flush=True)

    # ------------------------------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg, t = self.cfg, self.t
        self.pipe = build_model(cfg)
        self.resolution = int(cfg["data"]["resolution"] or self.pipe.config.resolution)
        if self.resolution != self.pipe.config.resolution:
            self.pipe.config.resolution = self.resolution
        parts = TrainParts(self.pipe, self.stage, cfg)
        trainable = apply_stage(parts, self.stage)
        if t["gradient_checkpointing"] and "transformer" in self.stage.trainable:
            parts.transformer.enable_gradient_checkpointing()
        self.parts = parts
        self.log(
            f"stage {self.stage.name}: training {', '.join(self.stage.trainable)} "
            f"({sum(p.numel() for p in parts.parameters() if p.requires_grad) / 1e6:.2f}M parameters, "
            f"{len(trainable)} tensors); frozen: the rest"
        )
        self.dataset = self._dataset()
        self.optimizer = build_optimizer(
            parts.parameters(), t["optimizer"], lr=float(t["lr"]), **(t["optimizer_args"] or {})
        )
        self.scheduler = warmup_constant(self.optimizer, int(t["warmup"]))
        self.ema = EMA([p for p in parts.parameters() if p.requires_grad], float(t["ema"])) if t["ema"] else None
        self.model, self.optimizer = self.accel.prepare(parts, self.optimizer)
        # Our own objects ride along in accelerate's checkpoints (the scheduler is stepped by us, once per
        # optimizer step, not by accelerate -- which would step it once per process).
        self.accel.register_for_checkpointing(self.scheduler)
        if self.ema is not None:
            self.accel.register_for_checkpointing(self.ema)

    def _dataset(self) -> Dataset:
        d = self.cfg["data"]
        with self.accel.main_process_first():  # building / pre-encoding happens once, on the main process
            dataset = build_dataset(self.cfg, self.stage, self.resolution)
            if not d["pre_encode"]:
                return dataset
            if "vae" in self.stage.trainable or self.stage.data == "images":
                raise ValueError("data.pre_encode needs a frozen autoencoder (not the autoencoder stage)")
            parts = self.parts
            frozen_text = parts.cache_text
            fingerprint = "-".join(
                [
                    dataset.fingerprint(),
                    _tensor_digest([parts.vae]),
                    _tensor_digest([parts.text_encoder.llm, parts.text_encoder.meta_queries]) if frozen_text else "",
                ]
            )
            cache = pre_encode(
                dataset,
                self.dir / "latents",
                parts.encode_images,
                fingerprint,
                encode_text=parts.text_encoder.llm_features if frozen_text else None,
                progress=self.main,
            )
            latents = LatentDataset(cache)
            self.log(f"pre-encoded {len(latents)} samples into {cache} ({latents.skipped} skipped)")
            return latents

    # ---------------------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self, step: int, micro: int, skipped: int) -> None:
        final = self.dir / "checkpoints" / f"step-{step:08d}"
        tmp = final.with_name(f".{final.name}.tmp")
        if self.main and tmp.exists():
            shutil.rmtree(tmp)
        self.accel.wait_for_everyone()
        self.accel.save_state(str(tmp))
        self.accel.wait_for_everyone()
        if self.main:
            state = {"step": step, "micro_step": micro, "skipped": skipped, "stage": self.stage.name}
            (tmp / "trainer.json").write_text(json.dumps(state))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)  # a checkpoint is complete or absent, never half-written
            keep = int(self.cfg["checkpoint"]["keep"])
            old = sorted((self.dir / "checkpoints").glob("step-*"))[:-keep] if keep > 0 else []
            for c in old:
                shutil.rmtree(c, ignore_errors=True)
        self.accel.wait_for_everyone()

    def load_checkpoint(self) -> tuple[int, int, int]:
        ckpt = latest_checkpoint(self.dir)
        if ckpt is None:
            self.log(f"--resume: no checkpoint in {self.dir / 'checkpoints'}, starting from step 0")
            return 0, 0, 0
        self.accel.load_state(str(ckpt))
        state = json.loads((ckpt / "trainer.json").read_text())
        self.log(f"resumed from {ckpt} (step {state['step']})")
        return state["step"], state["micro_step"], state["skipped"]

    # ------------------------------------------------------------------------------------------- samples
    def unwrapped(self) -> TrainParts:
        return self.accel.unwrap_model(self.model)

    def export_pipeline(self) -> SanaEditPipeline:
        p = self.unwrapped()
        fields = {**vars(self.pipe.config), "resolution": self.resolution, **self.cfg["export"]}
        return SanaEditPipeline.from_modules(p.transformer, p.vae, p.text_encoder, PipelineConfig.from_dict(fields))

    @torch.no_grad()
    def write_samples(self, step: int) -> None:
        from PIL import Image

        from ..image_io import postprocess

        s = self.cfg["sample"]
        path = self.dir / "samples" / f"step-{step:08d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        p = self.unwrapped().eval()
        try:
            if self.stage.data == "images":
                pixels = torch.stack([self._eval_pixels(i) for i in range(s["count"])])
                recon = p.vae(pixels.to(self.accel.device)).sample
                tiles = [postprocess(x[None], None) for pair in zip(pixels, recon) for x in pair]
            else:
                pipe = self.export_pipeline()
                tiles = []
                for i in range(s["count"]):
                    gen = torch.Generator().manual_seed(i)
                    if self.stage.data == "edit":
                        src = postprocess(self._eval_pixels(i)[None], None)
                        tiles += [src, pipe(src, num_inference_steps=s["steps"], generator=gen)]
                    else:
                        tiles.append(pipe(None, prompt=self._eval_prompt(i), num_inference_steps=s["steps"]))
            w = tiles[0].width
            grid = Image.new("RGB", (w * len(tiles), w))
            for i, tile in enumerate(tiles):
                grid.paste(tile.resize((w, w)), (i * w, 0))
            grid.save(path)
        finally:
            p.train()

    def _eval_source(self) -> Dataset:
        d = self.cfg["data"]
        if not hasattr(self, "_eval_ds"):
            manifest = d.get("eval_manifest") or d.get("manifest")
            kind = "images" if self.stage.data == "images" else self.stage.data
            self._eval_ds = ManifestDataset(manifest, kind=kind, resolution=self.resolution, skip_bad=True)
        return self._eval_ds

    def _eval_pixels(self, i: int) -> torch.Tensor:
        ds = self._eval_source()
        item = ds[i % len(ds)]
        if item is None:
            return torch.zeros(3, self.resolution, self.resolution)
        return item.get("source", item["target"])

    def _eval_prompt(self, i: int) -> str:
        ds = self._eval_source()
        return ds.records[i % len(ds)].get("prompt", "")

    # ------------------------------------------------------------------------------------------------ run
    def run(self) -> Path:
        cfg, t = self.cfg, self.t
        self.dir.mkdir(parents=True, exist_ok=True)
        self.setup()
        steps, accum = int(t["steps"]), int(t["grad_accum"])
        step, micro, skipped = self.load_checkpoint() if self.resume else (0, 0, 0)
        rank, world = self.accel.process_index, self.accel.num_processes
        sampler = StreamBatches(len(self.dataset), int(t["batch_size"]), cfg["seed"], micro, steps * accum, rank, world)
        loader = DataLoader(
            self.dataset, batch_sampler=sampler, collate_fn=collate, num_workers=int(cfg["data"]["num_workers"])
        )
        log_path = self.dir / "log.jsonl"
        writer = self._tensorboard()
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=step, desc=self.stage.name, disable=not (self.main and cfg["log"]["progress"]))
        losses: list[float] = []
        started, seen = time.perf_counter(), 0
        trainable = [p for p in self.model.parameters() if p.requires_grad]
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
            if self.main and (step % cfg["log"]["every"] == 0 or step == steps):
                rate = seen * world / (time.perf_counter() - started)
                record = {
                    "step": step,
                    "loss": float(mean_loss),
                    "lr": self.scheduler.get_last_lr()[0],
                    "samples_per_s": round(rate, 3),
                    "skipped": skipped,
                }
                with log_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                if writer is not None:
                    writer.add_scalar("loss", record["loss"], step)
                    writer.add_scalar("lr", record["lr"], step)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
            if cfg["sample"]["every"] and step % cfg["sample"]["every"] == 0:
                if self.main:
                    self._with_ema(lambda s=step: self.write_samples(s))
                self.accel.wait_for_everyone()
            if cfg["checkpoint"]["every"] and step % cfg["checkpoint"]["every"] == 0 and step < steps:
                self.save_checkpoint(step, micro, skipped)
        bar.close()
        del trainable
        if skipped:
            self.log(f"skipped {skipped} bad sample(s) (data.skip_bad)")
        return self.finish(step, micro, skipped)

    def _micro_step(self, batch: dict[str, Any], micro: int, rank: int) -> float:
        t = self.t
        device = self.accel.device
        batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        n = batch["size"]
        noise = t_draw = None
        if self.stage.data != "images":
            # One generator per sample, seeded by its position in the global stream: the draws of a sample do not
            # depend on how the global batch is split over processes (DDP 2 x 2 == 1 x 4) or where a run resumed.
            first = (micro * self.accel.num_processes + rank) * int(t["batch_size"])
            shape = self._latent_shape(batch)
            draws = [self._draws(first + j, shape) for j in range(n)]
            t_draw = torch.cat([d[0] for d in draws])
            noise = torch.stack([d[1] for d in draws])
            if t["text_dropout"]:
                drop = [bool(d[2]) for d in draws]
                negative = self.pipe.config.negative_prompt
                batch["prompt"] = [negative if d else p for d, p in zip(drop, batch["prompt"])]
                if any(drop):
                    batch.pop("llm_features", None)
        with self.accel.accumulate(self.model):
            with self.accel.autocast():
                loss = self.model(batch, noise, t_draw)
            self.accel.backward(loss)
            if self.accel.sync_gradients and t["grad_clip"]:
                self.accel.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], t["grad_clip"])
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"loss is {value} at micro-step {micro}; lower train.lr or check the data")
        return value

    def _draws(self, position: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(t, noise, text-dropout draw) of the sample at global stream `position`."""
        t = self.t
        gen = torch.Generator().manual_seed(int(self.cfg["seed"]) * 1_000_003 + position)
        t_draw = sample_t(1, gen, t["t_sampling"], float(t["shift"]))
        noise = torch.randn(shape, generator=gen)
        return t_draw, noise, torch.rand(1, generator=gen) < float(t["text_dropout"])

    def _latent_shape(self, batch: dict[str, Any]) -> tuple[int, ...]:
        if "target_latents" in batch:
            return tuple(batch["target_latents"].shape[1:])
        size = self.resolution // self.pipe.vae_scale
        return (self.pipe.latent_channels, size, size)

    def _with_ema(self, fn) -> None:
        if self.ema is None:
            fn()
        else:
            with self.ema.swapped_in():
                fn()

    def _tensorboard(self):
        if not (self.main and self.cfg["log"]["tensorboard"]):
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.dir / "tensorboard"))

    def finish(self, step: int, micro: int, skipped: int) -> Path:
        out = self.dir / "model"
        self.accel.wait_for_everyone()
        if self.main:
            if self.stage.data == "images":
                self._set_latent_scale()
            self._with_ema(lambda: self.export_pipeline().save_pretrained(out))
            done = {"step": step, "micro_step": micro, "skipped": skipped, "stage": self.stage.name}
            (self.dir / DONE_FILE).write_text(json.dumps(done))
            self.log(f"exported the model folder to {out}")
        self.accel.wait_for_everyone()
        self.accel.end_training()
        return out

    @torch.no_grad()
    def _set_latent_scale(self) -> None:
        """After training an autoencoder: scaling factor = 1 / std of its latents on the training data, so the DiT
        sees unit-variance latents (how SANA/SD chose 0.41407 / 0.18215)."""
        vae = self.unwrapped().vae.eval()
        n = min(len(self.dataset), 64)
        items = [it for it in (self.dataset[i] for i in range(n)) if it is not None]
        pixels = torch.stack([it["target"] for it in items]).to(self.accel.device)
        latents = torch.cat([vae.encode(pixels[i : i + 8]).latent for i in range(0, len(pixels), 8)])
        scale = float(1.0 / latents.float().std())
        vae.register_to_config(scaling_factor=scale)
        self.log(f"autoencoder latent std {1 / scale:.4f}: scaling_factor set to {scale:.5f}")


def train(config: str | Path | dict[str, Any], overrides: list[str] | None = None, resume: bool = False) -> Path:
    """Run every stage of a config in order; returns the final model folder. Finished stages are skipped on
    `resume`; the stage in progress continues from its latest checkpoint."""
    from .config import load_config

    stages = load_config(config, overrides)
    previous: Path | None = None
    for cfg in stages:
        stage_dir = Path(cfg["stage_dir"])
        if previous is not None:
            cfg["model"] = {**cfg["model"], "from": str(previous), "variant": None}
        if resume and (stage_dir / DONE_FILE).is_file() and (stage_dir / "model").is_dir():
            previous = stage_dir / "model"
            continue
        previous = Trainer(cfg, resume=resume).run()
    final = Path(stages[-1]["output_dir"]) / "model"
    if len(stages) > 1 and previous is not None and previous.resolve() != final.resolve():
        if final.exists():
            shutil.rmtree(final)
        shutil.copytree(previous, final)
    return final
