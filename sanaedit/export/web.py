"""`sanaedit export [MODEL] --format web -o DIR`: a static folder that edits photos inside a browser, on the
visitor's own device (onnxruntime-web's WebAssembly build); any static file server can serve it.

The page (`sanaedit/web/page/`) repeats `sanaedit edit` in JavaScript: decoding, preprocessing, the sampler, the
autoencoder, the guided filter and the refiner, over the ONNX graphs of an ONNX export. The model's own prompt comes
from its prompt cache, so no LLM runs in the browser (the page offers no prompt). Every number the Python decides
is written here into `config.json` from its one definition (the noise levels of every step count the page offers,
the timestep scale, the upsampling settings), so the page cannot drift from the CLI; tests/web checks the
JavaScript's arithmetic against the Python's.

Layout of the folder:

    index.html, *.mjs, *.css     the page (its Content-Security-Policy in a <meta>: this folder only)
    config.json                  the model's settings for the page
    conditioning.bin             the prompt cache: float32 arrays at the offsets config.json gives
    graphs/*.onnx                the graphs an edit runs: transformer, vae_encoder, vae_decoder (the planned
                                 autoencoder's), refiner (when the model refines)
    ort/                         onnxruntime-web (vendored in sanaedit/web/onnxruntime-web/, with its licence)

`sanaedit serve` serves the same files under /device/ (`web_files`), with the headers that give the page threads.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from sanaedit.core.atomic import atomic_folder
from sanaedit.core.choices import Format, Upsample, Vae
from sanaedit.core.flow import TIMESTEP_SCALE
from sanaedit.core.sampling import flow_sigmas
from sanaedit.errors import ModelFolderError
from sanaedit.formats.exported import ExportedFolder, check_exported
from sanaedit.formats.index import TINY_GRAPHS
from sanaedit.formats.prompt_cache import load_prompt_cache
from sanaedit.image.io import DEFAULT_MAX_ASPECT, DEFAULT_MAX_PIXELS
from sanaedit.image.upsample import EPS, RADIUS, REFINE_MAX_PIXELS
from sanaedit.models.refine_tiles import REFINER_GRAPH, TILE
from sanaedit.plan import make_plan

logger = logging.getLogger(__name__)

WEB = Path(__file__).resolve().parent.parent / "web"
PAGE = WEB / "page"  # the page's own files
RUNTIME = WEB / "onnxruntime-web"  # the vendored runtime (its README says where it came from)
RUNTIME_VERSION = "1.31.1"
RUNTIME_FILES = (
    "ort.wasm.min.mjs",
    "ort-wasm-simd-threaded.mjs",
    "ort-wasm-simd-threaded.wasm",
    "LICENSE",
    "README.md",
)
RUNTIME_FOLDER = "ort/"
CONFIG_FILE, CONDITIONING_FILE = "config.json", "conditioning.bin"
MAX_STEPS = 50  # the step counts the page offers (the server's limit too): config.json holds each one's noise levels
# The page's policy: its own scripts and WebAssembly, requests to its own folder only, images from it or the photo
# picked (blob:). `sanaedit serve` sends it as a header; the exported index.html carries it in a <meta>.
CSP = (
    "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self'; connect-src 'self'; "
    "img-src 'self' blob: data:; style-src 'self'; base-uri 'none'; form-action 'none'"
)
CSP_PLACEHOLDER = "__CSP__"
NODE_CHECK = WEB / "check_graphs.mjs"  # loads every graph of a web folder in onnxruntime-web under Node


def page_files() -> dict[str, Path | bytes]:
    """The page's files (name in the folder -> file or content); index.html with its policy filled in."""
    files: dict[str, Path | bytes] = {p.name: p for p in sorted(PAGE.iterdir()) if p.is_file()}
    files["index.html"] = (PAGE / "index.html").read_text().replace(CSP_PLACEHOLDER, CSP).encode()
    return files


