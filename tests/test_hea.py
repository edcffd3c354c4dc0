"""The HEA is a plain PEFT LoRA: saved, reloaded, merged and refused like one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from seed.adapters import load, merge_and_export
from seed.adapters.hea import attach_hea, save_hea
from seed.config import HEAConfig
from seed.errors import SeedError

PROMPTS = ["is there a dog in the image ?", "describe the image ."]
RESPONSES = ["no", "a cup with a spoon ."]
METADATA = {"loss": "reverse_kl", "rounds": 2, "data_hash": "abc123"}


def _perturb_lora(model) -> None:
    """LoRA B starts at zero (a no-op adapter); give it weights so that tests can tell it is there."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.5 * torch.randn(param.shape, generator=generator))


@pytest.fixture(scope="module")
def adapter_dir(tiny_llava_dir, tmp_path_factory) -> Path:
    vlm = attach_hea(load(str(tiny_llava_dir), device="cpu"), HEAConfig(rank=4, alpha=8))
    _perturb_lora(vlm.model)
    return save_hea(vlm, tmp_path_factory.mktemp("hea") / "round2", METADATA)


@pytest.fixture(scope="module")
def batch(tiny_llava_dir, tiny_images) -> dict[str, torch.Tensor]:
    return load(str(tiny_llava_dir), device="cpu").encode(tiny_images, PROMPTS, RESPONSES)


def _logits(vlm, batch) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k != "response_mask"}
    with torch.no_grad():
        return vlm.model(**inputs).logits


def test_only_lora_parameters_train(tiny_llava_dir):
    vlm = attach_hea(load(str(tiny_llava_dir), device="cpu"), HEAConfig(rank=4, alpha=8))
    trainable = [name for name, p in vlm.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_A" in name or "lora_B" in name for name in trainable)
    wrapped = {name.rsplit(".lora_", 1)[0] for name in trainable}
    layers = vlm.model.config.text_config.num_hidden_layers
    assert len(wrapped) == 7 * layers
    assert all(".language_model.layers." in name for name in wrapped)
    assert not any("vision_tower" in name or "multi_modal_projector" in name for name in wrapped)


def test_saved_folder_is_a_peft_adapter_with_metadata(adapter_dir, tiny_llava_dir):
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert config["base_model_name_or_path"] == str(tiny_llava_dir.resolve())
    weights = load_file(adapter_dir / "adapter_model.safetensors")
    assert any("lora_B" in k for k in weights)
    assert all(w.abs().sum() > 0 for k, w in weights.items() if "lora_B" in k)
    meta = json.loads((adapter_dir / "seed_metadata.json").read_text())
    assert meta["loss"] == "reverse_kl" and meta["rounds"] == 2
    assert meta["base_config_md5"] and meta["base_weights_md5"] and "peft" in meta["library_versions"]
    card = (adapter_dir / "README.md").read_text()
    assert str(tiny_llava_dir.resolve()) in card and "PeftModel.from_pretrained" in card and "reverse_kl" in card
    leftovers = [p.name for p in adapter_dir.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_plain_peft_gives_seeds_logits(adapter_dir, tiny_llava_dir, tiny_images, batch, tmp_path):
    """Load base + adapter with transformers + PEFT only (seed never imported) and compare."""
    torch.save({k: v for k, v in batch.items() if k != "response_mask"}, tmp_path / "batch.pt")
    plain = (
        "import sys, torch\n"
        "from transformers import LlavaForConditionalGeneration\n"
        "from peft import PeftModel\n"
        "base_dir, adapter_dir, work = sys.argv[1:]\n"
        "model = PeftModel.from_pretrained(LlavaForConditionalGeneration.from_pretrained(base_dir), adapter_dir).eval()\n"
        "batch = torch.load(work + '/batch.pt')\n"
        "with torch.no_grad():\n"
        "    torch.save(model(**batch).logits, work + '/logits.pt')\n"
        "assert not any(m == 'seed' or m.startswith('seed.') for m in sys.modules)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run(
        [sys.executable, "-c", plain, str(tiny_llava_dir), str(adapter_dir), str(tmp_path)],
        check=True, env=env, cwd=tmp_path, capture_output=True,
    )  # fmt: skip
    expected = torch.load(tmp_path / "logits.pt")
    vlm = load(str(tiny_llava_dir), adapter=str(adapter_dir), device="cpu")
    with_adapter = _logits(vlm, batch)
    torch.testing.assert_close(with_adapter, expected)
    with torch.no_grad():
        response_logits, _, mask = vlm.response_logits(tiny_images, PROMPTS, RESPONSES)
    for b in range(len(PROMPTS)):
        positions = batch["response_mask"][b].nonzero().squeeze(1)
        torch.testing.assert_close(response_logits[b, mask[b]], expected[b, positions - 1])
    base_only = _logits(load(str(tiny_llava_dir), device="cpu"), batch)
    assert (with_adapter - base_only).abs().max() > 1e-2, "the adapter should change the logits"


def test_merged_export_loads_with_plain_transformers(adapter_dir, tiny_llava_dir, tiny_images, batch, tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    vlm = load(str(tiny_llava_dir), adapter=str(adapter_dir), device="cpu")
    expected = _logits(vlm, batch)
    generated = vlm.generate(tiny_images, PROMPTS, max_new_tokens=5)
    out = merge_and_export(vlm, tmp_path / "merged")
    merged = LlavaForConditionalGeneration.from_pretrained(out).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    inputs = {k: v for k, v in batch.items() if k != "response_mask"}
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, expected, rtol=1e-4, atol=1e-4)
    assert AutoProcessor.from_pretrained(out).image_processor is not None
    torch.testing.assert_close(_logits(vlm, batch), expected, rtol=1e-4, atol=1e-4)  # vlm now holds the merged model
    assert vlm.name_or_path == str(out) and vlm.generate(tiny_images, PROMPTS, max_new_tokens=5) == generated


def test_adapter_for_another_base_is_refused(adapter_dir, tiny_llava_dir, tmp_path):
    from conftest import build_tiny_llava

    other = build_tiny_llava(tmp_path / "other", seed=1)
    with pytest.raises(SeedError) as e:
        load(str(other), adapter=str(adapter_dir), device="cpu")
    assert str(tiny_llava_dir.resolve()) in str(e.value) and str(other.resolve()) in str(e.value)


def test_the_base_check_reads_seeds_metadata_when_peft_names_no_base(adapter_dir, tiny_llava_dir, tmp_path):
    from conftest import build_tiny_llava

    adapter = Path(shutil.copytree(adapter_dir, tmp_path / "hea"))
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": None}))
    other = build_tiny_llava(tmp_path / "other", seed=1)
    with pytest.raises(SeedError, match=f"trained on base {tiny_llava_dir.resolve()}, not on {other.resolve()}"):
        load(str(other), adapter=str(adapter), device="cpu")
    assert load(str(tiny_llava_dir), adapter=str(adapter), device="cpu").model.peft_config
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(other.resolve())}))
    with pytest.raises(SeedError, match="adapter_config.json names base .*other, but seed_metadata.json names .*tiny-llava"):
        load(str(other), adapter=str(adapter), device="cpu")


