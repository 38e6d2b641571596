"""`sanaedit serve`'s "run on this device": the in-browser editor's files under /device/, by name only, with the
headers that isolate the page (threads) and its policy (its own scripts and WebAssembly, this server only)."""

from fastapi.testclient import TestClient

from sanaedit.apps.serve.app import create_app
from sanaedit.apps.serve.device import device_files
from sanaedit.load import ASSETS, BUNDLED_EXPORT, BUNDLED_MODEL
from tests.conftest import flip

LOCAL = "http://127.0.0.1"


def test_the_bundled_model_runs_in_the_browser_and_what_cannot_says_why():
    files, why_not = device_files(None)
    assert why_not is None and "graphs/transformer.onnx" in files and b'"server_page": "../"' in files["config.json"]
    files, why_not = device_files(BUNDLED_MODEL)  # a PyTorch folder: export it first
    assert files is None and "not an ONNX export" in why_not
    assert "LoRA" in device_files(None, loras=[(ASSETS / "ghibli-lora", 1.0)])[1]


def test_device_files_are_served_by_name_with_the_isolation_headers(tmp_path):
    files, _ = device_files(None)
    with TestClient(create_app(flip, tmp_path / "r", in_browser=files), base_url=LOCAL) as c:
        assert c.get("/api/config").json()["in_browser"] is True
        moved = c.get("/device", follow_redirects=False)
        assert moved.status_code == 308 and moved.headers["location"] == "/device/"
        page = c.get("/device/")
        csp = page.headers["content-security-policy"]
        assert page.status_code == 200 and 'data-testid="photo-input"' in page.text
        assert "script-src 'self' 'wasm-unsafe-eval'" in csp and "connect-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
        graph = c.get("/device/graphs/transformer.onnx")
        assert graph.content == (BUNDLED_EXPORT / "transformer.onnx").read_bytes()
        assert c.get("/device/ort/ort-wasm-simd-threaded.wasm").headers["content-type"] == "application/wasm"
        assert c.get("/device/worker.mjs").headers["content-type"].startswith("text/javascript")
        assert c.get("/device/worker.mjs").headers["content-security-policy"] == csp  # the worker's own policy
        for res in (page, graph, c.get("/"), c.get("/api/config")):
            assert res.headers["cross-origin-opener-policy"] == "same-origin"
            assert res.headers["cross-origin-embedder-policy"] == "require-corp"
        for name in ("nope.js", "../app.py", "%2e%2e/app.py", "graphs/../../load.py", "/etc/passwd"):
            assert c.get(f"/device/{name}").status_code == 404, name


def test_without_a_browser_model_only_the_shared_css_and_js_are_served(tmp_path):
    with TestClient(create_app(flip, tmp_path / "r"), base_url=LOCAL) as c:
        assert c.get("/api/config").json()["in_browser"] is False
        assert c.get("/device/compare.mjs").status_code == 200 and c.get("/device/page.css").status_code == 200
        assert c.get("/device/").status_code == 404 and c.get("/device/config.json").status_code == 404
        assert '<link rel="stylesheet" href="/device/compare.css">' in c.get("/").text
