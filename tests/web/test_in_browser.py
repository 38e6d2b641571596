"""The bundled model edits inside headless Chromium: `sanaedit export --format web` served by `python -m http.server`
on loopback (one WebAssembly thread: no isolation headers), and `sanaedit serve`'s "run on this device" (its
headers make the page cross-origin isolated). The page asks nothing of anyone but its own origin, and its edit is
`sanaedit edit`'s, seed for seed."""

from urllib.parse import urlsplit

import numpy as np
import pytest
import uvicorn
from PIL import Image

from sanaedit.apps.cli import main
from sanaedit.apps.serve.app import create_app
from sanaedit.apps.serve.device import device_files
from sanaedit.load import SAMPLE_PHOTO
from sanaedit.train.evaluate import psnr
from tests.conftest import flip, free_port, launch_chromium, restyled_export, serve_in_thread, static_server, wait_js

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::ResourceWarning")]


def edit_in_page(page, photo, tmp_path, name):
    """Pick `photo`, press run, wait for the result; returns the downloaded result and the page's timing line."""
    page.set_input_files("[data-testid=photo-input]", str(photo))
    page.click("[data-testid=run]")
    result = "document.querySelector('[data-testid=result]')"
    wait_js(page, f"{result}?.complete && 'editMs' in document.getElementById('timing').dataset", timeout=120)
    with page.expect_download() as download:
        page.click("a.download")
    assert download.value.suggested_filename == f"{photo.stem}-comic.png"
    download.value.save_as(tmp_path / name)
    return Image.open(tmp_path / name).convert("RGB"), page.inner_text("#timing")


def cli_edit(photo, out, *options):
    assert main(["edit", str(photo), "-o", str(out), "--seed", "0", "-q", *options]) == 0
    return Image.open(out).convert("RGB")


def test_the_exported_page_edits_on_a_static_server_as_the_cli_does(tmp_path):
    from playwright.sync_api import sync_playwright

    site = tmp_path / "site"
    assert main(["export", "--format", "web", "-o", str(site), "-q"]) == 0  # the bundled model, no MODEL given
    rotated = tmp_path / "rotated.jpg"  # stored on its side, EXIF orientation 6 stands it up
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(SAMPLE_PHOTO).transpose(Image.Transpose.ROTATE_90).save(rotated, quality=95, exif=exif)
    url, server = static_server(site)
    requests = []
    try:
        with sync_playwright() as pw:
            browser = launch_chromium(pw)
            page = browser.new_page(accept_downloads=True)
            page.on("request", lambda r: requests.append((r.method, r.url)))
            page.goto(url + "/")
            wait_js(page, "!document.querySelector('[data-testid=run]').disabled", timeout=60)
            assert (
                "WebAssembly" in page.inner_text("#runtime") and page.get_attribute("#runtime", "data-threads") == "1"
            )
            first, timing = edit_in_page(page, SAMPLE_PHOTO, tmp_path, "page.png")
            assert timing.startswith("edited in ") and "on this device" in timing
            upright, _ = edit_in_page(page, rotated, tmp_path, "page-rotated.png")
            browser.close()
    finally:
        server.terminate()
        server.wait()
    # blob: URLs (the photo, the result) never leave the browser; they name the page's origin too
    away = [
        (m, u) for m, u in requests if m != "GET" or urlsplit(u.removeprefix("blob:")).netloc != urlsplit(url).netloc
    ]
    assert requests and away == []
    assert first.size == Image.open(SAMPLE_PHOTO).size
    assert psnr(np.asarray(first), np.asarray(cli_edit(SAMPLE_PHOTO, tmp_path / "cli.png"))) >= 30
    assert upright.size == first.size  # EXIF orientation applied, as load_image applies it
    assert psnr(np.asarray(upright), np.asarray(cli_edit(rotated, tmp_path / "cli-rotated.png"))) >= 30


def test_serve_runs_the_page_on_this_device_with_threads(tmp_path):
    from playwright.sync_api import sync_playwright

    files, why_not = device_files(None)  # the bundled model, as `sanaedit serve` finds it
    assert why_not is None
    app = create_app(flip, tmp_path / "results", in_browser=files)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = serve_in_thread(server)
    url = f"http://127.0.0.1:{port}"
    try:
        with sync_playwright() as pw:
            browser = launch_chromium(pw)
            page = browser.new_page(accept_downloads=True)
            page.goto(url + "/")
            page.wait_for_url("**/device/", timeout=30_000)  # the default where the browser can
            assert page.evaluate("crossOriginIsolated")  # COOP + COEP: WebAssembly threads
            page.goto(url + "/device/?threads=2")
            wait_js(page, "!document.querySelector('[data-testid=run]').disabled", timeout=60)
            assert page.get_attribute("#runtime", "data-threads") == "2"
            result, _ = edit_in_page(page, SAMPLE_PHOTO, tmp_path, "served.png")
            page.click("#to-server")  # back to editing on the server, and it is remembered
            page.wait_for_url("**/?run=server")
            page.goto(url + "/")
            wait_js(page, "!document.getElementById('switch').hidden")
            assert urlsplit(page.url).path == "/"
            browser.close()
    finally:
        server.should_exit = True
        thread.join(30)
    assert psnr(np.asarray(result), np.asarray(cli_edit(SAMPLE_PHOTO, tmp_path / "cli.png"))) >= 30


def test_guidance_the_dpm_solver_black_padding_and_guided_upsampling_match_too(tmp_path):
    """The bundled model runs without CFG; a copy of it told to guide (the [negative, prompt] batch), with another
    sampler, schedule, padding and upsampling, edits in the browser as the CLI edits with that copy."""
    from playwright.sync_api import sync_playwright

    settings = dict(guidance_scale=2.0, sampler="dpm", schedule="linear", num_inference_steps=6, padding="black")
    model = restyled_export(tmp_path, upsample="guided", **settings)
    site = tmp_path / "site"
    assert main(["export", str(model), "--format", "web", "-o", str(site), "-q"]) == 0
    url, server = static_server(site)
    try:
        with sync_playwright() as pw:
            browser = launch_chromium(pw)
            page = browser.new_page(accept_downloads=True)
            page.goto(url + "/")
            wait_js(page, "!document.querySelector('[data-testid=run]').disabled", timeout=60)
            assert page.input_value("#guidance") == "2" and page.input_value("#steps") == "6"
            result, _ = edit_in_page(page, SAMPLE_PHOTO, tmp_path, "page.png")
            browser.close()
    finally:
        server.terminate()
        server.wait()
    want = cli_edit(SAMPLE_PHOTO, tmp_path / "cli.png", "--model", str(model))
    assert psnr(np.asarray(result), np.asarray(want)) >= 30
