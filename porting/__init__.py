"""tf-porting: TF-Slim checkpoints to exact PyTorch weights.

``from porting import load`` is the one-line Python API (``porting.loader.load``), imported
when first asked for: ``import porting`` alone loads nothing else."""


def __getattr__(name: str):
    if name == "load":
        from porting.loader import load

        return load
    raise AttributeError(f"module 'porting' has no attribute {name!r}")
