"""Edit photos with a SANA linear diffusion transformer, on this machine (by default: photo in, comic out).

examples:
  sanaedit edit photo.jpg -o comic.png              one photo (output the photo's own size)
  sanaedit edit photos/ -o comics/ -r --resume      a whole folder
  sanaedit serve                                    a web page on http://127.0.0.1:7860
  sanaedit info                                     what the bundled model is

Run `sanaedit COMMAND --help` for a command's options and examples. Docs: README.md, docs/.
-v / -q (before or after COMMAND): more or less output on stderr (default: progress, no library warnings).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import re
import sys
from pathlib import Path

from sanaedit.apps.processes import launched_count
from sanaedit.core.choices import Backend, Sampler, Schedule
from sanaedit.core.config import MAX_GUIDANCE
from sanaedit.core.extras import missing_extra
from sanaedit.plan import DTYPES

# Sub-command modules, in the order `sanaedit --help` lists them. Each module defines
# `add_parser(subparsers)` which registers its parser and sets `func=run(args) -> int`.
COMMANDS = ["edit", "info", "assemble", "export", "train", "distill", "grow", "prune", "serve"]
# Commands whose output option was spelled `--out` before `-o/--output` was the one spelling: still accepted.
OUT_ALIAS = {"edit", "assemble", "export", "grow", "prune", "serve"}
MAX_SEED = 2**63 - 1  # the server's limit too (a signed 64-bit integer survives JSON clients and torch alike)
VERBOSITY_FLAG = re.compile(r"-(v+|q+)|--(verbose|quiet)")  # global: accepted anywhere before `--`

logger = logging.getLogger(__name__)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of descriptions and examples."""


def add_verbosity_args(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """-v/--verbose and -q/--quiet (counted; `main` adds up the ones before and after the command)."""
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        dest=f"{prefix}verbose",
        help="more output: debug messages, and the warnings and progress bars of diffusers / transformers / "
        "accelerate (hidden by default)",
    )
    p.add_argument(
        "-q",
        "--quiet",
        action="count",
        default=0,
        dest=f"{prefix}quiet",
        help="no progress messages or bars, no result lines: only warnings and errors",
    )


def _verbosity_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    add_verbosity_args(parent, prefix="command_")  # its own names: argparse would let a command's 0 hide a global -v
    return parent


def add_command(
    sub, name: str, summary: str, examples: str = "", description: str = "", **kwargs
) -> argparse.ArgumentParser:
    """A sub-command parser with a one-line summary (in `sanaedit --help`), a description, examples and -v / -q."""
    epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples.strip().splitlines()) if examples else None
    return sub.add_parser(
        name,
        help=summary,
        description=description or summary[:1].upper() + summary[1:] + ".",
        epilog=epilog,
        formatter_class=HelpFormatter,
        parents=[_verbosity_parent()],
        **kwargs,
    )


def add_processes_option(parser: argparse.ArgumentParser, what: str) -> None:
    """`--processes N` (apps/launch.py): `what` it does, started as torchrun --standalone starts processes."""
    parser.add_argument(
        "--processes",
        type=int_range(1),
        default=1,
        metavar="N",
        help=f"{what} (as torchrun --standalone starts them; a failure ends in one line)",
    )


def result(args: argparse.Namespace, text: str) -> None:
    """A command's result line (what it wrote) on stdout; none with -q."""
    if not getattr(args, "quiet", False):
        print(text)


