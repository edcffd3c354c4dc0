"""The Hallucination Elimination Adapter (HEA): a plain PEFT LoRA on the language model.

A saved HEA is an ordinary PEFT folder (adapter_config.json, adapter_model.safetensors, and
PEFT's own README.md model card, extended with a SEED section) that
``PeftModel.from_pretrained(base, folder)`` loads without seed, plus ``seed_metadata.json``: the
training metadata, library versions and a fingerprint of the base model, which :func:`load_hea`
uses to refuse an adapter trained on a different base. :func:`merge_and_export` bakes it in.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from seed.adapters.base import VisionLanguageModel
from seed.adapters.hub import canonical_name, read_config
from seed.config import HEAConfig
from seed.errors import SeedError
from seed.io import library_versions, md5_file, read_json_object, safetensors_files, write_dir_atomically, write_json

METADATA_FILE = "seed_metadata.json"
WEIGHTS_FILE = "adapter_model.safetensors"
# Bases whose weight files total at most this are fingerprinted by their bytes (the embedded
# world's model is ~2 MB); larger ones by their config only, and by name.
WEIGHTS_FINGERPRINT_LIMIT = 256 * 2**20
_VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path")


def attach_hea(vlm: VisionLanguageModel, config: HEAConfig | None = None) -> VisionLanguageModel:
    """Wrap ``vlm.model`` in a LoRA on the language model's projections; everything else frozen.

    If ``vlm`` already carries an adapter of the same rank and alpha (``load(..., adapter=...)``),
    that adapter is made trainable instead, so a round can continue from the previous one.
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    config = config or HEAConfig()
    if isinstance(vlm.model, PeftModel):
        loaded = vlm.model.peft_config[vlm.model.active_adapter]
        if (loaded.r, loaded.lora_alpha) != (config.rank, config.alpha):
            raise SeedError(
                f"the loaded adapter has rank {loaded.r}, alpha {loaded.lora_alpha}, not {config.rank}, {config.alpha}; "
                "pass the same values or merge it first"
            )
        for name, param in vlm.model.named_parameters():
            param.requires_grad = "lora_" in name
        return vlm
    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=config.target_modules or vlm.lora_target_modules(),
        bias="none",
    )
    vlm.model = get_peft_model(vlm.model, lora)
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
        vlm.model.save_pretrained(tmp)  # PEFT writes its model card, README.md, which we extend
        _extend_model_card(tmp / "README.md", vlm, config, metadata)
        write_json(tmp / METADATA_FILE, record)

    write_dir_atomically(out, write, marker="adapter_config.json")
    vlm.adapter = str(out)
    return out


def load_hea(vlm: VisionLanguageModel, adapter_dir: str | Path) -> VisionLanguageModel:
    """Put the adapter in ``adapter_dir`` on ``vlm`` (inference mode), after checking its base."""
    from peft import PeftModel

    adapter = Path(adapter_dir).expanduser()
    if isinstance(vlm.model, PeftModel):
        raise SeedError("this model already carries an adapter; load the base model to put another on it")
    check_adapter(adapter, vlm.name_or_path)
    try:
        vlm.model = PeftModel.from_pretrained(vlm.model, str(adapter))
    except (ValueError, KeyError, RuntimeError) as e:
        raise SeedError(f"adapter {adapter}: does not fit {vlm.name_or_path} ({str(e).strip().splitlines()[0]})") from None
    vlm.adapter = str(adapter_dir)
    return vlm


def base_fingerprint(name_or_path: str, weights: bool = True) -> dict[str, str | None]:
    """md5 of the base's config.json (volatile keys dropped) and, for small local bases (unless
    ``weights`` is false), of its weights."""
    config_md5 = _md5_json(_strip_volatile(read_config(name_or_path)))
    weights_md5 = None
    path = Path(name_or_path)
    if weights and path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
        if files and sum(p.stat().st_size for p in files) <= WEIGHTS_FINGERPRINT_LIMIT:
            h = hashlib.md5()
            for p in files:
                h.update(p.name.encode() + b"\0" + p.read_bytes())
            weights_md5 = h.hexdigest()
    return {"base_config_md5": config_md5, "base_weights_md5": weights_md5}


def check_adapter(adapter_dir: str | Path, base: str) -> None:
    """Refuse, before anything loads, a folder that is not a PEFT adapter with safetensors weights
    that open, or whose recorded base is not ``base`` (:func:`check_adapter_base`)."""
    adapter = Path(adapter_dir).expanduser()
    if not (adapter / "adapter_config.json").is_file():
        raise SeedError(f"adapter {adapter}: no adapter_config.json there (not a PEFT adapter folder)")
    if adapter / WEIGHTS_FILE not in safetensors_files(adapter, f"adapter {adapter}"):
        raise SeedError(f"adapter {adapter}: no {WEIGHTS_FILE} there (seed loads adapter weights from safetensors only)")
    check_adapter_base(adapter, base)


