"""What a user waits for: `sanaedit edit photo.jpg -o out.png` timed end to end, as a new process each time.

    python bench/cli_speed.py --work /root/bench-models --json bench/results/cli-speed-sana-0.6b-DATE.json
    python bench/cli_speed.py --variant tiny --work /tmp/cli-speed          # seconds: checks the bench itself

Everything a one-photo edit pays is inside the number: process start, imports, loading, the edit, writing the PNG.
Each row is a fresh `sanaedit edit` process (the console script); wall-clock from spawn to exit, peak RSS from the OS
(`wait4`), minimum over --repeats. Random weights at the published size (Sana-0.6B / DC-AE F32C32 / Qwen3-0.6B,
512 px): speed and memory do not depend on what the weights learned.
- teacher:  the folder as `sanaedit assemble` writes it (fp32 files), 10 steps, CFG 4.5, DC-AE.
- student:  the same DiT with a guidance embedding (what `sanaedit distill` makes: one forward per step, no CFG
            batch), the scm sampler at 1/2/4 steps, stored in bf16 (the dtype it runs in), with a tiny autoencoder
            (TAESANA's architecture) beside the DC-AE: `--vae tiny|full`; `--dtype int8`, `--low-memory` variants.
- student int8-stored: `sanaedit export STUDENT --format int8` (the DiT's int8 codes in the folder: no float read,
            no conversion at load), the same 2-step tiny rows.
- onnx / mnn: `sanaedit export` of the student folder (--onnx / --mnn, made with the export's defaults): the same
            rows on ONNX Runtime / MNN (no torch, diffusers or transformers import; ONNX computes the DiT and the
            light autoencoder in int8, MNN runs its matmul graphs in its low-memory mode).
- steady:   the student's 2-step tiny path over --batch copies of the photo in one process: (t_N - t_1) / (N - 1)
            per photo, what a batch or the server pays once loaded.
Output: a table and JSON (--json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from sanaedit.models.torch_flow import torch_flow

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "sanaedit/assets/sample.jpg"


def build_folders(variant: str, work: Path) -> tuple[Path, Path, Path]:
    """(teacher, student, student stored in int8) model folders of random weights, built once into `work`."""
    import torch

    from sanaedit.pipeline import SanaEditPipeline
    from sanaedit.tools.assemble import build_tiny_vae
    from sanaedit.tools.random_model import build_random_pipeline

    teacher, student = work / variant, work / f"{variant}-student-bf16"
    if not (teacher / "model_index.json").is_file():
        print(f"building {teacher} ...", flush=True)
        build_random_pipeline(variant, seed=0).save_pretrained(teacher)
    if not (student / "model_index.json").is_file():
        print(f"building {student} ...", flush=True)
        pipe = SanaEditPipeline.from_pretrained(teacher, dtype=torch.bfloat16)
        tiny = build_tiny_vae(pipe.vae, True, torch.bfloat16)
        flow = torch_flow(pipe.transformer.with_guidance_embedding(), pipe.vae, tiny)
        config = pipe.config
        config.sampler, config.schedule, config.num_inference_steps, config.vae = "scm", "scm", 2, "tiny"
        SanaEditPipeline(flow, pipe.text_encoder, config, prompt_cache=pipe.prompt_cache).save_pretrained(student)
    int8 = work / f"{variant}-student-int8"
    if not (int8 / "model_index.json").is_file():
        from sanaedit.formats.int8_folder import write_int8_folder

        print(f"building {int8} ...", flush=True)
        write_int8_folder(student, int8)
    return teacher, student, int8


def timed_edit(model: Path, flags: list[str], out: Path, inputs: list[Path]) -> dict:
    """One `sanaedit edit` process: wall seconds from spawn to exit and its peak RSS."""
    cmd = [
        str(Path(sys.executable).parent / "sanaedit"),
        "-q",
        "edit",
        *map(str, inputs),
        "-o",
        str(out),
        "--model",
        str(model),
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd + flags, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode().strip().splitlines()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd + flags)} failed: {err[-1:] if err else proc.returncode}")
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="sana-0.6b")
    p.add_argument("--work", required=True, help="folder for the model folders (reused) and outputs")
    p.add_argument("--repeats", type=int, default=2, help="processes per row; the fastest is reported")
    p.add_argument("--batch", type=int, default=4, help="photos in the steady-state process")
    p.add_argument("--onnx", default=None, metavar="DIR", help="an ONNX export of the student folder: its rows too")
    p.add_argument("--mnn", default=None, metavar="DIR", help="an MNN export of the student folder: its rows too")
    p.add_argument("--only-exports", action="store_true", help="just the export rows")
    p.add_argument("--only", default=None, metavar="TEXT", help="just the rows whose name contains TEXT")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    teacher, student, student_int8 = build_folders(args.variant, work)
    cfg10 = ["--steps", "10", "--guidance", "4.5"]
    rows = [("teacher: 10 steps, CFG 4.5, DC-AE (fp32 files)", teacher, cfg10)]
    for vae in ("tiny", "full"):
        for steps in (1, 2, 4):
            name = f"student: {steps} step{'s' * (steps > 1)}, {vae} VAE"
            rows.append((name, student, ["--steps", str(steps), "--vae", vae]))
    tiny = ["--vae", "tiny"]
    rows += [
        ("student: 2 steps, tiny VAE, --dtype int8", student, [*tiny, "--dtype", "int8"]),
        ("student: 2 steps, tiny VAE, --low-memory", student, [*tiny, "--low-memory"]),
        ("student: 2 steps, tiny VAE, int8, --low-memory", student, [*tiny, "--dtype", "int8", "--low-memory"]),
        ("teacher: 10 steps, CFG 4.5, DC-AE, --low-memory", teacher, [*cfg10, "--low-memory"]),
        ("student int8-stored: 2 steps, tiny VAE", student_int8, tiny),
        ("student int8-stored: 2 steps, tiny VAE, --low-memory", student_int8, [*tiny, "--low-memory"]),
    ]
    exports = [(name, Path(folder)) for name, folder in (("onnx", args.onnx), ("mnn", args.mnn)) if folder]
    if args.only_exports:
        rows = []
    for runtime, folder in exports:
        for vae in ("tiny", "full"):
            for steps in (1, 2, 4):
                name = f"student {runtime}: {steps} step{'s' * (steps > 1)}, {vae} VAE"
                rows.append((name, folder, ["--steps", str(steps), "--vae", vae]))
    if args.only:
        rows = [row for row in rows if args.only in row[0]]
    out_dir = work / "cli-speed-out"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir()
    results = []
    for name, model, flags in rows:
        print(f"{name} ...", flush=True)
        runs = [timed_edit(model, flags, out_dir / f"{len(results)}.png", [PHOTO]) for _ in range(args.repeats)]
        best = min(runs, key=lambda r: r["wall_s"])
        results.append({"row": name, "flags": flags, **best, "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)})
    copies = []
    for i in range(args.batch):
        copies.append(out_dir / f"copy{i}.jpg")
        shutil.copy(PHOTO, copies[-1])
    for runtime, folder in ([] if args.only_exports or args.only else [("torch", student)]) + exports:
        one = timed_edit(folder, ["--vae", "tiny"], out_dir / "steady1", copies[:1])
        many = timed_edit(folder, ["--vae", "tiny"], out_dir / "steadyN", copies)
        steady = (many["wall_s"] - one["wall_s"]) / (args.batch - 1)
        label = "student" if runtime == "torch" else f"student {runtime}"
        name = f"{label}: 2 steps, tiny VAE, per photo in a batch of {args.batch}"
        results.append({"row": name, "wall_s": steady, "peak_rss_mb": many["peak_rss_mb"]})
    print("| row | seconds | peak RSS MB |\n|---|---|---|")
    for r in results:
        print(f"| {r['row']} | {r['wall_s']:.1f} | {r['peak_rss_mb']:.0f} |")
    if args.json:
        report = {"variant": args.variant, "photo": str(PHOTO.relative_to(ROOT)), "cpu_cores": os.cpu_count(),
                  "loadavg_after": os.getloadavg(), "results": results}  # fmt: skip
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
