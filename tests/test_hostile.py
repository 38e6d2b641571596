"""Hostile conditions (issue 11): the server and the CLI hold. Loopback only, each test bounded in time; the heavy
memory checks run in subprocesses (their own peak RSS, not this process's).

Numbered as the issue: 1 worker and health, 2 thin strips, 3 decode amplification, 4 slow loris, 5 web hardening,
6 formats handed to external programs, 8 raw tracebacks, 9 temporaries of killed processes, 10 every piece checked
at load, 11 batch reporting. (7, an output that is an input, is in test_cli.py; the server's peak RSS under the
whole hostile corpus is bench/serve_hostile.py, run by the slow test at the end.)
"""

from __future__ import annotations

import asyncio
import errno
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from sanaedit.apps.batch import edit_folder
from sanaedit.apps.cli import main
from sanaedit.apps.serve.app import create_app
from sanaedit.apps.serve.http import uvicorn_options
from sanaedit.errors import ImageLoadError, ModelFolderError
from sanaedit.image.io import (
    decode_cost,
    decode_image,
    decode_reduced,
    load_image,
    postprocess,
    preprocess,
    save_image_atomic,
)

ROOT = Path(__file__).resolve().parents[1]
LOCAL = "http://127.0.0.1"


def png(size=(24, 16), color="green", mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def flip(image, **kwargs):  # a stand-in edit: instant, no model
    cb = kwargs.get("callback")
    if cb:
        cb(1, 1)
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def wait_state(get, job_id, timeout=30):
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


@pytest.fixture
def live(tmp_path):
    """start(edit, header_timeout_s=, connections_per_client=, **create_app options) -> base URL of a real uvicorn
    server on loopback with the CLI's connection limits."""
    servers = []

    def start(edit, header_timeout_s=10.0, connections_per_client=32, **options):
        port = free_port()
        app = create_app(edit, tmp_path / "results", **options)
        limits = uvicorn_options(header_timeout_s, connections_per_client)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical", **limits))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.time() + 30
        while not server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.02)
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(30)


def closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """(whether the server closed `sock` within `seconds`, what it sent before)."""
    sock.settimeout(seconds)
    got = b""
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return True, got
            got += chunk
    except TimeoutError:
        return False, got
    except ConnectionResetError:
        return True, got


# ----------------------------------------------------------------------------------------- 1. worker and health
def test_1_a_failing_prune_never_ends_the_worker_and_errors_hide_server_paths(tmp_path, monkeypatch):
    from sanaedit.apps.serve.jobs import JobQueue

    prunes = []
    original = JobQueue._prune

    def flaky_prune(self):
        prunes.append(1)
        if len(prunes) == 1:
            raise OSError(errno.EACCES, "Permission denied", str(tmp_path / "results" / "old.png"))
        original(self)

    monkeypatch.setattr(JobQueue, "_prune", flaky_prune)
    calls = []

    def edit(image, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", "/srv/secret/results/.x.png.1.abcdefgh.tmp")
        if len(calls) == 3:
            raise RuntimeError("cannot load /srv/secret/models/llm/model.safetensors: NaN/inf weights")
        return flip(image, **kw)

    with TestClient(create_app(edit, tmp_path / "results"), base_url=LOCAL) as c:
        states = [wait_state(c.get, c.post("/api/jobs?steps=1", content=png()).json()["id"]) for _ in range(4)]
        assert [s["state"] for s in states] == ["done", "failed", "failed", "done"]  # the worker went on
        assert states[1]["error"] == "the server could not finish this job (No space left on device)"
        assert "/srv" not in states[2]["error"] and "model.safetensors: NaN/inf weights" in states[2]["error"]
        health = c.get("/api/health")
        assert health.status_code == 200 and health.json()["worker"] == "idle"
        assert health.json()["failed_jobs"] == 2
        c.app.state.jobs.close()  # the worker is gone: health says so, and no job is queued for nobody
        health = c.get("/api/health")
        assert health.status_code == 503 and health.json()["worker"] == "stopped"
        assert c.post("/api/jobs", content=png()).status_code == 503


def test_1_even_a_baseexception_in_a_job_leaves_the_worker_running(tmp_path):
    def exits(image, **kw):
        raise SystemExit(3)  # a library calling sys.exit in the worker thread

    with TestClient(create_app(exits, tmp_path / "r"), base_url=LOCAL) as c:
        for _ in range(2):
            assert wait_state(c.get, c.post("/api/jobs", content=png()).json()["id"])["state"] == "failed"
        assert c.get("/api/health").json()["worker"] == "idle"


# ------------------------------------------------------------------------------------------------ 2. thin strips
def strip_png(width: int, height: int = 1) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height), 128).save(buf, format="PNG")
    return buf.getvalue()


