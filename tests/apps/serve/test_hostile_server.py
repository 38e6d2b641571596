"""Hostile conditions for the server (issue 11; the image, CLI and folder ones: tests/image/test_hostile_images.py,
tests/apps/test_hostile_cli.py, tests/formats/test_hostile_folders.py). Loopback only, each test bounded in time.

Numbered as the issue: 1 the worker and health survive failing jobs, 4 slow loris (incomplete headers, stalled
uploads, one client's connections, trickling bodies), 5 web hardening (Host header, cross-origin writes, security
headers, the access token, the CLI's warning when exposed), 9 the results folder cleaned of a killed server's
temporaries at start; and the server's peak RSS under the whole hostile corpus (bench/serve_hostile.py, slow).
"""

from __future__ import annotations

import contextlib
import errno
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from sanaedit.apps.cli import main
from sanaedit.apps.serve.app import create_app
from tests.conftest import LOCAL, flip, png, wait_state

ROOT = Path(__file__).resolve().parents[3]


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


def connect_from(address: str, port: int) -> socket.socket:
    s = socket.socket()
    s.bind((address, 0))
    s.connect(("127.0.0.1", port))
    return s


def test_4_uploads_and_health_get_through_while_8_addresses_trickle_uploads_and_64_trickle_headers(live):
    """Issue 30's scenario, with the server's default limits: 8 uploads trickling a byte now and then from 8
    addresses held every queue place for 120 s; now they hold upload places of their own, the next client's upload
    and the health check get through at once, and the trickles are cut off once under the minimum rate."""
    url = live(flip)
    port = int(url.rsplit(":", 1)[1])
    uploads = [connect_from(f"127.0.0.{2 + i}", port) for i in range(8)]
    for s in uploads:
        s.sendall(b"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n\x89")
    headers = [connect_from(f"127.0.0.{2 + i % 8}", port) for i in range(64)]
    stop = threading.Event()

    def trickle():  # a byte on every connection every 0.3 s: never idle long enough to be cut off as stalled
        while not stop.wait(0.3):
            for s in uploads + headers:
                with contextlib.suppress(OSError):
                    s.send(b"P" if s in uploads else b"G")

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        time.sleep(1.0)  # every trickle is under way
        start = time.perf_counter()
        health = httpx.get(f"{url}/api/health", timeout=3.0)
        assert health.status_code == 200 and health.json()["uploading"] == 8
        assert time.perf_counter() - start < 3.0
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.10"), timeout=3.0) as client:
            job = client.post(f"{url}/api/jobs", content=png())
            assert job.status_code == 202, job.text
            assert wait_state(lambda path: client.get(f"{url}{path}"), job.json()["id"])["state"] == "done"
        replies = [closed_within(s, 8.0) for s in uploads]  # 2 bytes/s against a minimum of 4096 after 5 s
        assert all(
            closed and b"upload too slow" in reply and reply.startswith(b"HTTP/1.1 408") for closed, reply in replies
        )
    finally:
        stop.set()
        thread.join(5)
        for s in uploads + headers:
            s.close()


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
        assert f'<script type="module" nonce="{nonce}">' in page.text and "frame-ancestors 'none'" in csp
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


# ----------------------------------------------------------------------------- 9. temporaries of killed writers
def test_9_the_server_cleans_its_results_folder_at_start(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    results = tmp_path / "results"
    results.mkdir()
    stale = results / f".abc.png.{int(dead.stdout)}.k2j4h5g6.tmp"
    stale.write_bytes(b"partial")
    create_app(flip, results).state.jobs.close()
    assert not stale.exists()


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
