"""The published MNN-Sana-Edit-V2 release as MNN's engine loads it (alibaba/MNN `transformers/diffusion/engine`:
`sana_diffusion.cpp`, `sana_llm.hpp`; the LLM side `transformers/llm/engine`): its file names, graph I/O names, the
engine's constants, and readers for its LLM side (configs, token embeddings, meta-queries). A leaf like
`formats/index.py`: the exporter writes this layout and the runtime reads it, without importing each other.

    connector.mnn     llm_out -> connector_out                 each graph with its `.mnn.weight`
    projector.mnn     connector_out -> prompt_embeds
    transformer.mnn   sample, encoder_hidden_states, timestep, encoder_attention_mask, ref_latents -> noise_pred
    vae_encoder.mnn   image [1,3,R,R] in [-1,1] -> latent        (unscaled: the engine multiplies by 0.41407)
    vae_decoder.mnn   latent_sample -> sample                    (the engine divides by 0.41407 first)
    llm/              MNN-LLM format (llmexport): config.json, llm_config.json, llm.mnn + llm.mnn.weight (outputs
                      logits, hidden_states), tokenizer.mtok or tokenizer.txt, embeddings tied inside llm.mnn.weight
                      (`tie_embeddings` in llm_config.json) or embeddings_bf16.bin
    llm/meta_queries.mnn   one [256, 1024] fp32 constant (MNN.expr.save)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sanaedit.core.arrays import bfloat16_to_float32
from sanaedit.errors import ModelFolderError

if TYPE_CHECKING:
    import torch

RELEASE_BYTES = 1_662_741_606  # the whole release in MNN's model market (apps/Android/MnnLlmChat model_market.json)
ENGINE_PROMPT = (
    "Convert to a Ghibli-style illustration: soft contrast, warm tones, slight linework, keep the scene consistent."
)
ENGINE_SCALING_FACTOR = 0.41407  # DC-AE F32C32's, applied by the engine around the VAE graphs
ENGINE_RESOLUTION = 512
ENGINE_GUIDANCE = 4.5
ENGINE_STEPS = 10


@dataclass(frozen=True)
class GraphIO:
    file: str
    inputs: list[str]
    outputs: list[str]


GRAPHS = {
    "connector": GraphIO("connector.mnn", ["llm_out"], ["connector_out"]),
    "projector": GraphIO("projector.mnn", ["connector_out"], ["prompt_embeds"]),
    "transformer": GraphIO(
        "transformer.mnn",
        ["sample", "encoder_hidden_states", "timestep", "encoder_attention_mask", "ref_latents"],
        ["noise_pred"],
    ),
    "vae_encoder": GraphIO("vae_encoder.mnn", ["image"], ["latent"]),
    "vae_decoder": GraphIO("vae_decoder.mnn", ["latent_sample"], ["sample"]),
}
# llm.mnn as llmexport writes it: `input_ids` holds embeddings [T, 1, H]; mask [1, 1, T, T]; positions int32 [1, T];
# logits_index int32 [1] (-n: the last n rows). Only `hidden_states` (the final norm's output) is asked for.
LLM_GRAPH = GraphIO("llm/llm.mnn", ["input_ids", "attention_mask", "position_ids", "logits_index"], ["hidden_states"])
LLM_FILES = ["llm/config.json", "llm/llm_config.json", "llm/llm.mnn", "llm/llm.mnn.weight", "llm/meta_queries.mnn"]
TOKENIZER_FILES = ["llm/tokenizer.mtok", "llm/tokenizer.txt"]


def graph_files() -> list[str]:
    return [name for io in GRAPHS.values() for name in (io.file, io.file + ".weight")]


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise ModelFolderError(f"{path}: cannot read ({err.strerror or err})") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise ModelFolderError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path}: not a JSON object")
    return data


def llm_configs(folder: Path) -> tuple[dict, dict]:
    """(config.json, llm_config.json) of the release's llm/."""
    config, llm = read_json(folder / "llm" / "config.json"), read_json(folder / "llm" / "llm_config.json")
    if not isinstance(llm.get("hidden_size"), int) or llm["hidden_size"] <= 0:
        raise ModelFolderError(f"{folder / 'llm' / 'llm_config.json'}: no valid hidden_size")
    return config, llm


