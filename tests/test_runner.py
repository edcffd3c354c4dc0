"""The shared model-running loop: fast yes/no path vs generate, POPE/CHAIR commands end to end.

Everything runs on a tiny random LLaVA built here, whose head is steered so that it answers
"Yes" or "No" and stops for most questions and says "yes" (not a settled candidate) for some.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from seed.config import Decoding, PopeConfig
from seed.decoding import ContrastiveDecoding
from seed.errors import SeedError
from seed.evaluation import pope
from seed.evaluation import runner
from seed.evaluation import yes_no
from seed.io import LazyImages, open_image
from seed.prompts import CAPTION_PROMPT, object_question

WORDS = (
    "USER : ASSISTANT Yes No yes no . , ? Is there a an in the image Answer question using single word or phrase "
    "Please this with one describe detail dog car cup kite spoon vase knife fork"
).split()
OBJECTS = ["dog", "car", "cup", "kite", "spoon", "vase"]
N_IMAGES = 6


def _steer(vlm, images, prompts) -> None:
    """Yes/No first (by the sign of the main direction of the last hidden state), "yes" for the
    fifth of questions furthest along the second direction, and EOS after Yes/No."""
    model, tok = vlm.model, vlm.tokenizer
    ids = {w: tok.convert_tokens_to_ids(w) for w in ("Yes", "No", "yes", tok.eos_token)}
    head, embed = model.lm_head.weight, model.get_input_embeddings().weight
    generator = torch.Generator().manual_seed(0)
    u = torch.randn(head.shape[1], generator=generator)
    u /= u.norm()
    with torch.no_grad():
        head.mul_(0.05)
        embed[ids["Yes"]] = embed[ids["No"]] = 3 * u
        head[ids[tok.eos_token]] = 8 * u
        seen = {}
        hook = model.lm_head.register_forward_hook(lambda m, i, o: seen.setdefault("h", i[0][:, -1]))
        model(**vlm.encode(images, prompts), logits_to_keep=1)
        hook.remove()
        H = seen["h"]
        mu = H.mean(0)
        v = torch.linalg.svd(H - mu, full_matrices=False).Vh
        z1, z2 = (H - mu) @ v[0], (H - mu) @ v[1]
        s1, s2 = z1.std(), z2.std()
        lower = (z2 / s2 - (z1 / s1).abs()).sort().values
        cut = float(lower[-len(lower) // 5 - 1] + lower[-len(lower) // 5]) / 2  # between two data points
        offset = mu / mu.norm() ** 2 * 4  # ≈ +4 on every row: these beat the damped rest
        head[ids["Yes"]] = v[0] / s1 + offset
        head[ids["No"]] = -v[0] / s1 + offset
        head[ids["yes"]] = v[1] / s2 + offset - cut * mu / mu.norm() ** 2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny steered LLaVA, its images, POPE questions and COCO annotations, laid out as a world."""
    from seed.adapters import load
    from seed.world import scenes
    from seed.world.model import TinyLlavaConfig, build_model, build_processor
    from seed.world.vocab import CLASS_NAMES

    root = tmp_path_factory.mktemp("runner")
    model_dir, images_dir = root / "model", root / "test" / "images"
    images_dir.mkdir(parents=True)
    cfg = TinyLlavaConfig(image_size=32, patch_size=8, vision_hidden=32, vision_layers=1, vision_heads=2,
                          text_hidden=32, text_layers=2, text_heads=2, text_intermediate=64)  # fmt: skip
    torch.manual_seed(0)
    processor = build_processor(WORDS, cfg)
    model = build_model(processor, cfg).eval()

    rng = np.random.default_rng(0)
    questions, coco_images, annotations = [], [], []
    for i in range(1, N_IMAGES + 1):
        scene = scenes.draw_scene(rng, 32)
        name = f"test_{i:06d}.png"
        scene.image.save(images_dir / name)
        coco_images.append({"id": i, "file_name": name, "width": 32, "height": 32})
        present = [CLASS_NAMES[(3 * i + j) % len(CLASS_NAMES)] for j in range(4)]  # varied, for build_pope
        for category in present:
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": CLASS_NAMES.index(category) + 1,
                                "bbox": [0, 0, 4, 4], "area": 16, "iscrowd": 0})  # fmt: skip
        for category in OBJECTS:
            label = "yes" if category in present else "no"
            questions.append({"question_id": len(questions) + 1, "image": name, "text": object_question(category), "label": label})
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(CLASS_NAMES)]
    instances = root / "test" / "annotations" / "instances.json"
    instances.parent.mkdir(parents=True)
    instances.write_text(json.dumps({"images": coco_images, "annotations": annotations, "categories": categories}))
    for split in pope.SPLITS:
        pope.write_questions(root / "test" / "pope" / f"{split}.jsonl", questions)

    from seed.adapters.llava import LlavaVLM

    vlm = LlavaVLM(model, processor, processor.tokenizer, name_or_path="tiny", device="cpu", dtype=torch.float32)
    images = LazyImages(images_dir, [q["image"] for q in questions])
    _steer(vlm, list(images), [pope.pope_prompt(q["text"], "greedy") for q in questions])
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tensors this small only pay for thread hand-offs
    yield {"root": root, "model": model_dir, "images": images_dir, "questions": questions,
           "qfile": root / "test" / "pope" / "random.jsonl", "instances": instances, "vlm": load(str(model_dir), device="cpu")}  # fmt: skip
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tiny) -> list[str]:
    """Greedy answers one question at a time through ``vlm.generate``."""
    vlm, qs = tiny["vlm"], tiny["questions"]
    images = LazyImages(tiny["images"], [q["image"] for q in qs])
    return [vlm.generate([images[i]], [pope.pope_prompt(q["text"], "greedy")], max_new_tokens=8)[0] for i, q in enumerate(qs)]


