"""ONNX -> MNN through the `mnn` wheel's converter, called as a function, offline.

Never through the wheel's `mnnconvert` console script or `MNN.tools`: importing that wrapper pip-installs a logging
package and sends telemetry. `_tools.mnnconvert(argv)` is the converter itself. It reports success even when it
fails (an fp32 model over 2 GB becomes a 0-byte file), so the output is checked here.
"""

from __future__ import annotations

import os
from pathlib import Path


def run_converter(argv: list[str]) -> None:
    """The converter extension on `argv` (argv[0] is a program name it ignores), its console output muted."""
    # The converter prints a lot to the process's stdout (its import too); keep it out of our progress output.
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            import _tools  # the converter extension the mnn wheel ships (not MNN.tools, see above)

            _tools.mnnconvert(argv)
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def onnx_to_mnn(onnx_path: Path, mnn_path: Path, weight_bits: int | None = None, block_size: int | None = None) -> Path:
    """Convert; `weight_bits` 8 or 4 stores asymmetric low-bit weights (per channel, or per `block_size` block)."""
    onnx_path, mnn_path = Path(onnx_path), Path(mnn_path)
    mnn_path.unlink(missing_ok=True)
    argv = ["mnnconvert", "-f", "ONNX", "--modelFile", str(onnx_path), "--MNNModel", str(mnn_path)]
    argv += ["--bizCode", "sanaedit", "--saveExternalData"]  # weights beside the graph: no 2 GB limit
    if weight_bits is not None:
        argv += ["--weightQuantBits", str(weight_bits), "--weightQuantAsymmetric"]
        if block_size:
            argv += ["--weightQuantBlock", str(block_size)]
    run_converter(argv)
    if not mnn_path.is_file() or mnn_path.stat().st_size == 0:
        raise RuntimeError(f"MNN conversion of {onnx_path} produced no (or an empty) {mnn_path}")
    return mnn_path
