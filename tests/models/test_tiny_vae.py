"""The light autoencoder (issue 14 item 2): TAESANA's architecture and published key layout, a model folder carrying
it, `--vae tiny|full`, assemble from .pth state dicts, the `tiny-vae` distillation stage."""

import json

import pytest
import torch
from PIL import Image
from torch import nn

from sanaedit.errors import ModelFolderError
from sanaedit.models.tiny_vae import TinyAutoencoder, TinyVaeDecoder, TinyVaeEncoder, load_taesd_state_dicts


# ------------------------------------------------------------------------------ a replica of taesd's F32 networks
# Written here from the architecture (madebyollin/taesd taesd.py F32Encoder / F32Decoder), as plain nn.Sequential:
# its state dicts have the published checkpoints' keys (`0.weight`, `4.conv.0.weight`, `5.weight`, ...).
class _Block(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        c = nn.Conv2d
        self.conv = nn.Sequential(
            c(n_in, n_out, 3, padding=1),
            nn.ReLU(),
            c(n_out, n_out, 3, padding=1),
            nn.ReLU(),
            c(n_out, n_out, 3, padding=1),
        )
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x):
        return self.fuse(self.conv(x) + self.skip(x))


class _Clamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


def _replica_encoder(latent_channels):
    def down():
        return nn.Conv2d(64, 64, 3, padding=1, stride=2, bias=False)

    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1, stride=2), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.ReLU(),
        _Block(64, 64),
        down(), _Block(64, 64), _Block(64, 64), _Block(64, 64),
        down(), _Block(64, 64), _Block(64, 64), _Block(64, 64),
        down(), _Block(64, 64), _Block(64, 64), _Block(64, 64),
        nn.Conv2d(64, latent_channels, 3, padding=1),
    )  # fmt: skip


def _replica_decoder(latent_channels):
    def up(n_in, n_out):
        return [nn.Upsample(scale_factor=2), nn.Conv2d(n_in, n_out, 3, padding=1, bias=False)]

    return nn.Sequential(
        _Clamp(), nn.Conv2d(latent_channels, 256, 3, padding=1), nn.ReLU(),
        _Block(256, 256), _Block(256, 256), _Block(256, 256), *up(256, 128),
        _Block(128, 128), _Block(128, 128), _Block(128, 128), *up(128, 64),
        _Block(64, 64), _Block(64, 64), _Block(64, 64), *up(64, 64),
        _Block(64, 64), _Block(64, 64), _Block(64, 64), *up(64, 64),
        _Block(64, 64), _Block(64, 64), _Block(64, 64), *up(64, 64),
        _Block(64, 64), nn.Conv2d(64, 3, 3, padding=1),
    )  # fmt: skip


def _published_files(tmp_path, latent_channels):
    """taesana_encoder.pth / taesana_decoder.pth in the published layout (random weights), and their networks."""
    torch.manual_seed(1)
    encoder, decoder = _replica_encoder(latent_channels).eval(), _replica_decoder(latent_channels).eval()
    with torch.no_grad():  # non-trivial biases too
        for p in [*encoder.parameters(), *decoder.parameters()]:
            p.add_(torch.randn_like(p) * 0.01)
    paths = tmp_path / "taesana_encoder.pth", tmp_path / "taesana_decoder.pth"
    torch.save(encoder.state_dict(), paths[0])
    torch.save(decoder.state_dict(), paths[1])
    return paths, encoder, decoder


def test_taesana_defaults_hold_the_published_key_layout_and_compute_the_same(tmp_path):
    (enc_path, dec_path), encoder, decoder = _published_files(tmp_path, 32)
    assert "4.conv.0.weight" in encoder.state_dict() and "1.weight" in decoder.state_dict()
    tiny = TinyAutoencoder().eval()  # TAESANA: 32x, 32 latent channels
    load_taesd_state_dicts(tiny, torch.load(enc_path, weights_only=True), torch.load(dec_path, weights_only=True))
    images = torch.rand(1, 3, 64, 64)
    latents = torch.randn(1, 32, 2, 2) * 2
    with torch.no_grad():
        torch.testing.assert_close(tiny.encoder(images), encoder(images), rtol=0, atol=0)
        torch.testing.assert_close(tiny.decoder(latents), decoder(latents), rtol=0, atol=0)
        # the wrapper: pixels in [-1, 1] <-> latents times the DC-AE's scaling factor
        sf = tiny.config.scaling_factor
        torch.testing.assert_close(TinyVaeEncoder(tiny)(images * 2 - 1), encoder(images) * sf)
        torch.testing.assert_close(TinyVaeDecoder(tiny)(latents * sf), decoder(latents) * 2 - 1)
    n_dec = sum(p.numel() for p in tiny.decoder.parameters())
    n_enc = sum(p.numel() for p in tiny.encoder.parameters())
    assert 8.0e6 < n_dec < 8.6e6 and 1.1e6 < n_enc < 1.4e6  # TAESANA: 8.3M + 1.3M


