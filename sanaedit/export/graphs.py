"""The sub-models as the graphs we export, with the published input/output names.

Each entry says which ONNX exporter works for it (measured here, see docs/deployment.md): the TorchScript exporter
for the DiT (the dynamo graph of a DiT with a text mask gave NaN), the dynamo exporter for DC-AE (the TorchScript
graph of the decoder is rejected by ONNX Runtime).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sanaedit.export.llm_graph import LlmFeatures
from sanaedit.formats.index import CONTROLLED_GRAPH, TINY_GRAPHS
from sanaedit.formats.release_files import GRAPHS as RELEASE_GRAPHS

TRANSFORMER_INPUTS = ["sample", "encoder_hidden_states", "timestep", "encoder_attention_mask", "ref_latents"]
# the DiT with its ControlNet: the control latent (the latent channels) and the conditioning scale, one per sample
CONTROLLED_INPUTS = [*TRANSFORMER_INPUTS, "control_latents", "conditioning_scale"]

# The example inputs are drawn from their own seeded generator, not torch's global one: a w8a8 DiT is checked on them
# (graph_export), and inputs that depended on whatever had drawn random numbers before (another export, the tests
# that ran earlier) gave that check a different error on each run.
EXAMPLE_SEED = 0


def example_generator() -> torch.Generator:
    return torch.Generator().manual_seed(EXAMPLE_SEED)


@dataclass
class GraphSpec:
    name: str
    module: nn.Module
    example: tuple[torch.Tensor, ...]
    inputs: list[str]
    outputs: list[str]
    dynamo: bool
    dynamic_batch: bool  # batch axis left free (CFG runs batch 2, no CFG batch 1)
    # How a dynamo graph is cleaned up after export, for both runtimes (measured here on the tiny model):
    # - "fold": constant folding only. The raw DC-AE graphs crash the converter (segfault); folded, they convert.
    # - "optimize": onnxscript's whole optimizer. The connector needs it (MNN cannot infer its reshapes otherwise),
    #   but it must not touch DC-AE: its `x + 0` rule treats the `+ 1e-15` before each linear-attention division
    #   as zero (np.allclose), and a query with no positive feature then divides 0/0 (NaN).
    # Folding also turns the weights' transposes into constants, so ORT's MatMulNBits can quantize them.
    cleanup: str = "fold"
    length_inputs: tuple[str, ...] = ()  # inputs whose axis 1 is free too (the LLM's sequence length)
    spatial: bool = False  # height and width (axes 2, 3) of every input and output left free (the refiner's tiles)
    quant_as: str | None = None  # the --quant entry it is stored by, when not its own name (the DiT's, for its twin)


class _Transformer(nn.Module):
    """The DiT with the published graph's inputs. A distilled student's guidance (scale x 0.1) is baked in as a
    constant: the published engine feeds no guidance input, and the exported folder then runs without CFG."""

    def __init__(self, transformer, guidance: float | None = None):
        super().__init__()
        self.transformer, self.guidance = transformer, guidance

    def forward(self, sample, encoder_hidden_states, timestep, encoder_attention_mask, ref_latents):
        args = (sample, encoder_hidden_states, timestep, encoder_attention_mask, ref_latents)
        if self.guidance is None:
            return self.transformer(*args)
        return self.transformer(*args, guidance=(timestep * 0 + self.guidance).to(sample.dtype))


class _ControlledTransformer(_Transformer):
    """The DiT steered by its ControlNet, as one graph (models/controlnet.py): the DiT's inputs, the control latent
    and the conditioning scale (one per sample, so the batch axis stays free) -> velocity. The runtimes load it
    only for an edit given a control image; the plain DiT graph stays as it was."""

    def __init__(self, transformer, controlnet, guidance: float | None = None):
        super().__init__(transformer, guidance)
        self.controlnet = controlnet

    def forward(self, sample, encoder_hidden_states, timestep, encoder_attention_mask, ref_latents, control_latents,
                conditioning_scale):  # fmt: skip
        from sanaedit.models.controlnet import control_residuals

        residuals = control_residuals(
            self.controlnet, sample, encoder_hidden_states, timestep, encoder_attention_mask, ref_latents,
            control_latents, conditioning_scale,
        )  # fmt: skip
        args = (sample, encoder_hidden_states, timestep, encoder_attention_mask, ref_latents)
        guidance = {} if self.guidance is None else {"guidance": (timestep * 0 + self.guidance).to(sample.dtype)}
        return self.transformer(*args, controlnet_block_samples=residuals, **guidance)


def baked_guidance(pipe) -> float | None:
    """What a guidance-embedding student is told, fixed at export: the model's guidance scale x its factor."""
    factor = pipe.flow.guidance_embeds
    return None if factor is None else float(pipe.config.guidance_scale) * factor


