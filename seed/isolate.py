"""Isolate (method.md §3): flagged object categories → the token ids that would claim them (H_t).

A category with h > τ is *flagged*, one with h < 1 − τ is *affirmed* (:func:`split_claims`).
Objects are strings and tokens are spans: in real tokenizers most object names take several
tokens ("▁gira|ffe", "▁h|ot|▁dog"). At each position of a response, H_t holds every candidate
that would start or continue a surface form of a flagged object from the text so far
(:class:`SurfaceBans`), and the answer a yes/no question about an object must not get
(:func:`banned_answer`): "Yes" when it is flagged, "No" when it is affirmed.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from seed.lexicon import ObjectLexicon

_WORDS = re.compile(r"[^\W\d_]+")


@dataclass(frozen=True)
class Spelling:
    """One tokenisation of one surface form: ``ids`` as the tokenizer writes them after a word
    (``new_word``: the first token carries the word break) or straight after punctuation."""

    category: str
    surface: str
    ids: tuple[int, ...]
    new_word: bool
    lead: int = 0  # leading tokens with no letter (a bare word-break marker "▁" / "Ġ")


def spellings(tokenizer, lexicon: ObjectLexicon, categories: Iterable[str]) -> list[Spelling]:
    """Every spelling of every surface form (names, plurals, capitalised) of ``categories``,
    tokenised in context so that sentencepiece / byte-level BPE merges are the ones a response has."""
    out, seen = [], set()
    for category in categories:
        for surface in lexicon.surface_forms(category):
            for text in dict.fromkeys((surface, surface[:1].upper() + surface[1:])):
                for context, new_word in (("a ", True), ("(", False)):
                    ids = _ids_after(tokenizer, context, text)
                    if ids and (category, ids) not in seen:
                        seen.add((category, ids))
                        lead = next((k for k, i in enumerate(ids) if any(ch.isalnum() for ch in tokenizer.decode([i]))), len(ids))
                        out.append(Spelling(category, text, ids, new_word, min(lead, len(ids) - 1)))
    return out


def _ids_after(tokenizer, context: str, text: str) -> tuple[int, ...] | None:
    """Token ids of ``text`` as they follow ``context`` (None where ``context`` merges with it or
    the tokenizer cannot spell it)."""
    head = tokenizer(context.rstrip(), add_special_tokens=False)["input_ids"]
    full = tokenizer(context + text, add_special_tokens=False)["input_ids"]
    ids = tuple(full[len(head) :])
    if full[: len(head)] != head or not ids or tokenizer.unk_token_id in ids:
        return None
    return ids


class SurfaceBans:
    """The candidate tokens that would name an object, for a response so far.

    ``banned(ids, flagged)``: every token that starts a spelling of a ``flagged`` category (a
    new-word spelling anywhere, a glued one only after a non-letter), or continues one whose first
    tokens end ``ids``; never the start of a longer name of something else ("dog" after "hot").
    With ``no_repeat`` the categories the text has already named can not be started again.
    """

    def __init__(self, tokenizer, lexicon: ObjectLexicon, categories: Iterable[str]):
        self.tokenizer, self.lexicon = tokenizer, lexicon
        self.spellings = spellings(tokenizer, lexicon, categories)
        self.guards: dict[str, list[list[str]]] = {}  # category → words that make a longer name of something else
        for x in self.spellings:
            guards = self.guards.setdefault(x.category, [])
            guards += [list(w) for w in lexicon.longer_names(x.surface.lower()) if list(w) not in guards]

    def category_ids(self) -> dict[str, list[tuple[int, ...]]]:
        """Category → its distinct spellings (token-id tuples)."""
        out: dict[str, list[tuple[int, ...]]] = {}
        for x in self.spellings:
            out.setdefault(x.category, [])
            if x.ids not in out[x.category]:
                out[x.category].append(x.ids)
        return out

    def banned(self, ids: Sequence[int], flagged: Collection[str], no_repeat: bool = False) -> set[int]:
        ids = list(ids)
        texts: dict[int, str] = {}  # the text of the first k tokens, decoded once

        def can_start(k: int, x: Spelling) -> bool:
            """Whether ``x`` may begin after the first k tokens: at a word break, not inside a longer name."""
            if k not in texts:
                texts[k] = self.tokenizer.decode(ids[:k], skip_special_tokens=True)
            text = texts[k]
            if not x.new_word and text and text[-1].isalnum():
                return False
            words = _WORDS.findall(text.lower())
            return not any(words[len(words) - len(g) :] == g for g in self.guards[x.category])

        named = {m.category for m in self.lexicon.find(self.tokenizer.decode(ids, skip_special_tokens=True))} if no_repeat else set()
        out = set()
        for x in self.spellings:
            if x.category not in flagged and x.category not in named:
                continue
            begun = [j for j in range(1, len(x.ids)) if len(ids) >= j and tuple(ids[len(ids) - j :]) == x.ids[:j]]
            # continue a flagged spelling begun where a name can begin
            out.update(x.ids[j] for j in begun if j > x.lead and x.category in flagged and can_start(len(ids) - j, x))
            # start one: its first token with a letter
            if (x.lead == 0 or x.lead in begun) and can_start(len(ids) - x.lead, x):
                out.add(x.ids[x.lead])
        return out


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


def isolate(
    topk_ids: Tensor, response_ids: Sequence[int], flagged: Collection[str], bans: SurfaceBans, answer: int | None = None
) -> Tensor:
    """H_t over one response's candidates: ``[T, K]`` top-K ids → ``[T, K]`` bool, True where the
    candidate would start or continue a flagged object after the response's first t tokens, or is
    the banned ``answer``."""
    flags = torch.zeros(topk_ids.shape, dtype=torch.bool)
    if flagged:
        for t in range(topk_ids.shape[0]):
            banned = bans.banned(response_ids[:t], flagged)
            flags[t] = torch.tensor([c in banned for c in topk_ids[t].tolist()], dtype=torch.bool)
    flags = flags.to(topk_ids.device)
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
