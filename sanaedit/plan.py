"""The run plan: what one run of a model uses, decided once, from the folder's index and the user's options.

    info = open_source(folder).info          # what the folder holds (runtime/sources.py), nothing loaded
    plan = make_plan(info, vae="tiny")       # every choice made here, checked, typed
    pipe = SanaEditPipeline.from_plan(source, plan)

A reader (formats/) builds the networks the plan names and nothing else; the pipeline takes the plan's config as
its defaults; `sanaedit info` prints `plan.describe()`. Nothing here mutates the folder's config: the plan holds a new
one with the choices in it. Torch-free: exported folders plan (and run) without it.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from sanaedit.core.choices import DEFAULT_BACKEND, Backend, Format, Upsample, Vae, parse
from sanaedit.core.config import PipelineConfig
from sanaedit.core.cpu import has_fast_bf16, has_fast_fp16
from sanaedit.errors import ModelFolderError

logger = logging.getLogger(__name__)
DTYPES = ["auto", "float32", "bfloat16", "int8"]  # `--dtype`: PyTorch's compute ("int8": the DiT's matmuls too)
TORCH_DTYPES = ["float32", "bfloat16", "float16"]  # what PyTorch networks compute in (Python API: torch.dtype or name)
# A CPU without a dtype's instructions emulates it. An edit of the bundled model (256 px, 10 steps, 1 thread, torch
# 2.13), times float32's, measured on an AVX512-BF16 EPYC with oneDNN held below them (ONEDNN_MAX_CPU_ISA; for AVX2
# ATEN_CPU_CAPABILITY=avx2 too): bfloat16 1.8x at AVX512_CORE_VNNI, 13x at AVX2; float16 (no AVX512-FP16) 14x.
EMULATED = {  # dtype: (the instructions that make it fast, how much slower without them)
    "bfloat16": ("AVX512-BF16/AMX", "~2x (AVX-512) to ~13x (AVX2 only)"),
    "float16": ("AVX512-FP16/AMX-FP16", "~14x"),
}
WARNED: set[str] = set()  # the emulated dtypes already said in this process
RANDOM_STAND_IN = "the tiny random stand-in"  # how messages name a source that is no folder


@dataclass(frozen=True)
class FolderInfo:
    """What deciding a run needs to know of a model source, from its index and file names (no weights read)."""

    folder: Path | None  # None: weights built in memory (the tiny random stand-in)
    format: Format
    config: PipelineConfig  # the folder's own defaults (model_index.json "pipeline")
    has_tiny_vae: bool = False
    has_refiner: bool = False
    stored_int8: bool = False  # a PyTorch folder whose DiT is stored in int8 (formats/int8_folder.py)
    release_layout: bool = False  # MNN graphs in the published release's layout (formats/release.py)
    # its own ControlNet: a PyTorch folder's `controlnet/`, or an export's graph of the DiT with it (None: none)
    controlnet: Path | None = None

    @property
    def name(self) -> str:
        return str(self.folder) if self.folder is not None else RANDOM_STAND_IN


@dataclass(frozen=True)
class RunPlan:
    """Every choice of a run. `config` is the folder's with `vae` and `upsample` as planned: the pipeline's defaults."""

    backend: Backend
    vae: Vae
    upsample: Upsample
    config: PipelineConfig
    device: str = "cpu"
    dtype: str = "float32"  # the PyTorch compute dtype's name; graphs compute in float32
    int8: bool = False  # the DiT's matmuls in int8 (PyTorch, CPU)
    loras: tuple[tuple[Path, float], ...] = ()  # merged into the DiT's weights (PyTorch)
    staged: bool = False  # each network in memory only for its stage (PyTorch folders)
    threads: int | None = None  # None: the machine's physical cores
    tuned: bool = True  # PyTorch: threads = cores and the exact text K/V cache (load_pipeline; from_pretrained: off)
    controlnet: Path | None = None  # the ControlNet a control image steers through: the folder's own, or another

    def describe(self) -> list[str]:
        """The plan in a few lines (`sanaedit info`)."""
        cfg = self.config
        compute = (
            "float32 graphs" if self.backend != Backend.TORCH else f"{self.dtype}{' + int8 DiT' if self.int8 else ''}"
        )
        lines = [
            f"runs on: {self.backend} ({compute}, {self.device}, threads: {self.threads or 'all cores'})",
            f"autoencoder: {self.vae}; back to the photo's size: {self.upsample}",
            f"sampling: {cfg.sampler}, schedule {cfg.schedule}, {cfg.num_inference_steps} steps, guidance "
            f"{cfg.guidance_scale:g}, shift {cfg.shift:g}, at {cfg.resolution} px ({cfg.padding} padding)",
        ]
        if self.loras:
            lines.append("LoRA: " + ", ".join(f"{path} x{scale:g}" for path, scale in self.loras))
        if self.staged:
            lines.append("staged residency: each network loaded for its stage only")
        if self.controlnet is not None:
            lines.append(f"ControlNet: {self.controlnet} (used when an edit is given a control image)")
        return lines


def torch_dtype_name(dtype: object) -> str:
    """'auto' / 'float32' / 'bfloat16' / 'int8', or a torch.dtype (the Python API), as a name."""
    return str(dtype).split(".")[-1]


def compute_dtype_name(dtype: object) -> str:
    """The name of a dtype the Python API takes for PyTorch networks (one of DTYPES or TORCH_DTYPES by name, or a
    torch.dtype of TORCH_DTYPES), else a ValueError that lists them."""
    name = torch_dtype_name(dtype)
    if isinstance(dtype, str) and name not in DTYPES + TORCH_DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {list(dict.fromkeys(DTYPES + TORCH_DTYPES))}")
    if not isinstance(dtype, str) and name not in TORCH_DTYPES:
        raise ValueError(f"PyTorch networks compute in {', '.join('torch.' + n for n in TORCH_DTYPES)}, not {dtype}")
    return name


def warn_if_emulated(device: str, dtype: str) -> None:
    """An explicit dtype is honoured; one this CPU only emulates (many times slower than float32) is said once per
    process, in one line with the way to the fast path. 'auto' never picks one (torch_compute)."""
    fast = {"bfloat16": has_fast_bf16, "float16": has_fast_fp16}.get(dtype)
    if device.split(":")[0] != "cpu" or fast is None or dtype in WARNED or fast():
        return
    WARNED.add(dtype)
    instructions, slower = EMULATED[dtype]
    logger.warning(
        f"{dtype} is emulated on this CPU (no {instructions}): an edit of the bundled model measured {slower} "
        "slower than in float32 on CPUs without them; dtype='auto' (CLI: --dtype auto) or float32 runs the fast path"
    )


def make_plan(
    info: FolderInfo,
    backend: Backend | str | None = None,
    vae: Vae | str | None = None,
    upsample: Upsample | str | None = None,
    device: str = "cpu",
    dtype: object = "auto",
    loras: list[tuple[str | Path, float]] | tuple = (),
    staged: bool = False,
    threads: int | None = None,
    tuned: bool = True,
    int8: bool = False,
    controlnet: str | Path | None = None,
) -> RunPlan:
    """The plan for `info` with the user's options (None: the folder's own choice). `dtype` "int8" is the CLI's
    `--dtype int8`: the DiT's matmuls in int8, the rest as "auto"; `int8=True` adds them to any float dtype.
    `controlnet`: a ControlNet folder (diffusers' SanaControlNetModel) for a PyTorch source; None: the folder's own,
    if it has one. Every option that does not fit the source is refused here, in one line that says what to do,
    before anything loads."""
    device, loras = str(device), tuple((Path(path), float(scale)) for path, scale in loras or ())
    backend = parse(Backend, backend, "backend") if backend is not None else DEFAULT_BACKEND[info.format]
    if info.format == Format.TORCH:
        dtype, int8 = torch_compute(info, backend, device, dtype, int8, bool(loras), staged)
    else:
        check_graph_run(info, backend, device, torch_dtype_name(dtype), bool(loras), staged)
        dtype, int8 = "float32", False
    chosen_vae = choose_vae(info, vae)
    chosen_upsample = choose_upsample(info, upsample, bool(loras))
    chosen_controlnet = choose_controlnet(info, controlnet)
    config = dataclasses.replace(info.config, vae=chosen_vae, upsample=chosen_upsample)
    return RunPlan(
        backend=backend,
        vae=chosen_vae,
        upsample=chosen_upsample,
        config=config,
        device=device,
        dtype=dtype,
        int8=int8,
        loras=loras,
        staged=staged,
        threads=threads,
        tuned=tuned,
        controlnet=chosen_controlnet,
    )


def choose_controlnet(info: FolderInfo, requested: str | Path | None) -> Path | None:
    """`requested` (a ControlNet folder; PyTorch sources only), else the folder's own (None if it has none)."""
    if requested is None:
        return info.controlnet
    folder = Path(requested)
    if info.format != Format.TORCH:
        raise ValueError(
            f"{info.name} is exported: its ControlNet is a graph made at export. Put the ControlNet in the model "
            f"folder (MODEL/controlnet/) and export that, or run the PyTorch model folder with --controlnet {folder}"
        )
    if not (folder / "config.json").is_file():
        raise ModelFolderError(
            f"{folder}: not a ControlNet folder (no config.json); give a folder saved by SanaControlNetModel, or one "
            "`sanaedit train controlnet` wrote (OUT/controlnet)"
        )
    return folder


def torch_compute(
    info: FolderInfo, backend: Backend, device: str, dtype: object, int8: bool, lora: bool, staged: bool
) -> tuple[str, bool]:
    """(compute dtype name, int8 DiT matmuls?) for a PyTorch source, its options checked."""
    name = info.name
    if backend != Backend.TORCH:
        raise ValueError(
            f"{name} is a PyTorch model folder; backend {backend.value!r} needs an exported folder "
            f"(`sanaedit export {name} --format {'mnn' if backend == Backend.MNN else 'onnx'} --out DIR`)"
        )
    dtype = compute_dtype_name(dtype)
    cpu = device.split(":")[0] == "cpu"
    int8 = int8 or dtype == "int8"
    if int8 and not cpu:
        raise ValueError("--dtype int8 is a CPU path (oneDNN int8 GEMM); on a GPU use bfloat16")
    if dtype in ("auto", "int8"):  # emulated bf16 is slower than fp32: bf16 only where the CPU has it
        dtype = ("bfloat16" if has_fast_bf16() else "float32") if cpu else "float32"
    if lora and info.stored_int8:
        raise ValueError(
            f"{name} stores its DiT in int8 (sanaedit export --format int8): a LoRA merges into float weights; "
            "use the float folder it was made from"
        )
    if staged and info.folder is None:
        raise ValueError("staged residency (--low-memory) needs a model folder to load from: pass --model DIR")
    warn_if_emulated(device, dtype)
    return dtype, int8


def check_graph_run(info: FolderInfo, backend: Backend, device: str, dtype: str, lora: bool, staged: bool) -> None:
    """Exported graphs run on their format's runtime, on the CPU in float32, as exported (LoRAs merged at export)."""
    name = info.name
    if device != "cpu" or dtype not in ("auto", "float32"):
        raise ValueError("exported graphs run on the CPU in float32: drop --device/--dtype")
    if info.release_layout and backend != Backend.MNN:
        raise ValueError(
            f"{name} holds MNN graphs (the published release's layout); backend {backend.value!r} cannot run them "
            "(use 'mnn')"
        )
    if DEFAULT_BACKEND[info.format] != backend:
        raise ValueError(
            f"{name} holds {info.format} graphs; backend {backend.value!r} cannot run them (use "
            f"{DEFAULT_BACKEND[info.format].value!r}, or export with --format "
            f"{'onnx' if backend == Backend.ONNXRUNTIME else backend.value})"
        )
    if lora:
        raise ValueError(f"{name} is exported: merge a LoRA at export (`sanaedit export ... --lora FILE`)")
    if staged:
        raise ValueError(
            f"{name} is exported: its runtime maps the graphs' weights from disk itself; staged residency "
            "(--low-memory) is for PyTorch model folders"
        )


def choose_vae(info: FolderInfo, requested: Vae | str | None) -> Vae:
    """`requested`, else the folder's default. The light autoencoder for a folder without one is an error that says
    how to add one."""
    choice = requested or info.config.vae or Vae.FULL
    if choice not in set(Vae):
        where = "asked for" if requested else f"{info.name}'s default (model_index.json pipeline.vae)"
        raise ModelFolderError(f"unknown autoencoder {choice!r} {where}; use one of {', '.join(v.value for v in Vae)}")
    if choice == Vae.TINY and not info.has_tiny_vae:
        raise ModelFolderError(
            f"{info.name}: no tiny autoencoder in this folder; add one with `sanaedit assemble ... --tiny-vae` or "
            "the `tiny-vae` training stage, or use --vae full"
        )
    return Vae(choice)


def choose_upsample(info: FolderInfo, requested: Upsample | str | None, lora: bool) -> Upsample:
    """`requested`, else the folder's default (with a LoRA style: guided instead of the refiner, `styled`)."""
    if requested is not None:
        choice = Upsample(parse(Upsample, requested, "upsampling method"))
        if choice == Upsample.REFINE and not info.has_refiner:
            raise ModelFolderError(
                f"{info.name}: upsampling 'refine' needs the model folder's learned refiner (refiner.safetensors, made "
                "by the `refiner` training stage); this model has none: use --upsample guided"
            )
        return choice
    choice = info.config.upsample
    if choice not in set(Upsample):
        raise ModelFolderError(
            f"{info.name}: model_index.json asks for upsample {choice!r}; use one of "
            f"{', '.join(u.value for u in Upsample)}"
        )
    if choice == Upsample.REFINE and not info.has_refiner:
        raise ModelFolderError(
            f"{info.name}: model_index.json asks for upsample 'refine' but the folder has no refiner.safetensors"
        )
    return styled(info.config).upsample if lora else Upsample(choice)


def styled(config: PipelineConfig) -> PipelineConfig:
    """`config` for a LoRA style: brought back by guided upsampling, not the folder's learned refiner, which was
    trained on the base model's own outputs (models/refiner.py) and would pull a style back towards the base look
    (setting `upsample` to refine afterwards still asks for it). A new config: the given one is left as it is."""
    if config.upsample != Upsample.REFINE:
        return config
    logger.info("a LoRA style is active: guided upsampling instead of the base model's refiner")
    return dataclasses.replace(config, upsample=Upsample.GUIDED)
