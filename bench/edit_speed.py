"""Edit speed and memory, in one run: the plain diffusers/transformers fp32 composition (the peer) vs our backends.

    nice python bench/edit_speed.py                                  # Sana-0.6B / DC-AE F32C32 / Qwen3-0.6B, 512 px
    python bench/edit_speed.py --variant tiny --backends peer torch  # seconds: checks the bench itself

Same random weights for everyone (one model folder, built once, seed 0), the bundled sample photo, 512x512,
10 steps, CFG on (scale 4.5, batch 2) and off (scale 1, batch 1), the same seed.
- peer:        SanaEditPipeline reduced to the library classes in fp32: diffusers `SanaTransformer2DModel` (+ ref
               latents on channels) and `AutoencoderDC`, transformers Qwen3; the LLM runs on every edit (no prompt
               cache), plain attention, PyTorch's default threads. Its output is the fp32 reference for PSNR.
- torch:       ours in PyTorch, as `sanaedit edit` loads it (`--dtype auto`): weights streamed from the files (no
               file-sized RSS spike), prompt cache from the model folder (no LLM loaded), text K/V cache,
               threads = cores, compute dtype from the CPU's flags (bf16 only with native bf16 instructions).
- torch-int8:  the same with `--dtype int8`: the DiT blocks' matmuls in int8 (sanaedit.models.int8).
- torch-staged, torch-int8-staged: the same with `--low-memory` (staged residency: DC-AE encoder, DiT, DC-AE
               decoder each loaded for its stage and freed after; their loading counts in end to end, not in load).
- onnxruntime / mnn: `sanaedit export` of the same folder (8-bit weights, LLM 4-bit), run through
               `sanaedit.runtime.load_pipeline`; skipped with the reason when export or loading fails.
Each (backend, CFG) runs in its own process, so peak RSS (ru_maxrss: load + edit) is that backend's alone.
Stages are timed by wrapping the pipeline's callables: LLM (prompt -> conditioning), VAE encode, steps (all
transformer calls), VAE decode; end to end = the whole `pipe(image)` call (loading reported apart).
Output: a table on stdout and JSON (--json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ["peer", "torch", "torch-int8", "torch-staged", "torch-int8-staged", "onnxruntime", "mnn"]
STAGES = ["llm", "vae_encode", "steps", "vae_decode"]


# ------------------------------------------------------------------------------------------------ child process
class Timed:
    """Delegates everything to `inner`; calls are timed into `totals[stage]`."""

    def __init__(self, inner, stage: str, totals: dict[str, float], calls: dict[str, int]):
        self.__dict__.update(_inner=inner, _stage=stage, _totals=totals, _calls=calls)

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self._inner(*args, **kwargs)
        finally:
            self._totals[self._stage] += time.perf_counter() - start
            self._calls[self._stage] += 1


def load_backend(backend: str, model: Path, exports: dict[str, str]):
    import torch

    from sanaedit.pipeline import SanaEditPipeline

    if backend == "peer":
        pipe = SanaEditPipeline.from_pretrained(model, dtype=torch.float32)
        pipe.prompt_cache.clear()  # the peer has no prompt cache: the LLM runs on every edit
        pipe.text_encoder  # loaded now, so its loading counts as loading, not as LLM time  # noqa: B018
        return pipe, {"threads": torch.get_num_threads(), "dtype": "float32"}
    if backend.startswith("torch"):
        from sanaedit.load import load_pipeline as load_torch_pipeline

        int8 = backend.startswith("torch-int8")
        pipe = load_torch_pipeline(model, dtype="int8" if int8 else "auto", staged=backend.endswith("-staged"))
        dtype = str(pipe.dtype).removeprefix("torch.") + (", int8 DiT matmuls" if int8 else "")
        return pipe, {"threads": torch.get_num_threads(), "dtype": dtype}
    if backend not in exports:
        raise RuntimeError(f"no {backend} export")
    from sanaedit.core.cpu import physical_cores
    from sanaedit.load import load_pipeline

    threads = physical_cores()
    return load_pipeline(exports[backend], backend=backend, threads=threads), {"threads": threads, "dtype": "float32"}


def child(args: argparse.Namespace) -> None:
    """One (backend, CFG) measurement; writes the output image and a JSON record."""
    import torch
    from PIL import Image

    totals = dict.fromkeys(STAGES, 0.0)
    calls = dict.fromkeys(STAGES, 0)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    pipe, info = load_backend(args.backend, Path(args.model), json.loads(args.exports))
    load_s = time.perf_counter() - start
    flow = pipe.flow
    stage_of = {"transformer": "steps", "encoder": "vae_encode", "decoder": "vae_decode"}
    if pipe.staged:  # the networks come and go: time each one the stage loads (its loading is not timed here)
        load_network = pipe._network_loader
        pipe._network_loader = lambda name: Timed(load_network(name), stage_of[name], totals, calls)
    else:
        for name, stage in stage_of.items():
            setattr(flow, name, Timed(getattr(flow, name), stage, totals, calls))
    # the text path as the pipeline calls it, whether already loaded (peer) or loaded on demand
    load_text = pipe._text_encoder_loader
    if pipe.text_encoder_loaded:
        pipe._text_encoder = Timed(pipe._text_encoder, "llm", totals, calls)
    if load_text is not None:
        pipe._text_encoder_loader = lambda: Timed(load_text(), "llm", totals, calls)
    image = Image.open(args.image).convert("RGB")
    runs = []
    for _ in range(args.repeats):
        for stage in STAGES:
            totals[stage], calls[stage] = 0.0, 0
        if args.backend == "peer":
            pipe.prompt_cache.clear()
        start = time.perf_counter()
        out = pipe(image, num_inference_steps=args.steps, guidance_scale=args.guidance, generator=_seed(torch)).images[
            0
        ]
        runs.append({"end_to_end_s": time.perf_counter() - start, **{f"{s}_s": totals[s] for s in STAGES}})
    out.save(args.out)
    best = min(runs, key=lambda r: r["end_to_end_s"])
    record = {
        "backend": args.backend,
        "guidance": args.guidance,
        "load_s": load_s,
        **best,
        "transformer_calls": calls["steps"],
        "llm_calls": calls["llm"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "loadavg_1min": [load_before, os.getloadavg()[0]],  # other work on the machine inflates the times
        **info,
    }
    Path(args.record).write_text(json.dumps(record))


def _seed(torch):
    return torch.Generator().manual_seed(0)


# ----------------------------------------------------------------------------------------------- parent process
def build_model(variant: str, folder: Path) -> Path:
    if (folder / "model_index.json").is_file():
        return folder
    from sanaedit.tools.random_model import build_random_pipeline

    print(f"building random {variant} model folder at {folder} ...", flush=True)
    build_random_pipeline(variant, seed=0).save_pretrained(folder)
    return folder


def export(model: Path, fmt: str, out: Path, quant: str, timeout: int) -> tuple[str | None, str]:
    """`sanaedit export`; returns (folder, note)."""
    if (out / "model_index.json").is_file():
        return str(out), "reused"
    cmd = [sys.executable, "-m", "sanaedit.apps.cli", "export", str(model), "--format", fmt, "--out", str(out)]
    cmd += ["--quant", quant or "none"]
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return None, f"export timed out after {timeout} s"
    if proc.returncode:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return None, "export failed: " + " | ".join(tail)
    return str(out), f"exported in {time.perf_counter() - start:.0f} s"


def psnr(a: Path, b: Path) -> float:
    from PIL import Image

    x = np.asarray(Image.open(a).convert("RGB"), dtype=np.float64)
    y = np.asarray(Image.open(b).convert("RGB"), dtype=np.float64)
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def run_child(backend: str, guidance: float, args, model: Path, exports: dict, notes: dict, work: Path) -> dict:
    if backend in ("onnxruntime", "mnn") and backend not in exports:
        return {"backend": backend, "guidance": guidance, "error": notes.get(backend, "not exported")}
    tag = f"{backend}-cfg{'on' if guidance > 1 else 'off'}"
    out, record = work / f"{tag}.png", work / f"{tag}.json"
    record.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        __file__,
        "--child",
        backend,
        "--model",
        str(model),
        "--exports",
        json.dumps(exports),
        "--guidance",
        str(guidance),
        "--steps",
        str(args.steps),
        "--repeats",
        str(args.repeats),
        "--image",
        str(args.image),
        "--out",
        str(out),
        "--record",
        str(record),
    ]
    print(f"running {tag} ...", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode or not record.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        return {"backend": backend, "guidance": guidance, "error": " | ".join(tail)}
    return {**json.loads(record.read_text()), "image": str(out)}


def table(results: list[dict]) -> str:
    head = (
        "| backend | CFG | end to end s | x peer | LLM s | VAE enc s | steps s | VAE dec s | load s "
        "| peak RSS MB | PSNR dB |"
    )
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in results:
        cfg = "on" if r["guidance"] > 1 else "off"
        if "error" in r:
            lines.append(f"| {r['backend']} | {cfg} | skipped: {r['error'][:90]} |" + " |" * 8)
            continue
        speedup = r.get("speedup_vs_peer")
        lines.append(
            f"| {r['backend']} | {cfg} | {r['end_to_end_s']:.2f} | {speedup:.2f} | {r['llm_s']:.2f} | "
            f"{r['vae_encode_s']:.2f} | {r['steps_s']:.2f} | {r['vae_decode_s']:.2f} | {r['load_s']:.1f} | "
            f"{r['peak_rss_mb']:.0f} | {r['psnr_vs_fp32_db']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="sana-0.6b")
    p.add_argument("--backends", nargs="+", default=BACKENDS, choices=BACKENDS)
    p.add_argument("--cfg", nargs="+", default=["on", "off"], choices=["on", "off"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=1, help="edits per process; the fastest is reported")
    p.add_argument("--quant", default="llm=4,rest=8", help="export quantization ('' for fp32 graphs)")
    p.add_argument("--image", default=str(ROOT / "sanaedit/assets/sample.jpg"))
    p.add_argument("--work", default=None, help="folder for the model, exports and outputs (reused if present)")
    p.add_argument("--export-timeout", type=int, default=3600)
    p.add_argument("--json", default=None, help="write the results here")
    # child mode (internal)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--exports", default="{}", help=argparse.SUPPRESS)
    p.add_argument("--guidance", type=float, default=4.5, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--record", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.backend = args.child
        child(args)
        return 0

    from sanaedit.models.variants import load_variant

    work = Path(args.work or tempfile.mkdtemp(prefix="edit_speed."))
    work.mkdir(parents=True, exist_ok=True)
    model = build_model(args.variant, work / "model")
    exports, notes = {}, {}
    for backend, fmt in (("onnxruntime", "onnx"), ("mnn", "mnn")):
        if backend in args.backends:
            folder, notes[backend] = export(model, fmt, work / f"export-{fmt}", args.quant, args.export_timeout)
            print(f"{backend}: {notes[backend]}", flush=True)
            if folder:
                exports[backend] = folder
    backends = ["peer"] + [b for b in args.backends if b != "peer"]  # the peer first: it is the reference
    results = []
    for cfg in args.cfg:
        guidance = 4.5 if cfg == "on" else 1.0
        group = [run_child(b, guidance, args, model, exports, notes, work) for b in backends]
        ref = group[0]
        for r in group:
            if "error" in r:
                continue
            if "error" not in ref:
                r["speedup_vs_peer"] = ref["end_to_end_s"] / r["end_to_end_s"]
                r["rss_ratio_vs_peer"] = r["peak_rss_mb"] / ref["peak_rss_mb"]
                r["psnr_vs_fp32_db"] = psnr(Path(ref["image"]), Path(r["image"]))
            else:
                r["speedup_vs_peer"] = r["psnr_vs_fp32_db"] = math.nan
        results += group
    report = {
        "variant": args.variant,
        "steps": args.steps,
        "resolution": load_variant(args.variant).resolution,
        "cpu_cores": os.cpu_count(),
        "export_notes": notes,
        "quant": args.quant,
        "results": results,
    }
    print(table(results))
    if args.json:
        finite = json.dumps(report, indent=2, default=str).replace("Infinity", '"inf"').replace("NaN", "null")
        Path(args.json).write_text(finite + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
