"""SANA-1.5 block pruning: importance per block, the least important dropped, the pruned folder edits."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sanaedit.apps.cli import main
from sanaedit.pipeline import SanaEditPipeline
from sanaedit.tools.grow import ZEROED
from sanaedit.tools.prune import block_similarity, blocks_to_keep, prune_transformer

PHOTO = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8))


def _edit(pipe):
    return np.asarray(pipe(PHOTO, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0])


@torch.no_grad()
def test_a_block_forced_to_identity_is_the_least_important_and_the_one_dropped(tiny_pipe):
    t = tiny_pipe.transformer
    config = {k: v for k, v in t.config.items() if not k.startswith("_")}
    torch.manual_seed(0)
    deep = type(t).from_config({**config, "num_layers": 4}).eval()
    for name, param in deep.transformer_blocks[1].named_parameters():  # close its residual branches
        if name.startswith(ZEROED):
            param.zero_()
    pipe = SanaEditPipeline.from_modules(deep, tiny_pipe.vae, tiny_pipe.text_encoder, tiny_pipe.config)
    photos = [PHOTO, Image.new("RGB", (32, 32), (200, 30, 90))]
    similarity = block_similarity(pipe, photos, steps=3)
    assert len(similarity) == 4
    assert similarity[1] == pytest.approx(1.0, abs=1e-6)  # output == input
    assert max(similarity[i] for i in (0, 2, 3)) < 0.999
    kept = blocks_to_keep(similarity, 3)
    assert kept == [0, 2, 3]
    pruned = prune_transformer(deep, kept)
    assert pruned.config.num_layers == 3 and len(pruned.transformer_blocks) == 3
    for new, old in enumerate(kept):  # the kept blocks' weights, renumbered
        a, b = pruned.transformer_blocks[new].state_dict(), deep.transformer_blocks[old].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in b)
    # dropping an identity block changes nothing at all
    c = t.config.out_channels
    args = (
        torch.randn(2, c, 8, 8),
        torch.randn(2, 5, t.config.caption_channels),
        torch.tensor([900.0, 50.0]),
        torch.ones(2, 5),
        torch.randn(2, c, 8, 8),
    )
    assert torch.equal(pruned(*args), deep(*args))
    with pytest.raises(ValueError, match="--keep 4"):
        blocks_to_keep(similarity, 4)
    with pytest.raises(ValueError, match="--keep 0"):
        blocks_to_keep(similarity, 0)


def test_prune_cli_writes_a_folder_that_loads_and_edits_with_k_blocks(tiny_model_dir, tmp_path, capsys):
    grown, out = tmp_path / "grown", tmp_path / "pruned"
    assert main(["grow", str(tiny_model_dir), "--layers", "3", "-o", str(grown)]) == 0  # block 2: the identity
    calib = tmp_path / "calib"
    calib.mkdir()
    PHOTO.save(calib / "a.png")
    assert main(["prune", str(grown), "--keep", "2", "--out", str(out), "--calib", str(calib), "--steps", "2"]) == 0
    assert "block 2: 1.0000  dropped" in capsys.readouterr().out
    pipe = SanaEditPipeline.from_pretrained(out)
    assert pipe.transformer.config.num_layers == 2 and not pipe.text_encoder_loaded  # prompt cache kept
    assert json.loads((out / "transformer" / "config.json").read_text())["num_layers"] == 2
    # the identity block was the one dropped: the pruned model edits exactly as the original 2-block one
    assert np.array_equal(_edit(pipe), _edit(SanaEditPipeline.from_pretrained(tiny_model_dir)))


def test_prune_refuses_keep_out_of_range_before_loading(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import sanaedit.tools.prune

    monkeypatch.setattr(sanaedit.tools.prune, "prune_model", lambda *a, **k: pytest.fail("loaded the model"))
    out = tmp_path / "x"
    assert main(["prune", str(tiny_model_dir), "--keep", "2", "-o", str(out)]) == 1  # the tiny model has 2 blocks
    assert "--keep 2: the model has 2 blocks" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["prune", str(tiny_model_dir), "--keep", "0", "-o", str(out)])
    assert "--keep" in capsys.readouterr().err
    assert main(["prune", str(tiny_model_dir), "--keep", "1", "-o", str(out), "--finetune-steps", "5"]) == 1
    assert "--finetune-steps needs --data" in capsys.readouterr().err
    assert main(["prune", str(tiny_model_dir), "--keep", "1", "-o", str(out), "--data", str(tmp_path)]) == 1
    assert "no manifest.jsonl" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_prune_with_a_short_finetune(tiny_model_dir, tmp_path, tiny_edit_pairs):
    from safetensors.torch import load_file

    data = tiny_edit_pairs
    out = tmp_path / "pruned"
    args = ["prune", str(tiny_model_dir), "--keep", "1", "-o", str(out), "--steps", "2", "--finetune-steps", "2"]
    assert main([*args, "--data", str(data), "--lr", "1e-2"]) == 0
    weights = load_file(out / "transformer" / "diffusion_pytorch_model.safetensors")
    assert not any(k.startswith("transformer_blocks.1.") for k in weights)
    original = load_file(tiny_model_dir / "transformer" / "diffusion_pytorch_model.safetensors")
    assert not torch.equal(weights["proj_out.weight"], original["proj_out.weight"])  # trained
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs", "pruned"]  # the training run is cleaned up
    assert SanaEditPipeline.from_pretrained(out).transformer.config.num_layers == 1
