"""The Hallucination Elimination Adapter (HEA): a plain PEFT LoRA on the language model.

A saved HEA is an ordinary PEFT folder (adapter_config.json, adapter_model.safetensors,
README.md) that ``PeftModel.from_pretrained(base, folder)`` loads without seed, plus
``seed_metadata.json``: the training metadata, library versions and a fingerprint of the base
model, which :func:`load_hea` uses to refuse an adapter trained on a different base.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from seed.adapters.base import VisionLanguageModel
from seed.errors import SeedError
from seed.io import atomic_write_text, library_versions, read_json, write_json

METADATA_FILE = "seed_metadata.json"
# Bases whose weight files total at most this are fingerprinted by their bytes (the embedded
# world's model is ~2 MB); larger ones by their config only, and by name.
WEIGHTS_FINGERPRINT_LIMIT = 256 * 2**20
_VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path")


def attach_hea(vlm: VisionLanguageModel, rank: int = 16, alpha: int = 32, dropout: float = 0.0) -> VisionLanguageModel:
    """Wrap ``vlm.model`` in a LoRA on the language model's projections; everything else frozen.

    If ``vlm`` already carries an adapter of the same rank and alpha (``load(..., adapter=...)``),
    that adapter is made trainable instead, so a round can continue from the previous one.
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    if isinstance(vlm.model, PeftModel):
        config = vlm.model.peft_config[vlm.model.active_adapter]
        if (config.r, config.lora_alpha) != (rank, alpha):
            raise SeedError(
                f"the loaded adapter has rank {config.r}, alpha {config.lora_alpha}, not {rank}, {alpha}; "
                "pass the same values or merge it first"
            )
        for name, param in vlm.model.named_parameters():
            param.requires_grad = "lora_" in name
        return vlm
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=vlm.lora_target_modules(),
        bias="none",
    )
    vlm.model = get_peft_model(vlm.model, config)
    return vlm


def save_hea(vlm: VisionLanguageModel, out_dir: str | Path, metadata: dict) -> Path:
    """Save the adapter in PEFT format plus ``seed_metadata.json``, all or nothing.

    Everything is written to a sibling temporary folder that then replaces ``out_dir``, so a
    crash leaves either the previous adapter or the new one, never half of one.
    """
    from peft import PeftModel

    if not isinstance(vlm.model, PeftModel):
        raise SeedError("this model carries no adapter to save (attach_hea first)")
    out = Path(out_dir).expanduser().resolve()
    config = vlm.model.peft_config[vlm.model.active_adapter]
    config.base_model_name_or_path = vlm.name_or_path
    record = {
        **metadata,
        "family": vlm.family,
        "base_model": vlm.name_or_path,
        **base_fingerprint(vlm.name_or_path),
        "lora": {"r": config.r, "lora_alpha": config.lora_alpha, "lora_dropout": config.lora_dropout, "target_modules": config.target_modules},
        "library_versions": library_versions(),
    }

    def write(tmp: Path) -> None:
        vlm.model.save_pretrained(tmp)
        atomic_write_text(tmp / "README.md", _model_card(vlm, config, metadata))
        write_json(tmp / METADATA_FILE, record)

    _write_dir_atomically(out, write, marker="adapter_config.json")
    return out


def load_hea(vlm: VisionLanguageModel, adapter_dir: str | Path) -> VisionLanguageModel:
    """Put the adapter in ``adapter_dir`` on ``vlm`` (inference mode), after checking its base."""
    from peft import PeftModel

    adapter = Path(adapter_dir).expanduser()
    if not (adapter / "adapter_config.json").is_file():
        raise SeedError(f"adapter {adapter}: no adapter_config.json there (not a PEFT adapter folder)")
    if isinstance(vlm.model, PeftModel):
        raise SeedError("this model already carries an adapter; load the base model to put another on it")
    check_adapter_base(adapter, vlm.name_or_path)
    try:
        vlm.model = PeftModel.from_pretrained(vlm.model, str(adapter))
    except (ValueError, KeyError, RuntimeError) as e:
        raise SeedError(f"adapter {adapter}: does not fit {vlm.name_or_path} ({str(e).strip().splitlines()[0]})") from None
    return vlm


def merge_and_export(vlm: VisionLanguageModel, out_dir: str | Path) -> Path:
    """Bake the adapter into the weights and save model + processor, loadable by plain transformers.

    ``vlm`` afterwards holds the merged model and names ``out_dir`` as its source.
    """
    from peft import PeftModel

    if not isinstance(vlm.model, PeftModel):
        raise SeedError("this model carries no adapter to merge")
    if getattr(vlm.model.get_base_model(), "is_quantized", False):
        raise SeedError("cannot merge into a 4/8-bit base without losing precision; load the base unquantised to export")
    out = Path(out_dir).expanduser().resolve()
    vlm.model = vlm.model.merge_and_unload()
    _write_dir_atomically(out, vlm.save_pretrained, marker="config.json")
    vlm.name_or_path = str(out)
    return out


