"""Inference-time scaling (SANA-1.5): edit N times with different seeds, keep the candidate a judge scores highest.

A judge is any `score(source, candidate) -> float` (higher is better): `source` is the input photo, `candidate`
one edit of it, both PIL RGB images of the same size. `load_judge("module:function")` imports one by name.

The built-in judge, `structure_judge`, measures **faithfulness of structure to the photo**: the correlation of
the gradient magnitudes (edges) of the candidate's and the photo's luminance, after a light blur, at up to 256 px.
It rewards a candidate whose edges sit where the photo's edges are (no lost or invented outlines, shapes kept) and
knows nothing else: not the comic style (flat colour, ink), not colour fidelity, not aesthetics. It is not the
comic filter the bundled model was trained on and never runs it. The filter draws its ink lines along the
photo's edges, though, so this judge is correlated with the held-out edge F1 against the filter: a win there is
partly the same signal, measured another way.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

Judge = Callable[[Image.Image, Image.Image], float]
JUDGE_SIZE = 256  # long side the built-in judge compares at
BUILTIN_JUDGE = "sanaedit.tools.best_of:structure_judge"


def _edge_strength(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    grey = image.convert("L").resize(size, Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(1))
    a = np.asarray(grey, dtype=np.float64)
    gx = np.zeros_like(a)
    gy = np.zeros_like(a)
    gx[:, 1:-1] = a[:, 2:] - a[:, :-2]
    gy[1:-1, :] = a[2:, :] - a[:-2, :]
    return np.hypot(gx, gy)


def structure_judge(source: Image.Image, candidate: Image.Image) -> float:
    """Pearson correlation (-1..1) of the edge strength (luminance gradient magnitude) of `candidate` and of the
    photo `source`, both at the source's aspect, long side <= 256 px. Measures: are the edges where the photo's
    are. Does not measure: style, colour, the comic filter, aesthetics (see the module docstring)."""
    scale = min(1.0, JUDGE_SIZE / max(source.size))
    size = (max(3, round(source.width * scale)), max(3, round(source.height * scale)))
    a, b = _edge_strength(source, size).ravel(), _edge_strength(candidate, size).ravel()
    a, b = a - a.mean(), b - b.mean()
    norm = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b / norm) if norm > 0 else 0.0


def load_judge(spec: str) -> Judge:
    """`"package.module:function"` -> that function (any `score(source, candidate) -> float`)."""
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise ValueError(f"--judge {spec!r}: expected MODULE:FUNCTION, e.g. {BUILTIN_JUDGE}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"--judge {spec!r}: cannot import module {module_name!r} ({err})") from None
    judge = getattr(module, name, None)
    if not callable(judge):
        raise ValueError(f"--judge {spec!r}: module {module_name!r} has no function {name!r}")
    return judge


def best_of(pipe, image, n: int, judge: Judge | str | None = None, seed: int = 0, **call_kwargs):
    """Edit `image` with seeds seed, seed+1, ..., seed+n-1 (one pipeline call each, so candidate i is exactly the
    plain edit with seed+i, and n=1 is the plain edit) and return `(best, scores)`: the candidate `judge` scores
    highest (the first of equals) and every candidate's score in seed order. `judge`: a function, a
    "module:function" spec, or None for `structure_judge`. `call_kwargs` go to the pipeline (steps, guidance...)."""
    if n < 1:
        raise ValueError(f"--candidates {n}: must be >= 1")
    judge = structure_judge if judge is None else load_judge(judge) if isinstance(judge, str) else judge
    if isinstance(image, (str, Path)):
        from sanaedit.image.io import load_image

        image = load_image(image)
    source = image.convert("RGB")
    best, best_score, scores = None, -math.inf, []
    for i in range(n):
        candidate = pipe(source, generator=pipe.flow.arrays.generator(seed + i), **call_kwargs).images[0]
        value = judge(source, candidate)
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"judge {getattr(judge, '__name__', judge)} returned {value!r}, not a number") from None
        scores.append(value)
        rank = -math.inf if math.isnan(value) else value  # nan never wins over a number
        if best is None or rank > best_score:
            best, best_score = candidate, rank
    return best, scores
