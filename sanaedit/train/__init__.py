"""Training: flow-matching objective, CAME/AdamW, three-stage recipes, data, the accelerate loop.

`sanaedit train CONFIG.yaml` runs it; see docs/training.md.
"""
