"""Training data: text-image pairs and editing triples from a folder + manifest, or from Hugging Face `datasets`;
optional pre-encoding of latents (and frozen text features) to disk.

Manifest (JSONL, one object a line, or CSV with a header), paths relative to the manifest's folder:

    {"image": "a.png", "prompt": "a cat"}                                    text-image pair (stages 1, 2)
    {"source": "in/a.png", "target": "out/a.png", "prompt": "make it comic"}  editing triple (stage 3, controlnet)
    {"image": "a.png"}                                                         image only (autoencoder stage)

Images are read and prepared by the pipeline's own code (`sanaedit.image.io`: EXIF orientation, colour profile to
sRGB, centred square pad, bilinear resize, [-1, 1]), so what the model trains on is what it sees at inference.
No random augmentation happens here: a sample is a pure function of its record, which is what makes pre-encoding
and bit-exact resume possible.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from sanaedit.errors import DataError, ImageLoadError
from sanaedit.image.io import load_image, preprocess, upright_rgb

REQUIRED = {"images": ("image",), "text_image": ("image", "prompt"), "edit": ("source", "target", "prompt")}
REQUIRED["control"] = REQUIRED["edit"]  # editing triples; the control image is computed from the source (edges)
PAIRED = ("edit", "control")  # the kinds with a source beside each target


def read_manifest(path: str | Path) -> list[dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return [dict(row) for row in csv.DictReader(f)]
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{n}: not valid JSON ({err})") from err
        if not isinstance(record, dict):
            raise DataError(f"{path}:{n}: a manifest line must be a JSON object")
        records.append(record)
    return records


def _expand(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """For image-only data, an editing triple gives two images (source and target): an autoencoder for editing
    must reconstruct both kinds."""
    if kind != "images":
        return records
    out = []
    for r in records:
        if "image" not in r and "source" in r and "target" in r:
            out += [{**r, "image": r["source"]}, {**r, "image": r["target"]}]
        else:
            out.append(r)
    return out


def _normalise(record: dict[str, Any], kind: str, where: str, default_prompt: str | None) -> dict[str, Any]:
    """Map the accepted aliases onto one schema and check the kind's required fields."""
    r = dict(record)
    if kind not in PAIRED and "image" not in r and "target" in r:
        r["image"] = r["target"]  # an editing manifest also serves the image-only and text-image stages
    if "prompt" not in r and "text" in r:
        r["prompt"] = r["text"]
    if not r.get("prompt") and default_prompt is not None:
        r["prompt"] = default_prompt
    missing = [k for k in REQUIRED[kind] if r.get(k) in (None, "")]
    if missing:
        raise DataError(f"{where}: missing field(s) {missing} for {kind!r} data (record: {record})")
    return r


def load_picture(image: Image.Image | str | Path) -> Image.Image:
    """A PIL image or a path -> the upright RGB picture the pipeline reads (DataError names a bad file)."""
    if isinstance(image, Image.Image):
        return upright_rgb(image)
    try:
        return load_image(image)
    except ImageLoadError as err:
        raise DataError(str(err)) from err


def load_pixels(image: Image.Image | str | Path, resolution: int) -> torch.Tensor:
    """A PIL image or a path -> [3, R, R] in [-1, 1]: exactly the pipeline's input for that image."""
    return torch.from_numpy(preprocess(load_picture(image), resolution)[0][0])


