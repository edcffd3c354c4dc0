"""Modelling code of a tiny InternVL2 checkpoint, shipped inside the checkpoint folder as hub repos
ship theirs and loaded with ``trust_remote_code=True`` (see tests/remote_internvl2.py)."""
