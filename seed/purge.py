"""Purge (method.md §4) over plain tensors: p̃ ∝ p · 1[y ∉ H_t], the repair rule and the check
of a repaired text, VCD's contrastive recombination, and purified decoding as a logits processor.

Shapes use ``...`` for any leading batch dims: ``[B, T]`` for a stored response, ``[B]``
for one decoding step. ``K`` is the stored top-K width, ``V`` the vocabulary.
All outputs are fp32 (scores, probabilities) or bool/long (flags, ids).
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Sequence

import torch
from torch import Tensor

from seed.errors import SeedError
from seed.isolate import SurfaceBans


def effective_flags(topk_probs: Tensor, flagged: Tensor) -> Tensor:
    """The flags :func:`purge` actually applies: ``flagged`` with fully flagged rows cleared.

    A row is cleared when no unflagged candidate has positive probability (every candidate
    flagged, or only zero-probability ones left): there is nothing safer to fall back to, so
    the original distribution is kept and the position counts as unflagged. Store these
    flags, not the raw ones, to keep flags and purified probabilities consistent.

    Args:
        topk_probs: ``[..., K]``; flagged: ``[..., K]`` bool.

    Returns:
        ``[..., K]`` bool.
    """
    kept_mass = torch.where(flagged, 0.0, topk_probs.float()).sum(-1, keepdim=True)
    return flagged & (kept_mass > 0)


def purge(topk_probs: Tensor, flagged: Tensor) -> Tensor:
    """Purified distribution p̃ ∝ p · 1[y ∉ H_t] over the top-K support.

    Zeroes exactly the flagged candidates and renormalises the rest to sum to 1. Where every
    candidate is flagged (see :func:`effective_flags`) the original probabilities are kept,
    renormalised over the top-K, and nothing is purged at that position.

    Args:
        topk_probs: ``[..., K]`` teacher probabilities at the top-K ids (need not sum to 1).
        flagged: ``[..., K]`` bool, H_t from :func:`seed.isolate.isolate`.

    Returns:
        ``[..., K]`` fp32 purified probabilities, each row summing to 1 (rows of all zeros
        in ``topk_probs`` stay zero).
    """
    probs = topk_probs.float()
    kept = torch.where(effective_flags(probs, flagged), 0.0, probs)
    return kept / kept.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)


def contrastive_purge(z_image: Tensor, z_null: Tensor, alpha: float, beta: float) -> Tensor:
    """VCD-style contrastive recombination inside the plausibility set.

    V_t = {y : p_t(y) ≥ β · max p_t} with p_t = softmax(z_image), and
    p̃_t ∝ softmax((1+α) z_image − α z_null) restricted to V_t (zero outside). Also the
    ``--decoding vcd`` step at evaluation time: pass one step's ``[B, V]`` logits.

    Args:
        z_image: ``[..., V]`` logits with the real image.
        z_null: ``[..., V]`` logits with the null image ṽ (finite).
        alpha: contrast strength α ≥ 0 (0 = plain softmax restricted to V_t).
        beta: plausibility cut-off 0 ≤ β ≤ 1 (0 = whole vocabulary, 1 = the argmax only,
            ties kept).

    Returns:
        ``[..., V]`` fp32 probabilities, rows summing to 1.
    """
    if not alpha >= 0:
        raise SeedError(f"contrastive purge needs alpha >= 0, got {alpha}")
    if not 0.0 <= beta <= 1.0:
        raise SeedError(f"contrastive purge needs 0 <= beta <= 1, got {beta}")
    z, z_tilde = z_image.float(), z_null.float()
    # p(y) ≥ β·max p  ⇔  z(y) ≥ max z + log β: compared in logit space, no underflow.
    plausible = z >= z.amax(-1, keepdim=True) + (math.log(beta) if beta > 0 else -math.inf)
    contrast = (1.0 + alpha) * z - alpha * z_tilde
    return torch.softmax(contrast.masked_fill(~plausible, float("-inf")), dim=-1)


def repair_tokens(emitted_ids: Tensor, topk_ids: Tensor, purified_probs: Tensor, sites: Tensor) -> Tensor:
    """The repair rule: at a hallucination site the token becomes argmax p̃, elsewhere it stays.

    Works per stored position (``[B, T]``) and per decoding step (``[B]``) alike.

    Args:
        emitted_ids: ``[...]`` long, the tokens the teacher emitted.
        topk_ids: ``[..., K]`` long.
        purified_probs: ``[..., K]`` p̃ from :func:`purge`.
        sites: ``[...]`` bool from :func:`seed.isolate.hallucination_sites`.

    Returns:
        ``[...]`` long repaired ids.
    """
    best = topk_ids.gather(-1, purified_probs.argmax(-1, keepdim=True)).squeeze(-1)
    return torch.where(sites, best, emitted_ids)


ARTICLES = frozenset({"a", "an", "the"})
# Words that can neither end a sentence nor follow an article, and the answers a caption cannot hold.
FUNCTION_WORDS = ARTICLES | frozenset("and or but nor of in on at to with by for from near under over behind beside".split())
ANSWERS = frozenset({"yes", "no"})


def repair_problem(text: str, answer: bool = False) -> str | None:
    """Why a repaired response is malformed, or None: an empty text; an answer that is not yes or
    no; a caption that does not end a sentence, ends on a function word, or leaves an article
    dangling ("… and a.", "… a Yes", "a in the image"): banning words can leave such wrecks, and
    the student must not learn them."""
    tokens = re.findall(r"\w+|[^\w\s]", text.lower())
    words = [t for t in tokens if t[0].isalnum()]
    if not words:
        return "empty"
    if answer:
        return None if words[0] in ANSWERS else f"the answer {text.strip()!r} is neither yes nor no"
    for article, following in zip(tokens, tokens[1:]):
        if article in ARTICLES and (following in FUNCTION_WORDS or following in ANSWERS or not following[0].isalnum()):
            return f"an article is left dangling ({article} {following})"
    if words[-1] in FUNCTION_WORDS:
        return f"it ends on {words[-1]!r}"
    if tokens[-1] not in (".", "!", "?"):
        return "it does not end a sentence"
    return None


class PurgeProcessor:
    """Purified decoding (method.md §4) as a transformers logits processor.

    At every step the candidates of H_t get zero probability: ``banned[b]`` holds token ids row b
    must never emit (e.g. a "Yes" about a flagged object); with ``surfaces``, every token that
    would start or continue a ``flagged[b]`` object, and, so that a small model does not fill the
    gap left by its doubtful objects by repeating a safe one, any object the row has already named
    (:class:`~seed.isolate.SurfaceBans`). One instance per ``generate`` call; under beam search
    each item's beams share its row.
    """

    def __init__(
        self, banned: Sequence[Collection[int]], flagged: Sequence[Collection[str]] | None = None, surfaces: SurfaceBans | None = None
    ):
        self.banned = [set(b) for b in banned]
        self.flagged = list(flagged) if flagged is not None else [set() for _ in banned]
        self.surfaces = surfaces
        self.prompt_length: int | None = None

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if self.prompt_length is None:
            self.prompt_length = input_ids.shape[1]
        scores = scores.clone()
        beams = input_ids.shape[0] // len(self.banned)
        for b, row in enumerate(input_ids[:, self.prompt_length :].tolist()):
            ids = set(self.banned[b // beams])
            if self.surfaces is not None:
                ids |= self.surfaces.banned(row, self.flagged[b // beams], no_repeat=True)
            if ids:
                scores[b, sorted(ids)] = float("-inf")
        return scores
