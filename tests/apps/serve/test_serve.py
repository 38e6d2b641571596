import io
import threading
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from sanaedit.apps.serve.app import create_app, pipeline_editor
from tests.conftest import wait_state

LOCAL = "http://127.0.0.1"  # the server answers only to this machine's names (DNS-rebinding guard)


def png_bytes(size=(48, 30), color="green"):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def client(tiny_pipe, tmp_path):
    app = create_app(pipeline_editor(tiny_pipe), tmp_path / "results", max_queued=2, max_upload_bytes=200_000)
    with TestClient(app, base_url=LOCAL) as c:
        yield c


def test_upload_edit_download(client, tmp_path):
    assert client.get("/").status_code == 200 and 'id="file"' in client.get("/").text
    res = client.post("/api/jobs?steps=3&guidance=4.5&seed=1&name=cat.png", content=png_bytes((48, 30)))
    assert res.status_code == 202, res.text
    status = wait_state(client.get, res.json()["id"], timeout=60)
    assert status["state"] == "done" and status["step"] == status["total"] == 3
    out = client.get(status["result"])
    assert out.status_code == 200 and out.headers["content-type"] == "image/png"
    assert "attachment" in out.headers["content-disposition"]
    assert Image.open(io.BytesIO(out.content)).size == (48, 30)
    # the only file written is the result, inside the output folder, under a server-made name
    assert [p.name for p in (tmp_path / "results").iterdir()] == [f"{res.json()['id']}.png"]


def test_same_seed_same_image(client):
    ids = [client.post("/api/jobs?steps=2&seed=7", content=png_bytes()).json()["id"] for _ in range(2)]
    images = [client.get(wait_state(client.get, i, timeout=60)["result"]).content for i in ids]
    assert images[0] == images[1]


def test_http_errors(client):
    assert client.post("/api/jobs", content=b"x" * 200_001).status_code == 413
    res = client.post("/api/jobs?name=notes.jpg", content=b"hello, not an image")
    assert res.status_code == 415 and "notes.jpg: not an image" in res.json()["detail"]
    assert client.post("/api/jobs", content=b"").status_code == 415
    assert client.post("/api/jobs?steps=0", content=png_bytes()).status_code == 422
    assert client.post("/api/jobs?guidance=abc", content=png_bytes()).status_code == 422
    assert client.get("/api/jobs/../../etc/passwd").status_code == 404
    assert client.get("/api/jobs/nope").status_code == 404
    assert client.get("/api/jobs/nope/result").status_code == 404


def test_full_queue_answers_503_and_recovers(tiny_pipe, tmp_path):
    gate = threading.Event()
    edit = pipeline_editor(tiny_pipe)

    def slow_edit(image, **kw):
        gate.wait(30)  # hold the worker so the queue fills up
        return edit(image, **kw)

    app = create_app(slow_edit, tmp_path / "r", max_queued=2, max_upload_bytes=10_000)
    with TestClient(app, base_url=LOCAL) as c:
        first = c.post("/api/jobs?steps=1", content=png_bytes()).json()["id"]
        while c.get(f"/api/jobs/{first}").json()["state"] != "running":
            time.sleep(0.01)
        responses = [c.post("/api/jobs?steps=1", content=png_bytes()) for _ in range(4)]
        codes = [r.status_code for r in responses]
        # one running + two waiting fit; the rest are refused at once
        assert codes == [202, 202, 503, 503], codes
        assert responses[2].headers["retry-after"] == "10"
        # refused before the body is read: an oversized upload gets 503, not 413, while the queue is full
        assert c.post("/api/jobs", content=b"x" * 20_000).status_code == 503
        gate.set()
        for job_id in [first] + [r.json()["id"] for r in responses[:2]]:
            assert wait_state(c.get, job_id, timeout=60)["state"] == "done"
        res = c.post("/api/jobs?steps=1", content=png_bytes())
        assert res.status_code == 202 and wait_state(c.get, res.json()["id"], timeout=60)["state"] == "done"


def test_a_failing_job_is_reported_and_the_worker_survives(tiny_pipe, tmp_path):
    calls = []

    def flaky(image, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("the transformer produced NaN/inf latents")
        return pipeline_editor(tiny_pipe)(image, **kw)

    with TestClient(create_app(flaky, tmp_path / "r"), base_url=LOCAL) as c:
        first = wait_state(c.get, c.post("/api/jobs?steps=1", content=png_bytes()).json()["id"], timeout=60)
        assert first["state"] == "failed" and "NaN" in first["error"]
        second = wait_state(c.get, c.post("/api/jobs?steps=1", content=png_bytes()).json()["id"], timeout=60)
        assert second["state"] == "done"


def test_cli_builds_the_app_from_a_model_folder(tiny_model_dir, tmp_path, monkeypatch):
    from sanaedit.apps.cli import main
    from sanaedit.apps.serve import server

    started = {}
    monkeypatch.setattr(server, "serve", lambda app, **kw: started.update(app=app, **kw))
    args = ["serve", "--model", str(tiny_model_dir), "-o", str(tmp_path / "res"), "--port", "7999", "--queue", "3"]
    assert main(args) == 0
    assert (started["host"], started["port"]) == ("127.0.0.1", 7999)  # this machine only, unless asked
    with TestClient(started["app"], base_url=LOCAL) as c:
        config = c.get("/api/config").json()
        assert config["max_queued"] == 3
        assert config["follows_prompts"] is False and config["prompt"].startswith("Convert to a comic")  # tiny LLM
        job = c.post("/api/jobs?steps=1", content=png_bytes((20, 12))).json()["id"]
        assert wait_state(c.get, job, timeout=60)["state"] == "done"
    assert [p.suffix for p in (tmp_path / "res").iterdir()] == [".png"]
