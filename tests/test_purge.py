import math

import pytest
import torch

from seed.errors import SeedError
from seed.identify import grounding_contrast, to_unit, uncertainty
from seed.isolate import hallucination_sites, isolate
from seed.purge import PurgeProcessor, contrastive_purge, effective_flags, purge, repair_tokens


def test_grounding_contrast_by_hand():
    p_image = torch.tensor([[0.6, 0.3, 0.1]])
    p_null = torch.tensor([[0.2, 0.5, 0.3]])
    ids = torch.tensor([[0, 1]])
    expected = [math.log(0.6) - math.log(0.2), math.log(0.3) - math.log(0.5)]
    g = grounding_contrast(p_image.log(), p_null.log(), ids)
    assert torch.allclose(g, torch.tensor([expected]), atol=1e-6)
    # raw logits (shifted by arbitrary constants) give the same contrast
    g_logits = grounding_contrast(p_image.log() + 4.0, p_null.log() - 2.0, ids)
    assert torch.allclose(g_logits, g, atol=1e-6)
    # already-gathered log-probs, half precision in
    gathered = grounding_contrast(p_image.log()[:, :2].half(), p_null.log()[:, :2].half())
    assert gathered.dtype == torch.float32 and torch.allclose(gathered, g, atol=1e-2)


def test_uncertainty_and_to_unit():
    assert math.isclose(float(uncertainty(torch.tensor(math.log(0.25)))), -math.log(0.25), rel_tol=1e-6)
    h = to_unit(torch.tensor([-1.0, 0.0, 2.0]), offset=0.0, scale=2.0)
    assert torch.allclose(h, torch.tensor([1 / (1 + math.exp(0.5)), 0.5, 1 / (1 + math.exp(-1.0))]))
    assert ((h >= 0) & (h <= 1)).all()
    with pytest.raises(SeedError):
        to_unit(torch.zeros(1), scale=0.0)


def test_isolate_flags_the_candidates_that_would_name_a_flagged_object(tiny_llava_dir):
    from transformers import AutoTokenizer

    from seed.isolate import SurfaceBans
    from seed.lexicon import ObjectLexicon

    tok = AutoTokenizer.from_pretrained(tiny_llava_dir)
    bans = SurfaceBans(tok, ObjectLexicon.default(), ["dog", "cup"])
    dog, cup, red = tok.convert_tokens_to_ids(["dog", "cup", "red"])
    top = torch.tensor([[dog, cup, red], [cup, red, dog]])
    assert isolate(top, tok("a dog").input_ids, {"dog"}, bans).tolist() == [[True, False, False], [False, False, True]]
    assert isolate(top, tok("a dog").input_ids, {"dog", "cup"}, bans, answer=red).tolist() == [[True, True, True]] * 2
    assert not isolate(top, tok("a dog").input_ids, set(), bans).any()


def test_hallucination_sites():
    topk = torch.tensor([[[5, 7, 9], [5, 7, 9], [5, 7, 9]]])
    flagged = torch.tensor([[[False, True, False]] * 3])
    emitted = torch.tensor([[7, 5, 4]])  # flagged / unflagged candidate / outside the top-K
    assert hallucination_sites(topk, flagged, emitted).tolist() == [[True, False, False]]


def test_purge_zeroes_exactly_the_flagged_and_renormalises():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])  # raw top-K mass, sums to 1
    flagged = torch.tensor([[False, True, False, True]])
    out = purge(probs, flagged)
    kept = 0.5 + 0.15
    assert torch.allclose(out, torch.tensor([[0.5 / kept, 0.0, 0.15 / kept, 0.0]]))
    assert (out[flagged] == 0).all() and (out[~flagged] > 0).all()
    # top-K probabilities that do not sum to 1 are renormalised over the support too
    out = purge(torch.tensor([0.4, 0.2, 0.1]), torch.tensor([False, False, True]))
    assert torch.allclose(out, torch.tensor([0.4 / 0.6, 0.2 / 0.6, 0.0]))


def test_purge_all_flagged_keeps_the_original():
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.6, 0.4, 0.0], [0.6, 0.3, 0.1]])
    flagged = torch.tensor([[True, True, True], [True, True, False], [True, False, False]])
    out = purge(probs, flagged)
    # rows 0 and 1 have no positive unflagged mass left: unchanged and unflagged
    assert torch.allclose(out[0], probs[0]) and torch.allclose(out[1], probs[1])
    assert torch.allclose(out[2], torch.tensor([0.0, 0.75, 0.25]))
    assert effective_flags(probs, flagged).tolist() == [[False] * 3, [False] * 3, [True, False, False]]