def test_fresh_weights_clamp_latents_over_the_same_spread_as_taesana(tmp_path):
    """A DC-AE whose raw latents spread wider (a smaller scaling factor) gets a proportionally wider soft clamp, so
    the decoder sees them un-squashed as TAESANA's does its own; the setting is saved with the folder."""
    from types import SimpleNamespace

    from sanaedit.models.tiny_vae import TAESANA_SCALING_FACTOR

    dc_ae = SimpleNamespace(config=SimpleNamespace(latent_channels=32, scaling_factor=TAESANA_SCALING_FACTOR / 5))
    dc_ae.config.encoder_block_out_channels = [128] * 6  # 32x compression
    tiny = TinyAutoencoder.for_autoencoder(dc_ae)
    assert tiny.config.latent_clamp == pytest.approx(15.0)
    wide = torch.full((1, 32, 1, 1), 12.0)  # 5x TAESANA's 2.4 spread
    assert tiny.decoder[0](wide).min() > 0.7 * 12.0  # TAESANA's clamp of 3 would flatten it to < 3
    tiny.save_pretrained(tmp_path / "t")
    assert TinyAutoencoder.from_pretrained(tmp_path / "t").decoder[0].limit == pytest.approx(15.0)


def test_a_wrong_state_dict_is_refused_by_name(tmp_path):
    (enc_path, dec_path), _, _ = _published_files(tmp_path, 32)
    enc, dec = torch.load(enc_path, weights_only=True), torch.load(dec_path, weights_only=True)
    with pytest.raises(ValueError, match="missing"):
        load_taesd_state_dicts(TinyAutoencoder(), {k: v for k, v in enc.items() if k != "0.weight"}, dec)
    with pytest.raises(ValueError, match="shape"):
        load_taesd_state_dicts(TinyAutoencoder(latent_channels=16), enc, dec)


@pytest.fixture(scope="module")
def tiny_vae_dir(tmp_path_factory, tiny_model_dir):
    """The tiny model assembled with published-layout tiny VAE weights (F32, 4 latent channels: the tiny DC-AE's)."""
    from sanaedit.tools.assemble import assemble

    tmp = tmp_path_factory.mktemp("tinyvae")
    paths, encoder, decoder = _published_files(tmp, 4)
    out = assemble(
        tiny_model_dir / "transformer",
        tiny_model_dir / "vae",
        tiny_model_dir / "llm",
        tmp / "model",
        variant="tiny",
        tiny_vae=paths,
    )
    return out, encoder, decoder


