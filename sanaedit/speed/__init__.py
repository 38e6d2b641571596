"""Speed paths for the PyTorch backend that change no result: text K/V cache, compute dtype and threads per CPU."""

from .cpu import best_compute_dtype, cpu_flags, has_fast_bf16, physical_cores, set_threads
from .text_kv_cache import disable_text_kv_cache, enable_text_kv_cache, text_kv_cache_enabled

__all__ = [
    "best_compute_dtype",
    "cpu_flags",
    "disable_text_kv_cache",
    "enable_text_kv_cache",
    "has_fast_bf16",
    "physical_cores",
    "set_threads",
    "text_kv_cache_enabled",
]