def web_files(
    folder: str | Path, vae: Vae | str | None = None, server_page: str | None = None
) -> dict[str, Path | bytes]:
    """Every file of the web folder for an ONNX export `folder` (name -> a file to copy or its content): the page,
    config.json, the prompt cache, the graphs an edit runs and the runtime. `server_page`: where the page of the
    server that serves it is (`sanaedit serve`: the page then offers to edit on the server instead). Raises
    ModelFolderError, in one line, for a folder the browser cannot run."""
    folder = Path(folder)
    manifest = check_exported(folder)
    source = ExportedFolder(folder)
    if source.info.format != Format.ONNX:
        raise ModelFolderError(
            f"{folder}: holds {source.info.format} graphs; the browser runs ONNX: export the model with --format onnx "
            "(or --format web from its PyTorch folder)"
        )
    plan = make_plan(source.info, vae=vae)
    config = plan.config
    upsample = config.upsample
    if upsample == Upsample.REFINE and REFINER_GRAPH not in manifest["graphs"]:
        # an export from before the refiner was a graph: only PyTorch runs it
        logger.warning("%s: its refiner is not a graph (an older export): the page upsamples 'guided'", folder)
        upsample = Upsample.GUIDED
    graphs, files = page_graphs(folder, manifest, plan.vae, upsample == Upsample.REFINE)
    conditioning, entries = conditioning_bytes(folder, [config.prompt, config.negative_prompt])
    page_config = {
        "format": "sanaedit-web",
        "model": folder.name,
        "runtime": {
            "name": "onnxruntime-web",
            "version": RUNTIME_VERSION,
            "folder": RUNTIME_FOLDER,
            "entry": RUNTIME_FOLDER + RUNTIME_FILES[0],
        },
        "graphs": graphs,
        "conditioning": {"file": CONDITIONING_FILE, "bytes": len(conditioning), "entries": entries},
        "pipeline": {
            "resolution": config.resolution,
            "prompt": config.prompt,
            "negative_prompt": config.negative_prompt,
            "num_inference_steps": config.num_inference_steps,
            "guidance_scale": config.guidance_scale,
            "sampler": str(config.sampler),
            "schedule": str(config.schedule),
            "shift": config.shift,
            "padding": str(config.padding),
            "upsample": str(upsample),
        },
        "latent": {
            "channels": manifest["transformer"]["out_channels"],
            "size": config.resolution // manifest["vae"]["scale_factor"],
        },
        "timestep_scale": TIMESTEP_SCALE,
        "sigmas": {str(n): flow_sigmas(n, config.shift, config.schedule).tolist() for n in range(1, MAX_STEPS + 1)},
        "upsample": {"radius": RADIUS, "eps": EPS, "refine_max_pixels": REFINE_MAX_PIXELS, "tile": TILE},
        "limits": {"max_steps": MAX_STEPS, "max_pixels": DEFAULT_MAX_PIXELS, "max_aspect": DEFAULT_MAX_ASPECT},
        **({"server_page": server_page} if server_page else {}),
    }
    runtime = {RUNTIME_FOLDER + name: RUNTIME / name for name in RUNTIME_FILES}
    return {
        **page_files(),
        **files,
        **runtime,
        CONDITIONING_FILE: conditioning,
        CONFIG_FILE: (json.dumps(page_config, indent=1) + "\n").encode(),
    }


def page_graphs(folder: Path, manifest: dict, vae: Vae, refine: bool) -> tuple[dict, dict[str, Path]]:
    """(config.json's "graphs": each role's file, I/O names and size; the graph files by their name in the folder)
    for the graphs an edit runs: the DiT, the planned autoencoder's encoder and decoder, the refiner."""
    encoder, decoder = TINY_GRAPHS if vae == Vae.TINY else ("vae_encoder", "vae_decoder")
    roles = {"transformer": "transformer", "vae_encoder": encoder, "vae_decoder": decoder}
    if refine:
        roles["refiner"] = REFINER_GRAPH
    graphs, files = {}, {}
    for role, name in roles.items():
        entry = manifest["graphs"][name]
        path = folder / entry["file"]
        sides = sorted(p for p in path.parent.glob(path.name + ".*") if p.is_file())
        if sides:
            raise ModelFolderError(
                f"{path}: its weights are in a side file ({sides[0].name}), too large for a browser's 2 GB per "
                "graph; the web format takes graphs in one file"
            )
        graphs[role] = {"file": f"graphs/{name}.onnx", "inputs": entry["inputs"], "outputs": entry["outputs"],
                        "bytes": path.stat().st_size}  # fmt: skip
        if role == "refiner":  # its tiling (models/refine_tiles.py)
            graphs[role].update(factor=int(entry["factor"]), margin=int(entry["margin"]))
        files[graphs[role]["file"]] = path
    return graphs, files


