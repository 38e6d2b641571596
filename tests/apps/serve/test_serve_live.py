"""The real page in headless Chromium, and a burst of concurrent uploads, against a live server on loopback."""

import concurrent.futures
import gc
import io
import socket
import threading
import time
import zipfile

import httpx
import pytest
import uvicorn
from PIL import Image

from sanaedit.apps.serve.app import create_app, pipeline_editor
from sanaedit.apps.serve.server import DrainingServer
from tests.conftest import free_port, launch_chromium, open_server_page, serve_in_thread, wait_js


@pytest.fixture
def start_server(tmp_path):
    """Start a real uvicorn server (`sanaedit serve`'s, with its graceful stop) on a free loopback port, or on
    `port`; returns (url, results folder). `start.servers` holds (server, thread) pairs."""
    servers = []

    def start(edit, port=None, linger_s=3.0, **options):
        port = port or free_port()
        app = create_app(edit, tmp_path / "results", **options)
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        server = DrainingServer(config, app.state.jobs, linger_s=linger_s)
        servers.append((server, serve_in_thread(server, poll_s=0.05)))
        return f"http://127.0.0.1:{port}", tmp_path / "results"

    start.servers = servers
    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(60)


def record_statuses(page):
    """Collect every text the cards' status lines show (the page polls; this sees each change)."""
    page.evaluate(
        """() => { window.seen = [];
        new MutationObserver(() => document.querySelectorAll('.status').forEach(s => {
          if (window.seen[window.seen.length - 1] !== s.textContent) window.seen.push(s.textContent); }))
        .observe(document.getElementById('results'), {subtree: true, childList: true, characterData: true}); }"""
    )


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.slow
def test_browser_uploads_photos_and_gets_the_comics_back(start_server, tiny_pipe, tmp_path):
    from playwright.sync_api import sync_playwright

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
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        page = browser.new_page()
        statuses = []
        page.on("response", lambda r: statuses.append(r.status) if "/api/jobs?" in r.url else None)
        open_server_page(page, url)
        page.fill("#steps", "3")
        page.set_input_files("#file", [str(p) for p in photos])
        page.click("#go")
        wait_js(page, "document.querySelectorAll('img.after').length === 3", timeout=90)
        wait_js(page, "[...document.querySelectorAll('img.after')].every(i => i.complete && i.naturalWidth)")
        assert 503 in statuses and statuses.count(202) == 3  # the page waited out a full queue and retried
        cards = page.query_selector_all(".card")
        # in the order the photos were picked, not the reverse
        assert [c.query_selector("h2").inner_text() for c in cards] == [p.name for p in photos]
        got = {}
        for card, photo in zip(cards, photos):
            assert card.query_selector(".status").inner_text() == "done"
            assert card.query_selector(".meta").inner_text() == "seed 0 · 3 steps · guidance 4.5"
            src = card.query_selector("img.after").get_attribute("src")
            link = card.query_selector("a.download")
            assert link.get_attribute("href") == src
            assert link.get_attribute("download") == photo.stem + "-comic.png"  # named after the upload
            # before/after: labelled, photo on the left, the slider over the image itself
            compare = card.query_selector(".compare")
            assert compare.query_selector(".label.before").inner_text() == "Before"
            assert compare.query_selector(".label.after").inner_text() == "After"
            assert compare.query_selector("img.before") and compare.query_selector("input.slider")
            image_box = compare.query_selector("img.after").bounding_box()
            slider_box = compare.query_selector("input.slider").bounding_box()
            for key in ("x", "y", "width", "height"):
                assert abs(image_box[key] - slider_box[key]) <= 1, (key, image_box, slider_box)
            before_label = compare.query_selector(".label.before").bounding_box()
            assert before_label["x"] < image_box["x"] + image_box["width"] / 2
            size = card.query_selector("img.after").evaluate("i => [i.naturalWidth, i.naturalHeight]")
            got[card.query_selector("h2").inner_text()] = (tuple(size), src)
        # dragging on the image moves the divider
        compare = cards[0].query_selector(".compare")
        box = compare.query_selector("img.after").bounding_box()
        page.mouse.click(box["x"] + box["width"] * 0.2, box["y"] + box["height"] / 2)
        position = float(compare.evaluate("c => c.style.getPropertyValue('--pos')").rstrip("%"))
        assert 5 <= position <= 35, position
        # one archive with every result, named after the uploads
        assert page.is_visible("#download-all")
        archive_url = page.get_attribute("#download-all", "href")
        browser.close()
    assert {name: size for name, (size, _) in got.items()} == {p.name: s for p, s in zip(photos, sizes)}
    for size, src in got.values():
        result = Image.open(io.BytesIO(httpx.get(url + src).content))
        assert result.size == size and result.info["seed"] == "0" and result.info["num_inference_steps"] == "3"
    archive = zipfile.ZipFile(io.BytesIO(httpx.get(url + archive_url).content))
    assert archive.namelist() == [p.stem + "-comic.png" for p in photos]
    assert len(list(results.iterdir())) == 3  # the results, and nothing else, in the output folder


