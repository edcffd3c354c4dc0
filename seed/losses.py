"""Distillation losses against stored, purified top-K targets (method.md §5).

Every loss compares the student's logits with a *sparse* target: per position the teacher's
top-K token ids and the purified probabilities p̃ over them (zeros where a candidate was
purged; p̃ is 0 outside the support, the "void spaces"). Nothing here builds a dense
``[B, T, V]`` target: the out-of-support part of each sum has a closed form.

Conventions shared by all losses:

- ``student_logits[b, t]`` is the student's distribution for the token stored at position
  ``t`` (the caller shifts logits against labels before calling).
- Logits are upcast to fp32 before any softmax, whatever their dtype; logits of −inf
  (tokens the model can never emit) are allowed.
- ``mask`` is a bool ``[B, T]`` of positions to train on. Targets at masked-out positions
  are never read for their values, so padding there may be anything (e.g. id ``-100``).
- Every loss is called ``loss(student_logits, targets, mask, weights=None, **knobs)`` with
  ``targets`` a :class:`~seed.targets.PurifiedTargets`; :func:`get_loss` binds the knobs.
- Reduction is the weighted mean over masked positions, Σ w·L / Σ w with w = mask·weights;
  an all-masked batch gives 0 (with a gradient graph, so ``backward`` still works).
- Top-K ids within a row must be distinct, except for entries with p̃ = 0: those are
  exactly equivalent to being outside the support, so padding ids may repeat.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from seed.config import DEFAULT_EPS
from seed.errors import SeedError
from seed.targets import PurifiedTargets



def _student_log_probs(student_logits: Tensor) -> Tensor:
    """fp32 log-softmax, with −inf (logits masked to −inf, e.g. padded vocab) clamped to the
    most negative finite float so that 0·log 0 terms stay 0 instead of NaN."""
    return F.log_softmax(student_logits.float(), dim=-1).clamp_min(torch.finfo(torch.float32).min)


def _sparse_parts(student_logits: Tensor, topk_ids: Tensor, topk_probs: Tensor, mask: Tensor):
    """fp32 student log-probs ``[B, T, V]``, their gather at the support ``[B, T, K]`` and p̃.

    Ids and probabilities at masked-out positions are replaced by 0 so padding never
    reaches ``gather`` or a logarithm.
    """
    logq = _student_log_probs(student_logits)
    keep = mask.unsqueeze(-1)
    ids = torch.where(keep, topk_ids, torch.zeros_like(topk_ids))
    p = torch.where(keep, topk_probs.float(), torch.zeros((), dtype=torch.float32, device=topk_probs.device))
    return logq, logq.gather(-1, ids), p


def _weighted_mean(per_position: Tensor, mask: Tensor, weights: Tensor | None) -> Tensor:
    """Σ w·L / Σ w over ``[B, T]`` with w = mask·weights; 0 when nothing is selected."""
    w = mask.float() if weights is None else mask.float() * weights.float()
    per_position = torch.where(mask, per_position, torch.zeros_like(per_position))
    return (per_position * w).sum() / w.sum().clamp_min(torch.finfo(torch.float32).tiny)


def reverse_kl(
    student_logits: Tensor,
    targets: PurifiedTargets,
    mask: Tensor,
    weights: Tensor | None = None,
    *,
    eps: float = DEFAULT_EPS,
    chunk_size: int | None = None,
) -> Tensor:
    """Mode-seeking reverse KL, KL(q ‖ max(p̃, ε)), over the full vocabulary (the default).

    L_t = Σ_y q(y) (log q(y) − log max(p̃(y), ε)), with p̃ = 0 off the support S, computed as
    −H(q) − log ε − Σ_{y∈S} q(y) log(max(p̃(y), ε) / ε): student mass in a void pays log(1/ε).

    The floored target is not normalised, so the minimiser is q ∝ max(p̃, ε), which keeps a
    fraction N·ε / (1 + N·ε) of its mass in the N void tokens. With a 32k vocabulary and
    ε = 1e-4 that is ~76%; hence the default ε = 1e-8 (≈ 0.03%). Choose ε ≪ 1/V.

    Args:
        student_logits: ``[B, T, V]`` any float dtype.
        targets: ``topk_ids`` ``[B, T, K]`` long and ``topk_probs`` ``[B, T, K]`` purified p̃ (zeros allowed).
        mask: ``[B, T]`` bool, positions to train.
        weights: optional ``[B, T]`` per-position weights.
        eps: floor ε > 0 for p̃.
        chunk_size: upcast and reduce this many time steps at a time, recomputing them in the
            backward pass (activation checkpointing): peak memory holds one chunk's fp32
            ``[B, chunk, V]`` instead of the whole ``[B, T, V]`` (7B-scale vocabularies). Same value.

    Returns:
        Scalar fp32 loss.
    """
    if not eps > 0:
        raise SeedError(f"reverse KL needs eps > 0, got {eps}")
    ids, probs = targets.topk_ids, targets.topk_probs
    if chunk_size is None:
        per_position = _reverse_kl_per_position(student_logits, ids, probs, mask, eps)
    else:
        if chunk_size < 1:
            raise SeedError(f"reverse KL chunk size must be at least 1, got {chunk_size}")
        chunks = [
            checkpoint(_reverse_kl_per_position, student_logits[:, t : t + chunk_size], ids[:, t : t + chunk_size],
                       probs[:, t : t + chunk_size], mask[:, t : t + chunk_size], eps, use_reentrant=False)
            for t in range(0, student_logits.shape[1], chunk_size)
        ]  # fmt: skip
        per_position = torch.cat(chunks, dim=1)
    return _weighted_mean(per_position, mask, weights)


def _reverse_kl_per_position(student_logits: Tensor, topk_ids: Tensor, topk_probs: Tensor, mask: Tensor, eps: float) -> Tensor:
    """``[B, T]`` reverse KL of each position (see :func:`reverse_kl`)."""
    logq, logq_support, p = _sparse_parts(student_logits, topk_ids, topk_probs, mask)
    neg_entropy = (logq.exp() * logq).sum(-1)
    log_eps = math.log(eps)
    in_support_gain = (logq_support.exp() * (p.clamp_min(eps).log() - log_eps)).sum(-1)
    return neg_entropy - log_eps - in_support_gain


def forward_kl(student_logits: Tensor, targets: PurifiedTargets, mask: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mass-covering forward KL, KL(p̃ ‖ q) = Σ_{y∈S} p̃(y) (log p̃(y) − log q(y)).

    Terms with p̃ = 0 contribute 0, so voids exert no pull either way.

    Args:
        student_logits: ``[B, T, V]``; targets: ``topk_ids`` ``[B, T, K]`` long, ``topk_probs``
        ``[B, T, K]``; mask: ``[B, T]`` bool; weights: optional ``[B, T]``.

    Returns:
        Scalar fp32 loss.
    """
    _, logq_support, p = _sparse_parts(student_logits, targets.topk_ids, targets.topk_probs, mask)
    per_position = (torch.xlogy(p, p) - p * logq_support).sum(-1)
    return _weighted_mean(per_position, mask, weights)


