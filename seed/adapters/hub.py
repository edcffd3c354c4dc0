"""Checkpoint names and configs: aliases, local folders and hub ids, and which family class
serves a checkpoint (told apart by its config.json, never by its name)."""

from __future__ import annotations

from pathlib import Path

from seed.errors import SeedError
from seed.io import reading

ALIASES: dict[str, str] = {
    "llava-1.5": "llava-hf/llava-1.5-7b-hf",
    "llava-1.5-7b": "llava-hf/llava-1.5-7b-hf",
    "llava-1.5-13b": "llava-hf/llava-1.5-13b-hf",
    **{f"internvl2-{size}": f"OpenGVLab/InternVL2-{size.upper()}" for size in ("1b", "2b", "4b", "8b", "26b")},
}


def resolve_model_name(model: str) -> str:
    """Alias → hub id; a local folder → its absolute path; anything else that names a path → error."""
    if model in ALIASES:
        return ALIASES[model]
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if path.is_absolute() or model.startswith((".", "~")) or path.exists() or model.count("/") > 1:
        raise SeedError(f"model {model}: no such directory")
    return model


def canonical_name(name: str) -> str:
    """One spelling per checkpoint: aliases resolved, local paths absolute, hub ids lower-case."""
    name = ALIASES.get(name, name)
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name.lower()


def read_config(name: str) -> dict:
    """The raw config.json (no model class instantiated, no remote code run)."""
    from transformers import PretrainedConfig

    if Path(name).is_dir() and not (Path(name) / "config.json").is_file():
        raise SeedError(f"model {name}: no config.json in that directory")
    with reading(f"model {name}: config.json"):
        config, _ = PretrainedConfig.get_config_dict(name)
    return config


def family_class(config: dict, name: str, trust_remote_code: bool):
    """The :class:`~seed.adapters.base.VisionLanguageModel` subclass for a checkpoint's config."""
    model_type = config.get("model_type")
    auto_map = config.get("auto_map") or {}
    if model_type == "llava":
        from seed.adapters.llava import LlavaVLM

        return LlavaVLM
    if model_type == "internvl":
        from seed.adapters.internvl import InternVLVLM

        return InternVLVLM
    if model_type == "internvl_chat" or "internvl" in " ".join(map(str, auto_map.values())).lower():
        if not trust_remote_code:
            raise SeedError(
                f"model {name} is an InternVL2 checkpoint that only loads by running Python code from its "
                "repository; pass --trust-remote-code (trust_remote_code=True) if you trust that code"
            )
        from seed.adapters.internvl import InternVL2RemoteVLM

        return InternVL2RemoteVLM
    raise SeedError(f"model {name}: unsupported architecture model_type={model_type!r} (supported: llava, internvl, internvl_chat)")