def recording_edit(tiny_pipe, calls, before_s=0.0, step_s=0.0, after_s=0.0):
    """The tiny pipeline with time spent where a real model spends it: before the first step (encoding), on each
    step, after the last (decoding); records the settings each job arrived with."""
    edit = pipeline_editor(tiny_pipe)

    def timed(image, num_inference_steps, callback=None, **kw):
        calls.append({"steps": num_inference_steps, **kw})
        time.sleep(before_s)

        def on_step(i, total):
            callback(i, total)
            time.sleep(step_s if i < total else after_s)

        return edit(image, num_inference_steps=num_inference_steps, callback=on_step, **kw)

    return timed


@pytest.mark.slow
def test_page_form_errors_progress_prompt_and_phone_layout(start_server, tiny_pipe, tmp_path):
    """Readable errors (not "[object Object]"), an empty seed meaning the default, guidance typed freely with its
    "1 = off" hint, per-step progress from the first job on, the prompt field (off for a model that cannot follow
    prompts), and a before/after as wide as a phone's screen."""
    from playwright.sync_api import sync_playwright

    calls = []
    edit = recording_edit(tiny_pipe, calls, before_s=0.8, step_s=0.5, after_s=0.8)
    url, _ = start_server(edit, defaults={"guidance": 1.0, "follows_prompts": True, "prompt": "own"})
    plain_url, _ = start_server(edit, defaults={"follows_prompts": False})
    photo = tmp_path / "wide.png"
    Image.new("RGB", (1200, 900), (40, 90, 200)).save(photo)
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        page = browser.new_page(viewport={"width": 390, "height": 844})
        page.goto(plain_url)
        wait_js(page, "document.getElementById('prompt-hint').textContent !== ''")
        assert page.is_disabled("#prompt") and "stand-in" in page.inner_text("#prompt-hint")

        open_server_page(page, url)
        assert not page.is_disabled("#prompt") and page.get_attribute("#prompt", "placeholder") == "own"
        assert "1 = off" in page.inner_text("label:has(#guidance)")
        page.fill("#guidance", "4.3")
        assert page.evaluate("document.getElementById('guidance').checkValidity()")  # no 0.5 step
        page.fill("#guidance", "1")
        # a seed the server refuses: its message, not [object Object]
        page.fill("#seed", "99999999999999999999")
        page.set_input_files("#file", [str(photo)])
        page.click("#go")
        wait_js(page, "document.querySelector('.status.error') !== null")
        error = page.inner_text(".card .status")
        assert error.startswith("422: seed: Input should be less than or equal to") and "object" not in error
        assert page.is_visible(".card .retry")
        page.evaluate("document.getElementById('results').innerHTML = ''")
        # an empty seed is the default; a prompt goes to the edit; progress moves step by step
        page.fill("#seed", "")
        page.fill("#steps", "4")
        page.fill("#prompt", "a watercolour")
        record_statuses(page)
        page.click("#go")
        wait_js(page, "document.querySelector('.card .status')?.textContent === 'done'", timeout=60)
        seen = page.evaluate("window.seen")
        assert "preparing…" in seen and "finishing…" in seen, seen
        assert len({s for s in seen if s.startswith("step ")}) >= 2, seen  # not 0 then done
        assert "step 0" not in " ".join(seen)
        assert page.inner_text(".card .meta") == "seed 0 · 4 steps · guidance 1 (off) · prompt “a watercolour”"
        assert calls[-1]["prompt"] == "a watercolour" and calls[-1]["seed"] == 0
        wait_js(page, "document.querySelector('img.after').complete")
        width = page.evaluate("document.querySelector('img.after').getBoundingClientRect().width")
        content = page.evaluate("document.querySelector('.card').clientWidth") - 32  # padding
        assert width >= content - 2 and width > 300, (width, content)  # the whole card's width on a phone
        browser.close()


