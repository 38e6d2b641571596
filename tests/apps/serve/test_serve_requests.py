"""Issue 30, the server: cancelling a job (DELETE), multipart uploads under the raw body's limits, a client that
goes away mid-request (one log line, no traceback), and the 16 KiB header limit for headers that arrive whole.
Loopback only; every wait is bounded by a deadline and none decides the verdict by timing."""

from __future__ import annotations

import io
import logging
import socket
import threading
import time
from contextlib import contextmanager

import httpx
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from sanaedit.apps.serve.app import create_app, pipeline_editor
from sanaedit.apps.serve.http import uvicorn_options
from sanaedit.apps.serve.jobs import Cancelled
from tests.conftest import LOCAL, flip, free_port, png, serve_in_thread, wait_state


def wait_for(predicate, timeout=30.0, what="condition"):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"{what} not reached within {timeout} s"
        time.sleep(0.02)


def recv_until(sock: socket.socket, marker: bytes, timeout=10.0) -> bytes:
    """What the server sent until `marker` appeared or it closed the connection."""
    sock.settimeout(timeout)
    got = b""
    try:
        while marker not in got:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return got


# -------------------------------------------------------------------------------------------------- cancelling
class SteppedEdit:
    """An edit of `steps` steps that waits at step `hold` until released: a running job the test controls."""

    def __init__(self, steps=50, hold=1):
        self.steps, self.hold = steps, hold
        self.reached, self.release = threading.Event(), threading.Event()
        self.calls = 0
        self.finished = False

    def __call__(self, image, callback=None, **settings):
        self.calls += 1
        for i in range(1, self.steps + 1):
            callback(i, self.steps)
            if i == self.hold:
                self.reached.set()
                assert self.release.wait(30), "never released"
        self.finished = True
        return image


def test_delete_cancels_a_queued_job_and_refuses_a_finished_one(tmp_path):
    edit = SteppedEdit(steps=2, hold=1)
    with TestClient(create_app(edit, tmp_path / "out", max_queued=4), base_url=LOCAL) as c:
        running = c.post("/api/jobs", content=png()).json()
        assert edit.reached.wait(30)
        queued = c.post("/api/jobs", content=png()).json()
        assert queued["state"] == "queued"
        res = c.delete(f"/api/jobs/{queued['id']}")
        assert res.status_code == 200 and res.json()["state"] == "cancelled"
        assert c.get(f"/api/jobs/{queued['id']}").json()["state"] == "cancelled"
        assert c.get("/api/health").json()["queued"] == 0  # its place is free at once
        assert c.delete(f"/api/jobs/{queued['id']}").status_code == 200  # again: still cancelled
        edit.release.set()
        assert wait_state(c.get, running["id"])["state"] == "done"
        done = c.delete(f"/api/jobs/{running['id']}")
        assert done.status_code == 409 and done.json()["detail"].startswith("this job has already finished (done)")
        assert c.delete("/api/jobs/nosuchjob").status_code == 404
        assert edit.calls == 1  # the cancelled job never ran
        assert c.get(f"/api/jobs/{queued['id']}/result").status_code == 404


def test_delete_stops_a_running_job_at_its_next_step(tmp_path):
    edit = SteppedEdit(steps=50, hold=3)
    with TestClient(create_app(edit, tmp_path / "out"), base_url=LOCAL) as c:
        job = c.post("/api/jobs", content=png()).json()
        assert edit.reached.wait(30)
        res = c.delete(f"/api/jobs/{job['id']}")
        assert res.status_code == 202 and res.json()["state"] == "running"  # stops at its next step
        edit.release.set()
        wait_for(lambda: c.get(f"/api/jobs/{job['id']}").json()["state"] != "running", what="the job stopping")
        state = c.get(f"/api/jobs/{job['id']}").json()
        assert state["state"] == "cancelled" and state["step"] == 4 and state["result"] is None, state
        assert not edit.finished and not list((tmp_path / "out").glob("*.png"))
        assert c.get("/api/health").json()["failed_jobs"] == 0  # a cancel is not a failure
        after = c.post("/api/jobs", content=png()).json()  # the worker goes on
        edit.hold = 0
        assert wait_state(c.get, after["id"])["state"] == "done"


def test_the_pipeline_stops_at_the_step_whose_callback_cancels(tiny_pipe):
    edit = pipeline_editor(tiny_pipe)
    seen = []

    def callback(i, total):
        seen.append(i)
        if len(seen) == 2:
            raise Cancelled

    try:
        edit(Image.new("RGB", (32, 32), "gray"), num_inference_steps=6, guidance_scale=1.0, seed=0, callback=callback)
    except Cancelled:
        pass
    else:
        raise AssertionError("the edit ran to the end")
    assert len(seen) == 2