def test_a_moved_copy_of_the_base_is_accepted(adapter_dir, tiny_llava_dir, tmp_path):
    moved = Path(shutil.copytree(tiny_llava_dir, tmp_path / "moved"))
    assert load(str(moved), adapter=str(adapter_dir), device="cpu").model.peft_config


def test_a_changed_base_at_the_same_path_is_refused(tiny_llava_dir, tmp_path):
    from conftest import build_tiny_llava

    base = Path(shutil.copytree(tiny_llava_dir, tmp_path / "base"))
    vlm = attach_hea(load(str(base), device="cpu"), HEAConfig(rank=4, alpha=8))
    adapter = save_hea(vlm, tmp_path / "hea", METADATA)
    build_tiny_llava(base, seed=2)  # retrained in place
    with pytest.raises(SeedError, match="changed"):
        load(str(base), adapter=str(adapter), device="cpu")


def test_loaded_adapter_can_continue_training(adapter_dir, tiny_llava_dir):
    vlm = load(str(tiny_llava_dir), adapter=str(adapter_dir), device="cpu")
    attach_hea(vlm, HEAConfig(rank=4, alpha=8))
    trainable = [name for name, p in vlm.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    with pytest.raises(SeedError, match="rank"):
        attach_hea(vlm, HEAConfig(rank=16, alpha=32))


def test_saving_never_clobbers_an_unrelated_folder(tiny_llava_dir, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    vlm = attach_hea(load(str(tiny_llava_dir), device="cpu"), HEAConfig(rank=4, alpha=8))
    with pytest.raises(SeedError, match="refusing"):
        save_hea(vlm, precious, METADATA)
    assert (precious / "notes.txt").read_text() == "keep me"
    save_hea(vlm, tmp_path / "hea", METADATA)
    save_hea(vlm, tmp_path / "hea", {**METADATA, "rounds": 3})  # a previous adapter is replaced whole
    assert json.loads((tmp_path / "hea" / "seed_metadata.json").read_text())["rounds"] == 3


def test_missing_adapter_folder(tiny_llava_dir, tmp_path):
    with pytest.raises(SeedError, match="adapter_config.json"):
        load(str(tiny_llava_dir), adapter=str(tmp_path), device="cpu")


def test_qlora_trains_only_the_adapter_on_a_4bit_base(tiny_llava_dir, batch):
    pytest.importorskip("bitsandbytes")
    vlm = attach_hea(load(str(tiny_llava_dir), device="cpu", load_in_4bit=True), HEAConfig(rank=4, alpha=8))
    vlm.model.train()
    inputs = {k: v for k, v in batch.items() if k != "response_mask"}
    vlm.model(**inputs).logits.float().logsumexp(-1).mean().backward()
    grads = {name: p.grad for name, p in vlm.model.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in name for name in grads)
    with pytest.raises(SeedError, match="4/8-bit"):
        merge_and_export(vlm, Path("/nonexistent/never-written"))


def test_internvl_adapter_round_trip_and_merge(tiny_internvl_dir, tiny_images, tmp_path):
    from transformers import InternVLForConditionalGeneration

    vlm = attach_hea(load(str(tiny_internvl_dir), device="cpu"), HEAConfig(rank=4, alpha=8))
    wrapped = {name.rsplit(".lora_", 1)[0] for name, p in vlm.model.named_parameters() if p.requires_grad}
    assert len(wrapped) == 7 * vlm.model.config.text_config.num_hidden_layers
    assert all(".language_model.layers." in name for name in wrapped)
    _perturb_lora(vlm.model)
    vlm.model.eval()
    batch = vlm.encode(tiny_images, PROMPTS, RESPONSES)
    expected = _logits(vlm, batch)
    adapter = save_hea(vlm, tmp_path / "hea", METADATA)
    again = load(str(tiny_internvl_dir), adapter=str(adapter), device="cpu")
    torch.testing.assert_close(_logits(again, batch), expected)
    out = merge_and_export(again, tmp_path / "merged")
    inputs = {k: v for k, v in batch.items() if k != "response_mask"}
    with torch.no_grad():
        plain = InternVLForConditionalGeneration.from_pretrained(out).eval()(**inputs).logits
    torch.testing.assert_close(plain, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(_logits(load(str(out), device="cpu"), batch), expected, rtol=1e-4, atol=1e-4)