def test_2_strips_are_refused_from_the_header_in_no_time():
    data = strip_png(40_000_000)  # a 39 KB PNG that would pad to a 40,000,000 px square
    assert len(data) < 60_000
    start = time.perf_counter()
    for width in (40_000_000, 20_000):
        with pytest.raises(ImageLoadError, match=r"strip \(aspect ratio \d+:1, the limit is 20:1\)"):
            decode_image(strip_png(width) if width != 40_000_000 else data, "strip.png")
        with pytest.raises(ImageLoadError, match="strip"):
            decode_cost(data, "strip.png")
    assert time.perf_counter() - start < 5


def test_2_preprocess_never_builds_the_padded_square_and_restore_undoes_it(monkeypatch):
    made = []
    real_new = Image.new
    monkeypatch.setattr(Image, "new", lambda mode, size, *a, **k: made.append(size) or real_new(mode, size, *a, **k))
    strip = real_new("RGB", (2000, 100), (200, 30, 30))  # 20:1, the widest accepted
    pixels, restore = preprocess(strip, 64)
    assert pixels.shape == (1, 3, 64, 64) and made == [(64, 64)]  # nothing at 2000x2000
    assert restore.box == (0, 30, 64, 33)  # centred, 3 rows of 64: the layout of padding then resizing
    assert torch_close(pixels[0, 0, 30:33], 200 / 255 * 2 - 1, 0) and float(pixels[0, :, :30].max()) == -1
    back = postprocess(pixels, restore)
    assert back.size == (2000, 100) and np.asarray(back)[..., 0].mean() > 190  # the crop is the photo, not padding
    # a square photo and an odd-sized one round-trip exactly where nothing is resampled
    square = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    pixels, restore = preprocess(square, 64)
    assert np.array_equal(np.asarray(postprocess(pixels, restore)), np.asarray(square))


def torch_close(tensor, value, tol):
    return bool(np.abs(np.asarray(tensor) - value).max() <= tol + 1e-6)


# ---------------------------------------------------------------------------------------- 3. decode amplification
PEAK_SCRIPT = """
import sys, time
from sanaedit.image.io import decode_image, decode_reduced, ImageLoadError
def hwm():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
data = open(sys.argv[1], "rb").read()
base = hwm()
image, size = decode_reduced(data, "x", int(sys.argv[2]), max_pixels=40_000_000)
print(image.size[0], image.size[1], size[0], size[1], hwm() - base)
"""


@pytest.mark.parametrize(
    "kind",
    ["16-bit gray PNG", "RGBA PNG", "palette PNG", "JPEG"],
)
def test_3_a_6300px_upload_is_decoded_in_bounded_memory(tmp_path, kind):
    """Before: a 77 KB 16-bit 6300x6300 PNG cost ~1 GB per decode. Now the decode costs about the file's raw
    pixels once (Pillow's own buffer), then bands; a JPEG is scaled by the codec and costs almost nothing."""
    path = tmp_path / "big"
    side = 6300
    if kind == "16-bit gray PNG":
        Image.new("I;16", (side, side), 30000).save(path, format="PNG")
        raw = side * side * 2
    elif kind == "RGBA PNG":
        Image.new("RGBA", (side, side), (1, 2, 3, 200)).save(path, format="PNG")
        raw = side * side * 4
    elif kind == "palette PNG":
        Image.new("P", (side, side), 3).save(path, format="PNG", transparency=0)
        raw = side * side
    else:
        Image.new("RGB", (4000, 3000), (10, 200, 30)).save(path, format="JPEG")
        raw = 0
    done = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(path), "512"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    w, h, ow, oh, peak_mb = (float(v) for v in done.stdout.split())
    assert 512 <= max(w, h) < 1024 and (ow, oh) == ((4000, 3000) if kind == "JPEG" else (side, side))
    assert peak_mb < raw / 2**20 * 1.3 + 40, (kind, peak_mb)  # ~1000 MB before for the 16-bit PNG


def test_3_concurrent_decodes_wait_for_room_in_the_memory_budget():
    from sanaedit.apps.serve.limits import MemoryBudget

    budget, seen = MemoryBudget(100), []

    async def decode(cost):
        async with budget.hold(cost):
            seen.append(budget.used)
            await asyncio.sleep(0.01)

    async def scenario():
        await asyncio.gather(*(decode(60) for _ in range(4)), decode(500))

    asyncio.run(scenario())
    assert max(seen) <= 500 and all(used in (60, 500) for used in seen)  # never two 60s at once; 500 runs alone
    assert budget.used == 0


