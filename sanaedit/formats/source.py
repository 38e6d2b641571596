"""What every reader of a model source yields: one protocol over the formats (a PyTorch folder, an ONNX or MNN
export, the published MNN release's files, weights built in memory).

A source says what it holds (`info`, for the run plan) and builds the networks a plan names (`networks(plan)`):
the same `FlowModel` (DiT, encoder, decoder, refiner) and text path whatever runs them. The pipeline is assembled
from these in one place (`SanaEditPipeline.from_plan`), as diffusers' `DiffusionPipeline.from_pretrained` builds
every pipeline from the components its `model_index.json` names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sanaedit.core.flow import FlowModel
from sanaedit.core.sampling import Array
from sanaedit.plan import FolderInfo, RunPlan

TextEncoder = Callable[[list[str]], tuple[Array, Array]]  # prompts -> (hidden, mask)


@dataclass
class Networks:
    """A source's networks for one plan."""

    flow: FlowModel  # the DiT, the planned autoencoder and the refiner, behind the calls sampling makes
    prompt_cache: dict[str, tuple[Array, Array]] = field(default_factory=dict)  # prompts whose conditioning is known
    text_encoder_loader: Callable[[], TextEncoder] | None = None  # the text path, built when a new prompt needs it
    text_encoder: TextEncoder | None = None  # ... or already built (weights made in memory)
    # (name, device, dtype) -> "encoder"/"transformer"/"decoder" anew, placed there (staged residency)
    network_loader: Callable[[str, Any, Any], Any] | None = None


class ModelSource(Protocol):
    info: FolderInfo

    def networks(self, plan: RunPlan) -> Networks: ...
