"""Shared test fixtures (the tiny model, its folder and MNN release, editing pairs, a live server on loopback) and
plain helpers used by more than one test file (`from tests.conftest import ...`): headless Chromium included."""

import io
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download anything
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_pipe():
    from sanaedit.tools.random_model import build_tiny_pipeline

    return build_tiny_pipeline(seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_pipe):
    """A tiny model folder in the real layout, written once per session (treat as read-only)."""
    return tiny_pipe.save_pretrained(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_mnn_release(tmp_path_factory, tiny_model_dir):
    """The tiny model exported in the published MNN release's layout (the LLM through llmexport, 4-bit; the rest
    8-bit), once per session (treat as read-only; copy it to change it)."""
    import importlib.util

    pytest.importorskip("MNN")
    if importlib.util.find_spec("llmexport") is None:  # (importing it needs its folder on sys.path)
        pytest.skip("llmexport is not installed")
    from sanaedit.export import export_model

    out = tmp_path_factory.mktemp("release") / "tiny-mnn"
    return export_model(tiny_model_dir, out, fmt="mnn", quant="llm=4,rest=8", progress=False)


@pytest.fixture
def emulated_cpu(monkeypatch):
    """A CPU without bf16 and fp16 instructions, whatever this one has, and no dtype said yet in this process. Yields
    the list of warnings sanaedit.plan logs from then on (seen even after the CLI's `configure` stopped propagation)."""
    import logging

    import sanaedit.plan as plan

    monkeypatch.setattr(plan, "has_fast_bf16", lambda: False)
    monkeypatch.setattr(plan, "has_fast_fp16", lambda: False)
    monkeypatch.setattr(plan, "WARNED", set())
    said: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: said.append(record.getMessage())
    plan.logger.addHandler(handler)
    yield said
    plan.logger.removeHandler(handler)


@pytest.fixture(scope="session")
def lora_dir(tmp_path_factory):
    """A trained-looking LoRA for the tiny model (B not zero), saved by our writer (treat as read-only)."""
    from sanaedit.models.lora import add_lora, save_lora
    from sanaedit.tools.random_model import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    add_lora(pipe.transformer, rank=4, targets=("to_q", "to_k", "to_v", "to_out.0"))
    with torch.no_grad():
        for name, param in pipe.transformer.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn_like(param) * 0.5)
    return save_lora(pipe.transformer, tmp_path_factory.mktemp("lora") / "style").parent


