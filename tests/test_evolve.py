"""The self-evolution recipe: resume, best-round selection and early stopping, with cheap fakes
for the model, purification, distillation and evaluation (and one slow run on the world)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import seed.evolve as evolve
from seed.errors import SeedError
from seed.config import DistillConfig, HEAConfig, ModelSpec


class Killed(Exception):
    pass


class Fakes:
    """Records what the recipe asked for; ``scores[round] = (adversarial F1, yes-ratio[, caption recall])``."""

    def __init__(self, scores: dict[int, tuple[float, ...]], kill_at_round: int | None = None, val: dict[int, tuple[float, ...]] | None = None):
        self.scores, self.kill_at_round, self.val = scores, kill_at_round, val
        self.loaded_adapters: list[str | None] = []
        self.purified: list[int] = []
        self.evaluated: list[int] = []
        self.run_names: list[str] = []

    def install(self, monkeypatch, data: evolve.Datasets, identity: str = "model-a") -> None:
        monkeypatch.setattr(evolve, "resolve_datasets", lambda spec, config: (spec, data))
        monkeypatch.setattr(evolve, "run_fingerprint", lambda spec, data: {"identity": {"model": {"weights_md5": identity}}, "data": {}})
        monkeypatch.setattr(evolve, "purification_fits", lambda *args: False)
        monkeypatch.setattr(evolve, "load_spec", lambda spec: self.loaded_adapters.append(spec.adapter) or object())
        monkeypatch.setattr(evolve, "purify", self.purify)
        monkeypatch.setattr(evolve, "load_shards", lambda out: ([{"item": 0, "response": "a", "repaired": "b"}], {}))
        monkeypatch.setattr(evolve, "distill", self.distill)
        monkeypatch.setattr(evolve, "save_hea", self.save_hea)
        monkeypatch.setattr(evolve, "evaluate", self.evaluate)

    @staticmethod
    def round_of(path: Path) -> int:
        return int(next(p for p in Path(path).parts[::-1] if p.startswith("round-")).removeprefix("round-"))

    def purify(self, vlm, *, images, annotations, out, adapter, config):
        self.purified.append(self.round_of(out))
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "purified.jsonl").write_text("{}\n")
        return Path(out)

    def distill(self, vlm, records, tensors, images, config, run_name="distill"):
        self.run_names.append(run_name)
        if self.kill_at_round is not None and self.purified[-1] == self.kill_at_round:
            raise Killed()
        return {"config": {}, "losses": [1.0, 0.5], "first_loss": 1.0, "final_loss": 0.5, "steps": 2}

    def save_hea(self, vlm, out, metadata):
        Path(out).mkdir(parents=True)
        (Path(out) / "adapter_config.json").write_text(json.dumps({"round": metadata["round"]}))
        return Path(out)

    def evaluate(self, vlm, data, out_dir, **options):
        r = self.round_of(out_dir)
        on_val = Path(out_dir).name == "val"
        self.evaluated += [] if on_val else [r]
        f1, yes, recall = (*(self.val if on_val else self.scores)[r], 0.8)[:3]
        metrics = {"accuracy": f1, "precision": f1, "recall": f1, "f1": f1, "yes_ratio": yes}
        chair = {"chair_i": 0.2, "chair_s": 0.5, "recall": recall, "mean_length": 10.0}
        return {"pope": {s: metrics for s in ("random", "popular", "adversarial")}, "pope_mean_f1": f1, "chair": chair}


@pytest.fixture
def data(tmp_path) -> evolve.Datasets:
    return evolve.Datasets(tmp_path / "purify", None, tmp_path / "heldout", tmp_path / "heldout.json", None)


def kept_round(out: Path) -> int:
    return json.loads((out / "adapter" / "adapter_config.json").read_text())["round"]


def test_a_killed_run_resumes_at_the_missing_round(monkeypatch, data, tmp_path):
    out = tmp_path / "run"
    scores = {0: (0.80, 0.5), 1: (0.84, 0.5), 2: (0.86, 0.52), 3: (0.85, 0.5)}
    first = Fakes(scores, kill_at_round=2)
    first.install(monkeypatch, data)
    with pytest.raises(Killed):
        evolve.evolve(out=out, config=evolve.EvolveConfig(rounds=3))
    history = json.loads((out / "history.json").read_text())
    assert [e["round"] for e in history["rounds"]] == [0, 1] and kept_round(out) == 1
    assert (out / "round-2" / "purified").is_dir()  # half-done: no history entry

    second = Fakes(scores)
    second.install(monkeypatch, data)
    history = evolve.evolve(out=out, config=evolve.EvolveConfig(rounds=3))
    assert second.purified == [2, 3] and second.evaluated == [2, 3]
    # Round 2 continues round 1's adapter, round 3 round 2's.
    assert second.loaded_adapters == [str(out / "round-1" / "adapter"), str(out / "round-2" / "adapter")]
    assert [e["round"] for e in history["rounds"]] == [0, 1, 2, 3]
    assert history["best_round"] == 2 and kept_round(out) == 2 and history["stopped"] is None

    third = Fakes(scores)
    third.install(monkeypatch, data)
    evolve.evolve(out=out, config=evolve.EvolveConfig(rounds=3))
    assert third.purified == [] and third.evaluated == []


def test_stop_when_the_yes_ratio_leaves_the_window(monkeypatch, data, tmp_path):
    out = tmp_path / "run"
    fakes = Fakes({0: (0.80, 0.55), 1: (0.83, 0.50), 2: (0.90, 0.35), 3: (0.95, 0.30)})
    fakes.install(monkeypatch, data)
    history = evolve.evolve(out=out, config=evolve.EvolveConfig(rounds=3))
    assert fakes.purified == [1, 2]
    assert "yes-ratio 0.350 moved away" in history["stopped"]
    # The higher F1 of round 2 comes from answering "no": round 1 is kept.
    assert history["best_round"] == 1 and kept_round(out) == 1


def test_stop_when_captions_lose_objects(monkeypatch, data, tmp_path):
    # Round 2 has the best F1 but names fewer than 90 % of the objects the base named.
    fakes = Fakes({0: (0.80, 0.5, 0.80), 1: (0.84, 0.5, 0.75), 2: (0.86, 0.5, 0.70), 3: (0.90, 0.5, 0.80)})
    fakes.install(monkeypatch, data)
    history = evolve.evolve(out=tmp_path / "run", config=evolve.EvolveConfig(rounds=3))
    assert fakes.purified == [1, 2] and "recall fell below 90% of the base's (round 2)" in history["stopped"]
    assert history["best_round"] == 1 and kept_round(tmp_path / "run") == 1
    fakes = Fakes({0: (0.80, 0.5, 0.80), 1: (0.84, 0.5, 0.75), 2: (0.86, 0.5, 0.70)})
    fakes.install(monkeypatch, data)
    history = evolve.evolve(out=tmp_path / "run2", config=evolve.EvolveConfig(rounds=2, min_recall=0.85))
    assert history["best_round"] == 2 and history["stopped"] is None


def test_stop_when_f1_stops_improving(monkeypatch, data, tmp_path):
    fakes = Fakes({0: (0.80, 0.5), 1: (0.84, 0.5), 2: (0.83, 0.5), 3: (0.90, 0.5)})
    fakes.install(monkeypatch, data)
    history = evolve.evolve(out=tmp_path / "run", config=evolve.EvolveConfig(rounds=3))
    assert fakes.purified == [1, 2] and "has not improved on round 1" in history["stopped"]
    assert history["best_round"] == 1
    fakes = Fakes({0: (0.80, 0.5), 1: (0.84, 0.5), 2: (0.83, 0.5), 3: (0.90, 0.5)})
    fakes.install(monkeypatch, data)
    history = evolve.evolve(out=tmp_path / "run2", config=evolve.EvolveConfig(rounds=3, patience=2))
    assert fakes.purified == [1, 2, 3] and history["best_round"] == 3


def test_rounds_are_kept_by_the_validation_set_and_reported_on_the_test_set(monkeypatch, tmp_path):
    data = evolve.Datasets(tmp_path / "purify", None, tmp_path / "test", tmp_path / "test.json", None, tmp_path / "val", tmp_path / "val.json")
    # The test split would pick round 2; validation picks round 1 and stops at round 2's fall.
    fakes = Fakes({0: (0.80, 0.5), 1: (0.82, 0.5), 2: (0.86, 0.5), 3: (0.90, 0.5)}, val={0: (0.80, 0.5), 1: (0.85, 0.5), 2: (0.83, 0.5), 3: (0.9, 0.5)})
    fakes.install(monkeypatch, data)
    history = evolve.evolve(out=tmp_path / "run", config=evolve.EvolveConfig(rounds=3))
    assert fakes.purified == [1, 2] and history["best_round"] == 1 and "has not improved on round 1" in history["stopped"]
    assert [e["eval"]["pope"]["adversarial"]["f1"] for e in history["rounds"]] == [0.80, 0.82, 0.86]  # reported: test
    assert [e["val"]["pope"]["adversarial"]["f1"] for e in history["rounds"]] == [0.80, 0.85, 0.83]
    last = Fakes(fakes.scores)
    last.install(monkeypatch, dataclasses.replace(data, val_images=None, val_annotations=None))
    history = evolve.evolve(out=tmp_path / "last", config=evolve.EvolveConfig(rounds=3, select="last"))
    assert last.purified == [1, 2, 3] and history["best_round"] == 3 and "val" not in history["rounds"][0]


def test_a_real_model_needs_a_validation_set_or_select_last(tmp_path):
    folder, annotations = tmp_path / "images", tmp_path / "instances.json"
    folder.mkdir()
    annotations.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    config = evolve.EvolveConfig(images=str(folder), eval_images=str(folder), eval_annotations=str(annotations))
    with pytest.raises(SeedError, match="needs a validation set: --val-images DIR and --val-annotations"):
        evolve.resolve_datasets(ModelSpec("some/model"), config)
    spec, data = evolve.resolve_datasets(ModelSpec("some/model"), dataclasses.replace(config, select="last"))
    assert data.validation() is None


def test_a_run_with_other_options_is_refused_but_rounds_may_grow(monkeypatch, data, tmp_path):
    out = tmp_path / "run"
    fakes = Fakes({0: (0.80, 0.5), 1: (0.84, 0.5), 2: (0.86, 0.5)})
    fakes.install(monkeypatch, data)
    evolve.evolve(out=out, config=evolve.EvolveConfig(rounds=1))
    with pytest.raises(SeedError, match=r"holds a run with other options \(options\.distill\.loss differs\); choose another --out"):
        evolve.evolve(out=out, config=evolve.EvolveConfig(rounds=1, distill=DistillConfig(loss="sft")))
    other_model = Fakes(fakes.scores)
    other_model.install(monkeypatch, data, identity="model-b")
    with pytest.raises(SeedError, match=r"with another model or adapter \(identity\.model\.weights_md5 differs\)"):
        evolve.evolve(out=out, config=evolve.EvolveConfig(rounds=2))
    fakes.install(monkeypatch, data)
    history = evolve.evolve(ModelSpec(device="cpu"), out=out, config=evolve.EvolveConfig(rounds=2))  # --device changes no result
    assert fakes.purified == [1, 2] and history["best_round"] == 2


def test_purification_and_evaluation_images_never_overlap(tmp_path):
    evolve.check_disjoint(["purify_000001.png"], ["heldout_000001.png"])
    with pytest.raises(SeedError, match="1 purification image"):
        evolve.check_disjoint(["a.png", "b.png"], ["b.png", "c.png"])
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "b.png").write_bytes(b"")
    annotations = tmp_path / "instances.json"
    annotations.write_text(json.dumps({"images": [{"id": 1, "file_name": "b.png"}], "annotations": [], "categories": []}))
    config = evolve.EvolveConfig(images=str(folder), eval_images=str(folder), eval_annotations=str(annotations), select="last")
    with pytest.raises(SeedError, match="also evaluation images"):
        evolve.resolve_datasets(ModelSpec("some/model"), config)
    with pytest.raises(SeedError, match="needs --images"):
        evolve.resolve_datasets(ModelSpec("some/model"), evolve.EvolveConfig(eval_images=str(folder), eval_annotations=str(annotations)))


@pytest.mark.slow
def test_evolve_on_the_world(tmp_path):
    """One real round on the embedded world: 16 purification images, a 20-image held-out subset."""
    import shutil

    from seed.config import PurifyConfig
    from seed.world import World

    world = World.default()
    images = tmp_path / "purify"
    images.mkdir()
    for f in sorted(world.images(world.purify_split).glob("*.png"))[:16]:
        shutil.copy(f, images)
    heldout = json.loads(world.annotations(world.eval_split).read_text())
    keep = {img["id"] for img in heldout["images"][:40]}
    heldout["images"] = [i for i in heldout["images"] if i["id"] in keep]
    heldout["annotations"] = [a for a in heldout["annotations"] if a["image_id"] in keep]
    (tmp_path / "heldout.json").write_text(json.dumps(heldout))
    config = evolve.EvolveConfig(
        rounds=1, images=str(images), eval_images=str(world.images(world.eval_split)), eval_annotations=str(tmp_path / "heldout.json"),
        pope_images=20, chair_images=20, distill=DistillConfig(max_steps=3, batch_size=8), purify=PurifyConfig(shard_size=8), select="last",
    )  # fmt: skip
    history = evolve.evolve(ModelSpec(device="cpu"), out=tmp_path / "run", config=config)
    assert [e["round"] for e in history["rounds"]] == [0, 1] and history["best_round"] == 1
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
    assert set(history["rounds"][1]["eval"]["pope"]) == {"random", "popular", "adversarial"}
    assert (tmp_path / "run" / "round-1" / "chair.json").is_file()


def test_export_merges_the_adapter_into_its_base(tiny_llava_dir, tmp_path):
    import torch
    from typer.testing import CliRunner

    from seed.adapters import load
    from seed.adapters.hea import attach_hea, save_hea
    from seed.cli import app

    vlm = attach_hea(load(str(tiny_llava_dir), device="cpu"), HEAConfig(rank=2, alpha=4))
    with torch.no_grad():
        for name, param in vlm.model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    save_hea(vlm, tmp_path / "hea", {"loss": "reverse-kl"})
    result = CliRunner().invoke(app, ["export", "--merge", str(tmp_path / "hea"), str(tmp_path / "merged"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    merged = load(str(tmp_path / "merged"), device="cpu")
    batch = vlm.encode(None, ["describe the image ."], ["a cup ."])
    batch.pop("response_mask")
    with torch.no_grad():
        assert torch.allclose(merged.model(**batch).logits, vlm.model(**batch).logits, atol=1e-4)
    refused = CliRunner().invoke(app, ["export", str(tmp_path / "x")])
    assert refused.exit_code != 0 and "--merge" in str(refused.exception)


def test_log_with_tensorboard_logs_every_round(monkeypatch, data, tmp_path, tensorboard_scalars):
    fakes = Fakes({0: (0.80, 0.5), 1: (0.84, 0.5), 2: (0.86, 0.5)})
    fakes.install(monkeypatch, data)
    plain = evolve.evolve(out=tmp_path / "plain", config=evolve.EvolveConfig(rounds=2))
    assert not (tmp_path / "plain" / "logs").exists()
    config = evolve.EvolveConfig(rounds=2, distill=DistillConfig(log_with="tensorboard"))
    history = evolve.evolve(out=tmp_path / "run", config=config)
    assert history["options"] == plain["options"]  # the tracker is not a result-changing option
    assert fakes.run_names == ["round-1", "round-2"] * 2
    scalars = tensorboard_scalars(tmp_path / "run" / "logs" / "evolve")
    assert scalars["eval/pope/adversarial/f1"] == [(0, pytest.approx(0.80)), (1, pytest.approx(0.84)), (2, pytest.approx(0.86))]
    assert [step for step, _ in scalars["distill/final_loss"]] == [1, 2] and "eval/chair/chair_i" in scalars


def test_a_resumed_round_keeps_its_finished_purification(tiny_llava_dir, monkeypatch, tmp_path):
    """Killed in purification, a round redoes only the missing shards; killed in distillation, it
    resumes from its purification (verified, not redone)."""
    import seed.purify
    from PIL import Image

    from seed.config import IdentifyConfig, PurifyConfig

    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        Image.new("RGB", (32, 32), (60 * i, 90, 200 - 40 * i)).save(images / f"im{i}.png")
    (tmp_path / "heldout.json").write_text("{}")
    data = evolve.Datasets(images, None, tmp_path / "heldout", tmp_path / "heldout.json", None)
    fakes = Fakes({0: (0.80, 0.5), 1: (0.84, 0.5)})
    monkeypatch.setattr(evolve, "resolve_datasets", lambda spec, config: (ModelSpec(str(tiny_llava_dir), device="cpu"), data))
    monkeypatch.setattr(evolve, "evaluate", fakes.evaluate)
    monkeypatch.setattr(evolve, "save_hea", fakes.save_hea)
    real, calls, die = seed.purify.purify_images, [], {"purify_call": 2, "distill": True}

    def purify_images(*args, **kwargs):
        calls.append(1)
        if len(calls) == die["purify_call"]:
            raise Killed()
        return real(*args, **kwargs)

    def distill(*args, **kwargs):
        if die["distill"]:
            raise Killed()
        return {"config": {}, "losses": [1.0], "first_loss": 1.0, "final_loss": 1.0, "steps": 1}

    monkeypatch.setattr(seed.purify, "purify_images", purify_images)
    monkeypatch.setattr(evolve, "distill", distill)
    purify_config = PurifyConfig(IdentifyConfig(questions_per_image=2, categories=("dog", "cup")), shard_size=2, max_new_tokens=4)
    config, out = evolve.EvolveConfig(rounds=1, purify=purify_config), tmp_path / "run"
    purified = out / "round-1" / "purified"
    with pytest.raises(Killed):  # dies purifying the second shard
        evolve.evolve(out=out, config=config)
    assert [p.name for p in purified.glob("*.check.json")] == ["shard-00000.check.json"]
    first_shard = (purified / "shard-00000.safetensors").read_bytes()

    calls.clear()
    die["purify_call"] = None
    with pytest.raises(Killed):  # dies in distillation, after purifying the missing shard only
        evolve.evolve(out=out, config=config)
    assert len(calls) == 1 and (purified / "shard-00000.safetensors").read_bytes() == first_shard
    finished = {p.name: p.read_bytes() for p in purified.iterdir()}
    (out / "round-1" / "pope-random.json").write_text("{}")  # what a killed evaluation would leave

    calls.clear()
    die["distill"] = False
    history = evolve.evolve(out=out, config=config)
    assert calls == [] and [e["round"] for e in history["rounds"]] == [0, 1]
    assert {p.name: p.read_bytes() for p in purified.iterdir()} == finished
    assert not (out / "round-1" / "pope-random.json").exists()
