import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download anything
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_pipe():
    from sanaedit.tools.random_model import build_tiny_pipeline

    return build_tiny_pipeline(seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_pipe):
    """A tiny model folder in the real layout, written once per session (treat as read-only)."""
    return tiny_pipe.save_pretrained(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_mnn_release(tmp_path_factory, tiny_model_dir):
    """The tiny model exported in the published MNN release's layout (the LLM through llmexport, 4-bit; the rest
    8-bit), once per session (treat as read-only; copy it to change it)."""
    import importlib.util

    pytest.importorskip("MNN")
    if importlib.util.find_spec("llmexport") is None:  # (importing it needs its folder on sys.path)
        pytest.skip("llmexport is not installed")
    from sanaedit.export import export_model

    out = tmp_path_factory.mktemp("release") / "tiny-mnn"
    return export_model(tiny_model_dir, out, fmt="mnn", quant="llm=4,rest=8", progress=False)


@pytest.fixture
def tiny_edit_pairs(tmp_path):
    """Two random 64 px editing triples with a manifest: enough data for a training step on the tiny model."""
    import json

    import numpy as np
    from PIL import Image

    data = tmp_path / "pairs"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(data / f"s{i}.png")
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(data / f"t{i}.png")
    records = [{"source": f"s{i}.png", "target": f"t{i}.png", "prompt": "x"} for i in range(2)]
    (data / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    return data
