"""The server's masked edits and `strength` (issue 28): a multipart `mask` field beside the `image` (the page's
brush sends one), `?strength=`, their one-line errors, and a masked photo's kept pixels coming back exactly."""

import io

import httpx
import numpy as np
from PIL import Image

from sanaedit.apps.serve.app import pipeline_editor
from tests.conftest import wait_state


def _encoded(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _photo(size):
    w, h = size
    return Image.fromarray(np.random.default_rng(1).integers(0, 255, (h, w, 3), dtype=np.uint8))


def _left_mask(size):
    mask = Image.new("L", size, 0)
    mask.paste(255, (0, 0, size[0] // 3, size[1]))
    return mask


def test_a_masked_upload_keeps_the_photos_pixels_at_full_size(live, tiny_pipe):
    """A photo far larger than the model's working size (it would be decoded reduced, and its result scaled back
    up) with a mask painted at a smaller size: outside the mask the result is the upload's own pixels."""
    url = live(pipeline_editor(tiny_pipe))
    photo = _photo((600, 400))
    files = {"image": ("big.png", _encoded(photo), "image/png"), "mask": ("mask.png", _encoded(_left_mask((300, 200))))}
    res = httpx.post(f"{url}/api/jobs?steps=3&strength=0.7", files=files)
    assert res.status_code == 202, res.text
    assert res.json()["settings"]["masked"] is True and res.json()["settings"]["strength"] == 0.7
    state = wait_state(lambda p: httpx.get(url + p), res.json()["id"], timeout=120)
    assert state["state"] == "done", state
    result = Image.open(io.BytesIO(httpx.get(url + state["result"]).content))
    assert result.size == photo.size and result.info["strength"] == "0.7" and "mask" in result.info
    out, want = np.asarray(result.convert("RGB")).astype(int), np.asarray(photo).astype(int)
    assert np.array_equal(out[:, 300:], want[:, 300:])  # far past the mask's edge at x = 200
    assert np.abs(out[:, :150] - want[:, :150]).mean() > 5  # the painted part was edited


def test_mask_and_strength_errors_are_one_clear_line(live):
    url = live(lambda image, **kw: image)
    photo = _encoded(_photo((60, 40)))
    square = {"image": ("a.png", photo), "mask": ("m.png", _encoded(Image.new("L", (50, 50))))}
    res = httpx.post(f"{url}/api/jobs", files=square)
    assert res.status_code == 422 and "the mask of a.png is 50x50 but the photo is 60x40" in res.json()["detail"]
    res = httpx.post(f"{url}/api/jobs", files={"image": ("a.png", photo), "mask": ("m.png", b"garbage")})
    assert res.status_code == 415 and "a.png (mask): not an image" in res.json()["detail"]
    res = httpx.post(f"{url}/api/jobs?steps=4&strength=0.1", content=photo)
    assert res.status_code == 422 and "strength 0.1 x 4 steps leaves no step to run" in res.json()["detail"]
    for bad in ("0", "1.5", "nan"):
        res = httpx.post(f"{url}/api/jobs?strength={bad}", content=photo)
        assert res.status_code == 422 and res.json()["detail"][0]["loc"][-1] == "strength", bad
    res = httpx.post(f"{url}/api/jobs", files={"image": ("a.png", photo)}, data={"strength": "2"})  # a form field
    assert res.status_code == 422 and res.json()["detail"][0]["loc"] == ["body", "strength"]


def test_the_edit_gets_strength_and_the_mask_only_when_asked(live):
    calls = []

    def edit(image, callback=None, **kw):
        calls.append({k: (v.size if k == "mask_image" else v) for k, v in kw.items()})
        return image

    url = live(edit)
    photo = _encoded(_photo((60, 40)))
    plain = httpx.post(f"{url}/api/jobs", content=photo)
    files = {"image": ("a.png", photo), "mask": ("m.png", _encoded(_left_mask((30, 20))))}
    masked = httpx.post(f"{url}/api/jobs", files=files, data={"strength": "0.5"})  # settings as form fields too
    for res in (plain, masked):
        assert wait_state(lambda p: httpx.get(url + p), res.json()["id"])["state"] == "done"
    assert "strength" not in calls[0] and "mask_image" not in calls[0]  # a plain edit, as before
    assert calls[1]["strength"] == 0.5 and calls[1]["mask_image"] == (30, 20)
