"""The few-step student against its teacher, on held-out photos: quality and time per edit.

    python bench/fast_path.py EVAL_DIR --teacher sanaedit/assets/comic-model --student ode=runs/comic-fast \
        ladd=runs/comic-fast-ladd --tiny-vae --json bench/results/fast-path-comic-DATE.json

Rows: the teacher with its own settings (the reference: 10 steps); the teacher at 1/2/4 steps without any training
(Euler on its schedule, and the scm sampler) -- what the step count alone costs; each student (LABEL=DIR, or DIR)
at 1/2/4 scm steps. With --tiny-vae, also the teacher's own edit and each student's at 2 steps through the light
autoencoder (`--vae tiny`: every folder needs its tiny_vae/).
Scores: `sanaedit.train.evaluate.compare` at the model's resolution on the held-out images of
EVAL_DIR/manifest.jsonl (PSNR / SSIM / edge F1 against the comic filter's output), and PSNR against the teacher's own
10-step edit of the same image (how close the fast path is to what it replaces). Seed 0 for every edit.
Time: seconds per whole edit (preprocess, encode, sampling, decode, upsampling) of one held-out image and the
sampling part alone, each the minimum over --repeats rounds in which the rows take turns (a burst of load from
elsewhere hits them alike); --threads CPU threads (1 by default: on a shared machine one thread is far less noisy).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from family import dit_timer  # noqa: E402

from sanaedit.load import load_model_folder  # noqa: E402
from sanaedit.pipeline import SanaEditPipeline  # noqa: E402
from sanaedit.train.evaluate import compare, load_pairs, psnr  # noqa: E402

METRICS = ("psnr", "ssim", "edge_f1")


def rows_of(teacher: SanaEditPipeline, students: dict[str, SanaEditPipeline], steps: list[int]) -> dict[str, tuple]:
    """name -> (pipeline, call settings)."""
    own = teacher.config.num_inference_steps
    rows: dict[str, tuple] = {f"teacher, its own {own} steps": (teacher, {})}
    for n in steps:
        rows[f"teacher, {n} Euler steps (untrained for it)"] = (teacher, {"num_inference_steps": n})
        rows[f"teacher, {n} scm steps (untrained for it)"] = (
            teacher,
            {"num_inference_steps": n, "sampler": "scm", "schedule": "scm"},
        )
    for label, student in students.items():
        for n in steps:
            rows[f"student {label}, {n} scm steps"] = (student, {"num_inference_steps": n})
    return rows


def tiny_vae_rows(teacher_dir: str, students: dict[str, str]) -> dict[str, tuple]:
    """The teacher's own edit and each student's 2-step edit through the light autoencoder."""
    rows = {"teacher, its own steps, tiny VAE": (load_model_folder(teacher_dir, vae="tiny"), {})}
    for label, folder in students.items():
        rows[f"student {label}, 2 scm steps, tiny VAE"] = (
            load_model_folder(folder, vae="tiny"),
            {"num_inference_steps": 2},
        )
    return rows


def labelled(specs: list[str]) -> dict[str, str]:
    """LABEL=DIR or DIR (labelled by the folder's name) -> {label: dir}."""
    return dict(spec.split("=", 1) if "=" in spec else (Path(spec).name, spec) for spec in specs)


def edit(pipe: SanaEditPipeline, image, settings: dict):
    return pipe(image, generator=torch.Generator().manual_seed(0), progress=False, **settings).images[0]


def quality(rows: dict[str, tuple], pairs) -> dict[str, dict[str, float]]:
    results, reference = {}, None  # reference: the first row's edits (the teacher with its own settings)
    for name, (pipe, settings) in rows.items():
        outs = [edit(pipe, src, settings) for _, src, _ in pairs]
        reference = reference or [np.asarray(o) for o in outs]
        scores = [compare(o, tgt) for o, (_, _, tgt) in zip(outs, pairs)]
        results[name] = {k: float(np.mean([s[k] for s in scores])) for k in METRICS}
        close = float(np.mean([psnr(np.asarray(o), r) for o, r in zip(outs, reference)]))
        results[name]["psnr_vs_teacher"] = close if np.isfinite(close) else None  # None: the teacher itself
        print(json.dumps({name: results[name]}), flush=True)
    return results


def speed(rows: dict[str, tuple], image, rounds: int) -> dict[str, dict[str, float]]:
    """Minimum seconds per whole edit and in the sampler's model calls, the rows taking turns each round."""
    timers = {id(pipe): dit_timer(pipe) for pipe, _ in rows.values()}
    times: dict[str, dict[str, list[float]]] = {name: {"edit_s": [], "dit_s": []} for name in rows}
    for _ in range(rounds):
        for name, (pipe, settings) in rows.items():
            timer = timers[id(pipe)]
            timer[0] = 0.0
            start = time.perf_counter()
            edit(pipe, image, settings)
            times[name]["edit_s"].append(time.perf_counter() - start)
            times[name]["dit_s"].append(timer[0])
    return {name: {k: min(v) for k, v in t.items()} for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("eval_dir", help="held-out folder with manifest.jsonl (runs/comic/data/eval)")
    ap.add_argument("--teacher", required=True, help="the teacher's model folder")
    ap.add_argument("--student", required=True, nargs="+", help="students' model folders (sanaedit distill): LABEL=DIR")
    ap.add_argument("--tiny-vae", action="store_true", help="also rows through the light autoencoder (--vae tiny)")
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4], help="student step counts (default: 1 2 4)")
    ap.add_argument("--repeats", type=int, default=5, help="timing rounds (default: 5)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (default: 1)")
    ap.add_argument("--json", help="write the results as JSON")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    teacher, folders = SanaEditPipeline.from_pretrained(args.teacher), labelled(args.student)
    students = {label: SanaEditPipeline.from_pretrained(folder) for label, folder in folders.items()}
    pairs = load_pairs(args.eval_dir)
    rows = rows_of(teacher, students, args.steps)
    if args.tiny_vae:
        rows.update(tiny_vae_rows(args.teacher, folders))
    results = {"quality": quality(rows, pairs), "speed": speed(rows, pairs[0][1], args.repeats)}
    results["setup"] = {
        "teacher": str(args.teacher),
        "students": folders,
        "held_out_images": len(pairs),
        "resolution": teacher.config.resolution,
        "threads": args.threads,
        "repeats": args.repeats,
        "torch": torch.__version__,
    }
    print("| output | PSNR dB | SSIM | edge F1 | PSNR vs teacher | s/edit | sampling s |")
    print("|---|---|---|---|---|---|---|")
    for name, q in results["quality"].items():
        s, close = results["speed"][name], q["psnr_vs_teacher"]
        close_text = "(itself)" if close is None else f"{close:.2f}"
        print(
            f"| {name} | {q['psnr']:.2f} | {q['ssim']:.3f} | {q['edge_f1']:.3f} | {close_text} | "
            f"{s['edit_s']:.3f} | {s['dit_s']:.3f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
