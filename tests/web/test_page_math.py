"""The in-browser editor's arithmetic against the Python it ports, in headless Chromium: the seeded noise, the
samplers, Pillow's resize, preprocessing, postprocessing, the guided filter and the refiner's tiling. Each JS module
is imported from `sanaedit/web/page/` as the page imports it; both sides get the same inputs."""

import base64

import numpy as np
import pytest
from PIL import Image, ImageFilter

from sanaedit.core.noise import Generator
from sanaedit.core.sampling import dpm_solver_sample, euler_sample, flow_sigmas, scm_sample
from sanaedit.export.web import PAGE
from sanaedit.image.io import Restore, postprocess, preprocess
from sanaedit.image.upsample import EPS, RADIUS, upsample
from sanaedit.models.refine_tiles import refine_in_tiles
from tests.conftest import launch_chromium, static_server

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")

HELPERS = """() => {
  window.bytes = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
  window.floats = (s) => new Float32Array(bytes(s).buffer);
  window.b64 = (view) => {
    const u8 = new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
    let s = "";
    for (let i = 0; i < u8.length; i += 8192) s += String.fromCharCode.apply(null, u8.subarray(i, i + 8192));
    return btoa(s);
  };
  window.image = (o) => ({width: o.width, height: o.height, rgb: bytes(o.rgb)});
}"""


@pytest.fixture(scope="module")
def page():
    from playwright.sync_api import sync_playwright

    url, server = static_server(PAGE)
    try:
        with sync_playwright() as pw:
            browser = launch_chromium(pw)
            page = browser.new_page()
            page.goto(url + "/page.css")  # a document of that origin with no policy: the modules import from it
            page.evaluate(HELPERS)
            yield page
            browser.close()
    finally:
        server.terminate()
        server.wait()


def b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()


def from_b64(text: str, dtype) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype)


def rgb(image: Image.Image) -> dict:
    return {"width": image.width, "height": image.height, "rgb": b64(np.asarray(image.convert("RGB")))}


def as_image(result: dict) -> np.ndarray:
    return from_b64(result["rgb"], np.uint8).reshape(result["height"], result["width"], 3)


