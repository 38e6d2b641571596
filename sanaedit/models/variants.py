"""Named model sizes: the published SANA variants and a tiny test size, as dataclasses over JSON files.

`sanaedit/configs/<name>.json` holds the diffusers transformer config, the DC-AE config (or the name of the
published one), the LLM config, the connector/projector sizes, the number of meta-queries and the resolution.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).parent.parent / "configs"


@dataclass
class Variant:
    name: str
    transformer: dict[str, Any]
    vae: dict[str, Any] | str
    llm: dict[str, Any]
    connector: dict[str, Any]
    projector: dict[str, Any]
    num_queries: int = 256
    resolution: int = 512
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def vae_config(self) -> dict[str, Any]:
        from sanaedit.models.vae import DC_AE_F32C32

        if self.vae == "dc-ae-f32c32":
            return dict(DC_AE_F32C32)
        if isinstance(self.vae, str):
            raise ValueError(f"variant {self.name}: unknown autoencoder {self.vae!r}")
        return dict(self.vae)


def variant_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load_variant(name_or_path: str | Path) -> Variant:
    """A variant by name (`sana-0.6b`, `sana-1.6b`, `sana-4.8b`, `tiny`) or from a JSON file."""
    path = Path(name_or_path)
    if str(name_or_path) in variant_names():
        path = CONFIG_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no model variant {name_or_path!r}; known: {', '.join(variant_names())}")
    data = json.loads(path.read_text())
    known = set(Variant.__dataclass_fields__) - {"name", "extra"}
    return Variant(
        name=path.stem,
        **{k: v for k, v in data.items() if k in known},
        extra={k: v for k, v in data.items() if k not in known},
    )


def build_transformer(variant: Variant, edit: bool = True):
    """A randomly initialised SANA transformer; expanded for editing (zero ref weights) when `edit`."""
    import torch
    from diffusers import SanaTransformer2DModel

    from sanaedit.models.transformer import SanaEditTransformer2DModel

    base = SanaTransformer2DModel(**variant.transformer)
    with torch.no_grad():  # SANA's "small learnable scale" on text features
        base.caption_norm.weight.fill_(0.01)
    return SanaEditTransformer2DModel.from_base(base) if edit else base


def build_vae(variant: Variant):
    from diffusers import AutoencoderDC

    return AutoencoderDC(**variant.vae_config)


def build_llm(variant: Variant, vocab_size: int | None = None):
    """A randomly initialised causal LM with the variant's config (Qwen3 architecture by default)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(variant.llm)
    if vocab_size is not None:
        cfg["vocab_size"] = vocab_size
    if cfg.get("vocab_size") is None:
        raise ValueError(f"variant {variant.name}: the LLM's vocab_size comes from its tokenizer; pass vocab_size")
    config = AutoConfig.for_model(**cfg)
    return AutoModelForCausalLM.from_config(config)


def build_conditioner_parts(variant: Variant, llm_width: int, caption_channels: int, generator: Any = None):
    """Fresh meta-queries, connector and projector for an LLM of width `llm_width`."""
    from sanaedit.models.connector import Connector
    from sanaedit.models.projector import Projector
    from sanaedit.models.text_encoder import init_meta_queries

    connector = Connector(**{**variant.connector, "width": llm_width})
    projector = Projector(**{**variant.projector, "in_features": llm_width, "out_features": caption_channels})
    return init_meta_queries(variant.num_queries, llm_width, generator), connector, projector
