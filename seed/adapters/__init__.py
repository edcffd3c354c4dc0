"""The model layer: :func:`load` any supported checkpoint as a :class:`VisionLanguageModel`.

    from seed.adapters import load
    vlm = load("llava-1.5", adapter="runs/hea-round2")

Families: LLaVA (``model_type: llava``), native InternVL (``internvl``) and remote-code
InternVL2 (``internvl_chat``, only with ``trust_remote_code=True``), told apart by the
checkpoint's config.json, never by its name.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from seed.adapters.base import VisionLanguageModel, diffusion_noise
from seed.adapters.hea import check_adapter, load_hea, recorded_base
from seed.adapters.hub import ALIASES, family_class, read_config, resolve_model_name
from seed.config import ModelSpec
from seed.errors import SeedError
from seed.io import check_replaceable, reading, resolve_device, safetensors_files, write_dir_atomically

__all__ = ["ALIASES", "ModelSpec", "VisionLanguageModel", "diffusion_noise", "export", "load", "load_spec", "merge_and_export", "resolve_model_name"]

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16"}


def load(
    model: str,
    *,
    adapter: str | None = None,
    device: str = "auto",
    dtype: str | None = None,
    load_in_4bit: bool = False,
    load_in_8bit: bool = False,
    trust_remote_code: bool = False,
) -> VisionLanguageModel:
    """Load a model (alias, hub id or local folder) in eval mode.

    ``dtype`` None picks bfloat16 on GPUs that support it, float16 on other GPUs, float32 on CPU.
    ``load_in_4bit``/``load_in_8bit`` quantise the language model with bitsandbytes (NF4 with
    double quantisation for 4-bit); the vision tower, projector and LM head stay unquantised.
    ``adapter`` is a PEFT adapter folder (e.g. a saved HEA) trained on this same base.
    Weights load from safetensors only; a damaged weights file is refused before loading.
    """
    name = resolve_model_name(model)
    cls = family_class(read_config(name), name, trust_remote_code)
    device = resolve_device(device)
    torch_dtype = _torch_dtype(dtype, device)
    quantization = _quantization_config(load_in_4bit, load_in_8bit, cls.unquantized_modules, device)
    if Path(name).is_dir():
        safetensors_files(name, f"model {name}")
    if adapter is not None:
        check_adapter(adapter, name)  # before the base loads; load_hea checks it again
    with reading(f"model {name}"):
        vlm = cls.from_pretrained(name, device=device, dtype=torch_dtype, quantization_config=quantization)
    if load_in_4bit and device == "cpu":
        _check_cpu_4bit(vlm.model, name)
    if adapter is not None:
        vlm = load_hea(vlm, adapter)
    vlm.model.eval()
    return vlm


def _check_cpu_4bit(model, name: str) -> None:
    """bitsandbytes' CPU 4-bit kernels pack weights in blocks of 64 rows: refuse, in one line, a
    model with a quantised layer of another width rather than fail in its first forward pass."""
    import bitsandbytes as bnb

    for module_name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit) and module.out_features % 64:
            raise SeedError(
                f"model {name}: --load-in-4bit on the CPU needs layer widths that are multiples of 64 "
                f"({module_name} has {module.out_features}); load it unquantised or on a GPU"
            )


def load_spec(spec: ModelSpec) -> VisionLanguageModel:
    """:func:`load` with the arguments a :class:`~seed.config.ModelSpec` holds."""
    if spec.model is None:
        raise SeedError("no model given (--model)")
    return load(spec.model, **{k: v for k, v in dataclasses.asdict(spec).items() if k != "model"})


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
    vlm.adapter = None
    write_dir_atomically(out, vlm.save_pretrained, marker="config.json")
    vlm.name_or_path = str(out)
    return out


def export(
    adapter: str | Path, out: str | Path, *, device: str = "auto", dtype: str | None = None, trust_remote_code: bool = False
) -> Path:
    """Bake a saved HEA into the base model it names (adapter_config.json) and save the merged
    model with its processor to ``out``: a plain transformers checkpoint, no adapter overhead."""
    check_replaceable(out, "config.json")
    config = Path(adapter) / "adapter_config.json"
    if not config.is_file():
        raise SeedError(f"{adapter}: no adapter_config.json there (not a PEFT adapter folder)")
    base = recorded_base(adapter)
    if not base:
        raise SeedError(f"{config} does not name its base model (base_model_name_or_path), nor does {adapter}/seed_metadata.json")
    vlm = load(base, adapter=str(adapter), device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    return merge_and_export(vlm, out)


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