def trained_looking(controlnet, seed: int = 1):
    """A ControlNet whose zero layers (input block, output projections) are not zero: as after training."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in controlnet.named_parameters():
            if name.startswith(("input_block.", "controlnet_blocks.")):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return controlnet


@pytest.fixture(scope="session")
def tiny_controlnet_model(tmp_path_factory):
    """The tiny model folder with a trained-looking ControlNet in it (`controlnet/`), written once per session
    (treat as read-only)."""
    from sanaedit.models.controlnet import controlnet_from_transformer
    from sanaedit.tools.random_model import build_tiny_pipeline

    pipe = build_tiny_pipeline(seed=0)
    pipe.set_controlnet(trained_looking(controlnet_from_transformer(pipe.transformer, num_layers=1)))
    return pipe.save_pretrained(tmp_path_factory.mktemp("models") / "tiny-controlnet")


@pytest.fixture
def tiny_edit_pairs(tmp_path):
    """Two random 64 px editing triples with a manifest: enough data for a training step on the tiny model."""
    import json

    import numpy as np
    from PIL import Image

    data = tmp_path / "pairs"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(data / f"s{i}.png")
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(data / f"t{i}.png")
    records = [{"source": f"s{i}.png", "target": f"t{i}.png", "prompt": "x"} for i in range(2)]
    (data / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    return data


# ------------------------------------------------------------------------------------------------ test images
def gradient(w=40, h=30):
    """A w x h RGB picture with a gradient in each of red and green (no two rows or columns alike)."""
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.uint8)[:, None, None]
    return Image.fromarray(
        np.concatenate(
            [np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)), np.full((h, w, 1), 128, np.uint8)], axis=2
        )
    )


def boxed(w=40, h=30):
    """`gradient` with a white box in its middle: a picture with edges to find (a control image's)."""
    picture = gradient(w, h)
    picture.paste((255, 255, 255), (w // 4, h // 4, 3 * w // 4, 3 * h // 4))
    return picture


def png_header_only(path, width, height):
    """A PNG that declares width x height but holds almost no data (a decompression bomb's header)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def png(size=(24, 16), color="green", mode="RGB") -> bytes:
    """The bytes of a plain PNG."""
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------- a server without a model
LOCAL = "http://127.0.0.1"


def flip(image, **kwargs):  # a stand-in edit: instant, no model
    cb = kwargs.get("callback")
    if cb:
        cb(1, 1)
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def wait_state(get, job_id, timeout=30):
    """The job's final state ("done" or "failed") polled through `get` (a client's or httpx's get)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = get(f"/api/jobs/{job_id}").json()
        if state["state"] in ("done", "failed"):
            return state
        time.sleep(0.02)
    raise AssertionError("job did not finish")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def launch_chromium(pw):
    """Debian's headless Chromium through Playwright (a test tool's own browser download cannot work offline); the
    test is skipped where it is not installed."""
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian chromium is not installed (.ci/run installs it)")
    return pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


def wait_js(page, expression, timeout=30.0):
    """Poll a JS expression from outside the page: the pages' CSPs forbid the eval Playwright's wait_for_function
    injects (and those CSPs are part of what the tests check)."""
    deadline = time.time() + timeout
    while not page.evaluate(expression):
        assert time.time() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.1)


def open_server_page(page, url):
    """`sanaedit serve`'s page at `url`, once it has loaded the server's defaults into its form."""
    page.goto(url)
    wait_js(page, "document.getElementById('steps').value !== ''")


def restyled_export(folder, **pipeline):
    """A copy of the bundled model's ONNX export in `folder`, whose model_index.json asks for other pipeline
    settings (`sampler="dpm"`, `guidance_scale=2.0`, ...)."""
    import json
    from pathlib import Path

    from sanaedit.load import BUNDLED_EXPORT

    copy = shutil.copytree(BUNDLED_EXPORT, Path(folder) / "restyled")
    index = json.loads((copy / "model_index.json").read_text())
    index["pipeline"].update(pipeline)
    (copy / "model_index.json").write_text(json.dumps(index))
    return copy


def static_server(folder) -> tuple[str, subprocess.Popen]:
    """`python -m http.server` on a free loopback port serving `folder`, as anyone would serve a static folder:
    (its URL, the process). Returns once it answers."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return f"http://127.0.0.1:{port}", process
        except OSError:
            assert process.poll() is None and time.time() < deadline, "http.server did not start"
            time.sleep(0.05)


def serve_in_thread(server, poll_s: float = 0.02) -> threading.Thread:
    """Run a uvicorn server on a daemon thread; return once it accepts connections (30 s at most)."""
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline, "server did not start"
        time.sleep(poll_s)
    return thread


@pytest.fixture
def live(tmp_path):
    """start(edit, header_timeout_s=, connections_per_client=, **create_app options) -> base URL of a real uvicorn
    server on loopback with the CLI's connection limits."""
    import uvicorn

    from sanaedit.apps.serve.app import create_app
    from sanaedit.apps.serve.http import uvicorn_options

    servers = []

    def start(edit, header_timeout_s=10.0, connections_per_client=32, **options):
        port = free_port()
        app = create_app(edit, tmp_path / "results", **options)
        limits = uvicorn_options(header_timeout_s, connections_per_client)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical", **limits))
        servers.append((server, serve_in_thread(server)))
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(30)