def int_range(low: int, high: int | None = None):
    """argparse type: an integer in [low, high], refused while parsing (before any model loads) with the flag named."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"from {low} to {high}"
            raise argparse.ArgumentTypeError(f"must be an integer {bound}, got {value}")
        return value

    return parse


def float_range(low: float, high: float | None = None, note: str = ""):
    """argparse type: a finite number in [low, high] (nan and inf are refused)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < low or (high is not None and value > high):
            bound = f">= {low:g}" if high is None else f"from {low:g} to {high:g}"
            raise argparse.ArgumentTypeError(f"must be a number {bound}{note}, got {text!r}")
        return value

    return parse


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """--steps / --guidance / --seed / --prompt / --negative-prompt / --schedule / --sampler, checked while parsing."""
    p.add_argument(
        "--steps", type=int_range(1), default=None, metavar="N", help="sampling steps, >= 1 (default: the model's)"
    )
    p.add_argument(
        "--guidance",
        type=float_range(1.0, MAX_GUIDANCE, note=" (1 = guidance off)"),
        default=None,
        metavar="SCALE",
        help="classifier-free guidance scale, 1 to 100; 1 turns guidance off (one pass per step, twice as fast) "
        "(default: the model's; the bundled model's is 1)",
    )
    p.add_argument(
        "--seed",
        type=int_range(0, MAX_SEED),
        default=0,
        metavar="N",
        help="noise seed; every image gets the same one, so a result can be reproduced (default: 0)",
    )
    p.add_argument(
        "--prompt",
        default=None,
        metavar="TEXT",
        help="edit instruction (default: the model's own style prompt; the bundled model follows no other)",
    )
    p.add_argument(
        "--negative-prompt",
        default=None,
        metavar="TEXT",
        help="what guidance steers away from; used only with --guidance > 1 (default: the model's, usually empty)",
    )
    p.add_argument(
        "--schedule",
        choices=[s.value for s in Schedule],
        default=None,
        help="sigma schedule: default (flow-matching Euler to sigma 0), published (the MNN engine's) or linear "
        "(SANA's DPM-Solver schedule) (default: the model's; linear with --sampler dpm)",
    )
    p.add_argument(
        "--sampler",
        choices=[s.value for s in Sampler],
        default=None,
        help="euler (flow matching), dpm (flow DPM-Solver++ 2M, SANA's default: fewer steps for the same quality) "
        "or scm (SANA-Sprint's 1-4 step sampler, for distilled models) (default: the model's, euler)",
    )


def lora_arg(text: str) -> tuple[Path, float]:
    """--lora FILE[:SCALE], checked while parsing (the file must exist; the scale is a finite number)."""
    from sanaedit.errors import LoraError
    from sanaedit.models.lora import lora_file, parse_lora

    path, scale = parse_lora(text)
    if not math.isfinite(scale):
        raise argparse.ArgumentTypeError(f"scale {scale} is not a finite number")
    try:
        return lora_file(path), scale
    except LoraError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_lora_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--lora",
        type=lora_arg,
        action="append",
        default=[],
        metavar="FILE[:SCALE]",
        help="a LoRA style in diffusers' Sana LoRA format (pytorch_lora_weights.safetensors or its folder), merged "
        "into the transformer at SCALE (default 1; 0 = exactly the base model); repeatable",
    )


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    """--device / --dtype / --backend, shared by the commands that run the pipeline."""
    p.add_argument(
        "--device",
        default="cpu",
        metavar="DEVICE",
        help="PyTorch device: cpu, cuda, cuda:1, mps, ... (default: cpu; exported models run on the CPU; `edit` "
        "launched as several processes: one GPU each where there are enough)",
    )
    p.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPES,
        help="PyTorch compute: auto = bf16 where the CPU has native bf16, else fp32; int8 = also int8 DiT matmuls "
        "(faster on CPUs with VNNI, slightly different images) (default: auto)",
    )
    p.add_argument(
        "--backend",
        choices=[b.value for b in Backend],
        default=None,
        help="runtime (default: torch for a model folder, the export's own for an exported folder)",
    )


def check_device(device: str) -> None:
    """Refuse a device this PyTorch cannot use, in one line, before any model loads."""
    if device == "cpu":
        return  # no torch import: an exported folder's edit runs without it
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"--device {device!r}: {str(err).strip().splitlines()[0]}") from None
    if dev.type == "cpu":
        return
    backend = getattr(torch, dev.type, None) if dev.type != "mps" else torch.backends.mps
    if backend is None or not backend.is_available():
        build = "" if dev.type != "cuda" or torch.version.cuda else " (a CPU-only build)"
        raise ValueError(
            f"--device {device}: no {dev.type} device available to this PyTorch {torch.__version__}{build}; "
            "use --device cpu"
        )
    count = getattr(backend, "device_count", lambda: 1)()
    if dev.index is not None and dev.index >= count:
        raise ValueError(f"--device {device}: only {count} {dev.type} device(s) here (0 to {count - 1})")


def model_folder_or_bundled(model: str | None):
    """The folder `--model` names, or the bundled model's that runs by default (None when neither exists)."""
    from pathlib import Path

    from sanaedit.load import bundled_model

    return Path(model) if model is not None else bundled_model()


