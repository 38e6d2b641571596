"""The page's control picker through the API: control=none|edges|upload (a multipart `control_image` field)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from sanaedit.apps.serve.app import create_app, pipeline_editor
from sanaedit.pipeline import SanaEditPipeline
from tests.apps.serve.test_serve_live import start_server as start_server  # noqa: F401  (a fixture this file uses)
from tests.conftest import LOCAL, boxed, launch_chromium, open_server_page, png, wait_js, wait_state


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


@pytest.mark.slow
def test_the_page_sends_the_pickers_choice(start_server, tmp_path):
    """In a browser: the picker shows only for a model with a ControlNet, and its choice reaches the edit (the
    photo's edges, or the picked control image as a second multipart field)."""
    from playwright.sync_api import sync_playwright

    calls = []

    def edit(image, callback=None, **kwargs):
        calls.append(kwargs.get("control_image"))
        return image

    url, _ = start_server(edit, defaults={"controlnet": True})
    plain_url, _ = start_server(edit)
    photo, control = tmp_path / "photo.png", tmp_path / "lines.png"
    boxed(48, 32).save(photo)
    Image.new("RGB", (48, 32), "white").save(control)
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        page = browser.new_page()
        open_server_page(page, plain_url)
        assert not page.is_visible("#control-picker")
        open_server_page(page, url)
        assert page.is_visible("#control-picker") and not page.is_visible("#control-upload")
        for cards, choice in enumerate(("edges", "upload"), 1):
            page.select_option("#control", choice)
            if choice == "upload":
                assert page.is_visible("#control-upload")
                page.set_input_files("#control-file", str(control))
            page.set_input_files("#file", str(photo))
            page.click("#go")
            done = f"document.querySelectorAll('.status').length === {cards} && "
            wait_js(page, done + "[...document.querySelectorAll('.status')].every(s => s.textContent === 'done' "
                    "|| s.classList.contains('error'))", timeout=60)  # fmt: skip
        statuses = [s.inner_text() for s in page.query_selector_all(".status")]
        metas = [m.inner_text() for m in page.query_selector_all(".meta")]
        browser.close()
    assert statuses == ["done", "done"]
    assert calls[0] == "edges" and isinstance(calls[1], Image.Image) and calls[1].size == (48, 32)
    assert "control: the photo's edges" in metas[0] and "control: an image" in metas[1]
