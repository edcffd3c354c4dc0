"""The model layer: :func:`load` any supported checkpoint as a :class:`VisionLanguageModel`.

    from seed.adapters import load
    vlm = load("llava-1.5", adapter="runs/hea-round2")

Families: LLaVA (``model_type: llava``), native InternVL (``internvl``) and remote-code
InternVL2 (``internvl_chat``, only with ``trust_remote_code=True``), told apart by the
checkpoint's config.json, never by its name.
"""

from __future__ import annotations

from pathlib import Path

from seed.adapters.base import VisionLanguageModel, diffusion_noise
from seed.errors import SeedError

__all__ = ["ALIASES", "VisionLanguageModel", "diffusion_noise", "load", "resolve_model_name"]

ALIASES: dict[str, str] = {
    "llava-1.5": "llava-hf/llava-1.5-7b-hf",
    "llava-1.5-7b": "llava-hf/llava-1.5-7b-hf",
    "llava-1.5-13b": "llava-hf/llava-1.5-13b-hf",
    **{f"internvl2-{size}": f"OpenGVLab/InternVL2-{size.upper()}" for size in ("1b", "2b", "4b", "8b", "26b")},
}

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16"}


def resolve_model_name(model: str | None) -> str:
    """Alias → hub id; a local folder → its absolute path; None → the embedded world's model."""
    if model is None:
        from seed.world import default_model_dir

        return str(Path(default_model_dir()).resolve())
    if model in ALIASES:
        return ALIASES[model]
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if path.is_absolute() or model.startswith((".", "~")) or path.exists() or model.count("/") > 1:
        raise SeedError(f"model {model}: no such directory")
    return model


def load(
    model: str | None = None,
    *,
    adapter: str | None = None,
    device: str = "auto",
    dtype: str | None = None,
    load_in_4bit: bool = False,
    load_in_8bit: bool = False,
    trust_remote_code: bool = False,
) -> VisionLanguageModel:
    """Load a model (alias, hub id or local folder; None = the embedded world's) in eval mode.

    ``dtype`` None picks bfloat16 on GPUs that support it, float16 on other GPUs, float32 on CPU.
    ``load_in_4bit``/``load_in_8bit`` quantise the language model with bitsandbytes (NF4 with
    double quantisation for 4-bit); the vision tower, projector and LM head stay unquantised.
    ``adapter`` is a PEFT adapter folder (e.g. a saved HEA) trained on this same base.
    """
    from seed.io import resolve_device

    name = resolve_model_name(model)
    cls = _family(_config_dict(name), name, trust_remote_code)
    device = resolve_device(device)
    torch_dtype = _torch_dtype(dtype, device)
    quantization = _quantization_config(load_in_4bit, load_in_8bit, cls.unquantized_modules, device)
    try:
        vlm = cls.from_pretrained(name, device=device, dtype=torch_dtype, quantization_config=quantization)
    except OSError as e:
        raise SeedError(f"model {name}: cannot load it ({_first_line(e)})") from None
    if adapter is not None:
        from seed.adapters.hea import load_hea

        vlm = load_hea(vlm, adapter)
    vlm.model.eval()
    return vlm


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _config_dict(name: str) -> dict:
    """The raw config.json (no model class instantiated, no remote code run)."""
    from transformers import PretrainedConfig

    if Path(name).is_dir() and not (Path(name) / "config.json").is_file():
        raise SeedError(f"model {name}: no config.json in that directory")
    try:
        config, _ = PretrainedConfig.get_config_dict(name)
    except (OSError, ValueError) as e:
        raise SeedError(f"model {name}: cannot read its config.json ({_first_line(e)})") from None
    return config


def _family(config: dict, name: str, trust_remote_code: bool) -> type[VisionLanguageModel]:
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


def _torch_dtype(dtype: str | None, device: str):
    import torch

    if dtype is None:
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in DTYPES:
        raise SeedError(f"--dtype must be one of float32, bfloat16, float16, not {dtype!r}")
    return getattr(torch, DTYPES[dtype])


def _quantization_config(load_in_4bit: bool, load_in_8bit: bool, skip_modules, device: str):
    if not (load_in_4bit or load_in_8bit):
        return None
    if load_in_4bit and load_in_8bit:
        raise SeedError("choose one of --load-in-4bit and --load-in-8bit")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise SeedError("--load-in-4bit/--load-in-8bit need bitsandbytes: pip install bitsandbytes") from None
    import torch
    from transformers import BitsAndBytesConfig

    if load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(skip_modules))
    bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float32,
        llm_int8_skip_modules=list(skip_modules),
    )