def test_3_decode_cost_is_read_from_the_header():
    assert decode_cost(png((100, 50), mode="RGBA")) == 100 * 50 * 4
    assert decode_cost(png((100, 50), mode="L")) == 100 * 50
    buf = io.BytesIO()
    Image.new("RGB", (4000, 3000)).save(buf, format="JPEG")
    assert decode_cost(buf.getvalue(), reduce_to=512) == 1000 * 750 * 4  # the codec decodes it at 1/4


def test_3_the_server_decodes_small_and_returns_the_uploads_own_size(tmp_path):
    seen = []

    def edit(image, **kw):
        seen.append(image.size)
        return flip(image, **kw)

    edit.work_side = 64
    with TestClient(create_app(edit, tmp_path / "r"), base_url=LOCAL) as c:
        job = c.post("/api/jobs", content=png((1000, 600))).json()["id"]
        assert wait_state(c.get, job)["state"] == "done"
        assert seen == [(67, 40)]  # reduced by 15 while decoding (longer side >= 64)
        assert Image.open(io.BytesIO(c.get(f"/api/jobs/{job}/result").content)).size == (1000, 600)


def test_3_reduced_decoding_never_escapes_a_raw_exception():
    import random

    rng = random.Random(1)
    pixels = Image.fromarray(np.random.default_rng(1).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    sources = []
    for fmt, mode in (("PNG", "P"), ("PNG", "I;16"), ("JPEG", "RGB"), ("TIFF", "F"), ("GIF", "P"), ("WEBP", "RGBA")):
        buf = io.BytesIO()
        pixels.convert(mode if mode != "I;16" else "I").convert(mode).save(buf, format=fmt)
        sources.append(buf.getvalue())
    for _ in range(300):
        data = bytearray(rng.choice(sources))
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            image, size = decode_reduced(bytes(data), "fuzz", 16)
            assert image.mode == "RGB" and len(size) == 2
        except ImageLoadError as err:
            assert str(err).startswith("fuzz: ") and "\n" not in str(err)


# --------------------------------------------------------------------------------------------------- 4. slow loris
def test_4_connections_with_incomplete_headers_are_cut_off(live):
    url = live(flip, header_timeout_s=1.0)
    port = int(url.rsplit(":", 1)[1])
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    for i, s in enumerate(socks):
        s.sendall(b"POST /api/jobs HTTP/1.1\r\nHost: 127.0" if i % 2 else b"")  # half a request, or nothing
    start = time.perf_counter()
    results = [closed_within(s, 5.0) for s in socks]
    took = time.perf_counter() - start
    for s in socks:
        s.close()
    assert all(closed for closed, _ in results) and took < 4.0, (results, took)
    assert results[1][1].startswith(b"HTTP/1.1 408")
    assert httpx.post(f"{url}/api/jobs", content=png()).status_code == 202  # the server is fine


def test_4_a_client_cannot_hold_every_upload_place_and_stalls_are_cut_off(live):
    """Eight stalled uploads from one client (default queue 8) used to lock everyone out for 120 s."""
    url = live(flip, header_timeout_s=1.0, max_queued=8, upload_idle_s=1.0)
    port = int(url.rsplit(":", 1)[1])
    stalled = []
    for _ in range(8):  # from 127.0.0.2, a client of its own
        s = socket.socket()
        s.bind(("127.0.0.2", 0))
        s.connect(("127.0.0.1", port))
        s.sendall(b"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5000\r\n\r\n\x89PNG")
        stalled.append(s)
    start = time.perf_counter()
    assert httpx.post(f"{url}/api/jobs", content=png()).status_code == 202  # another client still gets in
    replies = [closed_within(s, 4.0)[1] for s in stalled]
    # two hold upload places (the per-client cap for a queue of 8) until cut off after 1 s without data; the
    # other six are refused at once
    assert sum(r.startswith(b"HTTP/1.1 503") for r in replies) == 6 and b"upload(s) in progress" in replies[-1]
    assert sum(r.startswith(b"HTTP/1.1 408") for r in replies) == 2 and b"no data for 1 s" in replies[0]
    assert time.perf_counter() - start < 6
    for s in stalled:
        s.close()


def test_4_one_client_cannot_use_up_the_connections(live):
    url = live(flip, connections_per_client=5)
    port = int(url.rsplit(":", 1)[1])
    mine = []
    for _ in range(8):
        s = socket.socket()
        s.bind(("127.0.0.2", 0))
        s.connect(("127.0.0.1", port))
        mine.append(s)
    closed = [closed_within(s, 0.5)[0] for s in mine]
    assert closed == [False] * 5 + [True] * 3  # over 5 from one client: closed at once
    assert httpx.get(f"{url}/api/health").status_code == 200  # others are served meanwhile
    for s in mine:
        s.close()


def test_4_a_body_still_trickling_after_a_refusal_is_cut_off(live):
    url = live(flip, header_timeout_s=1.0, max_upload_bytes=1000)
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n" + b"x" * 10)
        closed, reply = closed_within(s, 4.0)
    assert reply.startswith(b"HTTP/1.1 413") and closed


# ------------------------------------------------------------------------------------------------ 5. web hardening
def test_5_host_header_cross_origin_writes_and_security_headers(tmp_path):
    app = create_app(flip, tmp_path / "r")
    with TestClient(app, base_url=LOCAL) as c:
        assert c.get("/api/health", headers={"Host": "evil.example"}).status_code == 400  # DNS rebinding
        assert c.get("/api/health", headers={"Host": "localhost:7860"}).status_code == 200
        body = png()
        for headers in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}, {"Origin": "null"}):
            res = c.post("/api/jobs", content=body, headers={"Content-Type": "text/plain", **headers})
            assert res.status_code == 403 and "another site" in res.json()["detail"], headers
        assert c.post("/api/jobs", content=body, headers={"Origin": "http://127.0.0.1"}).status_code == 202
        assert c.post("/api/jobs", content=body, headers={"Sec-Fetch-Site": "same-origin"}).status_code == 202
        assert c.post("/api/jobs", content=body).status_code == 202  # not a browser: no Origin, no Sec-Fetch-Site
        page = c.get("/")
        csp = page.headers["content-security-policy"]
        nonce = csp.split("'nonce-", 1)[1].split("'", 1)[0]
        assert f'<script nonce="{nonce}">' in page.text and "frame-ancestors 'none'" in csp
        for res in (page, c.get("/api/config"), c.get("/api/jobs/nope")):
            assert res.headers["x-content-type-options"] == "nosniff" and res.headers["x-frame-options"] == "DENY"
        assert c.get("/api/config").headers["content-security-policy"].startswith("default-src 'none'")


