"""A model folder whose DiT is stored in int8: `sanaedit export DIR --format int8 -o OUT`.

`--dtype int8` (models/int8.py) quantizes the DiT blocks' Linear and 1x1 Conv weights while they load, every run.
This writes those int8 codes (with their float32 scales and biases) once, so a later load reads half the bytes of a
bf16 DiT (a quarter of fp32) into the layers as they are: no float weights read, no conversion. Everything else in
the folder is copied byte for byte; the DiT's other tensors keep their stored dtype. The layers and their results
are exactly those of `--dtype int8` on the source folder (tested). Not a diffusers folder any more (its blocks hold
int8 codes): LoRAs, training and graph exports need the float source.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from sanaedit.core.atomic import atomic_folder
from sanaedit.errors import ModelFolderError
from sanaedit.formats.index import STORED_INT8, read_index, stored_int8
from sanaedit.formats.torch_check import load_component

_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def _stored_float_dtype(folder: Path) -> torch.dtype:
    """The dtype of the first float tensor in a component's safetensors (what its other tensors are kept in)."""
    from safetensors import safe_open

    from sanaedit.backends.torch_loading import weight_files

    with safe_open(weight_files(folder)[0], "pt") as f:
        for key in f.keys():
            dtype = _DTYPES.get(f.get_slice(key).get_dtype())
            if dtype is not None:
                return dtype
    return torch.float32


def write_int8_folder(model_dir: str | Path, out: str | Path) -> Path:
    """Copy the model folder `model_dir` to `out` (atomically) with its DiT stored in int8."""
    from sanaedit.formats.torch_folder import load_diffusers_model
    from sanaedit.models.int8 import STORED_INT8_SCHEME, int8_layer
    from sanaedit.models.transformer import SanaEditTransformer2DModel

    model_dir, out = Path(model_dir), Path(out)
    read_index(model_dir)  # a model folder (an export or a release has no float DiT to quantize)
    if stored_int8(model_dir):
        raise ModelFolderError(f"{model_dir}: its DiT is already stored in int8")
    if out.resolve() == model_dir.resolve():
        raise ModelFolderError(f"{out}: write the int8 folder beside its source, not over it")
    dtype = _stored_float_dtype(model_dir / "transformer")

    def quantized(path: Path) -> torch.nn.Module:
        return load_diffusers_model(SanaEditTransformer2DModel, path, dtype, replace=int8_layer)

    transformer = load_component(model_dir, "transformer", quantized)
    transformer.register_to_config(**{STORED_INT8: STORED_INT8_SCHEME})
    with atomic_folder(out) as tmp:
        shutil.copytree(
            model_dir, tmp, dirs_exist_ok=True, ignore=lambda d, names: ["transformer"] if Path(d) == model_dir else []
        )
        transformer.save_pretrained(tmp / "transformer")
    return out
