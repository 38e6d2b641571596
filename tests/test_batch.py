from PIL import Image

from sanaedit.batch import edit_folder
from sanaedit.cli import main


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
    assert "done 2, skipped 0 (already done), failed 1" in summary.report()


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
    import pytest

    with pytest.raises(ValueError, match="must differ"):
        edit_folder(fake_edit, tmp_path / "in", tmp_path / "in")


def test_cli_folder_mode(tiny_model_dir, tmp_path, capsys):
    make_tree(tmp_path / "in")
    args = ["edit", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(tiny_model_dir), "-r", "-q"]
    assert main([*args, "--steps", "1"]) == 1  # one broken file: reported, the rest written
    err = capsys.readouterr().err
    assert "done 2" in err and "broken.jpg" in err
    assert (tmp_path / "out" / "trip" / "b.png").is_file()
    assert main([*args, "--steps", "1", "--resume"]) == 1
    assert "skipped 2" in capsys.readouterr().err
