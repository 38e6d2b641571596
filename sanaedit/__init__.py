"""sanaedit: on-device image editing with a SANA linear diffusion transformer."""

__version__ = "0.1.0"

__all__ = ["SanaEditPipeline", "__version__", "load_pipeline"]


def __getattr__(name: str):
    # Lazy so `import sanaedit` (and the CLI's --help) does not pay for torch/diffusers.
    if name == "SanaEditPipeline":
        from sanaedit.pipeline import SanaEditPipeline

        return SanaEditPipeline
    if name == "load_pipeline":
        from sanaedit.load import load_pipeline

        return load_pipeline
    raise AttributeError(name)