class SampleDataset(Dataset):
    """Shared item logic: records -> {"index", "target", "source" (edit only), "prompt"} or None when skipped."""

    kind: str
    resolution: int
    skip_bad: bool

    def _image(self, record: dict[str, Any], key: str) -> Image.Image | str | Path:
        raise NotImplementedError

    def _where(self, index: int) -> str:
        raise NotImplementedError

    def _record(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        try:
            r = self._record(index)
            item: dict[str, Any] = {"index": index, "prompt": r.get("prompt", "")}
            key = "target" if self.kind in PAIRED else "image"
            item["target"] = load_pixels(self._image(r, key), self.resolution)
            if self.kind in PAIRED:
                source = load_picture(self._image(r, "source"))
                item["source"] = load_pixels(source, self.resolution)
            if self.kind == "control":  # computed on the fly from the stored picture, as an edit computes it
                from sanaedit.image.edges import edge_picture

                item["control"] = load_pixels(edge_picture(source), self.resolution)
            return item
        except DataError as err:
            if not self.skip_bad:
                raise DataError(f"{self._where(index)}: {err} (set data.skip_bad: true to skip and count)") from err
            return None


class ManifestDataset(SampleDataset):
    """A local folder with a JSONL/CSV manifest."""

    def __init__(
        self,
        manifest: str | Path,
        kind: str = "edit",
        resolution: int = 512,
        skip_bad: bool = False,
        default_prompt: str | None = None,
    ):
        if kind not in REQUIRED:
            raise ValueError(f"unknown data kind {kind!r}; choose one of {', '.join(REQUIRED)}")
        self.manifest = Path(manifest)
        if self.manifest.is_dir():
            found = [p for p in (self.manifest / "manifest.jsonl", self.manifest / "manifest.csv") if p.is_file()]
            if not found:
                raise DataError(f"{self.manifest}: no manifest.jsonl or manifest.csv in this folder")
            self.manifest = found[0]
        self.root = self.manifest.parent
        self.kind, self.resolution, self.skip_bad = kind, resolution, skip_bad
        self.records = [
            _normalise(r, kind, f"{self.manifest}:{i + 1}", default_prompt)
            for i, r in enumerate(_expand(read_manifest(self.manifest), kind))
        ]
        if not self.records:
            raise DataError(f"{self.manifest}: manifest has no samples")

    def __len__(self) -> int:
        return len(self.records)

    def _record(self, index: int) -> dict[str, Any]:
        return self.records[index]

    def _where(self, index: int) -> str:
        return f"{self.manifest} sample {index}"

    def _image(self, record: dict[str, Any], key: str) -> Path:
        return self.root / record[key]

    def fingerprint(self) -> str:
        """Changes when the manifest or any listed file's size/mtime changes (guards pre-encoded caches)."""
        h = hashlib.sha256(self.manifest.read_bytes())
        h.update(f"{self.kind}:{self.resolution}".encode())
        for r in self.records:
            for key in ("image", "source", "target"):
                if key in r and (self.root / r[key]).is_file():
                    st = (self.root / r[key]).stat()
                    h.update(f"{r[key]}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()[:16]


class HFDataset(SampleDataset):
    """A Hugging Face `datasets` dataset (a hub name already in the local cache, or a `save_to_disk` folder).

    `columns` maps our fields (image / source / target / prompt) to the dataset's column names.
    """

    def __init__(
        self,
        name: str,
        split: str = "train",
        kind: str = "edit",
        resolution: int = 512,
        columns: dict[str, str] | None = None,
        skip_bad: bool = False,
        default_prompt: str | None = None,
    ):
        try:
            import datasets
        except ImportError as err:
            raise ImportError("data.hf needs the `datasets` package: pip install datasets") from err
        if kind not in REQUIRED:
            raise ValueError(f"unknown data kind {kind!r}; choose one of {', '.join(REQUIRED)}")
        path = Path(name)
        ds = datasets.load_from_disk(str(path)) if path.is_dir() else datasets.load_dataset(name, split=split)
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[split]
        self.ds, self.name = ds, name
        self.columns = {k: k for k in ("image", "source", "target", "prompt")} | dict(columns or {})
        self.kind, self.resolution, self.skip_bad, self.default_prompt = kind, resolution, skip_bad, default_prompt
        need = [self.columns[k] for k in REQUIRED[kind] if not (k == "prompt" and default_prompt is not None)]
        missing = [c for c in need if c not in ds.column_names]
        if missing:
            raise DataError(
                f"{name}: dataset has no column(s) {missing} (columns: {ds.column_names}); set data.columns"
            )

    def __len__(self) -> int:
        return len(self.ds)

    def _record(self, index: int) -> dict[str, Any]:
        row = self.ds[index]
        r = {k: row[c] for k, c in self.columns.items() if c in row}
        return _normalise(r, self.kind, self._where(index), self.default_prompt)

    def _where(self, index: int) -> str:
        return f"{self.name} row {index}"

    def _image(self, record: dict[str, Any], key: str) -> Image.Image:
        value = record[key]
        if isinstance(value, Image.Image):
            return value
        if isinstance(value, dict) and value.get("bytes"):
            import io

            return Image.open(io.BytesIO(value["bytes"]))
        raise DataError(f"column {self.columns[key]!r} does not hold an image")

    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self.name}:{self.ds._fingerprint}:{self.kind}:{self.resolution}".encode()).hexdigest()[
            :16
        ]