# -------------------------------------------------------------------------------------------- multipart uploads
def test_a_multipart_upload_is_edited_and_named_after_its_file(live):
    url = live(flip)
    photo = Image.new("RGB", (24, 16), "green")
    photo.putpixel((0, 0), (255, 0, 0))
    buf = io.BytesIO()
    photo.save(buf, format="PNG")
    files = {"image": ("holiday.png", buf.getvalue(), "image/png")}
    res = httpx.post(f"{url}/api/jobs?steps=2", files=files, data={"note": "other fields are skipped"})
    assert res.status_code == 202, res.text
    assert res.json()["filename"] == "holiday-comic.png" and res.json()["settings"]["steps"] == 2
    assert wait_state(lambda p: httpx.get(url + p), res.json()["id"])["state"] == "done"
    result = Image.open(io.BytesIO(httpx.get(f"{url}/api/jobs/{res.json()['id']}/result").content))
    assert result.getpixel((23, 0)) == (255, 0, 0)  # flipped: the image part was what got edited
    named = httpx.post(f"{url}/api/jobs?name=mine.jpg", files=files)  # the query's name wins
    assert named.json()["filename"] == "mine-comic.png"


def test_a_multipart_forms_text_fields_are_the_jobs_settings_and_checked_as_the_query_is(live):
    url = live(flip)
    files = {"image": ("a.png", png(), "image/png")}
    fields = {"steps": "3", "guidance": "2.5", "seed": "7", "prompt": "make it a comic"}
    res = httpx.post(f"{url}/api/jobs", files=files, data=fields)  # what an HTML form or `curl -F steps=3` sends
    assert res.status_code == 202, res.text
    want = {"steps": 3, "guidance": 2.5, "seed": 7, "prompt": "make it a comic", "strength": 1.0, "masked": False}
    assert res.json()["settings"] == want
    both = httpx.post(f"{url}/api/jobs?steps=4", files=files, data=fields)  # the query wins over a field
    assert both.json()["settings"]["steps"] == 4 and both.json()["settings"]["seed"] == 7
    for name, value in (("steps", "0"), ("guidance", "nan"), ("seed", "-1"), ("steps", "many")):
        bad = httpx.post(f"{url}/api/jobs", files=files, data={name: value})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", name], (name, bad.text)
    long = httpx.post(f"{url}/api/jobs", files=files, data={"prompt": "x" * 9000})
    assert long.status_code == 400 and "`prompt` is over 8192 bytes" in long.json()["detail"]
    twice = httpx.post(
        f"{url}/api/jobs", files=[("image", ("a.png", png())), ("seed", (None, "1")), ("seed", (None, "2"))]
    )
    assert twice.status_code == 400 and "`seed` is given twice" in twice.json()["detail"]
    latin1 = b'--xyz\r\nContent-Disposition: form-data; name="prompt"\r\n\r\ncaf\xe9\r\n--xyz--\r\n'
    res = httpx.post(f"{url}/api/jobs", content=latin1, headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert res.status_code == 400 and "`prompt` is not UTF-8 text" in res.json()["detail"]


def test_multipart_without_an_image_field_or_malformed_gets_one_clear_line(live):
    url = live(flip)
    res = httpx.post(f"{url}/api/jobs", files={"photo": ("a.png", png(), "image/png")})
    assert res.status_code == 400 and "no `image` field" in res.json()["detail"]
    two = httpx.post(f"{url}/api/jobs", files=[("image", ("a.png", png())), ("image", ("b.png", png()))])
    assert two.status_code == 400 and "more than one `image` field" in two.json()["detail"]
    cut = b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n' + png()
    res = httpx.post(f"{url}/api/jobs", content=cut, headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert res.status_code == 400 and "closing boundary" in res.json()["detail"]
    res = httpx.post(f"{url}/api/jobs", content=b"x", headers={"Content-Type": "multipart/form-data"})
    assert res.status_code == 400 and "boundary" in res.json()["detail"]
    many = httpx.post(f"{url}/api/jobs", data={f"f{i}": "v" for i in range(100)}, files={"image": ("a.png", png())})
    assert many.status_code == 400 and "more than 16 fields" in many.json()["detail"]
    notimage = httpx.post(f"{url}/api/jobs", files={"image": ("a.png", b"not an image")})
    assert notimage.status_code == 415  # the same decoding checks as a raw body


def test_an_oversized_multipart_body_is_refused_while_it_streams(live):
    limit = 20_000
    url = live(flip, max_upload_bytes=limit)
    port = int(url.rsplit(":", 1)[1])
    head = b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n\r\n'
    with socket.create_connection(("127.0.0.1", port)) as s:  # chunked: no Content-Length to refuse it by
        s.sendall(
            b"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: multipart/form-data; boundary=xyz\r\n\r\n" + b"%x\r\n%s\r\n" % (len(head), head)
        )
        for _ in range(limit // 4096 + 2):  # a little over the limit, then stop sending: the body never ends
            s.sendall(b"1000\r\n" + b"\0" * 4096 + b"\r\n")
        reply = recv_until(s, b"}")
    assert reply.startswith(b"HTTP/1.1 413") and b"over the limit of 20,000 bytes" in reply, reply
    declared = httpx.post(f"{url}/api/jobs", files={"image": ("big.png", b"\0" * (2 * limit))})
    assert declared.status_code == 413  # by its Content-Length, before reading
    assert httpx.post(f"{url}/api/jobs", files={"image": ("a.png", png())}).status_code == 202


def test_docs_show_both_upload_bodies(tmp_path):
    with TestClient(create_app(flip, tmp_path / "out"), base_url=LOCAL) as c:
        body = c.get("/openapi.json").json()["paths"]["/api/jobs"]["post"]["requestBody"]
        assert set(body["content"]) == {"image/*", "multipart/form-data"}
        page = c.get("/docs").text
        assert "multipart/form-data" in page and "image/*" in page


# ------------------------------------------------------------------------------------ clients that go away
@contextmanager
def server_log(out_dir):
    """A live server whose own log (uvicorn's and sanaedit's) is captured: (url, records)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    loggers = [logging.getLogger(n) for n in ("uvicorn.error", "sanaedit.apps.serve")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    port = free_port()
    app = create_app(flip, out_dir)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, log_level="info", **uvicorn_options())
    server = uvicorn.Server(config)
    thread = serve_in_thread(server)
    try:
        yield f"http://127.0.0.1:{port}", records
    finally:
        server.should_exit = True
        thread.join(30)
        for lg, level in zip(loggers, levels):
            lg.removeHandler(handler)
            lg.setLevel(level)


def test_a_client_gone_mid_upload_is_one_log_line_without_a_traceback(tmp_path):
    with server_log(tmp_path) as (url, records):
        port = int(url.rsplit(":", 1)[1])
        for content_type in (b"image/png", b"multipart/form-data; boundary=xyz"):
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(
                    b"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n"
                    b"Content-Type: " + content_type + b"\r\n\r\n--xyz\r\n" + b"x" * 1000
                )
                wait_for(lambda: httpx.get(f"{url}/api/health").json()["uploading"] == 1, what="the upload started")
            wait_for(lambda: httpx.get(f"{url}/api/health").json()["uploading"] == 0, what="the upload ended")
        wait_for(lambda: sum("closed the connection" in r.getMessage() for r in records) == 2, what="two lines")
        assert httpx.post(f"{url}/api/jobs", content=png()).status_code == 202  # the server is fine
    lines = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    assert lines == ["127.0.0.1 closed the connection during POST /api/jobs"] * 2, lines
    assert not [r for r in records if r.exc_info], "a traceback was logged"


# --------------------------------------------------------------------------------------------- header limit
def test_headers_over_16_kib_are_refused_even_when_sent_at_once(live):
    url = live(flip)
    port = int(url.rsplit(":", 1)[1])

    def request(header_bytes: int) -> bytes:
        return b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * header_bytes + b"\r\n\r\n"

    for size, pipelined in ((100_000, b""), (17_000, b""), (100_000, request(10))):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(pipelined + request(size))
            reply = recv_until(s, b"over the limit")
        if pipelined:  # the small request first, answered; the big one after it refused
            assert reply.startswith(b"HTTP/1.1 200"), reply[:100]
            reply = reply[reply.index(b"HTTP/1.1", 10) :]
        assert reply.startswith(b"HTTP/1.1 431") or reply == b"", (size, reply[:100])
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(request(15 * 1024))
        assert recv_until(s, b"}").startswith(b"HTTP/1.1 200")
    assert httpx.get(f"{url}/api/health", headers={"X-Big": "a" * 15_000}).status_code == 200