def test_5_token(tmp_path):
    token = "t0ken-of-the-test-1234"
    with pytest.raises(ValueError, match="16 characters"):
        create_app(flip, tmp_path / "r", token="short")
    app = create_app(flip, tmp_path / "r", token=token)
    with TestClient(app, base_url=LOCAL) as c:
        assert c.get("/api/health").status_code == 200  # open: load balancers and monitors
        assert c.post("/api/jobs", content=png()).status_code == 401
        assert c.get("/api/config").status_code == 401 and c.get("/").status_code == 401
        assert c.get("/", headers={"Cookie": "sanaedit_token=wrong"}).status_code == 401
        res = c.post("/api/jobs", content=png(), headers={"Authorization": f"Bearer {token}"})
        assert res.status_code == 202
        login = c.get(f"/?token={token}", follow_redirects=False)
        assert login.status_code == 303 and login.headers["location"] == "/"
        assert "HttpOnly" in login.headers["set-cookie"] and "SameSite=Strict" in login.headers["set-cookie"]
        assert c.get("/").status_code == 200  # the cookie now rides along, as in the browser
        assert c.get(f"/api/jobs/{res.json()['id']}").status_code == 200


def test_5_cli_warns_when_exposed_without_a_token_and_prints_the_token_url(tiny_model_dir, monkeypatch, capsys):
    from sanaedit.apps.serve import server
    from sanaedit.apps.serve.security import host_policy

    started = {}
    monkeypatch.setattr(server, "serve", lambda app, **kw: started.update(app=app, **kw))  # uvicorn, gracefully
    base = ["serve", "--model", str(tiny_model_dir), "--port", "7999"]
    assert main([*base, "--host", "0.0.0.0"]) == 0
    assert "WITHOUT an access token" in capsys.readouterr().err
    assert started["http"].__name__ == "GuardedH11Protocol" and started["limit_concurrency"]
    assert main([*base, "--host", "0.0.0.0", "--token", "auto"]) == 0
    out = capsys.readouterr()
    assert "/?token=" in out.out and "WITHOUT" not in out.err
    with TestClient(started["app"], base_url=LOCAL) as c:
        assert c.post("/api/jobs", content=png()).status_code == 401
    assert main([*base, "--token", "x"]) == 1 and "16 characters" in capsys.readouterr().err  # before loading
    assert host_policy("127.0.0.1", None) == (["localhost", "127.0.0.1", "[::1]"], None)
    hosts, warning = host_policy("0.0.0.0", None)
    assert hosts is None and "WITHOUT an access token" in warning
    assert host_policy("0.0.0.0", "a-token-of-16-chars", ["photos.lan"])[0][-1] == "photos.lan"
    assert host_policy("192.168.1.5", "a-token-of-16-chars")[0] == ["localhost", "127.0.0.1", "[::1]", "192.168.1.5"]


