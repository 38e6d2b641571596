"""Build a sanaedit model folder from published parts.

Inputs: a diffusers SANA transformer folder (text-to-image; expanded for editing with zero ref weights), a
diffusers DC-AE folder and a Hugging Face causal-LM folder (Qwen3-0.6B by default) with its tokenizer. New
meta-queries, connector and projector are initialised; training (stages 1-3) teaches them. With `tiny_vae`, the
folder also carries a light autoencoder (TAESANA's architecture, `models/tiny_vae.py`): the published
`taesana_encoder.pth` / `taesana_decoder.pth` state dicts, or fresh weights for the `tiny-vae` training stage.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sanaedit.errors import ModelFolderError
from sanaedit.formats.torch_check import load_component
from sanaedit.models.text_encoder import MetaQueryTextEncoder
from sanaedit.models.torch_flow import torch_flow
from sanaedit.models.variants import Variant, build_conditioner_parts, load_variant
from sanaedit.pipeline import PipelineConfig, SanaEditPipeline


def _component_dir(path: Path, subfolder: str) -> Path:
    """Accept either the component folder itself or a diffusers pipeline root that has it as a subfolder."""
    path = Path(path)
    if not path.is_dir():
        raise ModelFolderError(f"{path}: folder does not exist")
    if not (path / "config.json").is_file() and (path / subfolder / "config.json").is_file():
        return path / subfolder
    if not (path / "config.json").is_file():
        raise ModelFolderError(f"{path}: no config.json (expected a diffusers {subfolder} folder)")
    return path


def assemble(
    transformer_dir: Path,
    vae_dir: Path,
    llm_dir: Path,
    out_dir: Path,
    variant: Variant | str = "sana-0.6b",
    dtype: torch.dtype = torch.float32,
    resolution: int | None = None,
    seed: int = 0,
    tiny_vae: bool | tuple[Path, Path] = False,
) -> Path:
    """Assemble and save a model folder; `variant` supplies the connector/projector/query sizes. `tiny_vae`:
    True for a fresh light autoencoder, (encoder.pth, decoder.pth) for taesd-layout weights, False for none."""
    from diffusers import AutoencoderDC, SanaTransformer2DModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sanaedit.models.transformer import SanaEditTransformer2DModel

    variant = load_variant(variant) if isinstance(variant, str) else variant
    transformer_dir, vae_dir = _component_dir(transformer_dir, "transformer"), _component_dir(vae_dir, "vae")
    base = load_component(
        transformer_dir.parent,
        transformer_dir.name,
        lambda p: SanaTransformer2DModel.from_pretrained(p, torch_dtype=dtype, local_files_only=True),
    )
    if base.config.in_channels == 2 * base.config.out_channels:
        transformer = SanaEditTransformer2DModel.from_config(base.config).to(dtype)
        transformer.load_state_dict(base.state_dict())
    else:
        transformer = SanaEditTransformer2DModel.from_base(base)
    del base
    vae = load_component(
        vae_dir.parent,
        vae_dir.name,
        lambda p: AutoencoderDC.from_pretrained(p, torch_dtype=dtype, local_files_only=True),
    )
    llm_dir = Path(llm_dir)
    llm = load_component(
        llm_dir.parent,
        llm_dir.name,
        lambda p: AutoModelForCausalLM.from_pretrained(p, dtype=dtype, local_files_only=True),
    )
    tokenizer = load_component(
        llm_dir.parent, llm_dir.name, lambda p: AutoTokenizer.from_pretrained(p, local_files_only=True)
    )
    width = llm.get_input_embeddings().embedding_dim
    queries, connector, projector = build_conditioner_parts(
        variant, width, transformer.config.caption_channels, torch.Generator().manual_seed(seed)
    )
    text_encoder = MetaQueryTextEncoder(llm, tokenizer, queries.to(dtype), connector.to(dtype), projector.to(dtype))
    config = PipelineConfig(resolution=resolution or variant.resolution)
    tiny = build_tiny_vae(vae, tiny_vae, dtype) if tiny_vae else None
    flow = torch_flow(transformer.eval(), vae.eval(), tiny)
    return SanaEditPipeline(flow, text_encoder, config).save_pretrained(out_dir)


def build_tiny_vae(vae, weights: bool | tuple[Path, Path], dtype: torch.dtype = torch.float32):
    """A light autoencoder fitting the DC-AE `vae`: fresh, or from taesd-layout `(encoder.pth, decoder.pth)`."""
    from sanaedit.models.tiny_vae import TAESD_LATENT_CLAMP, TinyAutoencoder, load_taesd_state_dicts

    if weights is True:
        return TinyAutoencoder.for_autoencoder(vae).to(dtype).eval()
    tiny = TinyAutoencoder.for_autoencoder(vae, latent_clamp=TAESD_LATENT_CLAMP)  # what the weights were trained with
    states = []
    for path in map(Path, weights):
        try:
            states.append(torch.load(path, map_location="cpu", weights_only=True))
        except FileNotFoundError:
            raise ModelFolderError(f"{path}: tiny autoencoder weights not found") from None
        except Exception as err:
            raise ModelFolderError(f"{path}: not a PyTorch state dict ({str(err).strip().splitlines()[0]})") from err
    try:
        load_taesd_state_dicts(tiny, *states)
    except ValueError as err:
        raise ModelFolderError(f"{weights[0]}, {weights[1]}: {err}") from err
    return tiny.to(dtype).eval()
