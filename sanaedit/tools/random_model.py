"""Models of a named size with fresh random weights, built offline: training from scratch, the no-model fallback,
tests and benchmarks (no download ever).

The tokenizer is a small byte-level BPE trained here with the `tokenizers` library on a fixed corpus, with the
Qwen chat special tokens, and saved in the Hugging Face format, so it loads through `AutoTokenizer` exactly like
a real Qwen3 tokenizer folder would.
"""

from __future__ import annotations

import torch

from sanaedit.core.choices import Format
from sanaedit.core.config import COMIC_PROMPT, PipelineConfig
from sanaedit.core.cpu import set_threads
from sanaedit.formats.source import Networks
from sanaedit.models.torch_flow import place_modules, torch_flow
from sanaedit.models.variants import (
    Variant,
    build_conditioner_parts,
    build_llm,
    build_transformer,
    build_vae,
    load_variant,
)
from sanaedit.pipeline import SanaEditPipeline
from sanaedit.plan import FolderInfo, RunPlan, make_plan

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_CORPUS = [
    "Generate an image: ",
    "user assistant <|vision_bos|>",
    COMIC_PROMPT,
    "Convert to a Ghibli-style illustration: soft contrast, warm tones, slight linework, keep the scene consistent.",
    "a photo of a cat sitting on a red sofa next to a window in the afternoon light",
    "turn the sky purple, make it night, add snow, a watercolor painting of mountains and a lake",
    "the quick brown fox jumps over the lazy dog 0123456789 .,;:!?'\"()[]{}-_/",
]


def build_tiny_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer with Qwen's chat special tokens (deterministic, offline)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )


class RandomWeights:
    """Fresh random weights of a variant as a source of networks (formats/source.py): built in memory when a plan
    asks for them, nothing read from disk."""

    def __init__(self, variant: Variant | str = "tiny", seed: int = 0, tokenizer=None):
        self.variant = load_variant(variant) if isinstance(variant, str) else variant
        self.seed, self.tokenizer = seed, tokenizer
        self.info = FolderInfo(
            folder=None, format=Format.TORCH, config=PipelineConfig(resolution=self.variant.resolution)
        )

    def networks(self, plan: RunPlan) -> Networks:
        from sanaedit.formats.torch_folder import prepare_transformer
        from sanaedit.models.text_encoder import MetaQueryTextEncoder

        if plan.tuned and torch.device(plan.device).type == "cpu":
            set_threads(plan.threads)
        variant, seed = self.variant, self.seed
        torch.manual_seed(seed)
        tokenizer = self.tokenizer or build_tiny_tokenizer()
        vocab_size = variant.llm.get("vocab_size") or len(tokenizer)
        llm = build_llm(variant, vocab_size=vocab_size).eval()
        transformer = build_transformer(variant).eval()
        if variant.name == "tiny":
            # A trained model's ref weights are not zero; random tiny ones must not be either, or tests of the
            # editing path would not see the reference image at all.
            with torch.no_grad():
                w = transformer.patch_embed.proj.weight
                w[:, transformer.ref_channels :] = torch.randn_like(w[:, transformer.ref_channels :]) * 0.1
        vae = build_vae(variant).eval()
        width = llm.get_input_embeddings().embedding_dim
        queries, connector, projector = build_conditioner_parts(
            variant, width, transformer.config.caption_channels, torch.Generator().manual_seed(seed)
        )
        text_encoder = MetaQueryTextEncoder(llm, tokenizer, queries, connector.eval(), projector.eval())
        place_modules([transformer, vae, text_encoder], plan.device, getattr(torch, plan.dtype))
        transformer = prepare_transformer(transformer, plan, streamed_int8=False)
        flow = torch_flow(transformer, vae)
        if plan.controlnet is not None:  # a ControlNet folder given for the random DiT (it must fit it)
            from sanaedit.formats.torch_folder import load_controlnet

            flow.controlnet = load_controlnet(plan.controlnet, transformer, plan.device, getattr(torch, plan.dtype))
        return Networks(flow=flow, text_encoder=text_encoder)


def build_random_pipeline(variant: Variant | str = "tiny", seed: int = 0, tokenizer=None) -> SanaEditPipeline:
    """A pipeline of the given size with random weights, float32 on the CPU (for tests and benchmarks)."""
    source = RandomWeights(variant, seed, tokenizer)
    return SanaEditPipeline.from_plan(source, make_plan(source.info, dtype="float32", tuned=False))


def build_tiny_pipeline(seed: int = 0) -> SanaEditPipeline:
    """A complete random tiny pipeline (64 px, 4 latent channels, Qwen3-architecture LM): seconds on a CPU."""
    return build_random_pipeline("tiny", seed=seed)
