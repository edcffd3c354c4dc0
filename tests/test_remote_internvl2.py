"""The remote-code InternVL2 family on a checkpoint that ships its own modelling code
(tests/remote_internvl2.py): loading through transformers' remote-code path, every part of the
model interface, every identification signal, purification, POPE and the HEA."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from subword_models import CAPTIONS, OBJECTS, SHOWN, caption_images

from seed.adapters import load
from seed.config import SIGNALS, IdentifyConfig, PurifyConfig
from seed.errors import SeedError
from seed.prompts import CAPTION_PROMPT



@pytest.fixture(scope="module")
def vlm(internvl2_remote_dir):
    return load(str(internvl2_remote_dir), device="cpu", trust_remote_code=True)


def test_loads_through_the_checkpoints_own_code_only_when_trusted(internvl2_remote_dir, vlm):
    with pytest.raises(SeedError, match="trust-remote-code") as refused:
        load(str(internvl2_remote_dir), device="cpu")
    assert "\n" not in str(refused.value)
    assert json.loads((internvl2_remote_dir / "config.json").read_text())["model_type"] == "internvl_chat"
    assert vlm.family == "internvl2" and type(vlm.model).__module__.startswith("transformers_modules.")
    assert type(vlm.tokenizer).__name__ == "Qwen2Tokenizer" and vlm.eos_token_ids == {vlm.tokenizer.convert_tokens_to_ids("<|im_end|>")}
    assert vlm.tiling() == (448, 4, True)  # read from the checkpoint's config.json
    again = load(str(internvl2_remote_dir), device="cpu", trust_remote_code=True)  # transformers hands out a bare class now
    assert again.eos_token_ids == vlm.eos_token_ids and again.generate(None, ["Hi"], max_new_tokens=3) == vlm.generate(None, ["Hi"], max_new_tokens=3)


def test_encode_tiles_each_image_and_expands_its_context_tokens(vlm):
    wide, square = Image.new("RGB", (896, 448), (9, 99, 9)), Image.new("RGB", (300, 300), (99, 9, 9))
    batch = vlm.encode([wide, square], ["What is this?", "Describe the image."], responses=["A dog.", "A cup."])
    tiles = [3, 1]  # a 2 × 1 grid and its thumbnail; one tile
    assert batch["pixel_values"].shape == (sum(tiles), 3, 448, 448) and batch["image_flags"].tolist() == [[1]] * sum(tiles)
    context = (batch["input_ids"] == vlm.image_token_id).sum(-1).tolist()
    assert context == [n * vlm.model.num_image_token for n in tiles]
    assert (batch["input_ids"] == vlm.tokenizer.convert_tokens_to_ids("<img>")).sum().item() == 2
    response = [vlm.tokenizer.decode(ids[mask]) for ids, mask in zip(batch["input_ids"], batch["response_mask"])]
    assert response == ["A dog.<|im_end|>", "A cup.<|im_end|>"]
    assert batch["attention_mask"][1, 0] == 0  # left padding


@torch.no_grad()
def test_response_logits_match_the_models_forward_under_every_null_image(vlm):
    images = caption_images()[:2]
    prompts, responses = [CAPTION_PROMPT] * 2, [CAPTIONS[0], "A dog."]
    logits, ids, mask = vlm.response_logits(images, prompts, responses)
    batch = vlm.encode(images, prompts, responses=responses)
    full = vlm.model(**{k: v for k, v in batch.items() if k != "response_mask"}).logits
    for b in range(2):
        positions = batch["response_mask"][b].nonzero()[:, 0]
        assert torch.equal(ids[b][mask[b]], batch["input_ids"][b, positions])
        assert torch.allclose(logits[b][mask[b]], full[b, positions - 1], atol=1e-5)
    alone, _, _ = vlm.response_logits(images[1:], prompts[1:], responses[1:])  # left padding changes nothing
    assert torch.allclose(alone[0, : mask[1].sum()], logits[1][mask[1]], atol=1e-4)

    text_only, _, _ = vlm.response_logits(None, prompts, responses)
    for null in ("none", "grey", "noise"):
        nulled, null_ids, null_mask = vlm.response_logits(images, prompts, responses, null_image=null)
        assert torch.equal(null_ids, ids) and torch.equal(null_mask, mask)  # the very same response tokens
        assert not torch.allclose(nulled[mask], logits[mask], atol=1e-3), null
        assert torch.equal(nulled, vlm.response_logits(images, prompts, responses, null_image=null)[0])  # reproducible
    assert torch.allclose(vlm.response_logits(images, prompts, responses, null_image="none")[0], text_only, atol=1e-5)


def test_generate_returns_the_new_tokens_that_teacher_forcing_predicts(vlm):
    images = caption_images()
    texts, finished = vlm.generate(images, [CAPTION_PROMPT] * 3, max_new_tokens=48, return_finished=True)
    assert texts == CAPTIONS and finished == [True] * 3  # the taught captions, and only them
    logits, ids, mask = vlm.response_logits(images, [CAPTION_PROMPT] * 3, texts)
    assert torch.equal(logits.argmax(-1)[mask], ids[mask])  # greedy agrees with the full forward, EOS included
    cut, finished = vlm.generate(images[:1], [CAPTION_PROMPT], max_new_tokens=3, return_finished=True)
    assert finished == [False] and CAPTIONS[0].startswith(cut[0])
    assert vlm.generate(None, ["Is there a dog?"], max_new_tokens=4)  # text only
    sampled = [vlm.generate(images, [CAPTION_PROMPT] * 3, max_new_tokens=8, do_sample=True, temperature=1.5, seed=3) for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_purified_decoding_runs_its_logits_processor_inside_the_remote_generate(vlm):
    from seed.config import Decoding
    from seed.decoding import PurifiedDecoding, decoder
    from seed.lexicon import ObjectLexicon

    twin = PurifiedDecoding(vlm, PurifyConfig(IdentifyConfig(categories=tuple(OBJECTS)), repair_beams=2, max_new_tokens=24))
    images = caption_images()
    for key, shown in zip(twin.identify(images), SHOWN):  # the oracle's verdict, for a check that cannot pass by chance
        twin.scores[key] = {o: float(o not in shown) for o in OBJECTS}
    prompts = [CAPTION_PROMPT] * 3
    texts = vlm.generate(images, prompts, max_new_tokens=24, **twin(images, prompts, False))  # as generate_answers calls it
    named = [{m.category for m in ObjectLexicon.default().find(t)} for t in texts]
    assert all(texts) and not any(n & (set(OBJECTS) - set(shown)) for n, shown in zip(named, SHOWN)), texts  # nothing flagged
    with pytest.raises(SeedError, match="vcd"):
        decoder(vlm, Decoding("vcd"))


@torch.no_grad()
def test_image_states_are_the_projected_tiles(vlm):
    wide = Image.new("RGB", (896, 448), (9, 99, 9))
    states = vlm.image_states([wide, caption_images()[0]])
    assert [s.shape[0] for s in states] == [3 * vlm.model.num_image_token, vlm.model.num_image_token]
    pixel_values = vlm.encode([wide], [""])["pixel_values"]
    assert torch.allclose(states[0], vlm.model.extract_feature(pixel_values).reshape(-1, states[0].shape[-1]), atol=1e-5)
    assert states[0].shape[-1] == vlm.word_embeddings().shape[-1]
    last = vlm.model.language_model.config.num_hidden_layers
    deep = vlm.image_states([caption_images()[0]], layers=(1, last))[0]  # the logit lens reads the remote LM too
    assert deep.shape == (2, *states[1].shape) and vlm.unembed(deep[1], last).shape == (len(deep[1]), vlm.word_embeddings().shape[0])


@pytest.mark.parametrize("signal", SIGNALS)
def test_every_identification_signal_scores_the_remote_family(vlm, signal):
    from seed.identify import identify_images
    from seed.isolate import SurfaceBans
    from seed.lexicon import ObjectLexicon

    lexicon = ObjectLexicon.default()
    config = IdentifyConfig(signals=(signal,), categories=tuple(OBJECTS), samples=1, questions_per_image=2)
    truth = [set(s) for s in SHOWN]
    found = identify_images(vlm, caption_images(), CAPTIONS, config, lexicon, SurfaceBans(vlm.tokenizer, lexicon, OBJECTS), truth, max_new_tokens=24)
    assert found.ignored == []
    values = [h for per_image in found.scores for h in per_image.values()]
    assert values and all(0 <= h <= 1 for h in values) and max(values) - min(values) > 1e-3, found.scores
    if signal == "oracle":
        assert all(found.scores[i][c] < 0.5 for i, shown in enumerate(SHOWN) for c in shown)


def test_purify_with_every_signal_removes_what_it_flags_and_distils(vlm, internvl2_remote_dir, tmp_path):
    from seed.config import DistillConfig, HEAConfig
    from seed.distill import distill
    from seed.lexicon import ObjectLexicon
    from seed.purify import purify
    from seed.targets import load_shards, shard_records

    folder = tmp_path / "images"
    folder.mkdir()
    names = [f"photo_{i}.png" for i in range(3)]
    for name, image in zip(names, caption_images()):
        image.save(folder / name)
    annotations = _annotations(tmp_path / "instances.json", names)
    identify = IdentifyConfig(signals=SIGNALS, categories=tuple(OBJECTS), samples=1, questions_per_image=2)
    config = PurifyConfig(identify, max_new_tokens=32, repair_beams=2, batch_size=8)
    out = purify(vlm, images=folder, out=tmp_path / "purified", annotations=annotations, config=config)
    records, tensors = load_shards(out)
    lexicon = ObjectLexicon.default()
    captions = [r for r in records if "category" not in r]
    manifest = json.loads((out / "manifest.json").read_text())
    dropped = [n["dropped"] for s in range(manifest["shards"]) for n in shard_records(out, s)[1] if "dropped" in n]
    stored_or_not = [r["image"] for r in captions] + manifest["cut_captions"] + [d["image"] for d in dropped if "category" not in d]
    assert sorted(stored_or_not) == names  # a caption is stored, cut by the token limit, or dropped as a failed repair
    assert all(r["flagged"] for r in captions) and (tensors["sites"].any() or manifest["dropped_repairs"])
    for r in captions:
        assert set(r["scores"]) >= set(OBJECTS) and all(0 <= h <= 1 for h in r["scores"].values())
        assert not {m.category for m in lexicon.find(r["repaired"])} & set(r["flagged"]), r
    student = load(str(internvl2_remote_dir), device="cpu", trust_remote_code=True)
    stats = distill(student, records, tensors, folder, DistillConfig(hea=HEAConfig(rank=2, alpha=4), batch_size=4, max_steps=2))
    assert stats["steps"] == 2 and all(torch.isfinite(torch.tensor(stats["losses"])))
    assert student.generate(caption_images()[:1], [CAPTION_PROMPT], max_new_tokens=4)


def test_pope_takes_the_full_forward_path_and_agrees_with_generation(vlm, tmp_path):
    from seed.config import PopeConfig
    from seed.evaluation import pope
    from seed.evaluation.runner import generate_answers

    assert not vlm.supports_prefix_cache
    folder = tmp_path / "images"
    folder.mkdir()
    questions = []
    for i, image in enumerate(caption_images()):
        image.save(folder / f"img_{i}.png")
        for category, label in ((SHOWN[i][0], "yes"), (OBJECTS[(3 * i + 4) % len(OBJECTS)], "no")):
            questions.append({"question_id": len(questions) + 1, "image": f"img_{i}.png", "text": f"Is there a {category} in the image?", "label": label})
    pope.write_questions(tmp_path / "random.jsonl", questions)
    config = PopeConfig(splits=("random",), images=str(folder), questions=str(tmp_path / "random.jsonl"), max_new_tokens=4)
    result = pope.evaluate_pope(vlm, config, output=tmp_path / "pope.json")
    assert set(result["metrics"]) >= {"accuracy", "f1", "yes_ratio"}
    answers = [json.loads(line)["text"] for line in (tmp_path / "pope.answers.jsonl").read_text().splitlines()]
    images = [Image.open(folder / q["image"]) for q in questions]
    generated = generate_answers(vlm, images, [pope.pope_prompt(q["text"], "greedy") for q in questions], max_new_tokens=4)
    assert [a.split(".")[0] for a in answers] == [g.split(".")[0] for g in generated]


def test_hea_attaches_to_the_language_model_saves_loads_and_exports(internvl2_remote_dir, tmp_path):
    from seed.adapters import merge_and_export
    from seed.adapters.hea import attach_hea, save_hea

    vlm = attach_hea(load(str(internvl2_remote_dir), device="cpu", trust_remote_code=True))
    lora = [name for name, _ in vlm.model.named_parameters() if "lora_" in name]
    assert lora and all(".language_model.model.layers." in name for name in lora)
    with torch.no_grad():
        for name, param in vlm.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    images, prompts, responses = caption_images()[:1], [CAPTION_PROMPT], [CAPTIONS[0]]
    with torch.no_grad():
        expected = vlm.response_logits(images, prompts, responses)[0]
    out = save_hea(vlm, tmp_path / "hea", {"loss": "reverse-kl"})
    assert "trust_remote_code=True" in (out / "README.md").read_text()
    again = load(str(internvl2_remote_dir), adapter=str(out), device="cpu", trust_remote_code=True)
    with torch.no_grad():
        assert torch.allclose(again.response_logits(images, prompts, responses)[0], expected, atol=1e-5)
        base = load(str(internvl2_remote_dir), device="cpu", trust_remote_code=True).response_logits(images, prompts, responses)[0]
    assert not torch.allclose(base, expected, atol=1e-3)  # the adapter changes the answer
    assert again.generate(images, prompts, max_new_tokens=6)
    merged = load(str(merge_and_export(again, tmp_path / "merged")), device="cpu", trust_remote_code=True)
    assert (tmp_path / "merged" / "modeling_internvl_chat.py").is_file()  # the code travels with the weights
    with torch.no_grad():
        assert torch.allclose(merged.response_logits(images, prompts, responses)[0], expected, atol=1e-4)


def _annotations(path, names):
    ids = {o: i + 1 for i, o in enumerate(OBJECTS)}
    anns = [{"id": k + 1, "image_id": i + 1, "category_id": ids[o], "bbox": [0, 0, 9, 9], "area": 81, "iscrowd": 0}
            for k, (i, o) in enumerate((i, o) for i in range(len(names)) for o in SHOWN[i])]  # fmt: skip
    images = [{"id": i + 1, "file_name": n, "width": 640, "height": 480} for i, n in enumerate(names)]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": v, "name": k} for k, v in ids.items()]}))
    return path