class _UnscaledVae(nn.Module):
    """DC-AE as the published release's graphs hold it: the engine applies the scaling factor around them."""

    def __init__(self, vae, decode: bool):
        super().__init__()
        self.vae, self.decode = vae, decode

    def forward(self, x):
        return self.vae.decode(x).sample if self.decode else self.vae.encode(x).latent


def release_specs(pipe) -> list[GraphSpec]:
    """The graphs an MNN export writes in the published release's layout: the engine's I/O names, and DC-AE without
    its scaling factor (the LLM is written by llmexport, not here)."""
    specs = []
    for spec in graph_specs(pipe)[1:]:
        if spec.name in (*TINY_GRAPHS, CONTROLLED_GRAPH):  # ours, beside the release's files: kept as they are
            specs.append(spec)
            continue
        io = RELEASE_GRAPHS[spec.name]
        if spec.name.startswith("vae_"):
            decode = spec.name == "vae_decoder"
            example = spec.example[0] / pipe.vae.config.scaling_factor if decode else spec.example[0]
            spec.module, spec.example = _UnscaledVae(pipe.vae, decode), (example,)
        spec.inputs, spec.outputs = list(io.inputs), list(io.outputs)
        specs.append(spec)
    return specs


def graph_specs(pipe) -> list[GraphSpec]:
    """The graphs of a pipeline: the LLM body, connector, projector, DiT, DC-AE encoder and decoder, and the light
    autoencoder's encoder and decoder when the model has one."""
    t = pipe.transformer
    channels, size = t.config.out_channels, pipe.config.resolution // pipe.vae_scale
    encoder = pipe.text_encoder
    width, queries = encoder.meta_queries.shape[1], encoder.num_queries
    caption = t.config.caption_channels
    generator = example_generator()
    latents = torch.randn(2, channels, size, size, generator=generator)
    text_mask = torch.ones(2, 7)
    text_mask[1, 4:] = 0  # a shorter prompt, right padded
    llm_mask = torch.cat([text_mask, torch.ones(2, queries)], dim=1)
    return [
        *_base_specs(pipe, encoder, latents, llm_mask, queries, width, caption, generator),
        *_tiny_specs(pipe, channels, size, generator),
        *_controlled_specs(pipe, latents, queries, caption, generator),
    ]


def _controlled_specs(pipe, latents, queries: int, caption: int, generator: torch.Generator) -> list[GraphSpec]:
    """The DiT with the model's ControlNet, when it has one: the DiT graph's example with a control latent and two
    scales beside it, stored as the DiT is (--quant transformer=...)."""
    controlnet = pipe.controlnet
    if controlnet is None:
        return []
    module = _ControlledTransformer(pipe.transformer, controlnet, baked_guidance(pipe))
    example = (
        latents,
        torch.randn(2, queries, caption, generator=generator),
        torch.tensor([999.0, 500.0]),
        torch.ones(2, queries),
        torch.randn(latents.shape, generator=generator),
        torch.randn(latents.shape, generator=generator),
        torch.tensor([1.0, 0.5]),
    )
    return [GraphSpec(CONTROLLED_GRAPH, module, example, CONTROLLED_INPUTS, ["noise_pred"], dynamo=False,
                      dynamic_batch=True, quant_as="transformer")]  # fmt: skip


