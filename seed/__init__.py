"""SEED: self-evolving distillation against hallucination in vision-language models."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """Lazy access, so that ``import seed`` stays light: ``seed.load(model, adapter=...)``
    (:func:`seed.adapters.load`) and the pipeline modules ``seed.purify``, ``seed.distill``,
    ``seed.evolve``."""
    if name == "load":
        from seed.adapters import load

        return load
    if name in ("purify", "distill", "evolve"):
        import importlib

        return importlib.import_module(f"seed.{name}")
    raise AttributeError(f"module 'seed' has no attribute {name!r}")
