import os

import pytest
from PIL import Image

from sanaedit.apps.batch import edit_folder
from sanaedit.apps.cli import main
from tests.conftest import gradient, png_header_only


def fake_edit(image, **kwargs):
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def make_tree(root):
    (root / "trip").mkdir(parents=True)
    Image.new("RGB", (10, 6), "red").save(root / "a.jpg")
    Image.new("RGB", (7, 9), "blue").save(root / "trip" / "b.png")
    (root / "broken.jpg").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"")
    (root / "notes.txt").write_text("ignored")


def test_walks_keeps_names_and_never_stops_for_a_bad_file(tmp_path):
    make_tree(tmp_path / "in")
    summary = edit_folder(fake_edit, tmp_path / "in", tmp_path / "out", recursive=True, progress=False)
    assert sorted(p.name for p in summary.done) == ["a.jpg", "b.png"]
    assert [p.name for p, _ in summary.failed] == ["broken.jpg"] and "not an image" in summary.failed[0][1]
    assert Image.open(tmp_path / "out" / "a.png").size == (10, 6)
    assert Image.open(tmp_path / "out" / "trip" / "b.png").size == (7, 9)
    assert "done: 2 written, 0 skipped (already done), 1 failed" in summary.report()


def test_not_recursive_by_default_and_resume_skips_done(tmp_path):
    make_tree(tmp_path / "in")
    first = edit_folder(fake_edit, tmp_path / "in", tmp_path / "out", progress=False)
    assert [p.name for p in first.done] == ["a.jpg"]
    calls = []
    again = edit_folder(
        lambda im: calls.append(1) or im, tmp_path / "in", tmp_path / "out", resume=True, progress=False
    )
    assert [p.name for p in again.skipped] == ["a.jpg"] and calls == []


def test_a_failing_edit_is_counted_and_leaves_no_partial_output(tmp_path):
    make_tree(tmp_path / "in")

    def explode(image):
        raise RuntimeError("the transformer produced NaN")

    summary = edit_folder(explode, tmp_path / "in", tmp_path / "out", progress=False)
    assert len(summary.failed) == 2 and "NaN" in dict(summary.failed)[tmp_path / "in" / "a.jpg"]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.png"))


def test_output_folder_must_not_be_the_input(tmp_path):
    make_tree(tmp_path / "in")
    with pytest.raises(ValueError, match="must differ"):
        edit_folder(fake_edit, tmp_path / "in", tmp_path / "in")


def test_cli_folder_mode(tiny_model_dir, tmp_path, capsys):
    make_tree(tmp_path / "in")
    args = ["edit", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(tiny_model_dir), "-r", "-q"]
    assert main([*args, "--steps", "1"]) == 1  # one broken file: reported, the rest written
    err = capsys.readouterr().err
    assert "done: 2 written" in err and "broken.jpg" in err
    assert (tmp_path / "out" / "trip" / "b.png").is_file()
    assert main([*args, "--steps", "1", "--resume"]) == 1
    assert "2 skipped" in capsys.readouterr().err


def test_colliding_names_keep_the_whole_name_and_other_files_are_counted(tmp_path):
    src = tmp_path / "in"
    (src / "album.png").mkdir(parents=True)  # a folder with an image-like name is a folder, not an input
    Image.new("RGB", (5, 5), "red").save(src / "a.jpg")
    Image.new("RGB", (6, 6), "blue").save(src / "a.png")
    Image.new("RGB", (7, 7), "green").save(src / "album.png" / "c.png")
    os.symlink(src / "a.jpg", src / "linked.jpg")  # a symlinked photo is still the user's photo
    (src / "notes.txt").write_text("ignored")
    summary = edit_folder(fake_edit, src, tmp_path / "out", recursive=True, progress=False)
    outputs = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*.png") if p.is_file())
    assert outputs == ["a.jpg.png", "a.png.png", "album.png/c.png", "linked.png"]
    assert Image.open(tmp_path / "out" / "a.png.png").size == (6, 6)
    assert not summary.failed and "1 other file(s) ignored" in summary.report()
    again = edit_folder(fake_edit, src, tmp_path / "out", recursive=True, resume=True, progress=False)
    assert len(again.skipped) == 4 and not again.done  # the same names on a resumed run