def recorded_base(adapter_dir: str | Path) -> str | None:
    """The base model an adapter names: adapter_config.json's ``base_model_name_or_path``, else
    the ``base_model`` of seed's metadata; refused when the two name different models."""
    adapter = Path(adapter_dir)
    named = read_json_object(adapter / "adapter_config.json").get("base_model_name_or_path")
    ours = _metadata(adapter).get("base_model")
    if named and ours and canonical_name(named) != canonical_name(ours):
        raise SeedError(f"adapter {adapter}: adapter_config.json names base {named}, but {METADATA_FILE} names {ours}")
    return named or ours


def check_adapter_base(adapter_dir: str | Path, base: str) -> None:
    """Refuse an adapter whose recorded base (:func:`recorded_base`) is not ``base``.

    Same base = same hub id or same local folder (and, when seed recorded fingerprints, the same
    config and weights there), or a different folder holding byte-identical small weights (a
    moved copy of the embedded world).
    """
    adapter = Path(adapter_dir)
    recorded = recorded_base(adapter)
    if not recorded:
        return  # nothing recorded, nothing to compare
    meta = _metadata(adapter)
    fingerprinted = bool(meta.get("base_config_md5"))
    current = base_fingerprint(base) if fingerprinted else {}
    if canonical_name(recorded) == canonical_name(base):
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


def checkpoint_identity(base: str, adapter: str | Path | None = None) -> dict:
    """What a model's outputs depend on, by content rather than by path (for run fingerprints): the
    base's config md5 and, for small local bases, weights md5 (its name where the weights are not
    hashed), and the adapter's config and weights md5 (None without an adapter)."""
    fingerprint = base_fingerprint(base)
    model = {"config_md5": fingerprint["base_config_md5"], "weights_md5": fingerprint["base_weights_md5"]}
    if model["weights_md5"] is None:
        model = {"name": canonical_name(base), **model}
    if adapter is None:
        return {"model": model, "adapter": None}
    folder = Path(adapter)
    config = {k: v for k, v in read_json_object(folder / "adapter_config.json").items() if k != "base_model_name_or_path"}
    weights = md5_file(folder / WEIGHTS_FILE) if (folder / WEIGHTS_FILE).is_file() else None
    return {"model": model, "adapter": {"config_md5": _md5_json(config), "weights_md5": weights}}


def model_identity(vlm: VisionLanguageModel) -> dict:
    """:func:`checkpoint_identity` of a loaded model, with the dtype and quantisation it runs in."""
    from peft import PeftModel

    if isinstance(vlm.model, PeftModel) and vlm.adapter is None:
        raise SeedError("this model carries an adapter that is not saved; save it (save_hea) so that what it produces can name it")
    identity = checkpoint_identity(vlm.name_or_path, vlm.adapter)
    base = vlm.model.get_base_model() if isinstance(vlm.model, PeftModel) else vlm.model
    bits = next((b for b in ("4bit", "8bit") if getattr(base, f"is_loaded_in_{b}", False)), None)
    identity["model"].update(dtype=str(vlm.dtype).removeprefix("torch."), quantization=bits)
    return identity


def _metadata(adapter: Path) -> dict:
    return read_json_object(adapter / METADATA_FILE) if (adapter / METADATA_FILE).is_file() else {}


def _md5_json(value) -> str:
    return hashlib.md5(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _strip_volatile(config):
    if isinstance(config, dict):
        return {k: _strip_volatile(v) for k, v in config.items() if k not in _VOLATILE_CONFIG_KEYS}
    return config


def _extend_model_card(path: Path, vlm: VisionLanguageModel, config, metadata: dict) -> None:
    """Add the ``seed`` tag and, at the top, a SEED section (what the adapter is, how to load it) to PEFT's card."""
    from huggingface_hub import ModelCard

    card = ModelCard.load(path) if path.is_file() else ModelCard("---\nlibrary_name: peft\n---\n")
    card.data.tags = list(dict.fromkeys([*(card.data.tags or []), "lora", "seed"]))
    base = vlm.name_or_path
    rows = [
        ("base model", f"`{base}`"),
        ("LoRA rank / alpha / dropout", f"{config.r} / {config.lora_alpha} / {config.lora_dropout}"),
        ("target modules", f"`{config.target_modules}` (language model attention + MLP; vision tower and projector untouched)"),
    ]
    rows += [(key.replace("_", " "), f"`{metadata[key]}`") for key in ("loss", "rounds", "round", "data_hash") if key in metadata]
    load_base = vlm.loading_code(base, type(vlm.model.get_base_model()).__name__)
    section = [
        "## SEED Hallucination Elimination Adapter",
        "",
        "A LoRA adapter trained by SEED's self-evolving distillation: the base model's own outputs, with the "
        "tokens it identified as hallucinated purged, distilled back into the base. It changes only the "
        "language model. Evaluation results are not recorded here; see the run's reports. Full training "
        "metadata: `seed_metadata.json`.",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in rows),
        "",
        "### Load with plain PEFT",
        "",
        "```python",
        "from peft import PeftModel",
        load_base,
        'model = PeftModel.from_pretrained(base, "path/to/this/folder")',
        "model = model.merge_and_unload()  # optional: no adapter overhead at inference",
        "```",
        "",
        f'With seed: `seed.adapters.load({base!r}, adapter="path/to/this/folder")`.',
    ]
    card.text = "\n" + "\n".join(section) + "\n\n" + card.text.lstrip()  # ours first, PEFT's template after
    card.save(path)
