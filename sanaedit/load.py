"""What the CLI, the server and `sanaedit.load_pipeline` run: any model source with one set of defaults, the bundled
comic model when none is named (else a tiny random one, said loudly)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sanaedit.core.choices import Backend, Vae
from sanaedit.core.extras import require
from sanaedit.pipeline import SanaEditPipeline
from sanaedit.plan import make_plan, torch_dtype_name

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)
ASSETS = Path(__file__).parent / "assets"
BUNDLED_MODEL = ASSETS / "comic-model"  # the trained PyTorch folder: --backend torch, LoRAs, export, training
BUNDLED_EXPORT = ASSETS / "comic-model-onnx"  # its ONNX export (int8 DiT): what runs by default, torch-free
SAMPLE_PHOTO = ASSETS / "sample.jpg"


def bundled_model(
    backend: Backend | str | None = None,
    device: str = "cpu",
    dtype: object = "auto",
    loras: object = (),
    staged: bool = False,
    control: bool = False,
) -> Path | None:
    """The bundled model's folder for a run: its ONNX export (no PyTorch needed, and several times faster end to end
    than the PyTorch folder: bench/startup), unless the run asks for what only PyTorch
    has: --backend torch, a LoRA, a GPU, a bf16/int8 compute dtype, staged residency, or a control image when the
    export was made without the folder's ControlNet. None when neither is installed (a source checkout without
    assets)."""
    wants_torch = (
        backend == Backend.TORCH
        or bool(loras)
        or staged
        or str(device) != "cpu"
        or torch_dtype_name(dtype) not in ("auto", "float32")
        or (control and backend is None and not export_has_controlnet(BUNDLED_EXPORT))
    )
    for folder in (BUNDLED_MODEL,) if wants_torch else (BUNDLED_EXPORT, BUNDLED_MODEL):
        if (folder / "model_index.json").is_file():
            return folder
    return None


def export_has_controlnet(folder: Path) -> bool:
    """Whether an exported folder holds the graph of its DiT with a ControlNet (its index says; not checked)."""
    import json

    from sanaedit.formats.index import CONTROLLED_GRAPH, MODEL_INDEX

    try:
        return CONTROLLED_GRAPH in json.loads((folder / MODEL_INDEX).read_text()).get("graphs", {})
    except (OSError, ValueError, AttributeError):
        return False


def load_pipeline(
    model: str | Path | None = None,
    device: str = "cpu",
    dtype: torch.dtype | str = "auto",
    backend: Backend | str | None = None,
    threads: int | None = None,
    loras: list[tuple[str | Path, float]] | None = None,
    vae: Vae | str | None = None,
    staged: bool = False,
    upsample: str | None = None,
    controlnet: str | Path | None = None,
    control: bool = False,
) -> SanaEditPipeline:
    """The pipeline for `model`, with one set of defaults whatever the source: a model folder (PyTorch), an exported
    folder or the published release's files (the runtime their format needs, or `backend`); with None, the bundled
    model (`bundled_model`: its ONNX export unless the options need PyTorch) or a tiny random stand-in (said
    loudly).

    Defaults: threads = physical cores on the CPU; the LLM freed as soon as a new prompt's features exist (they
    stay in the prompt cache); on PyTorch the compute dtype from `dtype` ('auto': bf16 where the CPU has it) and
    the exact text K/V cache. Exported graphs run on the CPU in float32. `loras` (file, scale) are merged into the
    DiT's weights before any speed path (an exported folder takes them at export instead). `vae`: "full" (DC-AE)
    or "tiny" (the folder's light autoencoder; the DC-AE is then never loaded); None: the folder's default.
    `upsample`: how the edit comes back to the photo's size; None: the folder's default (guided with a LoRA).
    `staged`: each network in memory only for its stage of an edit (`SanaEditPipeline.enable_staged_residency`):
    the lowest peak for a one-shot edit; a PyTorch model folder only. `controlnet`: a ControlNet folder for a
    PyTorch model (None: the folder's own controlnet/, if any); `control`: the run's edits take a control image
    (the bundled model's PyTorch folder, when its export has no ControlNet). Every choice is made in
    `plan.make_plan`.
    """
    if model is None:
        if backend not in (None, Backend.TORCH, Backend.ONNXRUNTIME):
            raise ValueError(f"backend {backend!r} needs an exported folder: pass --model EXPORTED_DIR")
        # another ControlNet than the bundled model's own steers its PyTorch folder, not its export
        backend_asked = backend or (Backend.TORCH if controlnet else None)
        model = bundled_model(backend_asked, device, dtype, loras, staged, control)
    if model is None:
        require("torch", "no bundled model in this install: the tiny random stand-in")
        from sanaedit.tools.random_model import RandomWeights

        source = RandomWeights()
    else:
        from sanaedit.runtime.sources import open_source

        source = open_source(model)
    plan = make_plan(
        source.info,
        backend=backend,
        vae=vae,
        upsample=upsample,
        device=device,
        dtype=dtype,
        loras=loras or (),
        staged=staged,
        threads=threads,
        controlnet=controlnet,
    )
    if model is None:
        logger.warning(
            "no trained model is bundled in this install and no --model was given: using a tiny RANDOM model, "
            "so the output is noise, not a comic. Pass --model DIR for real weights."
        )
    logger.debug(f"model: {source.info.name} ({source.info.format})")
    for line in plan.describe():  # what the plan chose, for -v: backend, dtype, threads, autoencoder, upsampling
        if not line.startswith("sampling:"):  # the folder's defaults, which the command's options may change
            logger.debug(line)
    start = time.perf_counter()
    pipe = SanaEditPipeline.from_plan(source, plan)
    pipe.keep_text_encoder = False
    logger.debug(f"load: {time.perf_counter() - start:.2f} s")
    return pipe


def load_model_folder(folder: str | Path, vae: Vae | str | None = None, **options) -> SanaEditPipeline:
    """A PyTorch model folder as modules, float32 on the CPU unless `options` say otherwise (`plan.make_plan`'s):
    what training, export and the tools start from (a folder of any other kind is refused by name)."""
    from sanaedit.formats.torch_folder import TorchFolder

    source = TorchFolder(folder)
    options = {"dtype": "float32", "tuned": False, **options}
    return SanaEditPipeline.from_plan(source, make_plan(source.info, vae=vae, **options))