def test_repair_replaces_site_tokens_with_purified_argmax():
    topk = torch.tensor([[[11, 12, 13], [21, 22, 23]]])
    probs = torch.tensor([[[0.6, 0.3, 0.1], [0.7, 0.2, 0.1]]])
    flagged = torch.tensor([[[True, False, False], [False, False, True]]])
    emitted = torch.tensor([[11, 21]])
    p_tilde = purge(probs, flagged)
    sites = hallucination_sites(topk, flagged, emitted)
    assert sites.tolist() == [[True, False]]
    assert repair_tokens(emitted, topk, p_tilde, sites).tolist() == [[12, 21]]
    # one decoding step: [B] ids, [B, K] candidates
    assert repair_tokens(emitted[0, :1], topk[0, :1], p_tilde[0, :1], sites[0, :1]).tolist() == [12]


def test_contrastive_purge_by_hand():
    p = [0.5, 0.3, 0.15, 0.05]
    p_null = [0.5, 0.1, 0.2, 0.2]
    z, z_null = torch.tensor([p]).log(), torch.tensor([p_null]).log()
    # β = 0.25: V_t = {y : p(y) ≥ 0.125} = {0, 1, 2}; α = 1: weight ∝ p² / p_null
    out = contrastive_purge(z, z_null, alpha=1.0, beta=0.25)
    w = [p[i] ** 2 / p_null[i] for i in range(3)]
    expected = [x / sum(w) for x in w] + [0.0]
    assert torch.allclose(out, torch.tensor([expected]), atol=1e-6)
    assert out[0, 3] == 0


def test_contrastive_purge_limits_and_shapes():
    torch.manual_seed(0)
    z, z_null = torch.randn(2, 3, 17), torch.randn(2, 3, 17)
    out = contrastive_purge(z, z_null, alpha=0.5, beta=0.1)
    assert out.shape == (2, 3, 17) and torch.allclose(out.sum(-1), torch.ones(2, 3))
    p = torch.softmax(z, -1)
    assert (out[p < 0.1 * p.amax(-1, keepdim=True)] == 0).all()
    assert torch.allclose(contrastive_purge(z, z_null, alpha=0.0, beta=0.0), p, atol=1e-6)
    one_hot = contrastive_purge(z, z_null, alpha=2.0, beta=1.0)
    assert torch.equal(one_hot.argmax(-1), z.argmax(-1)) and torch.allclose(one_hot.amax(-1), torch.ones(2, 3))
    # one bf16 decoding step, [B, V]
    step = contrastive_purge(z[:, 0].bfloat16(), z_null[:, 0].bfloat16(), alpha=1.0, beta=0.1)
    assert step.dtype == torch.float32 and step.shape == (2, 17)
    with pytest.raises(SeedError):
        contrastive_purge(z, z_null, alpha=-1.0, beta=0.1)


def test_purge_processor_bans_flagged_and_repeated_objects(tiny_llava_dir):
    from transformers import AutoTokenizer

    from seed.isolate import SurfaceBans
    from seed.lexicon import ObjectLexicon

    tok = AutoTokenizer.from_pretrained(tiny_llava_dir)
    dog, cup, a = tok.convert_tokens_to_ids(["dog", "cup", "a"])
    bans = SurfaceBans(tok, ObjectLexicon.default(), ["dog", "cup"])
    V = len(tok)
    proc = PurgeProcessor([{3}, set()], [{"cup"}, set()], bans)
    prompt = torch.tensor([[1, 2], [1, 2]])
    scores = proc(prompt, torch.zeros(2, V))
    assert torch.isinf(scores[0, [3, cup]]).all() and torch.isfinite(scores[0]).sum() == V - 2 and torch.isfinite(scores[1]).all()
    # row 1 has generated "dog": it may not come again; the prompt never counts
    scores = proc(torch.tensor([[1, 2, a, a], [1, 2, a, dog]]), torch.zeros(2, V))
    assert torch.isinf(scores[1, dog]) and torch.isfinite(scores[1, cup]) and torch.isfinite(scores[0, dog])
    # beam search: each item's beams share its row
    beams = PurgeProcessor([set(), set()], [{"cup"}, set()], bans)
    scores = beams(torch.ones(4, 2, dtype=torch.long), torch.zeros(4, V))
    assert torch.isinf(scores[:2, cup]).all() and torch.isfinite(scores[2:]).all()
