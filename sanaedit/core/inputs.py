"""A pipeline call's arguments, checked before any work (diffusers' `check_inputs`): each bad one fails in one line
that names it and says what would do, before an image is decoded or a network runs. The CLI checks its prompts
with the same function before the model even loads."""

from __future__ import annotations

import math
from typing import Any

from sanaedit.core.config import MAX_GUIDANCE


def check_prompt(text: str | None, what: str = "prompt") -> None:
    """A prompt the tokenizer can read: a string of valid Unicode (a command line's invalid UTF-8 bytes arrive as
    unpaired surrogates, which tokenizers refuse with a TypeError deep inside). None: the model's own."""
    if text is None:
        return
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"{what} is not valid text: character {err.start + 1} is not Unicode (invalid UTF-8 in the input?)"
        ) from None


def check_strength(
    strength: float, steps: int | None, names: tuple[str, str] = ("strength", "num_inference_steps")
) -> None:
    """`strength` in (0, 1], and, when `steps` is known, leaving at least one of them to run (the pipeline runs the
    last int(steps x strength) of the schedule). `names`: what the caller calls them (the CLI: its flags)."""
    strength_name, steps_name = names
    if not 0.0 < strength <= 1.0:  # nan fails too
        raise ValueError(f"{strength_name} must be in (0, 1] (1 = a full edit), got {strength}")
    if steps is not None and strength < 1.0 and int(steps * strength) < 1:
        raise ValueError(
            f"{strength_name} {strength} x {steps} steps leaves no step to run: raise {strength_name} to "
            f"{math.ceil(1e4 / steps) / 1e4:g} or more, or {steps_name} to {math.ceil(1 / strength)} or more"
        )


def check_inputs(
    sources: list[Any],
    count: int,
    strength: float,
    steps: int,
    guidance_scale: float,
    prompt: str | None,
    negative_prompt: str | None,
) -> None:
    """`sources`: the images (None: text-to-image), `count` images per input, the steps and guidance in effect."""
    if not sources or (None in sources and len(sources) > 1):
        raise ValueError("image must be a picture, a path, a non-empty list of them, or None (text-to-image)")
    if count < 1:
        raise ValueError(f"num_images_per_prompt must be >= 1, got {count}")
    check_strength(strength, steps)
    if strength < 1.0 and sources == [None]:
        raise ValueError("strength < 1 needs an input image to start from")
    if not 1.0 <= guidance_scale <= MAX_GUIDANCE:  # nan fails too
        raise ValueError(f"guidance_scale must be from 1 (guidance off) to {MAX_GUIDANCE:g}, got {guidance_scale}")
    check_prompt(prompt, "prompt")
    check_prompt(negative_prompt, "negative_prompt")


def check_generators(generator: Any, batch_size: int) -> None:
    """A list of generators has one per image (diffusers' `prepare_latents` check, in one line)."""
    if isinstance(generator, list) and len(generator) != batch_size:
        raise ValueError(
            f"You have passed a list of generators of length {len(generator)}, but requested an effective batch "
            f"size of {batch_size}. Make sure the batch size matches the length of the generators."
        )