# ------------------------------------------------------------------------------- 6. formats and external programs
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n"


def test_6_only_raster_formats_are_decoded(tmp_path, monkeypatch):
    from PIL import EpsImagePlugin

    def no_ghostscript(*a, **k):
        raise AssertionError("Ghostscript was started")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", no_ghostscript)
    (tmp_path / "vector.jpg").write_bytes(EPS)
    with pytest.raises(ImageLoadError) as err:
        load_image(tmp_path / "vector.jpg")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'vector.jpg'}: EPS files are not accepted; only JPEG, PNG")
    assert "\n" not in message
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PPM")
    with pytest.raises(ImageLoadError, match="PPM files are not accepted"):
        decode_image(buf.getvalue(), "x.ppm")
    with TestClient(create_app(flip, tmp_path / "r"), base_url=LOCAL) as c:
        res = c.post("/api/jobs?name=v.eps", content=EPS)
        assert res.status_code == 415 and "EPS files are not accepted" in res.json()["detail"]


# ---------------------------------------------------------------------------------------------- 8. raw tracebacks
def test_8_unwritable_outputs_fail_in_one_line_before_the_model_loads(tmp_path, monkeypatch, capsys):
    import sanaedit.load

    def no_model(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(sanaedit.load, "load_pipeline", no_model)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (8, 8)).save(photos / "a.png")
    (tmp_path / "file").write_text("x")
    cases = [
        (["edit", str(photos), "-o", str(tmp_path / "file")], "is a file, not a folder"),  # -o existing_file
        (["edit", str(photos / "a.png"), "-o", str(tmp_path / "file" / "x.png")], "is a file, not a folder"),
    ]
    monkeypatch.setattr(os, "access", lambda path, mode: not str(path).startswith(str(tmp_path / "ro")))
    (tmp_path / "ro").mkdir()
    cases.append((["edit", str(photos), "-o", str(tmp_path / "ro" / "out")], "cannot write there"))
    for args, words in cases:
        assert main(args) == 1
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_8_any_oserror_or_memoryerror_reaching_the_cli_is_one_line(monkeypatch, capsys, tmp_path):
    import sanaedit.apps.cli.edit as edit_cli

    for raised, words in (
        (PermissionError(errno.EACCES, "Permission denied", "/data/out"), "/data/out: Permission denied"),
        (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
        (MemoryError(), "out of memory"),
    ):

        def boom(args, raised=raised):
            raise raised

        monkeypatch.setattr(edit_cli, "run", boom)
        assert main(["edit", "x.jpg", "-o", str(tmp_path / "y.png")]) == 1
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, err


def test_8_a_full_disk_stops_the_batch_and_lists_what_was_not_attempted(tmp_path, monkeypatch):
    import sanaedit.apps.batch as batch

    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8)).save(src / f"{i}.png")
    writes = []

    def save(image, path):
        writes.append(path)
        if len(writes) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path.parent / ".2.png.1.abcdefgh@h.tmp"))
        return save_image_atomic(image, path)

    monkeypatch.setattr(batch, "save_image_atomic", save)
    edits = []
    summary = edit_folder(lambda im: edits.append(1) or im, src, tmp_path / "out", progress=False)
    assert [p.name for p in summary.done] == ["0.png"] and len(edits) == 2  # no edit after the disk filled
    reasons = dict(summary.failed)
    assert reasons[src / "1.png"].endswith(
        "cannot write " + str(tmp_path / "out" / "1.png") + ": No space left on device"
    )
    assert all("not attempted" in reasons[src / f"{i}.png"] and "--resume" in reasons[src / f"{i}.png"] for i in (2, 3))


@pytest.mark.slow  # a real EFBIG (RLIMIT_FSIZE) through the CLI in a subprocess: ~15 s
def test_8_efbig_through_the_real_cli_is_one_line_per_file(tiny_model_dir, tmp_path):
    import resource

    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(src / f"{i}.png")
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "sanaedit.apps.cli", "edit", str(src), "-o", str(out), "--model", str(tiny_model_dir)]
        + ["--steps", "1", "-q"],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000)),
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.count("File too large") == 3 and "done: 0 written" in done.stderr
    assert not [p for p in out.iterdir()]  # no partial output, no temporary left


