"""Purification: the identify helpers on hand-made tensors, and a kill-and-resume run."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from seed.errors import SeedError
from seed.identify import combine, consistency_scores, find_mentions, lens_scores, shared_evidence_scores
from seed.lexicon import ObjectLexicon
from seed.config import IdentifyConfig, PurifyConfig
from seed.isolate import SurfaceBans
from seed.purify import purify
from seed.targets import load_shards, shard_records


def test_shared_evidence_flags_the_object_whose_evidence_is_anothers():
    # knife seen strongly in cell 0; "fork" draws its (weaker) evidence from the same cell;
    # the cup has evidence of its own in cell 3.
    margin = torch.tensor([4.0, 1.0, 3.0])
    evidence = torch.tensor([[3.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.1], [0.0, 0.0, 0.0, 2.0]])
    scores = shared_evidence_scores(margin, evidence)
    assert scores[1] > 0.85 and scores[0] == 0 and scores[2] < 0.1


def test_lens_reads_each_image_token_as_a_word():
    class Fake:  # three words; image 0 shows word 1 outright, image 1 shows nothing like a word
        table = torch.eye(3)

        def word_embeddings(self):
            return self.table

        def image_states(self, images, layers):
            assert layers == (0,)
            return [torch.tensor([[[0.0, 5.0, 0.0], [1.0, 1.0, 1.0]]]), torch.ones(1, 2, 3)]

    scores = lens_scores(Fake(), [None, None], {"dog": [(1,)], "cup": [(0,), (2,)], "hot dog": [(0, 1)]}, temperature=0.1)
    p_dog = torch.tensor([0.0, 10.0, 0.0]).softmax(-1)[1].item()
    assert scores[0]["dog"] == pytest.approx(1 - p_dog) and scores[0]["dog"] < 1e-3
    # cup is spelt by two tokens: their probabilities add, at the token that shows it most.
    p_cup = max(2 * torch.tensor([0.0, 10.0, 0.0]).softmax(-1)[0].item(), 2 / 3)
    assert scores[0]["cup"] == pytest.approx(1 - p_cup)
    # a name spelt only in pieces: the geometric mean of each piece's best image token
    p_first = torch.tensor([0.0, 10.0, 0.0]).softmax(-1)[0].item()
    assert scores[0]["hot dog"] == pytest.approx(1 - (max(p_first, 1 / 3) * (1 - 2 * p_first)) ** 0.5)
    assert scores[1] == pytest.approx({"dog": 2 / 3, "cup": 1 / 3, "hot dog": 2 / 3})


def test_mentions_map_to_their_tokens(tiny_llava_dir):
    from seed.adapters import load

    vlm = load(str(tiny_llava_dir), device="cpu")
    ids = vlm.tokenizer(" a dog and a red cup.", add_special_tokens=False).input_ids
    mentions = find_mentions(vlm.tokenizer, ids, ObjectLexicon.default())
    tokens = vlm.tokenizer.convert_ids_to_tokens(ids)
    assert [(m.category, tokens[m.start : m.end]) for m in mentions] == [("dog", ["dog"]), ("cup", ["cup"])]
    bans = SurfaceBans(vlm.tokenizer, ObjectLexicon.default(), ["dog", "cup"])
    assert bans.category_ids()["dog"] == [(vlm.tokenizer.convert_tokens_to_ids("dog"),)]


def test_unknown_signal_is_refused():
    with pytest.raises(SeedError, match="--identify takes"):
        IdentifyConfig(signals=("vibes",))


def _images(folder, n):
    folder.mkdir()
    for i in range(n):
        Image.new("RGB", (32, 32), (40 * i % 255, 90, 200 - 20 * i)).save(folder / f"im{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def test_kill_then_resume_gives_the_same_shards(tiny_llava_dir, tmp_path, monkeypatch):
    import seed.purify
    from seed.adapters import load

    vlm = load(str(tiny_llava_dir), device="cpu")
    images = _images(tmp_path / "images", 5)
    config = PurifyConfig(IdentifyConfig(questions_per_image=2, categories=("dog", "cup", "car")), shard_size=2, max_new_tokens=6)
    full = purify(vlm, images=images, out=tmp_path / "full", config=config)

    real, calls = seed.purify.purify_images, []

    def dies_on_second_shard(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(seed.purify, "purify_images", dies_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        purify(vlm, images=images, out=tmp_path / "killed", config=config)
    assert not (tmp_path / "killed" / "purified.jsonl").exists()
    with pytest.raises(SeedError, match="not a finished purification"):
        load_shards(tmp_path / "killed")
    monkeypatch.setattr(seed.purify, "purify_images", real)
    resumed = purify(vlm, images=images, out=tmp_path / "killed", config=config)

    records_a, tensors_a = load_shards(full)
    records_b, tensors_b = load_shards(resumed)
    manifest = json.loads((resumed / "manifest.json").read_text())
    dropped = [n["dropped"] for s in range(3) for n in shard_records(resumed, s)[1] if "dropped" in n]
    assert records_a == records_b and len(records_a) == len(tensors_a["item"]) and manifest["dropped_repairs"] == len(dropped)
    captions = sum("category" not in r for r in records_a + dropped)
    assert captions + len(manifest["cut_captions"]) == 5  # one caption per readable image: stored, dropped or cut
    assert manifest["cut_captions"]  # 6 tokens cut this model's captions: none is taught as finished
    assert tensors_a.keys() == tensors_b.keys()
    for key in tensors_a:
        assert torch.equal(tensors_a[key], tensors_b[key]), key
    assert [k["image"] for k in manifest["skipped"]] == ["broken.png"]  # a corrupt image is skipped and counted
    probs = tensors_a["topk_probs"][tensors_a["mask"]]
    assert torch.allclose(probs.sum(-1), torch.ones(len(probs)), atol=1e-5)
    assert not (tensors_a["topk_probs"] * tensors_a["flags"]).any()  # purged candidates carry no mass


def test_oracle_needs_annotations(tiny_llava_dir, tmp_path):
    with pytest.raises(SeedError, match="needs --annotations"):
        purify(str(tiny_llava_dir), images=_images(tmp_path / "images", 1), out=tmp_path / "o", config=PurifyConfig(IdentifyConfig(signals=("oracle",))), device="cpu")


def test_consistency_is_the_smoothed_share_of_samples_without_the_object():
    samples = [{"dog"}, {"dog", "cup"}, set()]
    h = consistency_scores(samples, 3, ["dog", "cup", "car"])
    assert h == pytest.approx({"dog": 1.5 / 4, "cup": 2.5 / 4, "car": 3.5 / 4})


def test_questions_balance_affirmed_and_flagged_objects():
    from seed.identify import balanced_questions

    scores = {"dog": 0.1, "cup": 0.2, "car": 0.9, "kite": 0.8, "vase": 0.7, "bench": 0.5}
    margins = {"dog": 5.0, "cup": 1.0, "car": -4.0, "kite": 2.0, "vase": -1.0, "bench": 0.0}
    # two affirmed, the less sure first; as many flagged, the one the model most wants to affirm first
    assert balanced_questions(scores, margins, 0.5, 8) == ["cup", "dog", "kite", "vase"]
    assert balanced_questions(scores, margins, 0.5, 2) == ["cup", "kite"]  # at most half of the limit each
    assert balanced_questions({"car": 0.9, "kite": 0.8}, margins, 0.5, 8) == ["kite"]  # nothing affirmed: one "no" still
    # only categories of the pool (a contrast score may name others, e.g. "truck" from a caption)
    assert balanced_questions({**scores, "truck": 0.99}, margins, 0.5, 8) == ["cup", "dog", "kite", "vase"]


def test_combine_adds_log_odds():
    h = combine([{"dog": 0.8, "cup": 0.3}, {"dog": 0.8}])
    assert h["dog"] == pytest.approx(0.8**2 / (0.8**2 + 0.2**2))  # two agreeing experts are surer than one
    assert h["cup"] == pytest.approx(0.3)  # scored by one signal only: passed through
    assert combine([{"dog": 1.0}, {"dog": 0.01}])["dog"] > 0.99  # a hard oracle 1 stays finite and wins


def test_answers_are_purged_on_both_sides(tiny_llava_dir):
    """A "Yes" about a flagged object and a "No" about an affirmed one are both sites, repaired."""
    from seed.adapters import load
    from seed.isolate import answer_token_ids
    from seed.prompts import probe_question
    from seed.purify import Response, purified_targets

    vlm = load(str(tiny_llava_dir), device="cpu")
    image = Image.new("RGB", (32, 32), (120, 30, 30))
    rows = [Response(0, probe_question(c), answer, c) for c, answer in (("cup", "Yes"), ("dog", "No"), ("car", "No"))]
    config = PurifyConfig(top_k=len(vlm.tokenizer))
    bans = SurfaceBans(vlm.tokenizer, ObjectLexicon.default(), ["cup", "dog", "car"])
    out = purified_targets(vlm, [image], rows, [{"cup"}], [{"dog"}], bans, config)
    yes, no = answer_token_ids(vlm)
    sites = out["sites"]
    assert sites.sum(-1).tolist() == [1, 1, 0]  # "car" is neither flagged nor affirmed: left alone
    assert out["token_ids"][0][sites[0]] != yes and out["token_ids"][1][sites[1]] != no
    cup = vlm.tokenizer.convert_tokens_to_ids("cup")  # a flagged object is purged from every response
    assert set(out["topk_ids"][out["flags"]].tolist()) == {yes, no, cup}


def test_every_signal_is_selectable(tiny_llava_dir, tmp_path):
    signals = ("self-probe", "consistency", "lens", "evidence", "contrast", "uncertainty")
    config = PurifyConfig(IdentifyConfig(signals=signals, samples=2, questions_per_image=2, categories=("dog", "cup")), max_new_tokens=6)
    out = purify(str(tiny_llava_dir), images=_images(tmp_path / "images", 2), out=tmp_path / "o", config=config, device="cpu")
    records, _ = load_shards(out)
    assert records and all(0 <= h <= 1 for r in records for h in r["scores"].values())


def test_purified_decoding_bans_what_identification_rejects(tiny_llava_dir):
    import hashlib

    from seed.adapters import load
    from seed.config import Decoding
    from seed.decoding import PurifiedDecoding
    from seed.evaluation.runner import generate_answers
    from seed.prompts import CAPTION_PROMPT, probe_question

    vlm = load(str(tiny_llava_dir), device="cpu")
    image = Image.new("RGB", (32, 32), (10, 200, 10))
    twin = PurifiedDecoding(vlm, PurifyConfig(IdentifyConfig(samples=1, categories=("dog", "cup", "car"))))
    twin.scores[hashlib.md5(image.tobytes()).hexdigest()] = {"dog": 0.9, "cup": 0.1, "car": 0.5}
    proc = twin.processor([image] * 4, [probe_question("dog"), probe_question("cup"), probe_question("car"), CAPTION_PROMPT])
    dog = vlm.tokenizer.convert_tokens_to_ids("dog")
    assert all(dog in proc.surfaces.banned([], flagged) for flagged in proc.flagged)  # the flagged object, everywhere
    assert twin.yes in proc.banned[0] and twin.no not in proc.banned[0]
    assert twin.no in proc.banned[1] and twin.yes not in proc.banned[1]
    assert twin.yes not in proc.banned[2] and twin.no not in proc.banned[2]  # undecided: both answers allowed
    # end to end: identification runs on an unseen image and generation goes through
    texts = generate_answers(vlm, [image, Image.new("RGB", (32, 32))], [probe_question("dog"), CAPTION_PROMPT], max_new_tokens=4, decoding=Decoding("purified"))
    assert len(texts) == 2


def test_a_signal_that_tells_no_category_apart_is_left_out():
    from seed.identify import informative

    assert not informative([{"dog": 0.999, "cup": 0.999}, {"dog": 0.9991, "car": 0.999}])  # e.g. a lens reading nothing
    assert informative([{"dog": 0.2, "cup": 0.9}]) and informative([{"dog": 0.5}])  # one value: nothing to judge


@pytest.mark.parametrize("fixture", ["tiny_llava_dir", "tiny_internvl_dir", "llava15_dir"])
def test_self_probe_reuses_the_image_prefix_and_matches_full_forwards(fixture, request, monkeypatch):
    from seed.adapters import load
    from seed.identify import yes_margin

    vlm = load(str(request.getfixturevalue(fixture)), device="cpu")
    images = [Image.new("RGB", (40 + 20 * i, 48), (60 * i, 120, 200 - 50 * i)) for i in range(3)]
    pairs = [(im, c) for im in images for c in ("dog", "cup", "teddy bear", "car")]
    cached = yes_margin(vlm, [im for im, _ in pairs], [c for _, c in pairs], batch_size=5)
    monkeypatch.setattr(type(vlm), "supports_prefix_cache", property(lambda self: False))
    full = yes_margin(vlm, [im for im, _ in pairs], [c for _, c in pairs], batch_size=5)
    assert torch.allclose(cached, full, atol=1e-4), (cached - full).abs().max()
