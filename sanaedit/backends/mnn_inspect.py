"""What an .mnn graph holds, read without loading its weights: input names and shapes, outputs, weight bits, and the
bytes its `.mnn.weight` side file must have. MNN's converter turns the graph into JSON (`-f MNN --JsonFile`) in a
child process: it crashes on a corrupt file, which must not take this process down. The child runs the converter
extension (`_tools`) only, never `MNN.tools` (see export/mnn_convert.py): nothing is installed or sent.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

_CHILD = """
import os, sys
fd = os.open(os.devnull, os.O_WRONLY)
os.dup2(fd, 1)
os.dup2(fd, 2)
import _tools
_tools.mnnconvert(["mnnconvert", "-f", "MNN", "--modelFile", sys.argv[1], "--JsonFile", sys.argv[2]])
"""


@dataclass
class GraphInfo:
    path: Path
    inputs: dict[str, list[int]] = field(default_factory=dict)  # name -> dims as stored (batch 1 when free)
    outputs: list[str] = field(default_factory=list)
    bits: Counter = field(default_factory=Counter)  # weight bits (32 float, 16 half, 8/4 quantized) -> ops
    weight_bytes: int = 0  # what the graph reads from its .mnn.weight
    error: str | None = None  # why it could not be read

    @property
    def bits_text(self) -> str:
        if not self.bits:
            return "-"
        named = {32: "fp32", 16: "fp16"}
        return " + ".join(f"{named.get(b, f'{b}-bit')}" for b, _ in self.bits.most_common())

    def weight_problem(self) -> str | None:
        """Why the side file cannot serve this graph (missing or short), or None."""
        side = Path(str(self.path) + ".weight")
        if self.weight_bytes == 0:
            return None
        if not side.is_file():
            return f"{side.name} is missing (the graph reads {self.weight_bytes:,} bytes from it)"
        size = side.stat().st_size
        if size < self.weight_bytes:
            return (
                f"{side.name} has {size:,} bytes, the graph reads {self.weight_bytes:,}: truncated or from another file"
            )
        return None


def inspect_graphs(paths: list[Path], timeout: float = 300) -> dict[Path, GraphInfo]:
    """GraphInfo per .mnn file (children run side by side); a file that does not parse gets `.error`."""
    out: dict[Path, GraphInfo] = {}
    with tempfile.TemporaryDirectory(prefix="sanaedit-mnn-") as scratch:
        jobs = []
        for i, path in enumerate(paths):
            target = Path(scratch) / f"{i}.json"
            cmd = [sys.executable, "-c", _CHILD, str(path), str(target)]
            jobs.append(
                (Path(path), target, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            )
        for path, target, job in jobs:
            try:
                code = job.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                job.kill()
                job.wait()
                code = "timeout"
            out[path] = _summary(path, target, code)
    return out


def _summary(path: Path, target: Path, code) -> GraphInfo:
    info = GraphInfo(path)
    try:
        graph = json.loads(target.read_text()) if code == 0 and target.is_file() else None
    except (OSError, ValueError):
        graph = None
    if not isinstance(graph, dict) or "oplists" not in graph:
        reason = "the converter crashed on it" if isinstance(code, int) and code < 0 else f"exit {code}"
        info.error = f"{path.name}: not a readable MNN graph ({reason}; corrupt, truncated or not MNN)"
        return info
    names = graph.get("tensorName", [])
    for op in graph["oplists"]:
        main = op.get("main") if isinstance(op.get("main"), dict) else {}
        if op.get("type") == "Input" and op.get("outputIndexes"):
            info.inputs[names[op["outputIndexes"][0]]] = list(main.get("dims", []))
        external = main.get("external")
        if isinstance(external, list) and len(external) >= 2:
            info.weight_bytes = max(info.weight_bytes, int(external[0]) + sum(int(x) for x in external[1:]))
        quant = main.get("quanParameter")
        if isinstance(quant, dict):
            info.bits[16 if quant.get("type") == 3 else int(quant.get("aMaxOrBits", 8))] += 1
        elif op.get("type") in ("Convolution", "ConvolutionDepthwise", "Deconvolution") and (
            external or main.get("weight")
        ):
            info.bits[32] += 1
    info.outputs = list(graph.get("outputName", []))
    return info