@pytest.mark.slow
def test_stopping_the_server_finishes_the_running_photo_and_the_page_retries(start_server, tiny_pipe, tmp_path):
    """SIGTERM (as `sanaedit serve` handles it): the running photo is finished and delivered, the queued one fails
    with a message and a "Try again" button; pressed while the server is down, the page keeps trying until it is
    back."""
    import signal

    from playwright.sync_api import sync_playwright

    # the first photo holds at its first step until the server has been told to stop: a timed window could pass
    # between two polls on a loaded machine
    stopping = threading.Event()
    timed = recording_edit(tiny_pipe, [], step_s=0.1)

    def edit(image, callback=None, **kw):
        def on_step(i, total):
            callback(i, total)
            if i == 1:
                stopping.wait(60)

        return timed(image, callback=on_step, **kw)

    url, _ = start_server(edit, max_queued=4, uploads_per_client=4, linger_s=2.0)
    server, thread = start_server.servers[-1]
    photos = []
    for i in range(2):
        photos.append(tmp_path / f"p{i}.png")
        Image.new("RGB", (40, 30), (100, 50 * i, 0)).save(photos[-1])
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        page = browser.new_page()
        open_server_page(page, url)
        page.fill("#steps", "6")
        page.set_input_files("#file", [str(p) for p in photos])
        page.click("#go")
        statuses = "[...document.querySelectorAll('.card .status')].map(s => s.textContent)"
        # the two uploads race: either photo may be the one running
        running_and_waiting = "(s => s.some(x => x.startsWith('step')) && s.some(x => x.startsWith('waiting')))"
        wait_js(page, f"{running_and_waiting}({statuses})", timeout=60)
        running = [s.startswith("step") for s in page.evaluate(statuses)].index(True)  # held at its first step
        server.handle_exit(signal.SIGTERM, None)  # what uvicorn's signal handler calls
        stopping.set()
        card_js = f"document.querySelectorAll('.card')[{running}]"
        wait_js(page, f"{card_js}.querySelector('.status').textContent === 'done'", timeout=60)
        wait_js(page, f"(i => i.complete && i.naturalWidth)({card_js}.querySelector('img.after'))")
        queued = 1 - running
        other = page.query_selector_all(".card")[queued]
        wait_js(page, f"document.querySelectorAll('.card')[{queued}].querySelector('.status.error') !== null")
        assert "send it again" in other.query_selector(".status").inner_text()
        assert other.query_selector(".retry").is_visible()
        thread.join(30)
        assert not thread.is_alive()  # the server has stopped
        other.query_selector(".retry").click()  # while it is down: the page keeps trying
        other_status = f"document.querySelectorAll('.card')[{queued}].querySelector('.status').textContent"
        wait_js(page, f"{other_status}.includes('unreachable')")
        start_server(recording_edit(tiny_pipe, []), port=int(url.rsplit(":", 1)[1]))  # it is back
        wait_js(page, f"{other_status} === 'done'", timeout=60)
        browser.close()


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
        s.sendall(b"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n" + b"\x89PNG")
        assert httpx.post(f"{url}/api/jobs", content=b"x").status_code == 503  # the stalled upload holds the room
        reply = s.recv(4096)  # ... until the server gives up on it
    assert reply.startswith(b"HTTP/1.1 408")
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buf, format="PNG")
    assert httpx.post(f"{url}/api/jobs?steps=1", content=buf.getvalue()).status_code == 202


@pytest.mark.slow
def test_the_page_cancels_a_queued_and_a_running_photo(start_server, tmp_path):
    from playwright.sync_api import sync_playwright

    from tests.apps.serve.test_serve_requests import SteppedEdit

    edit = SteppedEdit(steps=10, hold=1)  # the first photo waits at its step 1 until released
    url, results = start_server(edit, max_queued=4)
    photos = [tmp_path / f"p{i}.png" for i in range(2)]
    for p in photos:
        Image.new("RGB", (40, 30), "teal").save(p)
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        page = browser.new_page()
        open_server_page(page, url)
        page.set_input_files("#file", [str(p) for p in photos])
        page.click("#go")
        wait_js(page, "[...document.querySelectorAll('.cancel')].every(b => !b.hidden)")
        assert edit.reached.wait(30)
        page.click(".card:nth-child(2) .cancel")  # queued: cancelled at once
        wait_js(page, "document.querySelectorAll('.status')[1].textContent === 'cancelled'")
        page.click(".card:nth-child(1) .cancel")  # running: stops at its next step
        jobs = start_server.servers[0][0].config.app.state.jobs
        deadline = time.time() + 30
        while not jobs.running.cancel:  # the DELETE has arrived: now let the edit go on to its next step
            assert time.time() < deadline, "the page never sent the cancel"
            time.sleep(0.05)
        edit.release.set()
        wait_js(page, "document.querySelectorAll('.status')[0].textContent === 'cancelled'")
        assert page.evaluate("[...document.querySelectorAll('.retry')].every(b => !b.hidden)")
        assert page.evaluate("[...document.querySelectorAll('.cancel')].every(b => b.hidden)")
        browser.close()
    assert not edit.finished and not list(results.glob("*.png"))


