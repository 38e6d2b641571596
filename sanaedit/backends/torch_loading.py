"""Low-memory PyTorch loading: weights read from safetensors one tensor at a time, cast (or quantized) and placed.

Peak RSS is what a phone or a small laptop has to have, and the ordinary loaders peak far above the model:
- safetensors' `safe_open` (which diffusers uses) memory-maps the file, and every page read stays in the process's
  RSS until the file is closed: loading Sana-0.6B's 2.4 GB fp32 file as bf16 peaks at 2.4 + 1.2 GB (3.8 GB with the
  DC-AE, measured in bench/edit_speed.py), for a 1.2 GB model.
- `from_pretrained` then `quantize_model` holds the whole fp32 model before quantizing it.
Here the model is built on the meta device (no memory) and each tensor is read with plain file reads into its own
buffer, cast to the compute dtype (or quantized), and placed; the peak is the loaded model plus one stored tensor.

Files are chosen as diffusers chooses them (`diffusion_pytorch_model.safetensors`, or the shards its index names),
and every stored tensor must fit a parameter and vice versa, so a mismatched checkpoint fails with the names.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from sanaedit.formats.index import STORED_INT8
from sanaedit.models.int8 import Int8Linear, int8_shell, replace_layers

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def iter_safetensors(path: str | Path, keep: Callable[[str], bool] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for each tensor of a .safetensors file, read with plain reads (no memory map), in file order;
    with `keep`, only the tensors it accepts are read."""
    path = Path(path)
    with open(path, "rb") as f:
        try:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
        except (ValueError, MemoryError) as err:
            raise ValueError(f"{path}: not a safetensors file ({err})") from err
        header.pop("__metadata__", None)
        for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            if keep is not None and not keep(name):
                continue
            start, end = info["data_offsets"]
            if info["dtype"] not in _DTYPES:
                raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
            raw = torch.empty(end - start, dtype=torch.uint8)
            f.seek(8 + size + start)
            if f.readinto(memoryview(raw.numpy())) != end - start:
                raise ValueError(f"{path}: truncated file (tensor {name!r} is cut off); the download is incomplete")
            yield name, raw.view(_DTYPES[info["dtype"]]).reshape(info["shape"])


