"""SEED: self-evolving distillation against hallucination in vision-language models."""

__version__ = "0.1.0"


def load(model: str | None = None, **options):
    """:func:`seed.adapters.load`, with ``model`` None meaning the embedded world's model
    (built on first use)."""
    from seed.adapters import load as load_model

    if model is None:
        from seed.world import World

        model = str(World.default().model)
    return load_model(model, **options)


def detect(model, captions, images, config=None):
    """:func:`seed.detection.detect`: which objects in each caption are hallucinated."""
    from seed.detection import detect as run

    return run(model, captions, images, config)


def __getattr__(name: str):
    """Lazy access to the pipeline modules ``seed.purify``, ``seed.distill``, ``seed.evolve``, so
    that ``import seed`` stays light."""
    if name in ("purify", "distill", "evolve"):
        import importlib

        return importlib.import_module(f"seed.{name}")
    raise AttributeError(f"module 'seed' has no attribute {name!r}")