def test_8_a_corrupt_graph_file_is_a_one_line_error(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("MNN")
    from sanaedit.backends.mnn_graph import MnnGraph
    from sanaedit.backends.ort_graph import OrtGraph
    from sanaedit.formats.exported import check_graph_file

    garbage = np.random.default_rng(0).integers(0, 255, 5000, dtype=np.uint8).tobytes()
    (tmp_path / "transformer.onnx").write_bytes(garbage)
    (tmp_path / "transformer.mnn").write_bytes(garbage)
    with pytest.raises(ModelFolderError, match=r"transformer.onnx: not a valid ONNX graph \(.*\); export"):
        OrtGraph(tmp_path / "transformer.onnx", threads=1)
    with pytest.raises(ModelFolderError, match="transformer.mnn: not a valid MNN graph"):
        MnnGraph(tmp_path / "transformer.mnn", ["x"], ["y"], threads=1)
    (tmp_path / "transformer.mnn.weight").write_bytes(b"w" * 10)  # a truncated side file: MNN would run it
    with pytest.raises(ModelFolderError, match="5,010 bytes with its side files, the export wrote 9,000"):
        check_graph_file(tmp_path, {"file": "transformer.mnn", "bytes": 9000})


@pytest.mark.slow  # an ONNX export of the tiny model: ~60 s
def test_8_a_damaged_export_fails_edit_and_info_in_one_line(tiny_model_dir, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from sanaedit.export import export_model
    from sanaedit.load import SAMPLE_PHOTO

    folder = export_model(tiny_model_dir, tmp_path / "onnx", fmt="onnx", progress=False)
    graph = folder / "transformer.onnx"
    good = graph.read_bytes()
    capsys.readouterr()  # the export's own progress output
    for damage, words in ((good[: len(good) // 2], "truncated or changed"), (bytes(len(good)), "not a valid ONNX")):
        graph.write_bytes(damage)
        for args in (["edit", str(SAMPLE_PHOTO), "-o", str(tmp_path / "o.png"), "--model", str(folder)],
                     ["info", str(folder)]):  # fmt: skip
            assert main(args) == 1
            err = capsys.readouterr().err
            assert words in err and err.count("\n") == 1 and "Traceback" not in err, err


# -------------------------------------------------------------------------------- 9. temporaries of killed writers
KILLED_WRITER = """
import os, sys, time
from pathlib import Path
from sanaedit.core.tempfiles import temp_file, temp_folder
fd, tmp = temp_file(Path(sys.argv[1]) / "a.png")
os.write(fd, b"half a png")
folder = temp_folder(Path(sys.argv[1]) / "model-onnx")
print(tmp.name, folder.name, flush=True)
time.sleep(60)
"""


def test_9_what_a_killed_writer_leaves_is_removed_by_the_next_but_a_live_ones_is_not(tmp_path, tiny_pipe):
    out = tmp_path / "out"
    out.mkdir()
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(out)], stdout=subprocess.PIPE, text=True
    )  # a live writer: its files stay
    names = writer.stdout.readline().split()
    from sanaedit.core.atomic import atomic_folder
    from sanaedit.image.io import remove_stale_temps

    assert remove_stale_temps(out) == [] and sorted(p.name for p in out.iterdir()) == sorted(names)
    writer.kill()  # kill -9
    writer.wait(30)
    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGB", (8, 8)).save(src / "a.png")
    summary = edit_folder(lambda im: im, src, out, progress=False)  # a batch into the same folder cleans up
    assert summary.done and (out / "a.png").is_file()
    assert names[0] not in {p.name for p in out.iterdir()}
    with atomic_folder(out / "model-onnx") as tmp:  # so does the next export / save of that folder
        (tmp / "x").write_text("x")
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "model-onnx"]


def test_9_a_model_folder_moved_aside_by_a_killed_writer_is_put_back(tmp_path):
    from sanaedit.core.atomic import atomic_folder

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / f".model.old-{pid}").mkdir()  # killed between moving the old folder aside and the new one in
    (tmp_path / f".model.old-{pid}" / "weights").write_text("the previous model")
    with atomic_folder(tmp_path / "other"):
        pass
    with atomic_folder(tmp_path / "model") as tmp:  # its next writer finds it first
        assert (tmp_path / "model" / "weights").read_text() == "the previous model"
        (tmp / "weights").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "other"]


