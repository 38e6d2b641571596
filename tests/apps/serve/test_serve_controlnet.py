"""The page's control picker through the API: control=none|edges|upload (a multipart `control_image` field)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from sanaedit.apps.serve.app import create_app, pipeline_editor
from sanaedit.pipeline import SanaEditPipeline
from tests.conftest import LOCAL, boxed, png, wait_state


def photo_bytes() -> bytes:
    buf = io.BytesIO()
    boxed(48, 32).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def client(tiny_controlnet_model, tmp_path_factory):
    pipe = SanaEditPipeline.from_pretrained(tiny_controlnet_model)
    app = create_app(pipeline_editor(pipe), tmp_path_factory.mktemp("results"), defaults={"controlnet": True})
    with TestClient(app, base_url=LOCAL) as c:
        yield c


def result(client, res) -> np.ndarray:
    assert res.status_code == 202, res.text
    state = wait_state(client.get, res.json()["id"], timeout=60)
    assert state["state"] == "done", state
    return np.asarray(Image.open(io.BytesIO(client.get(state["result"]).content)), np.int16)


def test_the_picker_steers_the_edit(client):
    assert client.get("/api/config").json()["controlnet"] is True and 'id="control"' in client.get("/").text
    plain = result(client, client.post("/api/jobs?steps=2", content=photo_bytes()))
    edges = client.post("/api/jobs?steps=2&control=edges", content=photo_bytes())
    assert edges.json()["settings"]["control"] == "edges"
    assert np.abs(result(client, edges) - plain).max() > 2
    files = {
        "image": ("a.png", photo_bytes(), "image/png"),
        "control_image": ("c.png", png((48, 32), "white"), "image/png"),
    }
    uploaded = result(client, client.post("/api/jobs?steps=2&control=upload", files=files))
    assert np.abs(uploaded - plain).max() > 2 and not np.array_equal(uploaded, result(client, edges))


def test_control_requests_that_cannot_be_met_are_refused(client, tiny_pipe, tmp_path):
    files = {"image": ("a.png", photo_bytes(), "image/png")}
    assert client.post("/api/jobs?control=upload", files=files).status_code == 400  # no control_image field
    both = {**files, "control_image": ("c.png", png(), "image/png")}
    assert client.post("/api/jobs", files=both).status_code == 400  # a control image without control=upload
    bad = {**files, "control_image": ("c.png", b"not an image", "image/png")}
    res = client.post("/api/jobs?control=upload", files=bad)
    assert res.status_code == 415 and "control image" in res.json()["detail"]
    assert client.post("/api/jobs?control=sketch", content=photo_bytes()).status_code == 422
    plain = create_app(pipeline_editor(tiny_pipe), tmp_path / "results")  # a model without a ControlNet
    with TestClient(plain, base_url=LOCAL) as c:
        res = c.post("/api/jobs?control=edges", content=photo_bytes())
        assert res.status_code == 400 and "no ControlNet" in res.json()["detail"]
