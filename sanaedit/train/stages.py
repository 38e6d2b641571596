"""The training stages as named recipes of what trains and on what data.

    autoencoder  the DC-AE alone, reconstructing images (how the bundled model gets its small autoencoder)
    tiny-vae     the light autoencoder (tiny_vae/, TAESANA's architecture) distilled from the model's own DC-AE
    stage1       meta-queries + connector + projector (LLM, DiT, DC-AE frozen), text-image pairs
    stage2       stage 1 + the DiT, text-image pairs
    stage3       stage 2's parts on editing triples, the source latent fed as `ref_latents`
    lora         LoRA adapters on the DiT (a style file)
    distill      a few-step, CFG-free student of the starting model's DiT (train/distill.py)
    refiner      the learned full-resolution refiner (models/refiner.py) on the frozen editor's own outputs
    controlnet   a ControlNet (models/controlnet.py) beside the frozen editor, on edges of its photos

A config may override `trainable` (any of COMPONENTS except the LLM, which stays frozen: the design reads it
through the queries, never changes it).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

COMPONENTS = (
    "meta_queries", "connector", "projector", "transformer", "vae", "lora", "tiny_vae", "refiner", "controlnet",
)  # fmt: skip
# full_res: photo/edit/target crops (refiner_data.py); control: editing triples + the source's edges
DATA_KINDS = ("images", "text_image", "edit", "full_res", "control")


@dataclass(frozen=True)
class Stage:
    name: str
    trainable: tuple[str, ...]
    data: str  # one of DATA_KINDS


STAGES = {
    "autoencoder": Stage("autoencoder", ("vae",), "images"),
    "tiny-vae": Stage("tiny-vae", ("tiny_vae",), "images"),  # distilled from the frozen DC-AE (parts.py)
    "stage1": Stage("stage1", ("meta_queries", "connector", "projector"), "text_image"),
    "stage2": Stage("stage2", ("meta_queries", "connector", "projector", "transformer"), "text_image"),
    "stage3": Stage("stage3", ("meta_queries", "connector", "projector", "transformer"), "edit"),
    "lora": Stage("lora", ("lora",), "edit"),  # LoRA adapters on the DiT only: a style file, not a model folder
    "distill": Stage("distill", ("transformer",), "edit"),  # a few-step student of the start (distill.py)
    "refiner": Stage("refiner", ("refiner",), "full_res"),  # after the editor, on its outputs (refiner_data.py)
    "controlnet": Stage("controlnet", ("controlnet",), "control"),  # a ControlNet folder, not a model folder
}


def get_stage(name: str, trainable: list[str] | None = None) -> Stage:
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; choose one of {', '.join(STAGES)}")
    stage = STAGES[name]
    if trainable is None:
        return stage
    bad = [c for c in trainable if c not in COMPONENTS]
    if bad:
        hint = " (the LLM is always frozen)" if "llm" in bad else ""
        raise ValueError(f"unknown trainable component(s) {bad}{hint}; choose from {', '.join(COMPONENTS)}")
    return Stage(stage.name, tuple(trainable), stage.data)


def component_parameters(parts: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Parameters of each named component of a `TrainParts` module (see parts.py)."""
    te = parts.text_encoder
    return {
        "meta_queries": [te.meta_queries],
        "connector": list(te.connector.parameters()),
        "projector": list(te.projector.parameters()),
        "transformer": list(parts.transformer.parameters()),
        "vae": list(parts.vae.parameters()),
        "llm": list(te.llm.parameters()),
        "lora": [p for n, p in parts.transformer.named_parameters() if ".lora_" in n],
        "tiny_vae": list(parts.tiny_vae.parameters()) if getattr(parts, "tiny_vae", None) is not None else [],
        "refiner": list(parts.refiner.parameters()) if getattr(parts, "refiner", None) is not None else [],
        "controlnet": list(parts.controlnet.parameters()) if getattr(parts, "controlnet", None) is not None else [],
    }


def apply_stage(parts: nn.Module, stage: Stage) -> list[str]:
    """Freeze everything, then unfreeze the stage's components and the objective's own modules
    (`parts.objective_modules`, e.g. sCM's adaptive weight: trained, never exported). Returns the names of the
    trainable parameters."""
    parts.requires_grad_(False)
    for name in stage.trainable:
        for p in component_parameters(parts)[name]:
            p.requires_grad_(True)
    for module in getattr(parts, "objective_modules", ()):
        module.requires_grad_(True)
    return [n for n, p in parts.named_parameters() if p.requires_grad]