def tokenizer_file(folder: Path, config: dict | None = None) -> Path | None:
    named = (config or {}).get("tokenizer_file")
    candidates = [f"llm/{named}"] if isinstance(named, str) and named else []
    for name in [*candidates, *TOKENIZER_FILES]:
        if (folder / name).is_file():
            return folder / name
    return None


def tied_embeddings(llm_config: dict) -> list[int] | None:
    """llm_config.json `tie_embeddings`: [weight offset, alpha offset, alpha bytes, bits, block] (None: untied)."""
    tie = llm_config.get("tie_embeddings")
    return [int(x) for x in tie] if isinstance(tie, list) and len(tie) == 5 else None


def embeddings_file(folder: Path, config: dict, llm_config: dict) -> Path:
    tie = tied_embeddings(llm_config)
    if tie is not None and tie[0] != 0:
        return folder / "llm" / str(config.get("llm_weight", "llm.mnn.weight"))
    default = f"embeddings_int{tie[3]}.bin" if tie is not None else "embeddings_bf16.bin"
    return folder / "llm" / str(config.get("embedding_file", default))


def missing_files(folder: Path) -> list[str]:
    """The release's files not in `folder` (the tokenizer and embeddings as its LLM config names them)."""
    missing = [name for name in [*graph_files(), *LLM_FILES] if not (folder / name).is_file()]
    try:
        config, llm = llm_configs(folder)
    except ModelFolderError:
        config = llm = None
    if tokenizer_file(folder, config) is None:
        missing.append("llm/tokenizer.mtok (or llm/tokenizer.txt)")
    if llm is not None:
        embeddings = embeddings_file(folder, config, llm)
        name = str(embeddings.relative_to(folder))
        if not embeddings.is_file() and name not in missing:
            missing.append(name)
    return missing


def check_files(folder: Path) -> None:
    """One line naming every missing file of a partly downloaded release."""
    missing = missing_files(folder)
    if missing:
        raise ModelFolderError(
            f"{folder}: incomplete MNN-Sana-Edit-V2 release, missing {len(missing)} file(s): {', '.join(missing)}"
        )


def release_bytes(folder: Path) -> int:
    """The size of the release's own files in `folder` (ours, such as model_index.json, not counted)."""
    files = [folder / n for n in [*graph_files(), *LLM_FILES, *TOKENIZER_FILES]]
    files += [p for p in (folder / "llm").glob("embeddings*.bin")]
    return sum(p.stat().st_size for p in files if p.is_file())


def fingerprint(folder: Path, names: list[str]) -> str:
    """Names, sizes and modification times of the files a cached result came from."""
    h = hashlib.sha256()
    for name in sorted(names):
        path = folder / name
        stat = path.stat() if path.is_file() else None
        h.update(f"{name}:{stat.st_size if stat else -1}:{stat.st_mtime_ns if stat else -1};".encode())
    return h.hexdigest()[:32]


