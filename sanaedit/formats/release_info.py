"""`sanaedit info` for a folder in the published release's layout: per graph its file, I/O names, weight bits and
size (read from the files, without loading weights), the LLM's tokenizer, embeddings and meta-queries, the total
against the published release's size, the defaults and where the prompt cache is."""

from __future__ import annotations

from pathlib import Path

from sanaedit.backends.mnn_inspect import inspect_graphs
from sanaedit.formats.index import PROMPT_CACHE_FILE
from sanaedit.formats.release import cache_folders, check_release, engine_config, load_release_cache
from sanaedit.formats.release_files import (
    GRAPHS,
    LLM_GRAPH,
    RELEASE_BYTES,
    EmbeddingTable,
    llm_configs,
    release_bytes,
    tokenizer_file,
)

_TOKENIZER_TYPES = {"1": "tiktoken (greedy)", "2": "BERT WordPiece", "3": "huggingface BPE", "4": "pipeline (.mtok)"}


def describe_release(folder: str | Path) -> list[str]:
    folder = Path(folder)
    found = check_release(folder)
    manifest = found.manifest
    ios = {**GRAPHS, "llm": LLM_GRAPH}
    infos = found.graphs
    if infos is None:  # an export of ours: its manifest was checked, the files say what they hold
        read = inspect_graphs([folder / io.file for io in ios.values()])
        infos = {name: read[folder / io.file] for name, io in ios.items()}
    version = (manifest or {}).get("_sanaedit_version", "?")
    origin = "the published release's files" if manifest is None else f"sanaedit {version} export"
    lines = [f"MNN release layout: {folder}  ({origin}; runs on mnn)"]
    for name, io in ios.items():
        info = infos[name]
        path = folder / io.file
        size = sum(p.stat().st_size for p in (path, Path(str(path) + ".weight")) if p.is_file())
        lines.append(
            f"  {name:<12} {io.file:<16} {', '.join(info.inputs)} -> {', '.join(info.outputs)}  "
            f"[{info.bits_text}]  {size / 2**20:.2f} MiB"
        )
    config, llm = llm_configs(folder)
    tokenizer = tokenizer_file(folder, config)
    with open(tokenizer, "rb") as f:
        kind = f.read(16).split()[1].decode()
    table = EmbeddingTable(folder, config, llm)
    stored = f"{table.bits}-bit" if isinstance(table.bits, int) else table.bits
    where = "tied inside " if table.offset else ""
    lines += [
        f"  llm: {llm.get('model_type', '?')}, hidden {llm['hidden_size']}, {llm.get('layer_nums', '?')} layers; "
        f"tokenizer {tokenizer.relative_to(folder)} ({_TOKENIZER_TYPES.get(kind, 'type ' + kind)}); "
        f"{table.count} token embeddings {where}{table.path.relative_to(folder)} ({stored}); "
        f"meta-queries {list(found.meta_queries.shape)}",
    ]
    total = release_bytes(folder)
    lines.append(
        f"  total {total:,} bytes ({total / 2**20:.1f} MiB): {total / RELEASE_BYTES:.1%} of the published release's "
        f"{RELEASE_BYTES:,}" + (" (the same size)" if total == RELEASE_BYTES else "")
    )
    if manifest is not None:
        import json

        lines.append("pipeline defaults: " + json.dumps(manifest.get("pipeline", {})))
        return lines
    resolution = infos["vae_encoder"].inputs.get("image", [0, 0, 512])[2]
    cfg = engine_config(resolution if isinstance(resolution, int) and resolution > 0 else 512)
    lines.append(
        f"defaults (the engine's): {cfg.resolution} px, {cfg.num_inference_steps} steps, schedule {cfg.schedule}, "
        f"CFG {cfg.guidance_scale} with {cfg.negative_prompt!r} as negative, prompt {cfg.prompt!r}"
    )
    cached = list(load_release_cache(folder))
    place = next((w for w in cache_folders(folder) if (w / PROMPT_CACHE_FILE).is_file()), None)
    lines.append(
        f"prompt cache: {len(cached)} prompt(s) in {place / PROMPT_CACHE_FILE}"
        if cached and place is not None
        else "prompt cache: none yet (the fixed prompt runs the LLM once, then is stored beside the release)"
    )
    return lines
