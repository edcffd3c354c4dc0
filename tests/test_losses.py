import math

import pytest
import torch

from seed.errors import SeedError
from seed.config import LOSSES as LOSS_NAMES
from seed.losses import (
    LOSSES,
    forward_kl,
    generalized_jsd,
    get_loss,
    reverse_kl,
    sft_loss,
    site_weights,
)
from seed.targets import PurifiedTargets


def targets_of(ids, probs, token_ids=None):
    """Targets from top-K ids and probabilities (token ids only matter for SFT)."""
    return PurifiedTargets(ids[..., 0] if token_ids is None else token_ids, ids, probs)

# Two positions over a 3-token vocabulary; the student is q = [0.5, 0.25, 0.25] at both.
Q = [0.5, 0.25, 0.25]
LOGITS = torch.log(torch.tensor([[Q, Q]]))  # [1, 2, 3]
# position 0: support {0, 1}, token 1 purged (p̃ = 0); position 1: support {2, 0}.
IDS = torch.tensor([[[0, 1], [2, 0]]])
PROBS = torch.tensor([[[1.0, 0.0], [0.6, 0.4]]])
MASK = torch.tensor([[True, True]])
EPS = 1e-2

REV_0 = 0.5 * (math.log(0.5) - math.log(1.0)) + 0.25 * (math.log(0.25) - math.log(EPS)) * 2
REV_1 = 0.5 * (math.log(0.5) - math.log(0.4)) + 0.25 * (math.log(0.25) - math.log(EPS)) + 0.25 * (
    math.log(0.25) - math.log(0.6)
)
FWD_0 = 1.0 * math.log(1.0 / 0.5)
FWD_1 = 0.6 * math.log(0.6 / 0.25) + 0.4 * math.log(0.4 / 0.5)


def close(a, b, tol=1e-5):
    return abs(float(torch.as_tensor(a).detach()) - b) < tol


def test_reverse_kl_by_hand_mask_and_weights():
    assert close(reverse_kl(LOGITS, targets_of(IDS, PROBS), MASK, eps=EPS), (REV_0 + REV_1) / 2)
    w = torch.tensor([[1.0, 3.0]])
    assert close(reverse_kl(LOGITS, targets_of(IDS, PROBS), MASK, eps=EPS, weights=w), (REV_0 + 3 * REV_1) / 4)
    only_second = torch.tensor([[False, True]])
    assert close(reverse_kl(LOGITS, targets_of(IDS, PROBS), only_second, eps=EPS), REV_1)


def test_forward_kl_by_hand():
    assert close(forward_kl(LOGITS, targets_of(IDS, PROBS), MASK), (FWD_0 + FWD_1) / 2)
    w = torch.tensor([[2.0, 1.0]])
    assert close(forward_kl(LOGITS, targets_of(IDS, PROBS), MASK, weights=w), (2 * FWD_0 + FWD_1) / 3)


def test_jsd_by_hand_and_endpoints():
    # position 0: p̃ = [1, 0, 0], m = 0.5 p̃ + 0.5 q = [0.75, 0.125, 0.125]
    kl_p = math.log(1.0 / 0.75)
    kl_q = 0.5 * math.log(0.5 / 0.75) + 2 * 0.25 * math.log(0.25 / 0.125)
    got = generalized_jsd(LOGITS, targets_of(IDS, PROBS), torch.tensor([[True, False]]), beta=0.5)
    assert close(got, 0.5 * kl_p + 0.5 * kl_q)
    # β = 0 / 1 are the normalised limits: forward and reverse KL.
    assert close(generalized_jsd(LOGITS, targets_of(IDS, PROBS), MASK, beta=0.0), (FWD_0 + FWD_1) / 2)
    assert close(generalized_jsd(LOGITS, targets_of(IDS, PROBS), MASK, beta=1.0, eps=EPS), (REV_0 + REV_1) / 2)
    small = 1e-4
    assert close(generalized_jsd(LOGITS, targets_of(IDS, PROBS), MASK, beta=small) / small, (FWD_0 + FWD_1) / 2, tol=1e-3)
    with pytest.raises(SeedError):
        generalized_jsd(LOGITS, targets_of(IDS, PROBS), MASK, beta=1.5)


def _dense(probs, ids, V):
    return torch.zeros(*ids.shape[:-1], V).scatter_add(-1, ids, probs)


