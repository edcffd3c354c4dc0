"""SEED: self-evolving distillation against hallucination in vision-language models."""

__version__ = "0.1.0"