def photo(width, height, seed=0) -> Image.Image:
    """Smooth shapes and noise: edges for the filters, every level for the rounding."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([128 + 100 * np.sin(x / 7.0 + c) * np.cos(y / 11.0 - c) for c in range(3)], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))


def test_noise_is_torchs_bit_for_bit(page):
    shapes = [[1, 32, 32, 32], [37], [5], [3], [16], [2, 3, 5]]  # blocks, a partial block, the small path
    for seed in (0, 7, 12345, 2**32 + 5, 2**63 - 1):
        generator = Generator(seed)
        want = [b64(generator.randn(shape)) for shape in shapes]
        got = page.evaluate(
            """async ([seed, shapes]) => {
              const {Generator} = await import("/noise.mjs");
              const g = new Generator(seed);
              return shapes.map((s) => b64(g.randn(s)));
            }""",
            [str(seed), shapes],
        )
        assert got == want, seed


@pytest.mark.parametrize(
    "sampler, schedule, steps",
    [("euler", "default", 10), ("euler", "published", 7), ("dpm", "linear", 8), ("scm", "scm", 2), ("scm", "scm", 4)],
)
def test_samplers_step_as_the_pythons(page, sampler, schedule, steps):
    sigmas = flow_sigmas(steps, 3.0, schedule)
    start = Generator(3).randn((1, 4, 8, 8))
    python = {"euler": euler_sample, "dpm": dpm_solver_sample, "scm": scm_sample}[sampler]
    calls = []

    def velocity(x, sigma):
        calls.append(float(sigma))
        return x * np.float32(0.5) - sigma

    want = python(velocity, start, sigmas, generator=Generator(11))
    got = page.evaluate(
        """async ([name, sigmas, start]) => {
          const {SAMPLERS} = await import("/sampling.mjs");
          const {Generator} = await import("/noise.mjs");
          const f32 = Math.fround, calls = [];
          const velocity = async (x, sigma) => { calls.push(sigma); return x.map((v) => f32(f32(v * 0.5) - sigma)); };
          const x = await SAMPLERS[name](velocity, floats(start), sigmas, () => {}, new Generator(11));
          return [b64(x), calls];
        }""",
        [sampler, sigmas.tolist(), b64(start)],
    )
    assert got[1] == calls  # the same noise levels, the same model calls (zero steps skipped alike)
    assert got[0] == b64(want)


RESIZES = [((451, 300), (256, 170)), ((37, 53), (174, 250)), ((10, 7), (33, 50)), ((300, 451), (170, 256)),
           ((40, 300), (34, 256)), ((1, 40), (6, 256)), ((640, 427), (640, 300))]  # fmt: skip


@pytest.mark.parametrize("size, to", RESIZES)  # (40, 300): Pillow runs the vertical pass first
def test_resize_is_pillows(page, size, to):
    image = photo(*size)
    want = np.asarray(image.resize(to, Image.Resampling.BILINEAR))
    got = page.evaluate(
        """async ([img, w, h]) => {
          const {resizeBilinear} = await import("/resize.mjs");
          const out = resizeBilinear(image(img), w, h);
          return {width: out.width, height: out.height, rgb: b64(out.rgb)};
        }""",
        [rgb(image), *to],
    )
    np.testing.assert_array_equal(as_image(got), want)


@pytest.mark.parametrize("size", [(451, 300), (40, 300), (256, 256), (1000, 60), (3, 2)])
@pytest.mark.parametrize("padding", ["reflect", "black"])
def test_preprocess_and_postprocess_are_the_pythons(page, size, padding):
    image = photo(*size, seed=1)
    pixels, restore = preprocess(image, 256, padding)
    decoded = np.random.default_rng(2).uniform(-1.2, 1.2, (1, 3, 256, 256)).astype(np.float32)
    decoded[0, 0, :4, :4] = np.float32(1 / 255 - 1)  # a value that lands on a half level: rounded to even
    box = restore.box
    want_edit = np.asarray(postprocess(decoded, restore, size=(box[2] - box[0], box[3] - box[1])))
    got = page.evaluate(
        """async ([img, padding, decoded]) => {
          const {preprocess, postprocess} = await import("/image.mjs");
          const {pixels, restore} = preprocess(image(img), 256, padding);
          const edit = postprocess(floats(decoded), 256, restore.box);
          return [b64(pixels), restore, {width: edit.width, height: edit.height, rgb: b64(edit.rgb)}];
        }""",
        [rgb(image), padding, b64(decoded)],
    )
    assert got[0] == b64(pixels[0])
    assert Restore(**{**got[1], "box": tuple(got[1]["box"])}) == restore
    np.testing.assert_array_equal(as_image(got[2]), want_edit)


@pytest.mark.parametrize("method, tolerance", [("guided", 1), ("guided-grey", 2), ("plain", 0)])
def test_upsampling_is_the_pythons(page, method, tolerance):
    full = photo(451, 300, seed=3)
    edit = photo(256, 170, seed=4).filter(ImageFilter.GaussianBlur(2))
    want = np.asarray(upsample(edit, full, method), np.int16)
    got = page.evaluate(
        """async ([edit, full, method, settings]) => {
          const {upsample} = await import("/upsample.mjs");
          const out = upsample(image(edit), image(full), method, settings);
          return {width: out.width, height: out.height, rgb: b64(out.rgb)};
        }""",
        [rgb(edit), rgb(full), method, {"radius": RADIUS, "eps": EPS}],
    )
    difference = np.abs(as_image(got).astype(np.int16) - want)
    # the per-pixel 3x3 solves are LAPACK's in NumPy, by hand in JS: a last float32 bit apart, now and then a level
    assert difference.max() <= tolerance and difference.mean() < 0.01, (difference.max(), difference.mean())


def test_the_refiner_tiles_as_the_pythons(page):
    full, edit = photo(203, 150, seed=5), photo(203, 150, seed=6)

    def forward(p, e):  # a stand-in network: the same float32 arithmetic on both sides
        return e * np.float32(0.9) + p * np.float32(0.1) - np.float32(0.01)

    want = np.asarray(refine_in_tiles(forward, full, edit, factor=2, margin=6, tile=64))
    got = page.evaluate(
        """async ([full, edit]) => {
          const {refineInTiles} = await import("/refine.mjs");
          const f32 = Math.fround;
          const forward = async (p, e) =>
            e.map((v, i) => f32(f32(f32(v * f32(0.9)) + f32(p[i] * f32(0.1))) - f32(0.01)));
          const out = await refineInTiles(forward, image(full), image(edit), 2, 6, 64);
          return {width: out.width, height: out.height, rgb: b64(out.rgb)};
        }""",
        [rgb(full), rgb(edit)],
    )
    np.testing.assert_array_equal(as_image(got), want)