def weight_files(folder: Path) -> list[Path]:
    """The safetensors file(s) diffusers loads from a model folder: the single file, or the shards of its index."""
    single, index = folder / WEIGHTS_NAME, folder / (WEIGHTS_NAME + ".index.json")
    if single.is_file():
        return [single]
    if index.is_file():
        return [folder / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    raise FileNotFoundError(f"{folder}: no {WEIGHTS_NAME} (or its .index.json)")


def load_model(
    cls,
    folder: str | Path,
    dtype: torch.dtype = torch.float32,
    replace: Callable[[str, nn.Module], nn.Module | None] | None = None,
    only: str | None = None,
):
    """A diffusers model (`cls`) from `folder`, tensor by tensor; float tensors are cast to `dtype`.

    `only`: a name prefix (e.g. "encoder." of a DC-AE): just those tensors are read; the rest of the model stays on
    the meta device (no memory), so half an autoencoder costs half of it.

    `replace(name, module)` is called as soon as all of a module's own tensors are loaded; what it returns (e.g. a
    quantized layer) takes the module's place, so at most one float layer is held beside the converted model.
    """
    with _large_buffers_mapped():
        return _load_model(cls, folder, dtype, replace, only)


def empty_model(cls, folder: str | Path):
    """`cls` built from `folder`'s config on the meta device: its structure and config, no memory (a DiT stored in
    int8 with its int8 layers)."""
    from accelerate import init_empty_weights

    config = dict(cls.load_config(folder))
    int8 = config.pop(STORED_INT8, None)  # ours, not the class's: passed on, diffusers would warn that it ignores it
    with init_empty_weights():
        model = cls.from_config(config)
    if int8:  # the layers it stores in int8 as empty int8 layers, for their codes to stream into
        model.register_to_config(**{STORED_INT8: int8})
        replace_layers(model, int8_shell)
    return model


def _load_model(cls, folder, dtype, replace, only):
    folder = Path(folder)
    files = weight_files(folder)
    model = empty_model(cls, folder)
    model.register_to_config(_name_or_path=folder)  # as diffusers' from_pretrained records it
    # tensors kept in their stored dtype: a stored-int8 DiT's codes, scales and biases
    int8 = {name for name, m in model.named_modules() if isinstance(m, Int8Linear)}
    as_stored = {key for key, _ in model.named_buffers() if key.rpartition(".")[0] in int8}
    expected = {key for key in model.state_dict() if only is None or key.startswith(only)}
    pending: dict[str, set[str]] = {}  # module name -> its own tensors not loaded yet
    if replace is not None:
        for name, module in model.named_modules():
            own = {f"{name}.{key}" if name else key for key, _ in module.named_parameters(recurse=False)}
            if own and own <= expected:
                pending[name] = own
    unexpected = []
    _stream(model, files, expected, pending, unexpected, dtype, replace, only, as_stored)
    tensors = [*model.named_parameters(), *model.named_buffers()]
    left = [n for n, t in tensors if t.device.type == "meta" and (only is None or n.startswith(only))]
    if unexpected or left:
        detail = []
        if left:
            detail.append(f"no stored value for {', '.join(left[:5])}{' ...' if len(left) > 5 else ''}")
        if unexpected:
            detail.append(f"stored weights the model does not have: {', '.join(unexpected[:5])}")
        raise ValueError(f"{folder}: checkpoint does not fit its config: {'; '.join(detail)}")
    release_freed_memory()
    return model.eval().requires_grad_(False)


def _stream(model, files, expected, pending, unexpected, dtype, replace, only, as_stored=frozenset()) -> None:
    """`load_model`'s loop: each stored tensor read, cast, placed; a module swapped by `replace` once complete."""
    from accelerate.utils import set_module_tensor_to_device

    for file in files:
        for key, tensor in iter_safetensors(file, None if only is None else lambda k: k.startswith(only)):
            if key not in expected:
                unexpected.append(key)
                continue
            value = tensor.to(dtype) if tensor.is_floating_point() and key not in as_stored else tensor
            set_module_tensor_to_device(model, key, "cpu", value=value, dtype=value.dtype)
            expected.discard(key)
            if value.data_ptr() != tensor.data_ptr() and tensor.nbytes >= 1 << 20:
                del value, tensor
                release_freed_memory()  # the read buffer's pages back now: the heap must not grow with the file
            owner = key.rpartition(".")[0]
            if owner in pending:
                pending[owner].discard(key)
                if not pending[owner]:
                    del pending[owner]
                    new = replace(owner, model.get_submodule(owner))
                    if new is not None:
                        model.set_submodule(owner, new)  # the float layer is freed here
                        release_freed_memory()  # and its pages given back now, not at the end of the load


@contextmanager
def _large_buffers_mapped() -> Iterator[None]:
    """Within: every allocation of 1 MB or more is its own memory map, so each read buffer and float copy freed
    during a load goes straight back to the OS. glibc's default raises its mmap threshold after the first large
    free, and the load's freed buffers then pile up in the heap: measured on the 0.6B DiT streamed into int8,
    a 1.9-2.1 GB peak for a 1.06 GB result, 1.14 GB with this. Afterwards the threshold is 32 MB, where glibc's
    default settles (a 1 MB threshold during compute made an edit 45% slower: every activation page-faulted)."""
    mallopt = _libc_function("mallopt")
    m_mmap_threshold = -3
    if mallopt is not None:
        mallopt(m_mmap_threshold, 1 << 20)
    try:
        yield
    finally:
        if mallopt is not None:
            mallopt(m_mmap_threshold, 32 << 20)


@functools.cache
def _libc_function(name: str):
    """glibc's `name`, or None where the C library is not glibc (macOS, musl)."""
    import ctypes
    import ctypes.util

    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c")), name)
    except (OSError, AttributeError, TypeError):
        return None


def release_freed_memory() -> None:
    """Hand memory freed by Python/PyTorch back to the OS (glibc keeps freed heap pages, and after large frees it
    raises its mmap threshold, so the read buffers of a load stay in RSS: ~300 MB after loading Sana-0.6B)."""
    malloc_trim = _libc_function("malloc_trim")
    if malloc_trim is not None:  # not glibc (macOS, musl): nothing to do
        malloc_trim(0)