def test_sparse_forms_match_dense_reference():
    torch.manual_seed(0)
    B, T, V, K = 2, 3, 11, 4
    logits = torch.randn(B, T, V) * 2
    ids = torch.stack([torch.randperm(V)[:K] for _ in range(B * T)]).view(B, T, K)
    probs = torch.rand(B, T, K)
    probs[..., 1] = 0.0  # a purged hole in every row
    probs = probs / probs.sum(-1, keepdim=True)
    mask = torch.tensor([[True, True, False], [True, False, True]])
    q = torch.softmax(logits, -1)
    p = _dense(probs, ids, V)
    eps, beta = 1e-3, 0.3
    rev = (q * (q.log() - p.clamp_min(eps).log())).sum(-1)
    fwd = (torch.xlogy(p, p) - p * q.log()).sum(-1)
    m = beta * p + (1 - beta) * q
    jsd = beta * (torch.xlogy(p, p) - p * m.log()).sum(-1) + (1 - beta) * (q * (q.log() - m.log())).sum(-1)
    for got, ref in [
        (reverse_kl(logits, targets_of(ids, probs), mask, eps=eps), rev),
        (forward_kl(logits, targets_of(ids, probs), mask), fwd),
        (generalized_jsd(logits, targets_of(ids, probs), mask, beta=beta), jsd),
    ]:
        assert close(got, float(ref[mask].mean()))


def test_sft_by_hand():
    targets = targets_of(IDS, PROBS, torch.tensor([[1, 0]]))
    assert close(sft_loss(LOGITS, targets, MASK), (-math.log(0.25) - math.log(0.5)) / 2)
    w = site_weights(torch.tensor([[True, False]]), upweight=3.0)
    assert close(sft_loss(LOGITS, targets, MASK, weights=w), (-3 * math.log(0.25) - math.log(0.5)) / 4)


def test_site_weights():
    w = site_weights(torch.tensor([[True, False, True]]), upweight=2.5)
    assert w.dtype == torch.float32 and w.tolist() == [[2.5, 1.0, 2.5]]
    with pytest.raises(SeedError):
        site_weights(torch.tensor([True]), upweight=-1.0)


def test_masked_positions_may_hold_garbage():
    logits = LOGITS.clone().requires_grad_(True)
    ids = IDS.clone()
    probs = PROBS.clone()
    ids[0, 1] = -100
    probs[0, 1] = float("nan")
    mask = torch.tensor([[True, False]])
    targets = PurifiedTargets(torch.tensor([[1, -100]]), ids, probs)
    for name in LOSSES:
        loss = get_loss(name, eps=EPS)(logits, targets, mask)
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(loss) and torch.isfinite(grad).all(), name
        assert grad[0, 1].abs().max() == 0, name
    assert close(reverse_kl(logits, targets_of(ids, probs), mask, eps=EPS), REV_0)


def test_minus_inf_logits_outside_the_target_stay_finite():
    logits = torch.tensor([[[1.0, 0.5, float("-inf"), float("-inf")]]], requires_grad=True)
    ids = torch.tensor([[[0, 1, 2]]])
    probs = torch.tensor([[[0.6, 0.4, 0.0]]])  # the purged candidate 2 is also impossible for q
    targets = PurifiedTargets(torch.tensor([[0]]), ids, probs)
    for name, fn in LOSSES.items():
        loss = fn(logits, targets, torch.ones(1, 1, dtype=torch.bool))
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(loss) and torch.isfinite(grad).all(), name


