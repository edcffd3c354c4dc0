"""The distillation trainer on fake purified shards written by a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from seed.adapters import load
from seed.config import DistillConfig, HEAConfig
from seed.distill import distill
from seed.errors import SeedError
from seed.losses import LOSSES

PROMPTS = ["describe the image .", "is there a dog in the image ?", "describe the image .", "is there a cup in the image ?"]
RESPONSES = ["a cup with a spoon .", "no", "a red car and a blue truck .", "yes"]
K = 4


def write_fake_shards(vlm, images, out: Path, extra_positions: int = 2) -> Path:
    """What purify writes, built from ``vlm``'s own teacher-forced distributions: the top-K of each
    position with the candidate ranked second purged wherever the emitted token is not top-1."""
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for i, image in enumerate(images * 2):
        names.append(f"img{i}.png")
        image.save(out / names[-1])
    with torch.no_grad():
        logits, ids, mask = vlm.response_logits(images * 2, PROMPTS, RESPONSES)
    probs = logits.softmax(-1)
    top = probs.topk(K, dim=-1)
    # The stored token always leads the support; the rest are the teacher's next-best candidates.
    topk_ids = torch.cat([ids[..., None], top.indices[..., : K - 1]], dim=-1)
    topk_ids[..., 1:] = torch.where(topk_ids[..., 1:] == ids[..., None], (topk_ids[..., 1:] + 1) % logits.shape[-1], topk_ids[..., 1:])
    flags = torch.zeros(topk_ids.shape, dtype=torch.bool)
    flags[..., 2] = True
    p = torch.tensor([0.7, 0.2, 0.0, 0.1]).expand(topk_ids.shape).clone()
    sites = torch.zeros(ids.shape, dtype=torch.bool)
    sites[:, 0] = True
    n = ids.shape[0]
    pad = lambda x, value: torch.nn.functional.pad(x, (0, 0, 0, extra_positions) if x.dim() == 3 else (0, extra_positions), value=value)
    tensors = {
        "item": torch.arange(n, dtype=torch.int64),
        "token_ids": pad(ids, 0),
        "topk_ids": pad(topk_ids, 0),
        "topk_probs": pad(p * mask[..., None], 0.0).float(),
        "flags": pad(flags & mask[..., None], False),
        "sites": pad(sites & mask, False),
        "mask": pad(mask, False),
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, out / "shard-00000.safetensors")
    with (out / "purified.jsonl").open("w") as f:
        for i in range(n):
            record = {"item": i, "image": names[i], "prompt": PROMPTS[i], "response": RESPONSES[i], "repaired": RESPONSES[i], "flagged": []}
            if "is there" in PROMPTS[i]:
                record["category"] = PROMPTS[i].split()[3]
            f.write(json.dumps(record) + "\n")
    return out


def read_fake_shards(out: Path) -> tuple[list[dict], dict[str, torch.Tensor]]:
    records = [json.loads(line) for line in (out / "purified.jsonl").read_text().splitlines()]
    return records, load_file(out / "shard-00000.safetensors")


@pytest.fixture(scope="module")
def shards(tiny_llava_dir, tiny_images, tmp_path_factory) -> Path:
    return write_fake_shards(load(str(tiny_llava_dir), device="cpu"), tiny_images, tmp_path_factory.mktemp("purified"))


def test_distill_lowers_the_loss_and_trains_only_lora(tiny_llava_dir, shards):
    vlm = load(str(tiny_llava_dir), device="cpu")
    before = {k: v.clone() for k, v in vlm.model.state_dict().items()}
    records, tensors = read_fake_shards(shards)
    config = DistillConfig(loss="reverse-kl", hea=HEAConfig(rank=4, alpha=8), lr=1e-2, batch_size=2, grad_accum=2, max_steps=25, captions="all")
    stats = distill(vlm, records, tensors, shards, config)
    assert stats["steps"] == 25 and stats["examples"] == 4 and stats["mixed_precision"] == "no"
    # A random tiny model's frozen LM head bounds how peaked its logits can get, so the floor is
    # high; what matters is a steady fall.
    assert stats["final_loss"] < stats["first_loss"] - 0.5
    after = vlm.model.state_dict()
    changed = {k for k, v in after.items() if "lora_" in k and not torch.equal(v, torch.zeros_like(v)) and "lora_B" in k}
    assert changed, "LoRA B never moved"
    frozen = {k.replace("base_model.model.", "").replace(".base_layer", ""): v for k, v in after.items() if "lora_" not in k}
    assert frozen.keys() == before.keys()
    assert all(torch.equal(frozen[k], before[k]) for k in before)
    assert not vlm.model.training


@pytest.mark.parametrize("loss", list(LOSSES))
def test_every_loss_trains(tiny_llava_dir, shards, loss):
    vlm = load(str(tiny_llava_dir), device="cpu")
    records, tensors = read_fake_shards(shards)
    config = DistillConfig(loss=loss, hea=HEAConfig(rank=2, alpha=4), batch_size=4, max_steps=2, site_weight=3.0)
    stats = distill(vlm, records, tensors, shards, config)
    assert stats["steps"] == 2 and all(torch.isfinite(torch.tensor(stats["losses"])))


def test_captions_trained_on_are_chosen_answers_always(shards):
    from seed.distill import PurifiedDataset

    records, tensors = read_fake_shards(shards)
    records[0] = {**records[0], "repaired": "a cup ."}  # purification changed this caption
    kept = {c: [row["item"] for row in PurifiedDataset(records, tensors, shards, c)] for c in ("all", "repaired", "none")}
    assert kept == {"all": [0, 1, 2, 3], "repaired": [0, 1, 3], "none": [1, 3]}
    row = PurifiedDataset(records, tensors, shards, "none")[1]
    assert row["prompt"] == PROMPTS[3] and torch.equal(row["token_ids"], tensors["token_ids"][3])
    with pytest.raises(SeedError, match="captions must be one of"):
        DistillConfig(captions="some")


def test_a_different_tokenisation_is_refused(tiny_llava_dir, shards):
    vlm = load(str(tiny_llava_dir), device="cpu")
    records, tensors = read_fake_shards(shards)
    tensors["token_ids"][1, 0] = (tensors["token_ids"][1, 0] + 1) % 10
    with pytest.raises(SeedError, match="item 1: .*different tokenizer"):
        distill(vlm, records, tensors, shards, DistillConfig(hea=HEAConfig(rank=2, alpha=4), batch_size=4, max_steps=1))


def test_bad_config_and_missing_items_are_refused(tiny_llava_dir, shards):
    with pytest.raises(SeedError, match="--loss must be one of"):
        DistillConfig(loss="kl")
    records, tensors = read_fake_shards(shards)
    with pytest.raises(SeedError, match="purified.jsonl does not list"):
        distill(load(str(tiny_llava_dir), device="cpu"), records[:2], tensors, shards, DistillConfig(hea=HEAConfig(rank=2, alpha=4), max_steps=1))


def test_log_with_tensorboard_writes_the_loss_and_learning_rate(tiny_llava_dir, shards, tmp_path, monkeypatch, tensorboard_scalars):
    monkeypatch.chdir(tmp_path)
    records, tensors = read_fake_shards(shards)
    config = DistillConfig(hea=HEAConfig(rank=2, alpha=4), batch_size=2, max_steps=2, lr=1e-3, progress=False)
    plain = distill(load(str(tiny_llava_dir), device="cpu"), records, tensors, shards, config)
    assert list(tmp_path.iterdir()) == []  # no tracker asked for: nothing written
    logged = DistillConfig(**{**config.__dict__, "log_with": "tensorboard", "logging_dir": str(tmp_path / "tb")})
    stats = distill(load(str(tiny_llava_dir), device="cpu"), records, tensors, shards, logged, run_name="round-1")
    assert stats["losses"] == plain["losses"]  # logging changes nothing it logs
    scalars = tensorboard_scalars(tmp_path / "tb" / "round-1")
    assert [step for step, _ in scalars["train/loss"]] == [1, 2]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx(stats["losses"], rel=1e-6)
    assert [v for _, v in scalars["train/lr"]] == pytest.approx([1e-3, 1e-3])


def test_log_with_refuses_an_unknown_or_missing_tracker(monkeypatch):
    import accelerate.utils

    from seed.tracking import check_tracker

    with pytest.raises(SeedError, match="--log-with must be tensorboard or wandb"):
        DistillConfig(log_with="mlflow")
    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    with pytest.raises(SeedError, match=r"needs the wandb package: pip install 'seed-vlm\[wandb\]'"):
        check_tracker("wandb")
