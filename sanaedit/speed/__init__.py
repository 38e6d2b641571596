"""Speed paths for the PyTorch backend: text K/V cache (exact), compute dtype and threads per CPU, int8 DiT matmuls
(opt-in: it changes results, within the PSNR the benchmark reports)."""

from .cpu import best_compute_dtype, cpu_flags, has_fast_bf16, physical_cores, set_threads
from .int8 import quantize_dit_int8
from .text_kv_cache import disable_text_kv_cache, enable_text_kv_cache, text_kv_cache_enabled

__all__ = [
    "best_compute_dtype",
    "cpu_flags",
    "disable_text_kv_cache",
    "enable_text_kv_cache",
    "has_fast_bf16",
    "physical_cores",
    "quantize_dit_int8",
    "set_threads",
    "text_kv_cache_enabled",
]