def generalized_jsd(
    student_logits: Tensor,
    targets: PurifiedTargets,
    mask: Tensor,
    weights: Tensor | None = None,
    *,
    beta: float = 0.5,
    eps: float = DEFAULT_EPS,
) -> Tensor:
    """Generalized Jensen–Shannon divergence (TRL GKD convention).

    With the mixture m = β·p̃ + (1−β)·q:  JSD_β = β·KL(p̃ ‖ m) + (1−β)·KL(q ‖ m).

    ``beta`` ∈ [0, 1] moves the loss from forward-KL-like (β → 0) to reverse-KL-like
    (β → 1); β = 0.5 is the symmetric JSD. JSD_β itself vanishes at both ends, so, as in
    TRL, the endpoints return the normalised limits instead: β = 0 gives
    :func:`forward_kl` (= lim JSD_β/β) and β = 1 gives :func:`reverse_kl` with floor
    ``eps`` (= lim JSD_β/(1−β) up to the floor). ``eps`` is used only at β = 1.

    Args:
        student_logits: ``[B, T, V]``; targets: ``topk_ids``/``topk_probs`` ``[B, T, K]``;
        mask: ``[B, T]`` bool; weights: optional ``[B, T]``; beta: mixture weight of the target.

    Returns:
        Scalar fp32 loss.
    """
    if not 0.0 <= beta <= 1.0:
        raise SeedError(f"generalized JSD needs 0 <= beta <= 1, got {beta}")
    if beta == 0.0:
        return forward_kl(student_logits, targets, mask, weights)
    if beta == 1.0:
        return reverse_kl(student_logits, targets, mask, weights, eps=eps)
    _, logq_s, p = _sparse_parts(student_logits, targets.topk_ids, targets.topk_probs, mask)
    log_b, log_1mb = math.log(beta), math.log1p(-beta)
    logm_s = torch.logaddexp(p.log() + log_b, logq_s + log_1mb)
    kl_target = (torch.xlogy(p, p) - p * logm_s).sum(-1)
    # Off the support m = (1−β)q, so each void token contributes −q·log(1−β); folding that
    # into the support sum leaves the closed form below.
    kl_student = (logq_s.exp() * (logq_s - logm_s + log_1mb)).sum(-1) - log_1mb
    return _weighted_mean(beta * kl_target + (1.0 - beta) * kl_student, mask, weights)