def test_9_the_server_cleans_its_results_folder_at_start(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    results = tmp_path / "results"
    results.mkdir()
    stale = results / f".abc.png.{int(dead.stdout)}.k2j4h5g6.tmp"
    stale.write_bytes(b"partial")
    create_app(flip, results).state.jobs.close()
    assert not stale.exists()


# ---------------------------------------------------------------------------- 10. every piece checked at load time
def broken_copy(tiny_model_dir, tmp_path, name, damage) -> Path:
    folder = tmp_path / name
    shutil.copytree(tiny_model_dir, folder)
    damage(folder)
    return folder


def corrupt(path: Path):
    path.write_bytes(b"\x00garbage" * 10)


def truncate(path: Path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def no_weights(component: str, file: str = "diffusion_pytorch_model.safetensors"):
    """A component folder without its weights file (each loader would otherwise look for a .bin, or not at all)."""
    message = f"{component}: cannot load {component}: no weights file (expected {file}"
    return lambda f: (f / component / file).unlink(), message


def reshaped_connector(folder: Path):
    import torch
    from safetensors.torch import load_file, save_file

    path = folder / "connector" / "diffusion_pytorch_model.safetensors"
    save_file({k: torch.zeros(*(d + 1 for d in v.shape)) for k, v in load_file(path).items()}, path)


def wrong_queries(folder: Path):
    import torch
    from safetensors.torch import save_file

    save_file({"meta_queries": torch.zeros(8, 5)}, folder / "meta_queries.safetensors")


def unfit_projector(folder: Path):
    from sanaedit.models.projector import Projector

    Projector(in_features=32, out_features=17).save_pretrained(folder / "projector")


BROKEN = {  # what `edit` refuses, and so must `info`; the prompt cache stays (the LLM is never needed to edit)
    "index not JSON": (lambda f: (f / "model_index.json").write_text("{"), "not valid JSON"),
    "no vae": (lambda f: shutil.rmtree(f / "vae"), "missing component"),
    "corrupt transformer": (lambda f: corrupt(f / "transformer/diffusion_pytorch_model.safetensors"), "transformer"),
    "truncated vae": (lambda f: truncate(f / "vae/diffusion_pytorch_model.safetensors"), "vae"),
    "corrupt connector": (lambda f: corrupt(f / "connector/diffusion_pytorch_model.safetensors"), "connector"),
    "connector shapes": (reshaped_connector, "connector"),
    "0-byte meta_queries": (lambda f: (f / "meta_queries.safetensors").write_bytes(b""), "0 bytes"),
    "meta_queries width": (wrong_queries, "does not match the LLM width"),
    "projector unfit": (unfit_projector, "projector out_features 17 != transformer caption_channels 24"),
    "truncated llm": (lambda f: truncate(f / "llm/model.safetensors"), "llm"),
    "no tokenizer": (
        lambda f: [(f / "llm" / n).unlink() for n in ("tokenizer.json", "tokenizer_config.json")],
        "token",
    ),
    "corrupt prompt cache": (lambda f: corrupt(f / "prompt_cache.safetensors"), "prompt cache"),
    **{f"no {c} weights": no_weights(c) for c in ("transformer", "vae", "connector", "projector")},
    "no llm weights": no_weights("llm", "model.safetensors"),
    "transformer config []": (  # valid JSON, not an object: diffusers took it for a hub name
        lambda f: (f / "transformer/config.json").write_text("[]"),
        "transformer: cannot load transformer: config.json is not a JSON object",
    ),
    "connector config []": (
        lambda f: (f / "connector/config.json").write_text("[]"),
        "connector: cannot load connector: config.json is not a JSON object",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_10_a_broken_piece_fails_at_load_and_info_agrees(tiny_model_dir, tmp_path, case, capfd):
    from sanaedit.pipeline import SanaEditPipeline

    damage, words = BROKEN[case]
    folder = broken_copy(tiny_model_dir, tmp_path, "m", damage)
    with pytest.raises(ModelFolderError, match=re.escape(words)):
        SanaEditPipeline.from_pretrained(folder)  # at load, not when a --prompt first needs the text path
    capfd.readouterr()
    photo, out = tmp_path / "in.png", tmp_path / "out.png"
    Image.new("RGB", (32, 24)).save(photo)
    for command in (["info", str(folder)], ["edit", str(photo), "-o", str(out), "--model", str(folder)]):
        assert main(command) == 1, command
        err = capfd.readouterr().err  # the file descriptor's: library loggers write there too
        assert words in err and err.count("\n") == 1 and "Traceback" not in err, (command, err)
    assert not out.exists()


def test_10_float_tiff_is_scaled_by_its_range_and_nan_inf_are_quiet(tmp_path):
    values = np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(48, 64)
    Image.fromarray(values, "F").save(tmp_path / "unit.tif")
    gray = np.asarray(load_image(tmp_path / "unit.tif"))[..., 0].astype(int)
    assert abs(gray.mean() - 127.5) < 2 and gray.max() == 255  # not black
    values[0, :8] = [np.nan, np.inf, -np.inf, np.nan, 0.5, 2.0, -1, np.inf]
    Image.fromarray(values, "F").save(tmp_path / "odd.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy RuntimeWarning with a source line
        row = np.asarray(load_image(tmp_path / "odd.tif"))[0, :8, 0]
    assert list(row[:3]) == [0, 255, 0] and row[4] == 64  # max finite 2.0 -> white level 255
    Image.fromarray((np.nan_to_num(values, posinf=0, neginf=0) * 1000).astype(np.int32), "I").save(tmp_path / "i.tif")
    assert load_image(tmp_path / "i.tif").mode == "RGB"


# ------------------------------------------------------------------------------------------- 11. batch reporting
def test_11_nothing_vanishes_from_the_summary(tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(src / "good.png")
    os.mkfifo(src / "pipe.png")
    os.mkfifo(src / "pipe_without_suffix")
    os.symlink("/dev/null", src / "device.jpg")
    os.symlink(src / "loop.jpg", src / "loop.jpg")
    os.symlink(src / "gone.png", src / "dangling.png")
    os.symlink(src / "sub", src / "linked_folder")
    summary = edit_folder(flip, src, tmp_path / "out", recursive=True, progress=False)
    reasons = {p.name: reason for p, reason in summary.failed}
    assert [p.name for p in summary.done] == ["good.png"]
    assert "FIFO" in reasons["pipe.png"] and "device" in reasons["device.jpg"]
    assert "link loop" in reasons["loop.jpg"] and "broken symbolic link" in reasons["dangling.png"]
    assert sorted(p.name for p in summary.ignored) == ["linked_folder", "pipe_without_suffix"]
    assert "2 other file(s) ignored" in summary.report()


def test_11_unreadable_folders_are_reported_not_silent(tmp_path, monkeypatch, capsys):
    src = tmp_path / "in"
    (src / "locked").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(src / "a.png")
    real_scandir = os.scandir
    denied = {src / "locked"}

    def scandir(path="."):  # chmod 000 does not stop root: the OS's answer, simulated
        if Path(path) in denied:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    summary = edit_folder(flip, src, tmp_path / "out", recursive=True, progress=False)
    assert [p.name for p in summary.done] == ["a.png"]
    assert summary.failed == [(src / "locked", f"{src / 'locked'}: cannot read this folder (Permission denied)")]
    denied.add(src)
    with pytest.raises(ValueError, match="cannot read this folder"):
        edit_folder(flip, src, tmp_path / "out2", progress=False)
    import sanaedit.load

    monkeypatch.setattr(sanaedit.load, "load_pipeline", lambda *a, **k: lambda image, **kw: image)
    assert main(["edit", str(src), "-o", str(tmp_path / "out3"), "-q"]) == 1
    err = capsys.readouterr().err
    assert "cannot read this folder" in err and "0 written" not in err


# ------------------------------------------------------------------------------- the figures' harness (docs)
@pytest.mark.slow  # a real server process under the hostile corpus: ~60 s
def test_the_server_under_the_hostile_corpus_stays_within_model_plus_1gb(tiny_model_dir, tmp_path):
    report = tmp_path / "report.json"
    cmd = [sys.executable, str(ROOT / "bench" / "serve_hostile.py"), "--model", str(tiny_model_dir)]
    cmd += ["--concurrency", "4", "--work", str(tmp_path / "work"), "--json", str(report), "--quick"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["peak_over_baseline_mb"] <= 1024, result
    assert result["server_alive_after"] and result["rss_after_mb"] <= result["baseline_rss_mb"] + 300, result
    by_name = {row["input"]: row for row in result["inputs"]}
    assert by_name["strip 40000000x1 PNG"]["status"] == 415 and by_name["EPS"]["status"] == 415
    assert by_name["16-bit 6300x6300 PNG"]["status"] == 202 and by_name["16-bit 6300x6300 PNG"]["state"] == "done"
    assert result["stalled_upload_cut_off_s"] < 30 and result["incomplete_headers_cut_off_s"] < 30