def conditioning_bytes(folder: Path, prompts: list[str]) -> tuple[bytes, dict]:
    """The prompt cache's entries for `prompts` as one float32 blob, and where each array is in it."""
    cache = load_prompt_cache(folder, framework="np")
    missing = [p for p in dict.fromkeys(prompts) if p not in cache]
    if missing:
        raise ModelFolderError(
            f"{folder}: its prompt cache lacks the model's own prompt {missing[0]!r}, and the browser runs no LLM; "
            "export the model again"
        )
    blob, entries = bytearray(), {}
    for prompt in dict.fromkeys(prompts):
        entries[prompt] = {}
        for key, array in zip(("hidden", "mask"), cache[prompt]):
            data = np.ascontiguousarray(array, dtype="<f4")
            entries[prompt][key] = {"offset": len(blob), "shape": list(data.shape)}
            blob += data.tobytes()
    return bytes(blob), entries


def write_files(files: dict[str, Path | bytes], out: Path) -> None:
    for name, content in files.items():
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            shutil.copyfile(content, target)


def export_web(folder: str | Path, out: str | Path, vae: Vae | str | None = None, progress: bool = True) -> Path:
    """Write the web folder of the ONNX export `folder` to `out`, atomically; its graphs are first loaded in
    onnxruntime-web where Node.js is installed (`check_in_browser_runtime`)."""
    files = web_files(folder, vae)  # every check before anything is written
    out = Path(out)
    with atomic_folder(out) as tmp:
        write_files(files, tmp)
        checked = check_in_browser_runtime(tmp)
    size = sum(len(c) if isinstance(c, bytes) else c.stat().st_size for c in files.values())
    if progress:
        how = f"its graphs load in onnxruntime-web {RUNTIME_VERSION} ({checked})" if checked else (
            "Node.js not found: its graphs were not test-loaded in onnxruntime-web")  # fmt: skip
        logger.info(f"exported {out} (web, {size / 2**20:.1f} MiB): {how}")
    return out


def check_in_browser_runtime(web_folder: Path, timeout_s: float = 120.0) -> str | None:
    """Load every graph of `web_folder` in its own onnxruntime-web (the WebAssembly build, under Node.js): an op the
    browser's runtime lacks (e.g. ConvInteger with int8 weights) fails here, not on a visitor's phone. Returns what
    ran it ("Node v20..."), or None where Node.js is not installed. Raises ModelFolderError naming the graph."""
    node = shutil.which("node")
    if node is None:
        return None
    with tempfile.TemporaryDirectory() as scratch:
        try:
            run = subprocess.run(
                [node, str(NODE_CHECK), str(web_folder)], capture_output=True, text=True, timeout=timeout_s,
                cwd=scratch,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as err:
            logger.warning(f"could not check the graphs in onnxruntime-web with Node.js ({err})")
            return None
    try:
        report = json.loads(run.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        logger.warning(f"could not check the graphs in onnxruntime-web with Node.js: {run.stderr.strip()[-300:]}")
        return None
    failed = {name: error for name, error in report["graphs"].items() if error}
    if failed:
        name, error = next(iter(failed.items()))
        raise ModelFolderError(
            f"graph {name} does not load in onnxruntime-web {RUNTIME_VERSION}, the browser's runtime ({error}); "
            "export the model with other --quant settings (e.g. without w8a8 for that graph)"
        )
    return f"Node {report['node']}"
