"""`sanaedit export MODEL_DIR --format onnx|mnn -o DIR [--quant llm=4,rest=8]`: graphs for on-device runtimes;
`--format int8`: a PyTorch model folder whose DiT is stored in int8 (sanaedit/formats/int8_folder.py); `--format web`:
a static folder that edits inside a browser (sanaedit/export/web.py). Without MODEL_DIR: the bundled model."""

from __future__ import annotations

import argparse
from pathlib import Path

from sanaedit.apps.cli import add_command, add_lora_arg, result
from sanaedit.core.choices import Format
from sanaedit.core.extras import require
from sanaedit.export.quant_spec import parse_quant

PUBLISHED_QUANT = "llm=4,rest=8"  # the published release: 4-bit LLM, 8-bit weights everywhere else
# The default per format. ONNX: the published weights, computing in int8 where ONNX Runtime's int8 kernels beat its
# weight-only ones without costing the picture: the DiT's matmuls (activations ranged per call) and the light
# autoencoder's convolutions (calibrated); measured in docs/deployment.md. The DC-AE's w8a8 stays opt-in: it costs
# the picture ~31 dB against fp32 graphs. MNN's converter quantizes weights only.
DEFAULT_QUANT = {
    "onnx": f"{PUBLISHED_QUANT},transformer=w8a8,tiny_vae_encoder=w8a8,tiny_vae_decoder=w8a8",
    "mnn": PUBLISHED_QUANT,
}

# what each format's export imports beyond the base install (MNN's converter ships in the base `mnn` wheel)
NEEDS = {"int8": ("torch",), "onnx": ("torch", "onnx", "onnxscript"), "mnn": ("torch", "onnx", "llmexport")}
FORMATS = [Format.ONNX.value, Format.MNN.value, "int8", Format.WEB.value]


def default_model(fmt: str) -> Path:
    """The bundled model: its ONNX export for the web format (no PyTorch needed), else its PyTorch folder."""
    from sanaedit.load import BUNDLED_EXPORT, BUNDLED_MODEL

    return BUNDLED_EXPORT if fmt == Format.WEB else BUNDLED_MODEL


def run(args: argparse.Namespace) -> int:
    model, out = Path(args.model_dir or default_model(args.format)), Path(args.output)
    if not model.is_dir():
        raise FileNotFoundError(f"model folder not found: {model}")
    if out.resolve() == model.resolve():
        raise ValueError(f"-o/--output {out} is the model folder itself; choose another folder")
    if args.format == Format.WEB:
        return export_web_folder(args, model, out)
    quant = DEFAULT_QUANT.get(args.format) if args.quant is None else args.quant
    quant = None if quant in ("none", "fp32") else quant
    if args.format != "int8":
        parse_quant(quant)  # a bad --quant fails before any heavy import
    for module in NEEDS[args.format]:  # before anything is converted, not at the first graph
        require(module, f"sanaedit export --format {args.format}")
    if args.format == "int8":
        from sanaedit.formats.int8_folder import write_int8_folder

        if args.lora:
            raise ValueError("--format int8 stores the folder's own DiT: bake a LoRA in first (save_pretrained)")
        write_int8_folder(model, out)
        result(args, f"wrote {out}: its DiT in int8; run it with `sanaedit edit PHOTO -o OUT --model {out}`")
        return 0
    from sanaedit.export import export_model

    export_model(model, out, fmt=args.format, quant=quant, progress=not args.quiet, loras=args.lora)
    result(args, f"wrote {out}: run it with `sanaedit edit PHOTO -o OUT --model {out}`")
    return 0


def export_web_folder(args: argparse.Namespace, model: Path, out: Path) -> int:
    """--format web: from an ONNX export its graphs as they are (no PyTorch needed); from a PyTorch folder, its ONNX
    export first (with --quant and --lora as `--format onnx` takes them), into a temporary folder."""
    import tempfile

    from sanaedit.export.web import export_web
    from sanaedit.formats.index import EXPORT_CLASS, RELEASE_KIND, folder_kind

    progress = not args.quiet
    kind = folder_kind(model)
    if kind == RELEASE_KIND:
        raise ValueError(f"{model}: MNN graphs; the browser runs ONNX: export --format web from the PyTorch folder")
    if kind == EXPORT_CLASS:
        if args.lora:
            raise ValueError(
                "--lora: an exported folder's graphs are fixed; export --format web from the PyTorch folder"
            )
        if args.quant is not None:
            raise ValueError("--quant: an exported folder's graphs are already quantized; it is for PyTorch folders")
        export_web(model, out, progress=progress)
    else:
        quant = DEFAULT_QUANT[Format.ONNX] if args.quant is None else args.quant
        quant = None if quant in ("none", "fp32") else quant
        parse_quant(quant)
        for module in NEEDS[Format.ONNX]:
            require(module, "sanaedit export --format web from a PyTorch model folder")
        from sanaedit.export import export_model

        with tempfile.TemporaryDirectory(prefix="sanaedit-web-") as scratch:
            graphs = Path(scratch) / "onnx"
            export_model(model, graphs, fmt=Format.ONNX, quant=quant, progress=progress, loras=args.lora)
            export_web(graphs, out, progress=progress)
    result(args, f"wrote {out}: serve it with `python -m http.server --directory {out}` and open the page")
    return 0


def add_parser(sub) -> None:
    p = add_command(
        sub,
        "export",
        "export a model folder to ONNX (ONNX Runtime) or MNN graphs",
        examples="""
sanaedit export DIR -o DIR-onnx                            ONNX, 4-bit LLM and 8-bit rest, the DiT computing in int8
sanaedit export DIR -o DIR-onnx --quant llm=4,rest=8       ONNX, the published mix as published (weights only)
sanaedit export DIR --format mnn -o DIR-mnn --quant none   MNN, fp32
sanaedit export DIR --format int8 -o DIR-int8              PyTorch, the DiT stored in int8 (--dtype int8, no conversion)
sanaedit export --format web -o site                       the bundled model, editing inside a browser (static files)
sanaedit edit photo.jpg -o out.png --model DIR-onnx        run the export""",
    )
    p.add_argument(
        "model_dir", metavar="MODEL_DIR", nargs="?", default=None,
        help="a model folder (from train, assemble or save_pretrained); for --format web also an ONNX export "
        "(default: the bundled model)",
    )  # fmt: skip
    p.add_argument(
        "--format", choices=FORMATS, default="onnx",
        help="graph format (default: onnx); int8: a PyTorch model folder with its DiT stored in int8 (--quant unused); "
        "web: a static folder that edits inside a browser on the visitor's device (onnxruntime-web)",
    )  # fmt: skip
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder, written atomically (required)")
    p.add_argument(
        "--quant",
        default=None,
        help=f"weight bits per part, e.g. {PUBLISHED_QUANT!r}, 'transformer=8,rest=32', or 'none' (fp32); default: "
        f"{DEFAULT_QUANT['onnx']!r} for onnx, {DEFAULT_QUANT['mnn']!r} for mnn. "
        "w8a8 (ONNX only) computes in int8: 'transformer=w8a8' (activations ranged per call), "
        "'vae_encoder=w8a8,vae_decoder=w8a8' and 'tiny_vae_encoder=w8a8,tiny_vae_decoder=w8a8' (calibrated on photos)",
    )
    add_lora_arg(p)
    p.set_defaults(func=run)
