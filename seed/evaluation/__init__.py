"""Hallucination benchmarks, one module per benchmark: ``pope`` (yes/no object probing) and ``chair``.

Submodules are imported on use so that the command line starts quickly.
"""
