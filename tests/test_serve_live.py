"""The real page in headless Chromium, and a burst of concurrent uploads, against a live server on loopback."""

import concurrent.futures
import gc
import io
import os
import shutil
import socket
import threading
import time

import httpx
import pytest
import uvicorn
from PIL import Image

from sanaedit.serve.app import create_app, pipeline_editor

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def start_server(tmp_path):
    """Start a real uvicorn server on a free loopback port; returns (url, results folder)."""
    servers = []

    def start(edit, **options):
        port = free_port()
        app = create_app(edit, tmp_path / "results", **options)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.time() + 30
        while not server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{port}", tmp_path / "results"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(60)


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.slow
def test_browser_uploads_photos_and_gets_the_comics_back(start_server, tiny_pipe, tmp_path):
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian chromium is not installed (.ci/run installs it)")
    edit = pipeline_editor(tiny_pipe)

    def slow_edit(image, **kw):  # long enough that three photos at once overflow a queue of one
        time.sleep(1.0)
        return edit(image, **kw)

    url, results = start_server(slow_edit, max_queued=1, retry_after=1)
    sizes = [(60, 40), (33, 47), (50, 50)]
    photos = []
    for i, size in enumerate(sizes):
        photos.append(tmp_path / f"photo{i}.png")
        Image.new("RGB", size, (200, 120, 40 * i)).save(photos[-1])
    args = [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
    ]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        page = browser.new_page()
        statuses = []
        page.on("response", lambda r: statuses.append(r.status) if "/api/jobs?" in r.url else None)
        page.goto(url)
        page.wait_for_function("document.getElementById('steps').value !== ''")  # defaults loaded
        page.fill("#steps", "3")
        page.set_input_files("#file", [str(p) for p in photos])
        page.click("#go")
        page.wait_for_function("document.querySelectorAll('img.after').length === 3", timeout=90_000)
        page.wait_for_function("[...document.querySelectorAll('img.after')].every(i => i.complete)")
        assert 503 in statuses and statuses.count(202) == 3  # the page waited out a full queue and retried
        cards = page.query_selector_all(".card")
        got = {}
        for card in cards:
            assert card.query_selector(".status").inner_text() == "done"
            assert card.query_selector("img.before") and card.query_selector("input.slider")
            src = card.query_selector("img.after").get_attribute("src")
            assert card.query_selector("a.download").get_attribute("href") == src
            size = card.query_selector("img.after").evaluate("i => [i.naturalWidth, i.naturalHeight]")
            got[card.query_selector("h2").inner_text()] = (tuple(size), src)
        browser.close()
    assert {name: size for name, (size, _) in got.items()} == {p.name: s for p, s in zip(photos, sizes)}
    for size, src in got.values():
        assert Image.open(io.BytesIO(httpx.get(url + src).content)).size == size
    assert len(list(results.iterdir())) == 3  # the results, and nothing else, in the output folder


@pytest.mark.slow
def test_fifty_concurrent_uploads_complete_or_get_503(start_server, tiny_pipe):
    url, _ = start_server(pipeline_editor(tiny_pipe), max_queued=4)
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), "purple").save(buf, format="PNG")
    body = buf.getvalue()

    def upload(_):
        return httpx.post(f"{url}/api/jobs?steps=2", content=body, timeout=60)

    # warm up once, then take the baseline
    first = upload(0).json()["id"]
    while httpx.get(f"{url}/api/jobs/{first}").json()["state"] != "done":
        time.sleep(0.05)
    gc.collect()
    baseline = rss_mb()

    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        responses = list(pool.map(upload, range(50)))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {202, 503}, codes
    assert codes.count(202) >= 1 and codes.count(503) >= 1  # bounded: a burst is partly refused, fast

    accepted = [r.json()["id"] for r in responses if r.status_code == 202]
    deadline = time.time() + 120
    for job_id in accepted:
        while (state := httpx.get(f"{url}/api/jobs/{job_id}").json()["state"]) not in ("done", "failed"):
            assert time.time() < deadline
            time.sleep(0.05)
        assert state == "done"
    assert httpx.get(f"{url}/api/health").json()["status"] == "ok"  # still up
    gc.collect()
    assert rss_mb() < baseline + 150, (baseline, rss_mb())  # no per-request growth left behind


def test_a_stalled_upload_times_out_and_frees_its_place(start_server, tiny_pipe):
    url, _ = start_server(pipeline_editor(tiny_pipe), max_queued=1, upload_timeout_s=1.0)
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"\x89PNG")
        assert httpx.post(f"{url}/api/jobs", content=b"x").status_code == 503  # the stalled upload holds the room
        reply = s.recv(4096)  # ... until the server gives up on it
    assert reply.startswith(b"HTTP/1.1 408")
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buf, format="PNG")
    assert httpx.post(f"{url}/api/jobs?steps=1", content=buf.getvalue()).status_code == 202
