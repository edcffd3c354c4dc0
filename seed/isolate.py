"""Isolate (method.md §3): flagged object categories → the token ids that would claim them (H_t).

A category with h > τ is *flagged*, one with h < 1 − τ is *affirmed* (:func:`split_claims`).
At each position of a response, H_t holds the candidates that name a flagged object, and the
answer a yes/no question about an object must not get (:func:`banned_answer`): "Yes" when it is
flagged, "No" when it is affirmed.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch
from torch import Tensor

from seed.lexicon import ObjectLexicon


def object_token_map(tokenizer, lexicon: ObjectLexicon) -> dict[int, str]:
    """Token id → category, for tokens that are a whole object word (e.g. " dog", "dogs")."""
    out = {}
    for token_id, token in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        word = (token or "").lstrip("▁Ġ ").lower()
        if word.isalpha() and (category := lexicon.category_of(word)):
            out[token_id] = category
    return out


def category_tokens(token_map: Mapping[int, str]) -> dict[str, list[int]]:
    """The inverse of :func:`object_token_map`: category → the token ids that name it whole."""
    out: dict[str, list[int]] = {}
    for token_id, category in token_map.items():
        out.setdefault(category, []).append(token_id)
    return out


def banned_ids(categories: Collection[str], token_map: Mapping[int, str]) -> set[int]:
    """The token ids that name any of ``categories``."""
    return {t for t, c in token_map.items() if c in categories}


def split_claims(scores: Mapping[str, float], tau: float) -> tuple[set[str], set[str]]:
    """(flagged, affirmed): the categories with h > τ, and those with h < 1 − τ."""
    return {c for c, h in scores.items() if h > tau}, {c for c, h in scores.items() if h < 1 - tau}


def answer_token_ids(vlm) -> tuple[int, int]:
    """The first response token of " Yes" and of " No", as ``vlm.encode`` tokenises responses."""
    batch = vlm.encode(None, ["?", "?"], ["Yes", "No"])
    ids = [row[mask][0].item() for row, mask in zip(batch["input_ids"], batch["response_mask"])]
    # The separator may be its own token; skip it when it is shared by both answers.
    if ids[0] == ids[1]:
        ids = [row[mask][1].item() for row, mask in zip(batch["input_ids"], batch["response_mask"])]
    return ids[0], ids[1]


def banned_answer(about: set[str], flagged: set[str], affirmed: set[str], yes: int, no: int) -> int | None:
    """The answer token a yes/no question about ``about`` must not get: "Yes" if any of them is
    flagged, "No" if all are affirmed, none otherwise (or when the prompt is not about objects)."""
    if about & flagged:
        return yes
    if about and about <= affirmed:
        return no
    return None


def isolate(topk_ids: Tensor, flagged: set[str], token_map: Mapping[int, str], answer: int | None = None) -> Tensor:
    """H_t over one response's candidates: ``[T, K]`` top-K ids → ``[T, K]`` bool, True where the
    candidate names a flagged category or is the banned ``answer``."""
    flags = torch.tensor([[token_map.get(t) in flagged for t in pos] for pos in topk_ids.tolist()], dtype=torch.bool)
    flags = flags.reshape(topk_ids.shape).to(topk_ids.device)
    if answer is not None:
        flags |= topk_ids == answer
    return flags


def hallucination_sites(topk_ids: Tensor, flagged: Tensor, emitted_ids: Tensor) -> Tensor:
    """Positions whose emitted token is in H_t.

    An emitted token outside the top-K (possible when sampling) has no candidate score and
    is not a site.

    Args:
        topk_ids: ``[..., K]`` long; flagged: ``[..., K]`` bool; emitted_ids: ``[...]`` long.

    Returns:
        ``[...]`` bool.
    """
    return ((topk_ids == emitted_ids.unsqueeze(-1)) & flagged).any(-1)