def sft_loss(student_logits: Tensor, targets: PurifiedTargets, mask: Tensor, weights: Tensor | None = None) -> Tensor:
    """Hard-label cross-entropy −log q(y_t) on the repaired tokens (plain SFT baseline).

    Args:
        student_logits: ``[B, T, V]``; targets: ``token_ids`` ``[B, T]`` long (padding may be
        anything where ``mask`` is False); mask: ``[B, T]`` bool; weights: optional ``[B, T]``.

    Returns:
        Scalar fp32 loss.
    """
    logq = _student_log_probs(student_logits)
    ids = torch.where(mask, targets.token_ids, torch.zeros_like(targets.token_ids))
    nll = -logq.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    return _weighted_mean(nll, mask, weights)


def site_weights(flags: Tensor, upweight: float) -> Tensor:
    """Per-position weights: ``upweight`` at hallucination sites, 1 elsewhere.

    Args:
        flags: ``[B, T]`` bool, True at hallucination sites.
        upweight: weight ≥ 0 for the sites (1 = no reweighting).

    Returns:
        ``[B, T]`` fp32 weights.
    """
    if not upweight >= 0:
        raise SeedError(f"site upweight must be >= 0, got {upweight}")
    one = torch.ones((), dtype=torch.float32, device=flags.device)
    return torch.where(flags.bool(), one * upweight, one).expand(flags.shape).contiguous()


LossFn = Callable[..., Tensor]
"""``loss(student_logits, targets: PurifiedTargets, mask, weights=None)``."""

LOSSES: dict[str, LossFn] = {"reverse-kl": reverse_kl, "forward-kl": forward_kl, "jsd": generalized_jsd, "sft": sft_loss}
"""``--loss`` name → loss function (knobs unbound; :func:`get_loss` binds them)."""


def get_loss(name: str, **knobs) -> LossFn:
    """``LOSSES[name]`` with the knobs it takes (``eps``, ``beta``, ``chunk_size``) bound as a
    :func:`functools.partial`; knobs it has no use for are left out. Unknown names are a
    :class:`SeedError` listing the choices."""
    if name not in LOSSES:
        raise SeedError(f"--loss must be one of {', '.join(LOSSES)}, not {name!r}")
    fn = LOSSES[name]
    accepted = inspect.signature(fn).parameters
    return functools.partial(fn, **{k: v for k, v in knobs.items() if k in accepted})