def base_fingerprint(name_or_path: str) -> dict[str, str | None]:
    """md5 of the base's config.json (volatile keys dropped) and, for small local bases, of its weights."""
    from seed.adapters import _config_dict

    config = _strip_volatile(_config_dict(name_or_path))
    config_md5 = hashlib.md5(json.dumps(config, sort_keys=True).encode()).hexdigest()
    weights_md5 = None
    path = Path(name_or_path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
        if files and sum(p.stat().st_size for p in files) <= WEIGHTS_FINGERPRINT_LIMIT:
            h = hashlib.md5()
            for p in files:
                h.update(p.name.encode() + b"\0" + p.read_bytes())
            weights_md5 = h.hexdigest()
    return {"base_config_md5": config_md5, "base_weights_md5": weights_md5}


def check_adapter_base(adapter_dir: str | Path, base: str) -> None:
    """Refuse an adapter whose recorded base is not ``base``.

    Same base = same hub id or same local folder (and, when seed recorded fingerprints, the same
    config and weights there), or a different folder holding byte-identical small weights (a
    moved copy of the embedded world).
    """
    adapter = Path(adapter_dir)
    recorded = read_json(adapter / "adapter_config.json").get("base_model_name_or_path")
    if not recorded:
        return  # nothing recorded, nothing to compare
    meta = read_json(adapter / METADATA_FILE) if (adapter / METADATA_FILE).is_file() else {}
    fingerprinted = bool(meta.get("base_config_md5"))
    current = base_fingerprint(base) if fingerprinted else {}
    if _canonical(recorded) == _canonical(base):
        changed = [
            part
            for part, key in (("config", "base_config_md5"), ("weights", "base_weights_md5"))
            if meta.get(key) and current.get(key) and meta[key] != current[key]
        ]
        if changed:
            raise SeedError(
                f"adapter {adapter} was trained on {recorded}, but the model there has changed since "
                f"(its {' and '.join(changed)} differ); retrain the adapter or restore that model"
            )
        return
    if meta.get("base_weights_md5") and meta["base_weights_md5"] == current.get("base_weights_md5"):
        return
    raise SeedError(f"adapter {adapter} was trained on base {recorded}, not on {base}; load it with --model {recorded}")


def _canonical(name: str) -> str:
    from seed.adapters import ALIASES

    name = ALIASES.get(name, name)
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name.lower()


def _strip_volatile(config):
    if isinstance(config, dict):
        return {k: _strip_volatile(v) for k, v in config.items() if k not in _VOLATILE_CONFIG_KEYS}
    return config


def _write_dir_atomically(out: Path, write, *, marker: str) -> None:
    """Run ``write(tmp)`` on a fresh sibling folder, then swap it in for ``out``.

    An existing ``out`` is replaced only if it holds ``marker`` (i.e. is a previous export of the
    same kind) or is empty, so an unrelated folder is never deleted.
    """
    if out.exists() and not (out / marker).is_file() and any(out.iterdir()):
        raise SeedError(f"{out} exists and is not a previous export; refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def _model_card(vlm: VisionLanguageModel, config, metadata: dict) -> str:
    base = vlm.name_or_path
    on_hub = not Path(base).is_dir()
    if vlm.family == "internvl2":
        load_base = f"from transformers import AutoModel\n\nbase = AutoModel.from_pretrained({base!r}, trust_remote_code=True)"
    else:
        cls = type(vlm.model.get_base_model()).__name__
        load_base = f"from transformers import {cls}\n\nbase = {cls}.from_pretrained({base!r})"
    rows = [
        ("base model", f"`{base}`"),
        ("LoRA rank / alpha / dropout", f"{config.r} / {config.lora_alpha} / {config.lora_dropout}"),
        ("target modules", f"`{config.target_modules}` (language model attention + MLP; vision tower and projector untouched)"),
    ]
    for key in ("loss", "rounds", "round", "data_hash"):
        if key in metadata:
            rows.append((key.replace("_", " "), f"`{metadata[key]}`"))
    front = ["---", "library_name: peft", *([f"base_model: {base}"] if on_hub else []), "tags:", "- lora", "- seed", "---"]
    return "\n".join(
        [
            *front,
            "",
            "# SEED Hallucination Elimination Adapter",
            "",
            (
                "A LoRA adapter trained by SEED's self-evolving distillation: the base model's own outputs, "
                "with the tokens it identified as hallucinated purged, distilled back into the base. "
                "It changes only the language model. Evaluation results are not recorded here; see the "
                "run's reports. Full training metadata: `seed_metadata.json`."
            ),
            "",
            "| | |",
            "|---|---|",
            *(f"| {k} | {v} |" for k, v in rows),
            "",
            "## Load with plain PEFT",
            "",
            "```python",
            "from peft import PeftModel",
            load_base,
            'model = PeftModel.from_pretrained(base, "path/to/this/folder")',
            "model = model.merge_and_unload()  # optional: no adapter overhead at inference",
            "```",
            "",
            f"With seed: `seed.adapters.load({base!r}, adapter=\"path/to/this/folder\")`.",
            "",
        ]
    )
