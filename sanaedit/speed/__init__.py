"""Speed paths for the PyTorch backend: text K/V cache (exact), compute dtype and threads per CPU, int8 DiT matmuls
(opt-in: it changes results, within the PSNR the benchmark reports).

Names load lazily: the exported runtime needs only `speed.cpu`, and must not pay for (or require) diffusers.
"""

from importlib import import_module

_WHERE = {
    "best_compute_dtype": "cpu",
    "cpu_flags": "cpu",
    "has_fast_bf16": "cpu",
    "physical_cores": "cpu",
    "set_threads": "cpu",
    "quantize_dit_int8": "int8",
    "disable_text_kv_cache": "text_kv_cache",
    "enable_text_kv_cache": "text_kv_cache",
    "text_kv_cache_enabled": "text_kv_cache",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(name)
    return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