def test_any_exception_from_the_edit_is_a_failure_not_a_crash(tmp_path):
    make_tree(tmp_path / "in")

    def buggy(image):
        raise KeyError("unexpected")

    summary = edit_folder(buggy, tmp_path / "in", tmp_path / "out", progress=False)
    reasons = {p.name: reason for p, reason in summary.failed}
    assert reasons["a.jpg"] == f"{tmp_path / 'in' / 'a.jpg'}: KeyError: 'unexpected'"


def make_hostile_folder(root):
    """The hostile inputs of issue 4 (the bomb as a header-only PNG, so the test stays fast)."""
    from PIL import ImageCms

    root.mkdir()
    good = {}  # name -> the upright size the output must have
    photo = gradient(64, 40)
    photo.save(root / "cut.jpg", quality=90)
    (root / "cut.jpg").write_bytes((root / "cut.jpg").read_bytes()[:500])
    (root / "empty.jpg").write_bytes(b"")
    Image.new("RGB", (1, 1), "red").save(root / "one_px.png")
    good["one_px.png"] = (1, 1)
    png_header_only(root / "bomb.png", 12000, 12000)
    photo.convert("CMYK").save(root / "cmyk.jpg")
    good["cmyk.jpg"] = (64, 40)
    Image.new("I;16", (30, 20), 40000).save(root / "deep16.png")
    good["deep16.png"] = (30, 20)
    photo.convert("P").save(root / "palette.png", transparency=0)
    good["palette.png"] = (64, 40)
    photo.convert("RGBA").save(root / "rgba.png")
    good["rgba.png"] = (64, 40)
    photo.convert("L").save(root / "gray.jpg")
    good["gray.jpg"] = (64, 40)
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.save(
        root / "rotated.jpg", exif=exif, icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    )
    good["rotated.jpg"] = (40, 64)  # upright
    frames = [photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    good["anim.gif"] = (64, 40)
    photo.save(root / "photo.webp")
    good["photo.webp"] = (64, 40)
    photo.save(root / "png_inside.jpg", format="PNG")
    good["png_inside.jpg"] = (64, 40)
    (root / "text.jpg").write_text("hello")
    bad = {"cut.jpg": "truncated", "empty.jpg": "0 bytes", "bomb.png": "decompression", "text.jpg": "not an image"}
    return good, bad


@pytest.mark.slow  # 11 images through the tiny pipeline: ~8 s on an idle 2-core CPU
def test_every_hostile_input_gives_an_output_or_a_one_line_reason(tiny_pipe, tmp_path):
    import torch

    good, bad = make_hostile_folder(tmp_path / "in")

    def edit(image):
        return tiny_pipe(image, num_inference_steps=1, generator=torch.Generator().manual_seed(0)).images[0]

    summary = edit_folder(edit, tmp_path / "in", tmp_path / "out", progress=False)
    assert sorted(p.name for p in summary.done) == sorted(good)
    for name, size in good.items():
        out = Image.open(tmp_path / "out" / (name.rsplit(".", 1)[0] + ".png"))
        assert (out.size, out.mode) == (size, "RGB"), name
    reasons = {p.name: reason for p, reason in summary.failed}
    assert sorted(reasons) == sorted(bad)
    for name, word in bad.items():
        assert reasons[name].startswith(str(tmp_path / "in" / name) + ":") and word in reasons[name]
        assert "\n" not in reasons[name]


def test_the_bars_counts_include_the_file_just_finished(tmp_path, capsys):
    """The progress bar's done/failed postfix counts each file as it ends, not one file late."""
    make_tree(tmp_path / "in")
    edit_folder(fake_edit, tmp_path / "in", tmp_path / "out", recursive=True, progress=True)
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "done=2" in bar and "failed=1" in bar, bar
