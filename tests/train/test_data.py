import json

import numpy as np
import pytest
import torch
from PIL import Image

from sanaedit.errors import DataError
from sanaedit.image.io import load_image, preprocess
from sanaedit.train.data import LatentDataset, ManifestDataset, collate, pre_encode


def _img(path, colour, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


@pytest.fixture()
def folder(tmp_path):
    _img(tmp_path / "src/a.png", (255, 0, 0))
    _img(tmp_path / "tgt/a.png", (0, 255, 0))
    _img(tmp_path / "src/b.png", (0, 0, 255))
    _img(tmp_path / "tgt/b.png", (255, 255, 255))
    rows = [
        {"source": "src/a.png", "target": "tgt/a.png", "prompt": "green"},
        {"source": "src/b.png", "target": "tgt/b.png", "prompt": "white"},
    ]
    (tmp_path / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return tmp_path


def test_edit_triples_from_jsonl(folder):
    ds = ManifestDataset(folder, kind="edit", resolution=16)
    item = ds[0]
    assert item["prompt"] == "green" and item["target"].shape == (3, 16, 16)
    # prepared like the pipeline: centred square pad (black bars above/below a 40x30 image), [-1, 1]
    assert item["source"][0, 8, 8] == 1 and item["source"][1, 8, 8] == -1
    assert item["source"][:, 0, 8].eq(-1).all()
    batch = collate([ds[0], ds[1]])
    assert batch["source"].shape == (2, 3, 16, 16) and batch["prompt"] == ["green", "white"]


def test_csv_and_text_image_and_image_only(folder):
    (folder / "pairs.csv").write_text("image,text\ntgt/a.png,a green square\n")
    ds = ManifestDataset(folder / "pairs.csv", kind="text_image", resolution=8)
    assert ds[0]["prompt"] == "a green square" and "source" not in ds[0]
    # an editing manifest also feeds the image-only (autoencoder) stage: sources and targets are the images
    images = ManifestDataset(folder, kind="images", resolution=8)
    assert len(images) == 4 and images[3]["target"][:, 4, 4].tolist() == [1, 1, 1]


def test_clear_errors(folder):
    (folder / "bad.jsonl").write_text('{"source": "src/a.png", "target": "tgt/a.png"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: missing field\(s\) \['prompt'\]"):
        ManifestDataset(folder / "bad.jsonl", kind="edit")
    (folder / "broken.jsonl").write_text("{not json\n")
    with pytest.raises(DataError, match="broken.jsonl:1: not valid JSON"):
        ManifestDataset(folder / "broken.jsonl")
    with pytest.raises(DataError, match="no manifest"):
        ManifestDataset(folder / "src")
    (folder / "tgt/b.png").write_bytes(b"not a png")
    ds = ManifestDataset(folder, kind="edit", resolution=8)
    with pytest.raises(DataError, match=r"sample 1: .*b.png: (not an image|corrupt).*skip_bad"):
        ds[1]


def test_skip_and_count(folder):
    (folder / "tgt/b.png").unlink()
    ds = ManifestDataset(folder, kind="edit", resolution=8, skip_bad=True)
    batch = collate([ds[0], ds[1]])
    assert batch["skipped"] == 1 and batch["size"] == 1 and batch["index"].tolist() == [0]


def test_pre_encode_round_trip_and_reuse(folder, tmp_path):
    ds = ManifestDataset(folder, kind="edit", resolution=8)
    calls = []

    def encode(pixels):
        calls.append(len(pixels))
        return pixels[:, :2, ::2, ::2] * 2

    def text(prompts):
        return torch.tensor([[float(len(p))] for p in prompts])

    cache = pre_encode(ds, tmp_path / "cache", encode, fingerprint="x", encode_text=text, progress=False)
    lat = LatentDataset(cache)
    assert len(lat) == 2 and lat[1]["prompt"] == "white"
    assert torch.equal(lat[0]["target_latents"], ds[0]["target"][:2, ::2, ::2] * 2)
    assert torch.equal(lat[0]["ref_latents"], ds[0]["source"][:2, ::2, ::2] * 2)
    assert lat[1]["llm_features"].tolist() == [5.0]
    n = len(calls)
    pre_encode(ds, tmp_path / "cache", encode, fingerprint="x", progress=False)  # same fingerprint: reused
    assert len(calls) == n
    pre_encode(ds, tmp_path / "cache", encode, fingerprint="y", progress=False)  # changed: rebuilt
    assert len(calls) > n


def test_comic_dataset_holds_out_the_sample_photo(tmp_path):
    from sanaedit.train.comic_data import build_comic_dataset

    counts = build_comic_dataset(tmp_path / "d", resolution=32, crops_per_photo=1, synthetic=2, eval_crops=1)
    train = [json.loads(x) for x in (tmp_path / "d/train/manifest.jsonl").read_text().splitlines()]
    evals = [json.loads(x) for x in (tmp_path / "d/eval/manifest.jsonl").read_text().splitlines()]
    assert counts["train"] == len(train) and counts["eval"] == len(evals)
    assert not any("chelsea" in r["source"] for r in train)
    assert any("chelsea" in r["source"] for r in evals)
    src = np.asarray(Image.open(tmp_path / "d/train" / train[0]["source"]))
    assert src.shape == (32, 32, 3)


def _rgb_profile_with_red_and_blue_swapped() -> bytes:
    """A real (non-sRGB) RGB ICC profile: sRGB's, with the red and blue primaries' tags swapped."""
    import struct

    from PIL import ImageCms

    data = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    count = struct.unpack(">I", data[128:132])[0]
    where = {bytes(data[132 + 12 * i : 136 + 12 * i]): 136 + 12 * i for i in range(count)}
    r, b = where[b"rXYZ"], where[b"bXYZ"]
    data[r : r + 8], data[b : b + 8] = data[b : b + 8], data[r : r + 8]
    data[84:100] = bytes(16)  # no profile ID
    return bytes(data)


def test_exif_rotated_and_icc_profiled_images_train_as_inference_sees_them(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (30, 48, 3), dtype=np.uint8)  # not square: a rotation moves the padding
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    Image.fromarray(pixels).save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    Image.fromarray(pixels).save(tmp_path / "profiled.png", icc_profile=_rgb_profile_with_red_and_blue_swapped())
    rows = [{"image": "rotated.jpg"}, {"image": "profiled.png"}]
    (tmp_path / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds = ManifestDataset(tmp_path, kind="images", resolution=32)
    for i, name in enumerate(["rotated.jpg", "profiled.png"]):
        inference = torch.from_numpy(preprocess(load_image(tmp_path / name), 32)[0][0])  # what the pipeline feeds
        naive = torch.from_numpy(preprocess(Image.open(tmp_path / name).convert("RGB"), 32)[0][0])  # EXIF/ICC ignored
        assert torch.equal(ds[i]["target"], inference), name
        assert not torch.allclose(ds[i]["target"], naive, atol=0.1), f"{name}: the test image tests nothing"