def test_all_masked_is_zero_and_differentiable():
    logits = LOGITS.clone().requires_grad_(True)
    loss = reverse_kl(logits, targets_of(IDS, PROBS), torch.zeros(1, 2, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad.abs().sum() == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_logits_are_upcast(dtype):
    torch.manual_seed(1)
    logits = (torch.randn(2, 3, 50) * 8).to(dtype)
    ids = torch.stack([torch.randperm(50)[:5] for _ in range(6)]).view(2, 3, 5)
    probs = torch.softmax(torch.randn(2, 3, 5), -1).to(dtype)
    targets = PurifiedTargets(ids[..., 0], ids, probs)
    mask = torch.ones(2, 3, dtype=torch.bool)
    for name, fn in LOSSES.items():
        low = fn(logits, targets, mask)
        ref = fn(logits.float(), PurifiedTargets(ids[..., 0], ids, probs.float()), mask)
        assert low.dtype == torch.float32, name
        assert torch.isfinite(low) and close(low, float(ref), tol=1e-6), name


def test_losses_share_one_call_signature():
    targets = PurifiedTargets(torch.tensor([[1, 0]]), IDS, PROBS)
    w = torch.ones(1, 2)
    expected = {
        "reverse-kl": (REV_0 + REV_1) / 2,
        "forward-kl": (FWD_0 + FWD_1) / 2,
        "sft": (-math.log(0.25) - math.log(0.5)) / 2,
    }
    for name, value in expected.items():
        assert close(get_loss(name, eps=EPS, beta=0.5)(LOGITS, targets, MASK, w), value), name
    assert torch.isfinite(get_loss("jsd", eps=EPS, beta=0.5)(LOGITS, targets, MASK, w))
    assert get_loss("reverse-kl", eps=EPS, beta=0.5).keywords == {"eps": EPS}  # a named partial: only the knobs it takes
    assert tuple(LOSSES) == LOSS_NAMES  # the config's --loss choices are the losses that exist
    with pytest.raises(SeedError, match="reverse-kl"):
        get_loss("kl")


def test_reverse_kl_optimum_is_the_floored_target_normalised():
    # Documents the ε caveat: the minimiser is q ∝ max(p̃, ε), void mass N·ε/(1 + N·ε).
    V, eps = 8, 0.05
    ids = torch.tensor([[[0, 1, 2]]])
    probs = torch.tensor([[[0.7, 0.0, 0.3]]])
    r = _dense(probs, ids, V).clamp_min(eps)
    logits = (r / r.sum()).log().requires_grad_(True)
    reverse_kl(logits, targets_of(ids, probs), torch.ones(1, 1, dtype=torch.bool), eps=eps).backward()
    assert logits.grad.abs().max() < 1e-6
    voids = 6  # ids 1 and 3..7
    assert close((r / r.sum())[0, 0, [1, 3, 4, 5, 6, 7]].sum(), voids * eps / (1 + voids * eps))


def _hole_mass_after_descent(loss_fn, steps=5, lr=0.5):
    # The teacher's mode (token 1) was purged: p̃ = [0.7, 0, 0.3] over {0, 1, 2}, V = 6.
    ids = torch.tensor([[[0, 1, 2]]])
    probs = torch.tensor([[[0.7, 0.0, 0.3]]])
    mask = torch.ones(1, 1, dtype=torch.bool)
    logits = torch.tensor([[[1.0, 3.0, 0.5, -1.0, -1.0, -1.0]]], requires_grad=True)
    opt = torch.optim.SGD([logits], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(logits, targets_of(ids, probs), mask).backward()
        opt.step()
    return float(torch.softmax(logits.detach(), -1)[0, 0, 1])


def test_reverse_kl_empties_the_hole_faster_than_forward_kl():
    start = float(torch.softmax(torch.tensor([1.0, 3.0, 0.5, -1.0, -1.0, -1.0]), -1)[1])
    rev = _hole_mass_after_descent(reverse_kl)
    fwd = _hole_mass_after_descent(forward_kl)
    # measured: start 0.78, reverse 0.011, forward 0.30 after 5 steps
    assert start > 0.7
    assert rev < 0.05 and fwd > 0.2, (rev, fwd)
    assert fwd - rev > 0.2, (rev, fwd)


@pytest.mark.parametrize("chunk_size", [1, 2, 5])
def test_chunked_reverse_kl_equals_the_whole(chunk_size):
    torch.manual_seed(3)
    logits = (torch.randn(2, 5, 40) * 4).bfloat16().requires_grad_(True)
    ids = torch.stack([torch.randperm(40)[:6] for _ in range(10)]).view(2, 5, 6)
    probs = torch.softmax(torch.randn(2, 5, 6), -1)
    probs[..., -1] = 0.0  # a purged candidate
    mask = torch.tensor([[True, True, True, False, True], [True, False, True, True, True]])
    weights = torch.rand(2, 5) + 0.5
    whole = reverse_kl(logits, targets_of(ids, probs), mask, weights, eps=1e-6)
    (grad_whole,) = torch.autograd.grad(whole, logits)
    chunked = reverse_kl(logits, targets_of(ids, probs), mask, weights, eps=1e-6, chunk_size=chunk_size)
    (grad_chunked,) = torch.autograd.grad(chunked, logits)
    assert torch.allclose(whole, chunked, atol=1e-6)
    assert torch.allclose(grad_whole.float(), grad_chunked.float(), atol=1e-6)
    with pytest.raises(SeedError):
        reverse_kl(logits, targets_of(ids, probs), mask, chunk_size=0)