def collate(items: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Stack a batch, dropping skipped (None) samples and counting them in "skipped"."""
    kept = [it for it in items if it is not None]
    batch: dict[str, Any] = {"skipped": len(items) - len(kept), "size": len(kept)}
    if not kept:
        return batch
    batch["index"] = torch.tensor([it["index"] for it in kept])
    batch["prompt"] = [it["prompt"] for it in kept]
    for key in ("target", "source", "edit", "control", "target_latents", "ref_latents", "control_latents",
                "llm_features"):  # fmt: skip
        if key in kept[0]:
            batch[key] = torch.stack([it[key] for it in kept])
    return batch


# ------------------------------------------------------------------------------------------------ pre-encoding
CACHE_INDEX = "cache.json"


def cache_matches(out_dir: str | Path, fingerprint: str) -> bool:
    """Whether `out_dir` holds a complete pre-encoded cache of this data and these weights (`pre_encode` reuses it)."""
    index_path = Path(out_dir) / CACHE_INDEX
    return index_path.is_file() and json.loads(index_path.read_text()).get("fingerprint") == fingerprint


def pre_encode(
    dataset: SampleDataset,
    out_dir: str | Path,
    encode_image: Callable[[torch.Tensor], torch.Tensor],
    fingerprint: str,
    encode_text: Callable[[list[str]], torch.Tensor] | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> Path:
    """Encode every sample once with the frozen autoencoder (and frozen text path) into `out_dir`.

    Reuses an existing cache whose fingerprint (data + autoencoder + settings) matches; rebuilds it otherwise.
    Skipped samples (skip_bad) are left out and counted in the index.
    """
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    index_path = out_dir / CACHE_INDEX
    if cache_matches(out_dir, fingerprint):
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    prompts: list[str] = []
    skipped = 0
    order = range(0, len(dataset), batch_size)
    for start in tqdm(order, desc="pre-encoding", unit="batch", disable=not progress):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        skipped += batch["skipped"]
        if not batch["size"]:
            continue
        with torch.no_grad():
            target = encode_image(batch["target"])
            source = encode_image(batch["source"]) if "source" in batch else None
            control = encode_image(batch["control"]) if "control" in batch else None
        for j in range(batch["size"]):
            n = len(prompts)
            tensors[f"{n}.target"] = target[j].float().contiguous().cpu()
            if source is not None:
                tensors[f"{n}.ref"] = source[j].float().contiguous().cpu()
            if control is not None:
                tensors[f"{n}.control"] = control[j].float().contiguous().cpu()
            prompts.append(batch["prompt"][j])
    if encode_text is not None:
        unique = list(dict.fromkeys(prompts))
        with torch.no_grad():
            for k in range(0, len(unique), batch_size):
                feats = encode_text(unique[k : k + batch_size])
                for j, p in enumerate(unique[k : k + batch_size]):
                    tensors[f"text.{unique.index(p)}"] = feats[j].float().contiguous().cpu()
        text_ids = [unique.index(p) for p in prompts]
    else:
        text_ids = []
    save_file(tensors, out_dir / "latents.safetensors")
    meta = {"fingerprint": fingerprint, "prompts": prompts, "text_ids": text_ids, "skipped": skipped}
    tmp = index_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta))
    tmp.replace(index_path)  # the index is written last: a half-written cache is never taken for a complete one
    return out_dir


class LatentDataset(Dataset):
    """Samples from a `pre_encode` folder: {"index", "target_latents", "ref_latents"?, "control_latents"?,
    "llm_features"?, "prompt"}."""

    def __init__(self, cache_dir: str | Path):
        from safetensors.torch import load_file

        cache_dir = Path(cache_dir)
        index_path = cache_dir / CACHE_INDEX
        if not index_path.is_file():
            raise DataError(f"{cache_dir}: not a pre-encoded cache (no {CACHE_INDEX})")
        meta = json.loads(index_path.read_text())
        self.prompts, self.text_ids, self.skipped = meta["prompts"], meta["text_ids"], meta["skipped"]
        self.reused = False  # set by `sources.pre_encoded`: the cache was found, nothing encoded
        self.tensors = load_file(cache_dir / "latents.safetensors")

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {"index": index, "prompt": self.prompts[index], "target_latents": self.tensors[f"{index}.target"]}
        if f"{index}.ref" in self.tensors:
            item["ref_latents"] = self.tensors[f"{index}.ref"]
        if f"{index}.control" in self.tensors:
            item["control_latents"] = self.tensors[f"{index}.control"]
        if self.text_ids:
            item["llm_features"] = self.tensors[f"text.{self.text_ids[index]}"]
        return item