def _cli(monkeypatch, *args: str) -> int:
    from seed.cli import main

    monkeypatch.setattr(sys, "argv", ["seed", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code or 0


# --------------------------------------------------------------------------- fast path
@pytest.mark.parametrize("parser", pope.PARSERS)
def test_fast_path_equals_one_at_a_time_generate(tiny, reference, parser):
    vlm, qs = tiny["vlm"], tiny["questions"]
    images = LazyImages(tiny["images"], [q["image"] for q in qs])
    prompts = [pope.pope_prompt(q["text"], "greedy") for q in qs]
    fast, settled = yes_no.answer_yes_no(vlm, images, prompts, image_keys=[q["image"] for q in qs], batch_size=8, max_new_tokens=8, period_settles=parser == "official")
    agree = sum(pope.parse_answer(a, parser) == pope.parse_answer(b, parser) for a, b in zip(reference, fast))
    assert agree / len(qs) >= 0.995
    assert fast == reference  # exact text, here
    assert 0 < sum(settled) < len(qs), "both the one-forward answers and the generation fallback must be exercised"
    assert {reference[i] for i, s in enumerate(settled) if s} <= {"Yes", "No"}


def _recorded_chains(monkeypatch, run) -> list:
    """The greedy chains a first pass computes (what ``_settle`` is shown)."""
    chains = []
    settle = yes_no.settle
    with monkeypatch.context() as patch:
        patch.setattr(yes_no, "settle", lambda chain, cands: (chains.append(chain), settle(chain, cands))[1])
        run()
    return chains


@pytest.mark.parametrize("candidates", [("Yes", "No"), ("Yes .", "No ,")])
def test_cached_branches_equal_full_forwards(tiny, monkeypatch, candidates):
    """Two-token candidates too: each branch sees only the prefix, the suffix and itself."""
    monkeypatch.setattr(yes_no, "CANDIDATES", candidates)
    vlm, qs = tiny["vlm"], tiny["questions"][:14]  # the last image is cut: an image with fewer questions
    images = [open_image(tiny["images"] / q["image"]) for q in qs]
    prompts = [pope.pope_prompt(q["text"], "greedy") for q in qs]
    cands = yes_no.answer_candidates(vlm, images[0], prompts[0], period_settles=True)
    assert [len(cands.ids[c]) for c in candidates] == [len(c.split()) for c in candidates]
    keys = [q["image"] for q in qs]
    cached = _recorded_chains(monkeypatch, lambda: yes_no.settle_with_prefix_cache(vlm, images, prompts, keys, cands, 5))
    full = _recorded_chains(monkeypatch, lambda: yes_no.settle_with_full_forwards(vlm, images, prompts, cands, 5))
    assert len(cached) == len(full) == len(qs)
    assert cached == full


def test_cached_path_on_internvl_tiles(tiny_internvl_dir, tiny_images, monkeypatch):
    """Native InternVL: images of different tile counts batch apart; chains equal full forwards."""
    from seed.adapters import load

    monkeypatch.setattr(yes_no, "CANDIDATES", ("yes", "no"))  # its tiny vocabulary is lower case
    vlm = load(str(tiny_internvl_dir), device="cpu")
    images = [tiny_images[0]] * 3 + [tiny_images[1]] * 2
    prompts = [pope.pope_prompt(f"is there a {w} in the image ?", "greedy") for w in ("dog", "cat", "cup", "car", "truck")]
    cands = yes_no.answer_candidates(vlm, images[0], prompts[0], period_settles=False)
    keys = [id(im) for im in images]
    cached = _recorded_chains(monkeypatch, lambda: yes_no.settle_with_prefix_cache(vlm, images, prompts, keys, cands, 4))
    full = _recorded_chains(monkeypatch, lambda: yes_no.settle_with_full_forwards(vlm, images, prompts, cands, 4))
    assert cached == full and len(cached) == 5


def test_settle_rules():
    cands = yes_no.Candidates(
        ids={"Yes": [10], "No": [11]},
        enders={"Yes": {3: [10], 7: [10, 7]}, "No": {3: [11], 7: [11, 7]}},
        texts={(10,): "Yes", (10, 7): "Yes.", (11,): "No", (11, 7): "No."},
    )
    assert yes_no.settle({"Yes": [10, 3], "No": [10, 3]}, cands) == "Yes"
    assert yes_no.settle({"Yes": [11, 3], "No": [11, 7]}, cands) == "No."
    assert yes_no.settle({"Yes": [11, 3], "No": [11, 10]}, cands) is None  # "No Yes ..." must be generated
    assert yes_no.settle({"Yes": [12, 3], "No": [12, 3]}, cands) is None


def test_vcd_null_branch_matches_noised_image_logits(tiny):
    vlm, q = tiny["vlm"], tiny["questions"][:2]
    images = [open_image(tiny["images"] / x["image"]) for x in q]
    prompts = [pope.pope_prompt(x["text"], "greedy") for x in q]
    vcd = ContrastiveDecoding(vlm, images, prompts, alpha=1.0, beta=0.1)
    batch = vlm.encode(images, prompts)
    step = torch.full((2, 1), vlm.tokenizer.convert_tokens_to_ids("Yes"))
    with torch.no_grad():
        scores = vlm.model(**batch, logits_to_keep=1).logits[:, -1]
        vcd(batch["input_ids"], scores)
        first = vcd.null_logits
        vcd(torch.cat([batch["input_ids"], step], 1), scores)
        second = vcd.null_logits
        expected, _, _ = vlm.response_logits(images, prompts, ["Yes", "Yes"], null_image="noise")
    assert torch.allclose(first, expected[:, 0], atol=1e-4)
    assert torch.allclose(second, expected[:, 1], atol=1e-4)
    # alpha = 0, beta = 0 leaves greedy decoding as it is
    plain = runner.generate_answers(vlm, images, prompts, max_new_tokens=4)
    assert runner.generate_answers(vlm, images, prompts, max_new_tokens=4, decoding=Decoding("vcd", 0.0, 0.0)) == plain


# --------------------------------------------------------------------------- commands
def test_cli_runs_a_model_and_writes_output_and_answers(tiny, tmp_path, monkeypatch):
    out = tmp_path / "res.json"
    code = _cli(monkeypatch, "eval", "pope-random", "--model", tiny["model"], "--images", tiny["images"],
                "--questions", tiny["qfile"], "--device", "cpu", "--batch-size", "8", "--output", out)  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "pope-random" and result["metrics"]["n"] == len(tiny["questions"])
    manifest = result["manifest"]
    assert manifest["model"] == str(tiny["model"]) and manifest["protocol"] == "greedy" and manifest["parser"] == "official"
    assert manifest["questions_md5"] == pope.load_questions(tiny["qfile"]).md5 and "transformers" in manifest["versions"]
    answers = [json.loads(line) for line in (tmp_path / "res.answers.jsonl").read_text().splitlines()]
    assert [a["question_id"] for a in answers] == [q["question_id"] for q in tiny["questions"]]
    assert set(answers[0]) == {"question_id", "prompt", "text", "split"} and answers[0]["split"] == "random"
    assert answers[0]["prompt"].endswith("\nAnswer the question using a single word or phrase.")
    assert pope.score(tiny["questions"], answers) == {k: result["metrics"][k] for k in pope.METRIC_KEYS}


def test_cli_without_model_runs_the_world_on_all_splits(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr("seed.world.ensure_world", lambda seed=0: tiny["root"])
    out = tmp_path / "pope.json"
    assert _cli(monkeypatch, "eval", "pope", "--device", "cpu", "--output", out) == 0
    result = json.loads(out.read_text())
    assert set(result["splits"]) == set(pope.SPLITS)
    assert result["metrics"]["f1"] == pytest.approx(sum(m["f1"] for m in result["splits"].values()) / 3)
    assert result["manifest"]["model"] == str((tiny["root"] / "model").resolve())
    for split in pope.SPLITS:
        assert (tmp_path / f"pope.{split}.answers.jsonl").is_file()


def test_cli_builds_questions_from_annotations(tiny, tmp_path, monkeypatch):
    out = tmp_path / "adv.json"
    code = _cli(monkeypatch, "eval", "pope-adversarial", "--model", tiny["model"], "--images", tiny["images"],
                "--annotations", tiny["instances"], "--num-images", "2", "--device", "cpu", "--output", out)  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    built = pope.build_pope(tiny["instances"], "adversarial", num_images=2, seed=0)
    assert result["metrics"]["n"] == len(built) == 12
    pope.write_questions(tmp_path / "built.jsonl", built)
    assert result["manifest"]["questions_md5"] == pope.load_questions(tmp_path / "built.jsonl").md5


def test_corrupt_image_is_one_line_exit_2(tiny, tmp_path, monkeypatch, capsys):
    import shutil

    images = tmp_path / "images"
    shutil.copytree(tiny["images"], images)
    (images / "test_000002.png").write_bytes(b"not a png at all")
    code = _cli(monkeypatch, "eval", "pope-random", "--model", tiny["model"], "--images", images,
                "--questions", tiny["qfile"], "--device", "cpu")  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "test_000002.png" in err
    (images / "test_000002.png").unlink()
    assert _cli(monkeypatch, "eval", "pope-random", "--model", tiny["model"], "--images", images, "--questions", tiny["qfile"]) == 2
    assert "no such image file" in capsys.readouterr().err


def test_sampling_protocol_reports_std_over_seeds(tiny, tmp_path):
    out = tmp_path / "s.json"
    config = PopeConfig(splits=("random",), images=str(tiny["images"]), questions=str(tiny["qfile"]), protocol="sampling", seeds=(1, 2), max_new_tokens=4)
    result = pope.evaluate_pope(tiny["vlm"], config, output=out)
    assert result["manifest"]["seeds"] == [1, 2] and result["manifest"]["protocol"] == "sampling"
    assert set(result["std"]) == {"accuracy", "precision", "recall", "f1", "yes_ratio"}
    assert all(isinstance(v, float) for v in result["std"].values())
    f1s = [run["metrics"]["f1"] for run in result["per_seed"]]
    assert result["metrics"]["f1"] == pytest.approx(sum(f1s) / 2)
    first = (tmp_path / "s.seed1.answers.jsonl").read_text()
    assert first != (tmp_path / "s.seed2.answers.jsonl").read_text()
    assert "Please answer this question with one word." in first
    again, _ = pope.answer_pope(tiny["vlm"], tiny["questions"], tiny["images"], protocol="sampling", seed=1, max_new_tokens=4)
    assert [json.loads(line) for line in first.splitlines()] == [{**a, "split": "random"} for a in again]  # a seed reproduces its answers


def test_cli_refuses_bad_combinations(tiny, monkeypatch, capsys):
    assert _cli(monkeypatch, "eval", "pope-random", "--answers", tiny["qfile"], "--model", tiny["model"]) == 2
    assert "--model" in capsys.readouterr().err
    assert _cli(monkeypatch, "eval", "pope-random", "--model", tiny["model"], "--images", tiny["images"],
                "--protocol", "greedy", "--seeds", "1,2") == 2  # fmt: skip
    assert "--seeds" in capsys.readouterr().err
    assert _cli(monkeypatch, "eval", "pope-random", "--model", tiny["model"], "--images", tiny["images"], "--decoding", "beam") == 2
    assert "--decoding" in capsys.readouterr().err


def test_cli_chair_captions_from_a_model(tiny, tmp_path, monkeypatch):
    out = tmp_path / "chair.json"
    code = _cli(monkeypatch, "eval", "chair", "--model", tiny["model"], "--images", tiny["images"], "--annotations", tiny["instances"],
                "--num-images", "4", "--max-new-tokens", "6", "--device", "cpu", "--output", out)  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    captions = [json.loads(line) for line in (tmp_path / "chair.captions.jsonl").read_text().splitlines()]
    assert len(captions) == result["metrics"]["n"] == 4
    assert {c["prompt"] for c in captions} == {CAPTION_PROMPT}
    assert result["manifest"]["model"] == str(tiny["model"]) and result["manifest"]["captions"]["path"].endswith("chair.captions.jsonl")


def test_a_world_whose_model_does_not_look_is_refused(tiny):
    from seed.world import World, check_world_model

    world = World(tiny["root"], val_split="test")
    config = PopeConfig(splits=("random",), images=str(tiny["images"]), questions=str(tiny["qfile"]))
    f1 = pope.evaluate_pope(tiny["vlm"], config)["metrics"]["f1"]
    assert check_world_model(world, min_f1=f1) == pytest.approx(f1)
    with pytest.raises(SeedError, match=rf"F1 {f1:.2f} < {f1 + 0.01}: it did not learn to answer from the image"):
        check_world_model(world, min_f1=f1 + 0.01)
