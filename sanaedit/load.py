"""What runs when the user names no model: the bundled comic model, else a tiny random one (said loudly)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)
ASSETS = Path(__file__).parent / "assets"
BUNDLED_MODEL = ASSETS / "comic-model"
SAMPLE_PHOTO = ASSETS / "sample.jpg"


DTYPES = ["auto", "float32", "bfloat16", "int8"]


def resolve_dtype(dtype: torch.dtype | str, device: str = "cpu") -> tuple[torch.dtype, bool]:
    """(float compute dtype, int8 DiT matmuls?) for a `--dtype` value.

    'auto': bf16 on CPUs with native bf16 instructions, else fp32 (emulated bf16 is slower; see speed/cpu.py);
    fp32 off the CPU. 'int8': the DiT blocks' matmuls in int8 (speed/int8.py), everything else as 'auto'.
    """
    import torch

    from sanaedit.backends.cpu import best_compute_dtype

    if isinstance(dtype, torch.dtype):
        return dtype, False
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {DTYPES}")
    if dtype == "int8" and torch.device(device).type != "cpu":
        raise ValueError("--dtype int8 is a CPU path (oneDNN int8 GEMM); on a GPU use bfloat16")
    if dtype in ("auto", "int8"):
        return (best_compute_dtype() if torch.device(device).type == "cpu" else torch.float32), dtype == "int8"
    return getattr(torch, dtype), False


def load_pipeline(
    model: str | Path | None = None,
    device: str = "cpu",
    dtype: torch.dtype | str = "auto",
    backend: str | None = None,
    threads: int | None = None,
    loras: list[tuple[str | Path, float]] | None = None,
    vae: str | None = None,
    staged: bool = False,
):
    """The pipeline for `model`, with one set of defaults whatever the folder's kind: a model folder (PyTorch) or an
    exported folder (the runtime its manifest names, or `backend`); with None, the bundled model or a tiny random
    stand-in (said loudly).

    Defaults: threads = physical cores on the CPU; the LLM freed as soon as a new prompt's features exist (they
    stay in the prompt cache); on PyTorch the compute dtype from `dtype` ('auto': bf16 where the CPU has it) and
    the exact text K/V cache. Exported graphs run on the CPU in float32. `loras` (file, scale) are merged into the
    DiT's weights before any speed path (an exported folder takes them at export instead). `vae`: "full" (DC-AE)
    or "tiny" (the folder's light autoencoder; the DC-AE is then never loaded); None: the folder's default.
    `staged`: each network in memory only for its stage of an edit (`SanaEditPipeline.enable_staged_residency`):
    the lowest peak for a one-shot edit; a PyTorch model folder only.
    """
    from sanaedit.formats.index import is_export

    if model is None:
        if backend not in (None, "torch"):
            raise ValueError(f"backend {backend!r} needs an exported folder: pass --model EXPORTED_DIR")
        model = BUNDLED_MODEL if (BUNDLED_MODEL / "model_index.json").is_file() else None
    if model is not None and (is_export(model) or backend not in (None, "torch")):
        if device != "cpu" or str(dtype).split(".")[-1] not in ("auto", "float32"):
            raise ValueError("exported graphs run on the CPU in float32: drop --device/--dtype")
        if not is_export(model):
            raise ValueError(
                f"{model} is a PyTorch model folder; backend {backend!r} needs an exported folder "
                f"(`sanaedit export {model} --format {'mnn' if backend == 'mnn' else 'onnx'} --out DIR`)"
            )
        if loras:
            raise ValueError(f"{model} is exported: merge a LoRA at export (`sanaedit export ... --lora FILE`)")
        if staged:
            raise ValueError(
                f"{model} is exported: its runtime maps the graphs' weights from disk itself; staged residency "
                "(--low-memory) is for PyTorch model folders"
            )
        from sanaedit.formats.exported import load_exported

        pipe = load_exported(model, backend=backend, threads=threads, vae=vae)
    else:
        pipe = _torch_pipeline(model, device, dtype, threads, loras or [], vae, staged)
    pipe.keep_text_encoder = False
    return pipe


def _set_threads(device: str, threads: int | None) -> None:
    import torch

    from sanaedit.backends.cpu import set_threads

    if torch.device(device).type == "cpu":
        set_threads(threads)  # threads = cores: PyTorch's default can exceed what a container grants


def _torch_pipeline(
    folder: str | Path | None,
    device: str,
    dtype: torch.dtype | str,
    threads: int | None,
    loras,
    vae: str | None,
    staged: bool = False,
):
    from sanaedit.backends.torch_int8 import int8_layer, quantize_dit_int8
    from sanaedit.backends.torch_kv_cache import enable_text_kv_cache

    float_dtype, int8 = resolve_dtype(dtype, device)
    _set_threads(device, threads)
    # a model folder's int8 layers are made while its weights stream in (no float DiT held), unless LoRAs must be
    # merged into the float weights first
    streamed_int8 = int8 and folder is not None and not loras

    def prepare(transformer: torch.nn.Module) -> torch.nn.Module:
        """The DiT as it runs: LoRAs merged into its weights before any speed path, int8 layers, text K/V cache."""
        if loras:
            from sanaedit.models.lora import merge_loras

            merge_loras(transformer, [(Path(path), float(scale)) for path, scale in loras])
        if int8 and not streamed_int8:
            quantize_dit_int8(transformer)
        return enable_text_kv_cache(transformer)

    if folder is None:
        from sanaedit.formats.index import choose_vae
        from sanaedit.runtime.random_model import build_tiny_pipeline

        choose_vae("the tiny random stand-in", vae, "full", has_tiny=False)
        logger.warning(
            "no trained model is bundled in this install and no --model was given: using a tiny RANDOM model, "
            "so the output is noise, not a comic. Pass --model DIR for real weights."
        )
        if staged:
            raise ValueError("staged residency (--low-memory) needs a model folder to load from: pass --model DIR")
        pipe = build_tiny_pipeline().to(device=device, dtype=float_dtype)
        prepare(pipe.transformer)
        return pipe
    from sanaedit.formats.index import stored_int8
    from sanaedit.formats.torch_folder import load_model_folder
    from sanaedit.models.lora import style_upsampling

    if loras and stored_int8(folder):
        raise ValueError(
            f"{folder} stores its DiT in int8 (sanaedit export --format int8): a LoRA merges into float weights; "
            "use the float folder it was made from"
        )

    pipe = load_model_folder(
        folder,
        device=device,
        dtype=float_dtype,
        vae=vae,
        staged=staged,
        prepare_transformer=prepare,
        transformer_layers=int8_layer if streamed_int8 else None,
    )
    if loras:
        style_upsampling(pipe.config)
    return pipe