def wait_paint(page, *points, painted=True):
    """Wait until the mask canvas is painted (alpha > 0), or not, at each canvas pixel (x, y): the browser hands
    pointer moves to the page at its next frame, after the input call returned."""
    alpha = "document.getElementById('paint-mask').getContext('2d').getImageData({}, {}, 1, 1).data[3]"
    wait_js(page, " && ".join(f"({alpha.format(x, y)} {'>' if painted else '==='} 0)" for x, y in points), 10)


@pytest.mark.slow
def test_the_page_brush_paints_a_mask_and_only_that_part_is_edited(start_server, tiny_pipe, tmp_path):
    """The brush on the photo: a finger's drag paints (pointer events; the page does not scroll instead), a mouse
    stroke paints, the eraser takes paint away, undo and clear; the strength slider. The painted mask goes with
    the photo, and the result keeps the photo's own pixels outside it."""
    import numpy as np
    from playwright.sync_api import sync_playwright

    calls = []
    url, _ = start_server(recording_edit(tiny_pipe, calls))
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)).save(photo)
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        context = browser.new_context(viewport={"width": 800, "height": 900}, has_touch=True)
        page = context.new_page()
        open_server_page(page, url)
        assert not page.is_visible("#painter")
        page.set_input_files("#file", [str(photo)])
        wait_js(page, "document.getElementById('paint-mask').width === 300")
        assert page.is_visible("#painter") and page.is_disabled("#undo")
        box = page.query_selector("#paint-mask").bounding_box()
        assert abs(box["width"] - 300) < 1  # shown at its own size here: canvas pixels are screen pixels

        def at(x, y):
            return box["x"] + x, box["y"] + y

        def stroke(tool, size, start, end):  # a mouse drag with the brush or the eraser, `size` screen pixels wide
            page.click(tool)
            page.fill("#brush-size", str(size))
            page.mouse.move(*at(*start))
            page.mouse.down()
            page.mouse.move(*at(*end), steps=8)
            page.mouse.up()

        # a finger's drag across the middle (touch events through the browser's own input pipeline)
        touch = context.new_cdp_session(page)
        scroll = page.evaluate("window.scrollY")
        for kind, (x, y) in (("touchStart", at(150, 40)), ("touchMove", at(200, 40)), ("touchMove", at(250, 40))):
            touch.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [{"x": x, "y": y}]})
        touch.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        wait_paint(page, (160, 40), (200, 40), (240, 40))
        assert page.evaluate("window.scrollY") == scroll
        page.click("#undo")
        wait_paint(page, (200, 40), painted=False)
        assert page.is_disabled("#undo")
        # the mouse: a wide stroke down the left third, then the eraser through its top
        stroke("#brush", 100, (50, 5), (50, 195))
        wait_paint(page, (20, 100), (98, 100), (50, 190))  # (the stroke's last point: all of it is drawn)
        wait_paint(page, (110, 100), painted=False)
        stroke("#eraser", 20, (10, 20), (90, 20))
        wait_paint(page, (50, 20), (88, 20), painted=False)
        wait_paint(page, (50, 100))
        page.click("#undo")  # the eraser's stroke is gone: painted there again
        wait_paint(page, (50, 20))
        page.click("#clear")
        wait_paint(page, (50, 100), painted=False)
        assert page.is_disabled("#clear")
        stroke("#brush", 100, (50, 5), (50, 195))
        wait_paint(page, (5, 5), (95, 195))
        page.fill("#strength", "0.5")
        assert page.inner_text("#strength-value") == "0.5: closer to the photo"
        page.fill("#steps", "4")
        page.click("#go")
        wait_js(page, "document.querySelector('.card .status')?.textContent === 'done'", timeout=60)
        assert page.inner_text(".card .meta") == "seed 0 · 4 steps · guidance 4.5 · strength 0.5 · masked"
        result_url = page.get_attribute("img.after", "src")
        browser.close()
    assert calls[-1]["strength"] == 0.5 and calls[-1]["mask_image"].size == (300, 200)
    sent = np.asarray(calls[-1]["mask_image"])
    assert sent[:, 5:90].min() == 255 and sent[:, 110:].max() == 0  # white where painted, black elsewhere
    out = np.asarray(Image.open(io.BytesIO(httpx.get(url + result_url).content)).convert("RGB")).astype(int)
    want = np.asarray(Image.open(photo)).astype(int)
    assert np.array_equal(out[:, 160:], want[:, 160:])  # past the mask's feathered edge: the photo's own pixels
    assert np.abs(out[:, :50] - want[:, :50]).mean() > 5  # the painted part was edited
