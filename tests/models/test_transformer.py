import pytest
import torch
from diffusers import SanaTransformer2DModel

from sanaedit.models.transformer import SanaEditTransformer2DModel
from sanaedit.models.variants import build_transformer, load_variant


def _inputs(model, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    c, s = model.config.out_channels or model.config.in_channels, model.config.sample_size
    sample = torch.randn(batch, c, s, s, generator=g)
    text = torch.randn(batch, 7, model.config.caption_channels, generator=g)
    mask = torch.ones(batch, 7, dtype=torch.long)
    mask[0, 5:] = 0  # a padded text key must be honoured too
    timestep = torch.tensor([999.7, 310.2])[:batch]
    return sample, text, timestep, mask


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return build_transformer(load_variant("tiny"), edit=False).eval()


def test_zero_ref_conversion_reproduces_base_model(base):
    edit = SanaEditTransformer2DModel.from_base(base).eval()
    assert edit.config.in_channels == 2 * base.config.in_channels and edit.ref_channels == base.config.in_channels
    sample, text, timestep, mask = _inputs(base)
    ref = torch.randn_like(sample)  # any reference: its weights are zero until training
    with torch.no_grad():
        want = base(sample, text, timestep, encoder_attention_mask=mask).sample
        got = edit(sample, text, timestep, mask, ref)
    assert (got - want).abs().max() <= 1e-5


def test_diffusers_folder_loads_through_our_code_with_same_output(base, tmp_path):
    base.save_pretrained(tmp_path / "t2i")  # a plain diffusers text-to-image folder
    ours = SanaEditTransformer2DModel.from_pretrained(tmp_path / "t2i").eval()
    theirs = SanaTransformer2DModel.from_pretrained(tmp_path / "t2i").eval()
    sample, text, timestep, mask = _inputs(base)
    with torch.no_grad():
        assert torch.equal(
            ours(sample, text, timestep, mask), theirs(sample, text, timestep, encoder_attention_mask=mask).sample
        )
    # ...and our editing folder is a diffusers folder: diffusers' own class reads it and agrees on the concat input
    edit = SanaEditTransformer2DModel.from_base(base)
    torch.nn.init.normal_(edit.patch_embed.proj.weight)
    edit.save_pretrained(tmp_path / "edit")
    plain = SanaTransformer2DModel.from_pretrained(tmp_path / "edit").eval()
    ref = torch.randn_like(sample)
    with torch.no_grad():
        want = plain(torch.cat([sample, ref], 1), text, timestep, encoder_attention_mask=mask).sample
        assert torch.equal(edit.eval()(sample, text, timestep, mask, ref), want)


def test_reference_latents_change_the_output_once_trained(base):
    edit = SanaEditTransformer2DModel.from_base(base).eval()
    with torch.no_grad():
        edit.patch_embed.proj.weight[:, edit.ref_channels :].normal_()
        sample, text, timestep, mask = _inputs(base)
        a = edit(sample, text, timestep, mask, torch.zeros_like(sample))
        b = edit(sample, text, timestep, mask, torch.randn_like(sample))
        assert (a - b).abs().max() > 1e-3
        assert torch.equal(edit(sample, text, timestep, mask, None), a)  # None means zeros (text-to-image)


def test_shape_errors_are_clear(base):
    edit = SanaEditTransformer2DModel.from_base(base).eval()
    sample, text, timestep, mask = _inputs(base)
    with pytest.raises(ValueError, match="ref_latents shape"):
        edit(sample, text, timestep, mask, torch.zeros(2, 4, 3, 3))
    t2i = SanaEditTransformer2DModel.from_config(base.config)
    with pytest.raises(ValueError, match="no reference-latent input"):
        t2i(sample, text, timestep, mask, torch.zeros_like(sample))
    with pytest.raises(ValueError, match="already has in_channels"):
        SanaEditTransformer2DModel.from_base(edit)


@pytest.mark.parametrize("name", ["sana-0.6b", "sana-1.6b", "sana-4.8b"])
def test_published_variant_configs(name):
    v = load_variant(name)
    t = v.transformer
    width = t["num_attention_heads"] * t["attention_head_dim"]
    assert t["cross_attention_dim"] == width and t["caption_channels"] == 2304
    assert (width, t["num_layers"]) == {"sana-0.6b": (1152, 28), "sana-1.6b": (2240, 20), "sana-4.8b": (2240, 60)}[name]
    assert v.vae_config["scaling_factor"] == 0.41407 and v.vae_config["latent_channels"] == 32
    assert v.num_queries == 256 and v.llm["hidden_size"] == 1024
    # the config builds (on the meta device: no memory for billions of weights)
    with torch.device("meta"):
        model = SanaTransformer2DModel(**t)
    params = sum(p.numel() for p in model.parameters())
    low, high = {"sana-0.6b": (0.55e9, 0.65e9), "sana-1.6b": (1.5e9, 1.7e9), "sana-4.8b": (4.4e9, 5.0e9)}[name]
    assert low < params < high


def test_unknown_variant_names_the_known_ones():
    with pytest.raises(FileNotFoundError, match="sana-0.6b"):
        load_variant("sana-9b")


def test_fp16_clipping_bounds_linear_attention_outputs(base):
    edit = SanaEditTransformer2DModel.from_base(base).eval()
    with torch.no_grad():
        edit.transformer_blocks[0].attn1.to_out[0].weight.mul_(1e7)  # an fp16-trained checkpoint's huge activations
    attn = edit.transformer_blocks[0].attn1
    outputs = []
    sample, text, timestep, mask = _inputs(base)
    with torch.no_grad():
        edit.set_fp16_clipping(True)
        spy = attn.register_forward_hook(lambda m, i, o: outputs.append(o.abs().max()))  # runs after the clip
        clipped = edit(sample, text, timestep, mask)
        assert outputs[-1] <= 65504 and torch.isfinite(clipped).all()
        edit.set_fp16_clipping(False)
        edit(sample, text, timestep, mask)
        assert outputs[-1] > 65504  # unclipped, the same weights overflow fp16
        spy.remove()
