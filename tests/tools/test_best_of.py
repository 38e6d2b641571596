"""Inference-time scaling: N seeds, the judge's favourite kept; judges by name; the CLI flags."""

import re

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from sanaedit.apps.cli import main
from sanaedit.tools.best_of import best_of, load_judge, structure_judge
from sanaedit.tools.prune import SAMPLE_PHOTO

PHOTO = Image.fromarray(np.random.default_rng(1).integers(0, 255, (24, 40, 3), dtype=np.uint8))


def _seeded(pipe, seed):
    return pipe(PHOTO, num_inference_steps=2, generator=torch.Generator().manual_seed(seed)).images[0]


def test_best_of_keeps_the_candidate_the_judge_scores_highest(tiny_pipe):
    wanted = np.asarray(_seeded(tiny_pipe, 7), dtype=np.float64)  # seed 5 + 2: the third candidate
    seen = []

    def judge(source, candidate):
        seen.append(source.size)
        return -float(np.abs(np.asarray(candidate, dtype=np.float64) - wanted).mean())

    best, scores = best_of(tiny_pipe, PHOTO, 4, judge, seed=5, num_inference_steps=2)
    assert len(scores) == 4 and int(np.argmax(scores)) == 2 and scores[2] == 0.0
    assert np.array_equal(np.asarray(best), wanted.astype(np.uint8)) and best.size == PHOTO.size
    assert seen == [PHOTO.size] * 4  # the judge sees the source photo beside each candidate
    one, [score] = best_of(tiny_pipe, PHOTO, 1, seed=3, num_inference_steps=2)  # n=1: the plain edit
    assert np.array_equal(np.asarray(one), np.asarray(_seeded(tiny_pipe, 3))) and -1 <= score <= 1
    nan_first = iter([float("nan"), 0.5])
    _, scores = best_of(tiny_pipe, PHOTO, 2, lambda s, c: next(nan_first), num_inference_steps=1)
    assert scores[1] == 0.5
    with pytest.raises(ValueError, match="not a number"):
        best_of(tiny_pipe, PHOTO, 1, lambda s, c: "good", num_inference_steps=1)
    with pytest.raises(ValueError, match="--candidates 0"):
        best_of(tiny_pipe, PHOTO, 0)


def test_structure_judge_measures_agreement_with_the_photo_edges():
    photo = Image.open(SAMPLE_PHOTO).convert("RGB")
    assert structure_judge(photo, photo) == pytest.approx(1.0)
    posterised = photo.quantize(8).convert("RGB")  # flat colours, same shapes
    other = photo.transpose(Image.Transpose.FLIP_TOP_BOTTOM)  # the same content, elsewhere
    blurred = photo.filter(ImageFilter.GaussianBlur(6))  # structure lost
    assert structure_judge(photo, posterised) > structure_judge(photo, blurred) > structure_judge(photo, other)
    assert structure_judge(photo, Image.new("RGB", photo.size, "grey")) == 0.0  # no edges at all


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("structure_judge", "expected MODULE:FUNCTION"),
        ("no_such_module_xyz:score", "cannot import module 'no_such_module_xyz'"),
        ("sanaedit.tools.best_of:no_such", "has no function 'no_such'"),
    ],
)
def test_load_judge_errors_name_the_spec(spec, message):
    with pytest.raises(ValueError, match=message) as err:
        load_judge(spec)
    assert repr(spec) in str(err.value)


def test_load_judge_imports_a_function():
    assert load_judge("sanaedit.tools.best_of:structure_judge") is structure_judge


def test_cli_checks_candidates_and_judge_before_loading(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import sanaedit.load

    photo = tmp_path / "p.png"
    PHOTO.save(photo)
    with pytest.raises(SystemExit):
        main(["edit", str(photo), "-o", str(tmp_path / "o.png"), "--candidates", "0"])
    assert "--candidates" in capsys.readouterr().err
    monkeypatch.setattr(sanaedit.load, "load_pipeline", lambda *a, **k: pytest.fail("loaded the model"))
    assert main(["edit", str(photo), "-o", str(tmp_path / "o.png"), "--judge", "nope_xyz:f"]) == 1
    assert "--judge 'nope_xyz:f'" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_cli_writes_the_judges_pick(tiny_model_dir, tmp_path):
    from sanaedit.pipeline import SanaEditPipeline

    photo, out = tmp_path / "p.png", tmp_path / "o.png"
    PHOTO.save(photo)
    args = ["edit", str(photo), "-o", str(out), "--model", str(tiny_model_dir), "--steps", "2", "--dtype", "float32"]
    assert (
        main([*args, "--candidates", "3", "--seed", "4", "--judge", "sanaedit.tools.best_of:structure_judge", "-q"])
        == 0
    )
    pipe = SanaEditPipeline.from_pretrained(tiny_model_dir)
    best, _ = best_of(pipe, PHOTO, 3, structure_judge, seed=4, num_inference_steps=2)
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), np.asarray(best))


def test_cli_says_which_seed_won_and_that_seed_alone_gives_it(tiny_model_dir, tmp_path, capsys):
    photo, out, alone = tmp_path / "p.png", tmp_path / "o.png", tmp_path / "alone.png"
    PHOTO.save(photo)
    args = ["edit", str(photo), "--model", str(tiny_model_dir), "--steps", "2", "--dtype", "float32"]
    assert main([*args, "-o", str(out), "--candidates", "3", "--seed", "4"]) == 0
    said = re.search(r"kept seed (\d+) of 4\.\.6 \(score ", capsys.readouterr().err)
    assert said, "the CLI names the winning seed"
    assert main([*args, "-o", str(alone), "--seed", said.group(1), "-q"]) == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(alone)))