class EmbeddingTable:
    """The LLM's token embeddings, read row by row (a prompt touches a few KB, never the whole table): bf16 rows in
    embeddings_bf16.bin, or rows tied inside llm.mnn.weight (4/8-bit blocks, or fp16) as MNN's DiskEmbedding reads
    them: 4-bit pairs high nibble first, w = (q - 2^(bits-1)) * scale + zero per block."""

    def __init__(self, folder: Path, config: dict, llm_config: dict):
        self.hidden = int(llm_config["hidden_size"])
        self.path = embeddings_file(folder, config, llm_config)
        tie = tied_embeddings(llm_config)
        size = self.path.stat().st_size if self.path.is_file() else 0
        self.alpha_offset = self.alpha_row = 0
        if tie is None:
            self.bits, self.offset, self.row_bytes = "bf16", 0, self.hidden * 2
            self.count = size // self.row_bytes
            end = self.count * self.row_bytes
        else:
            offset, alpha_offset, alpha_size, bits, block = tie
            self.offset, self.bits = offset, bits
            self.row_bytes = self.hidden * bits // 8
            if bits not in (4, 8, 16) or self.row_bytes <= 0:
                raise ModelFolderError(f"{self.path}: tied embeddings of {bits} bits are not supported")
            self.count = (alpha_offset - offset) // self.row_bytes
            end = alpha_offset + alpha_size
            if bits != 16:
                self.block = self.hidden if block == 0 else block
                blocks = self.hidden // self.block
                per_row = {blocks * 4: 1, blocks * 8: 2}.get(alpha_size // max(self.count, 1))
                if not blocks or per_row is None or self.hidden % self.block:
                    raise ModelFolderError(f"{self.path}: tie_embeddings {tie} do not fit hidden size {self.hidden}")
                self.alpha_offset, self.alpha_row, self.asymmetric = alpha_offset, blocks * 4 * per_row, per_row == 2
        if self.count <= 0 or size < end:
            raise ModelFolderError(f"{self.path}: {size:,} bytes, too short for the LLM's embeddings (needs {end:,})")

    def rows(self, ids: list[int]) -> np.ndarray:
        """[len(ids), hidden] float32 NumPy."""
        out = np.empty((len(ids), self.hidden), np.float32)
        done: dict[int, int] = {}
        with open(self.path, "rb") as f:
            for n, token in enumerate(ids):
                if not 0 <= token < self.count:
                    raise ModelFolderError(
                        f"{self.path}: token id {token} is outside the {self.count}-row embedding table "
                        "(the tokenizer does not belong to this LLM)"
                    )
                if token in done:
                    out[n] = out[done[token]]
                    continue
                done[token] = n
                f.seek(self.offset + token * self.row_bytes)
                out[n] = self._row(f.read(self.row_bytes), f, token)
        return out

    def _row(self, raw: bytes, f, token: int) -> np.ndarray:
        if self.bits == "bf16":
            return bfloat16_to_float32(np.frombuffer(raw, np.uint16))
        if self.bits == 16:
            return np.frombuffer(raw, np.float16).astype(np.float32)
        q = np.frombuffer(raw, np.uint8)
        if self.bits == 4:
            q = np.stack([q >> 4, q & 15], axis=-1).reshape(-1)
        f.seek(self.alpha_offset + token * self.alpha_row)
        alpha = np.frombuffer(f.read(self.alpha_row), np.float32)
        shift = -(1 << (self.bits - 1))
        if self.asymmetric:
            zero, scale = alpha[0::2], alpha[1::2]
            zero = zero + scale * shift
        else:
            scale = alpha
            zero = scale * shift
        q = q.astype(np.float32).reshape(-1, self.block)
        return (q * scale[:, None] + zero[:, None]).reshape(-1)


def load_meta_queries_mnn(path: Path) -> np.ndarray:
    """llm/meta_queries.mnn: one [num_queries, hidden] constant saved with MNN.expr.save (float32 NumPy)."""
    from sanaedit.backends.mnn_graph import import_mnn

    mnn_expr = import_mnn("MNN.expr")

    if not Path(path).is_file():
        raise ModelFolderError(f"{path}: missing")
    found = mnn_expr.load_as_list(str(path))
    if len(found) != 1 or len(found[0].shape) != 2:
        raise ModelFolderError(f"{path}: not one [queries, hidden] MNN constant (corrupt or from something else)")
    var = found[0]
    if var.data_format == mnn_expr.NC4HW4:
        var = mnn_expr.convert(var, mnn_expr.NCHW)
    return np.array(var.read(), dtype=np.float32).reshape(var.shape)


def save_meta_queries_mnn(meta_queries: torch.Tensor | np.ndarray, path: Path) -> None:
    from sanaedit.backends.mnn_graph import import_mnn

    mnn_expr = import_mnn("MNN.expr")

    from sanaedit.core.arrays import to_numpy

    array = np.ascontiguousarray(to_numpy(meta_queries))
    var = mnn_expr.const(array, list(array.shape), mnn_expr.NCHW, mnn_expr.float)
    mnn_expr.save([var], str(path))