def test_assemble_adds_the_published_weights_and_both_autoencoders_load(tiny_vae_dir):
    from sanaedit.formats.torch_folder import check_model_folder
    from sanaedit.load import load_model_folder

    folder, encoder, decoder = tiny_vae_dir
    index = check_model_folder(folder)
    assert index["tiny_vae"] == ["sanaedit", "TinyAutoencoder"] and index["pipeline"]["vae"] == "full"
    tiny_pipe = load_model_folder(folder, vae="tiny")
    assert tiny_pipe.vae is None  # the DC-AE is not loaded at all
    full_pipe = load_model_folder(folder)
    assert full_pipe.vae is not None and full_pipe.flow.tiny_vae is not None
    sf = full_pipe.vae.config.scaling_factor
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    latents = torch.randn(1, 4, 2, 2)
    with torch.no_grad():
        torch.testing.assert_close(tiny_pipe.encode_image(pixels), encoder((pixels + 1) / 2) * sf)
        torch.testing.assert_close(tiny_pipe.decode_latents(latents), decoder(latents / sf) * 2 - 1)
        assert not torch.allclose(full_pipe.decode_latents(latents), tiny_pipe.decode_latents(latents))
    photo = Image.new("RGB", (64, 48), (10, 200, 30))
    out = tiny_pipe(photo, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert out.images[0].size == (64, 48)


def test_vae_choice_through_load_pipeline_and_the_folder_default(tiny_vae_dir, tiny_model_dir, tmp_path):
    import shutil

    from sanaedit.load import load_pipeline

    folder = tiny_vae_dir[0]
    assert load_pipeline(folder, dtype="float32", vae="tiny").vae is None
    assert load_pipeline(folder, dtype="float32").vae is not None
    with pytest.raises(ModelFolderError, match="no tiny autoencoder"):
        load_pipeline(tiny_model_dir, dtype="float32", vae="tiny")
    # a folder may make tiny its default
    copy = tmp_path / "tiny-default"
    shutil.copytree(folder, copy)
    index = json.loads((copy / "model_index.json").read_text())
    index["pipeline"]["vae"] = "tiny"
    (copy / "model_index.json").write_text(json.dumps(index))
    assert load_pipeline(copy, dtype="float32").vae is None
    assert load_pipeline(copy, dtype="float32", vae="full").vae is not None


def test_a_pipeline_without_the_dc_ae_refuses_to_save_a_model_folder(tiny_vae_dir, tmp_path):
    from sanaedit.load import load_model_folder

    with pytest.raises(ValueError, match="DC-AE"):
        load_model_folder(tiny_vae_dir[0], vae="tiny").save_pretrained(tmp_path / "out")


def test_cli_edit_vae_tiny(tiny_vae_dir, tmp_path):
    from sanaedit.apps.cli import main

    photo = tmp_path / "in.png"
    Image.new("RGB", (80, 60), (200, 40, 40)).save(photo)
    out = tmp_path / "out.png"
    assert main(["edit", str(photo), "-o", str(out), "--model", str(tiny_vae_dir[0]), "--vae", "tiny", "-q"]) == 0
    assert Image.open(out).size == (80, 60)


def test_tiny_vae_stage_distils_from_the_dc_ae_and_exports_it(tmp_path, tiny_model_dir, tiny_edit_pairs):
    """The stage adds a fresh light autoencoder to a folder without one, its loss falls, the DC-AE and its latent
    scale stay as they were, and the exported folder carries tiny_vae/ and still edits at the model's own resolution
    (the stage trains on smaller views)."""
    import numpy as np

    from sanaedit.formats.torch_folder import check_model_folder
    from sanaedit.load import load_model_folder
    from sanaedit.train.loop import train

    base = load_model_folder(tiny_model_dir)
    views = base.config.resolution // 2
    assert views % base.vae_scale == 0
    cfg = {
        "output_dir": str(tmp_path / "run"),
        "device": "cpu",
        "model": {"from": str(tiny_model_dir)},
        "data": {"manifest": str(tiny_edit_pairs), "resolution": views},
        "train": {"stage": "tiny-vae", "steps": 12, "batch_size": 2, "optimizer": "adamw", "lr": 1e-3},
        "log": {"every": 1, "progress": False},
        "checkpoint": {"every": 0},
    }
    out = train(cfg)
    curve = [json.loads(x)["loss"] for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(curve) == 12 and np.mean(curve[-3:]) < 0.8 * np.mean(curve[:3]), curve
    assert check_model_folder(out)["tiny_vae"] == ["sanaedit", "TinyAutoencoder"]
    before, after = base, load_model_folder(out, vae="tiny")
    assert after.vae is None and after.flow.tiny_vae.config.scaling_factor == before.vae.config.scaling_factor
    assert after.config.resolution == base.config.resolution
    dc_ae = load_model_folder(out).vae
    for (name, a), b in zip(before.vae.state_dict().items(), dc_ae.state_dict().values()):
        assert torch.equal(a, b), name  # the DC-AE is the frozen teacher


def test_the_distillation_loss_is_mse_to_the_latents_plus_reconstruction_of_the_teacher(tiny_vae_dir):
    from sanaedit.load import load_model_folder
    from sanaedit.train.config import Reconstruction
    from sanaedit.train.parts import TrainParts
    from sanaedit.train.stages import apply_stage, get_stage

    pipe = load_model_folder(tiny_vae_dir[0])
    parts = TrainParts(pipe, get_stage("tiny-vae"), Reconstruction(l1=2.0, mse=0.5))
    trainable = apply_stage(parts, get_stage("tiny-vae"))
    assert trainable and all(n.startswith("tiny_vae.") for n in trainable)
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    _, encoder, decoder = tiny_vae_dir
    with torch.no_grad():
        z = pipe.vae.encode(pixels).latent
        teacher = pipe.vae.decode(z).sample
        student = decoder(z) * 2 - 1
        F = torch.nn.functional
        sf = pipe.vae.config.scaling_factor  # the latents' error counts in the DiT's scaled units
        expected = F.mse_loss(encoder(pixels * 0.5 + 0.5), z) * sf**2 + 2.0 * F.l1_loss(student, teacher)
        expected = expected + 0.5 * F.mse_loss(student, teacher)
        torch.testing.assert_close(parts({"target": pixels}), expected)


@pytest.mark.parametrize("fmt", ["onnx", "mnn"])
def test_the_light_autoencoder_exports_and_the_runtime_picks_it(tiny_vae_dir, tmp_path, fmt):
    from sanaedit.export import export_model
    from sanaedit.load import load_model_folder, load_pipeline

    if fmt == "mnn":
        import importlib.util

        pytest.importorskip("MNN")
        if importlib.util.find_spec("llmexport") is None:
            pytest.skip("llmexport is not installed")
    folder = tiny_vae_dir[0]
    out = export_model(folder, tmp_path / fmt, fmt=fmt, quant="llm=4" if fmt == "mnn" else None, progress=False)
    manifest = json.loads((out / "model_index.json").read_text())
    assert {"tiny_vae_encoder", "tiny_vae_decoder", "vae_encoder", "vae_decoder"} <= set(manifest["graphs"])
    torch_tiny = load_model_folder(folder, vae="tiny")
    tiny, full = load_pipeline(out, vae="tiny"), load_pipeline(out)
    assert tiny.flow.decoder is not full.flow.decoder
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    latents = torch.randn(1, 4, 2, 2)
    with torch.no_grad():
        encoded = torch.from_numpy(tiny.encode_image(pixels))  # exported graphs return NumPy
        torch.testing.assert_close(encoded, torch_tiny.encode_image(pixels), rtol=1e-3, atol=1e-4)
        decoded = torch.from_numpy(tiny.decode_latents(latents))
        torch.testing.assert_close(decoded, torch_tiny.decode_latents(latents), rtol=1e-3, atol=1e-4)
    photo = Image.new("RGB", (64, 64), (10, 200, 30))
    assert tiny(photo, num_inference_steps=2).images[0].size == (64, 64)


def test_cli_serve_vae_tiny_loads_no_dc_ae(tiny_vae_dir, tmp_path, monkeypatch):
    import sanaedit.apps.cli.serve as serve_cli
    from sanaedit.apps.cli import main
    from sanaedit.apps.serve import server

    loaded = []
    real = serve_cli.warm_up
    monkeypatch.setattr(serve_cli, "warm_up", lambda edit, cfg: loaded.append(cfg) or real(edit, cfg))
    monkeypatch.setattr(server, "serve", lambda app, **kw: None)
    seen = []
    import sanaedit.load as defaults

    load = defaults.load_pipeline
    monkeypatch.setattr(defaults, "load_pipeline", lambda *a, **kw: seen.append(load(*a, **kw)) or seen[-1])
    args = ["serve", "--model", str(tiny_vae_dir[0]), "-o", str(tmp_path / "r"), "--vae", "tiny"]
    assert main(args) == 0
    assert seen and seen[0].vae is None and loaded  # served (warmed up) on the light autoencoder alone


def test_the_light_autoencoder_exports_w8a8_calibrated_on_photos(tiny_vae_dir, tmp_path):
    """`--quant tiny_vae_encoder=w8a8,tiny_vae_decoder=w8a8`: int8 convolutions, activation ranges calibrated on photos
    (the decoder's on the DC-AE's latents of them: the space it decodes), checked on a held-out photo."""
    import numpy as np
    import onnx

    from sanaedit.export import export_model
    from sanaedit.image.io import load_image
    from sanaedit.load import SAMPLE_PHOTO, load_pipeline
    from sanaedit.train.evaluate import psnr

    folder = tiny_vae_dir[0]
    out = export_model(folder, tmp_path / "w8a8", quant="rest=32,tiny_vae_encoder=w8a8,tiny_vae_decoder=w8a8")
    manifest = json.loads((out / "model_index.json").read_text())
    for name in ("tiny_vae_encoder", "tiny_vae_decoder"):
        entry = manifest["graphs"][name]
        assert "w8a8_rejected" not in entry, (name, entry.get("w8a8_rejected"))  # passes its check on any CPU
        assert entry["quant"]["activation_bits"] == 8 and entry["quant"]["calibration_pictures"] > 0
        assert 0 < entry["rel_l2_error"] < 0.15, (name, entry["rel_l2_error"])
        ops = [n.op_type for n in onnx.load(str(out / entry["file"])).graph.node]
        assert "QLinearConv" in ops and "Conv" not in ops, name
    assert manifest["graphs"]["vae_decoder"]["bits"] is None  # rest=32: the DC-AE untouched

    photo = load_image(SAMPLE_PHOTO).resize((64, 48))
    got = load_pipeline(out, vae="tiny")(photo, generator=torch.Generator().manual_seed(0)).images[0]
    want = load_pipeline(folder, vae="tiny")(photo, generator=torch.Generator().manual_seed(0)).images[0]
    close = psnr(np.asarray(got), np.asarray(want))
    assert 25 < close < 80, close  # close to PyTorch's edit, and the int8 graphs really differ