def warn_if_prompt_ignored(model: str | None, prompt: str | None, negative_prompt: str | None = None) -> bool:
    """Say once, on stderr, when a prompt other than the model's own goes to a model that cannot follow prompts."""
    import json

    from sanaedit.formats.index import MODEL_INDEX, follows_prompts, llm_width

    folder = model_folder_or_bundled(model)
    if folder is None or (prompt is None and negative_prompt is None) or follows_prompts(folder):
        return False
    try:
        own = json.loads((folder / MODEL_INDEX).read_text()).get("pipeline", {})
    except (OSError, ValueError, AttributeError):
        own = {}
    given = {"prompt": prompt, "negative_prompt": negative_prompt}
    changed = [k for k, v in given.items() if v is not None and v != own.get(k, "" if k == "negative_prompt" else None)]
    if not changed:
        return False
    flags = " and ".join("--" + k.replace("_", "-") for k in changed)
    logger.warning(
        f"{flags} will not do what it says: this model cannot follow prompts (its LLM is a {llm_width(folder)}-wide "
        "stand-in, trained with its one style prompt). Prompts need a model with a real LLM (README: Real weights)."
    )
    return True


def build_parser() -> argparse.ArgumentParser:
    from sanaedit import __version__

    parser = argparse.ArgumentParser(prog="sanaedit", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"sanaedit {__version__}")
    add_verbosity_args(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def normalize_argv(argv: list[str]) -> list[str]:
    """-v / -q anywhere before `--` -> before the command (they are global; commands that hand the rest of their
    line to config overrides, like `train`, never see them); `--out DIR` (the old spelling) -> `--output DIR` for
    the commands that had it."""
    end = argv.index("--") if "--" in argv else len(argv)
    flags = [a for a in argv[:end] if VERBOSITY_FLAG.fullmatch(a)]
    rest = [a for a in argv[:end] if not VERBOSITY_FLAG.fullmatch(a)]
    command = next((i for i, a in enumerate(rest) if not a.startswith("-")), None)
    if command is not None and rest[command] in OUT_ALIAS:
        rest = [a if i <= command else "--output" + a[5:] if a == "--out" or a.startswith("--out=") else a
                for i, a in enumerate(rest)]  # fmt: skip
    return flags + rest + argv[end:]


def verbosity(args: argparse.Namespace) -> int:
    """-1 (-q), 0 or 1 (-v), from the flags before and after the command."""
    given = args.verbose + getattr(args, "command_verbose", 0) - args.quiet - getattr(args, "command_quiet", 0)
    return max(-1, min(1, given))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(normalize_argv(argv))
    from sanaedit.core.log import configure

    level = verbosity(args)
    args.verbose, args.quiet = level > 0, level < 0  # what the commands read
    configure(level)
    try:
        processes = processes_asked(args)
    except argparse.ArgumentTypeError as err:
        print(f"sanaedit {args.command}: error: --processes: {err}", file=sys.stderr)
        return 2
    if processes > 1 and launched_count() == 1:  # --processes N: this process starts them and says how they ended
        from sanaedit.apps.launch import launch

        failures = launch(without_processes(argv), processes)
        for reason in failures:
            print(f"sanaedit {args.command}: error: {reason}", file=sys.stderr)
        return 1 if failures else 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ImportError as err:  # a package an install extra brings: say which extra, in one line
        missing = missing_extra(err)
        if missing is None:
            raise
        return fail(args, missing)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        # Our loaders raise these with messages that name the file and the problem.
        return fail(args, str(err))
    except OSError as err:  # the system's own word for it (no permission, disk full, ...), one line, no traceback
        where = f"{err.filename}: " if err.filename else ""
        return fail(args, f"{where}{err.strerror or err}")
    except MemoryError:
        return fail(args, "out of memory")


def fail(args: argparse.Namespace, reason: str) -> int:
    """A command's failure: one line on stderr (or, in a process `--processes` started, for its launcher to say)."""
    from sanaedit.apps.launch import record_failure

    if not record_failure(reason):
        print(f"sanaedit {args.command}: error: {reason}", file=sys.stderr)
    return 1


def processes_asked(args: argparse.Namespace) -> int:
    """`--processes N` of a command that has it; `train` hands the rest of its line to config overrides, so there it
    is picked out of them."""
    overrides = getattr(args, "overrides", None)
    for i, item in enumerate(overrides or []):
        if item.startswith("--processes"):
            value = item.partition("=")[2] or (overrides[i + 1] if i + 1 < len(overrides) else "")
            args.overrides = without_processes(overrides)
            args.processes = int_range(1)(value)
            break
    return getattr(args, "processes", 1)


def without_processes(argv: list[str]) -> list[str]:
    """The command line with its `--processes N` / `--processes=N` taken out (for the processes it starts)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--processes":
            skip = True
        elif not a.startswith("--processes="):
            out.append(a)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