def _tiny_specs(pipe, channels: int, size: int, generator: torch.Generator) -> list[GraphSpec]:
    """The light autoencoder (models/tiny_vae.py) with the DC-AE graphs' interface: pixels in [-1, 1], scaled
    latents. Plain convolutions: the TorchScript exporter suffices."""
    from sanaedit.models.tiny_vae import TinyVaeDecoder, TinyVaeEncoder

    tiny = getattr(pipe.flow, "tiny_vae", None)
    if tiny is None:
        return []
    resolution = pipe.config.resolution
    return [
        GraphSpec(
            TINY_GRAPHS[0],
            TinyVaeEncoder(tiny),
            (torch.rand(1, 3, resolution, resolution, generator=generator) * 2 - 1,),
            ["pixels"],
            ["latents"],
            dynamo=False,
            dynamic_batch=False,
        ),
        GraphSpec(
            TINY_GRAPHS[1],
            TinyVaeDecoder(tiny),
            (torch.randn(1, channels, size, size, generator=generator),),
            ["latents"],
            ["pixels"],
            dynamo=False,
            dynamic_batch=False,
        ),
    ]


def _base_specs(pipe, encoder, latents, llm_mask, queries, width, caption, generator) -> list[GraphSpec]:
    t, channels, size = pipe.transformer, latents.shape[1], latents.shape[-1]
    return [
        GraphSpec(
            "llm",
            LlmFeatures(encoder.llm, queries),
            (torch.randn(2, llm_mask.shape[1], width, generator=generator) * 0.05, llm_mask),
            ["inputs_embeds", "attention_mask"],
            ["llm_features"],
            dynamo=True,
            dynamic_batch=True,
            cleanup="optimize",
            length_inputs=("inputs_embeds", "attention_mask"),
        ),
        GraphSpec(
            "connector",
            encoder.connector,
            (torch.randn(2, queries, width, generator=generator),),
            ["llm_features"],
            ["connector_features"],
            dynamo=True,
            dynamic_batch=True,
            cleanup="optimize",
        ),
        GraphSpec(
            "projector",
            encoder.projector,
            (torch.randn(2, queries, width, generator=generator),),
            ["connector_features"],
            ["encoder_hidden_states"],
            dynamo=False,
            dynamic_batch=True,
        ),
        GraphSpec(
            "transformer",
            _Transformer(t, baked_guidance(pipe)),
            (
                latents,
                torch.randn(2, queries, caption, generator=generator),
                torch.tensor([999.0, 500.0]),
                torch.ones(2, queries),
                torch.randn(latents.shape, generator=generator),
            ),
            TRANSFORMER_INPUTS,
            ["noise_pred"],
            dynamo=False,
            dynamic_batch=True,
        ),
        *vae_specs(pipe.vae_encoder, pipe.vae_decoder, pipe.config.resolution, channels, size, generator),
    ]


def vae_specs(
    encoder: nn.Module,
    decoder: nn.Module,
    resolution: int,
    channels: int,
    size: int,
    generator: torch.Generator | None = None,
) -> list[GraphSpec]:
    """DC-AE's encoder and decoder graphs (`models/vae.py`: scaled latents); bench/vae_speed.py exports them alone."""
    generator = generator or example_generator()
    return [
        GraphSpec(
            "vae_encoder",
            encoder,
            (torch.rand(1, 3, resolution, resolution, generator=generator) * 2 - 1,),
            ["pixels"],
            ["latents"],
            dynamo=True,
            dynamic_batch=False,
        ),
        GraphSpec(
            "vae_decoder",
            decoder,
            (torch.randn(1, channels, size, size, generator=generator),),
            ["latents"],
            ["pixels"],
            dynamo=True,
            dynamic_batch=False,
        ),
    ]


def refiner_spec(refiner: nn.Module) -> GraphSpec:
    """The learned full-resolution refiner (models/refiner.py) on one tile: photo and edit [1, 3, H, W] in [0, 1]
    -> the refined edit, H and W free (multiples of its unshuffle factor; `refine_tiles.py` cuts them). Plain
    convolutions, and pixel (un)shuffle as Reshape/Transpose and DepthToSpace, which ONNX Runtime and MNN both run:
    the TorchScript exporter suffices. Checked on a non-square tile."""
    from sanaedit.models.refine_tiles import REFINER_GRAPH, REFINER_INPUTS, REFINER_OUTPUTS

    f = refiner.factor
    generator = torch.Generator().manual_seed(0)
    example = tuple(torch.rand(1, 3, 40 * f, 56 * f, generator=generator) for _ in REFINER_INPUTS)
    return GraphSpec(
        REFINER_GRAPH,
        refiner,
        example,
        list(REFINER_INPUTS),
        list(REFINER_OUTPUTS),
        dynamo=False,
        dynamic_batch=False,
        spatial=True,
    )
