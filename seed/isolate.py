"""Isolate (method.md §3): where a response names objects (:func:`find_mentions`, token spans) and
flagged object categories → the token ids that would claim them (H_t).

A category with h > τ is *flagged*, one with h < 1 − τ is *affirmed* (:func:`split_claims`).
Objects are strings and tokens are spans: in real tokenizers most object names take several
tokens ("▁gir|affe", "▁hot|▁dog"). At each position of a response, H_t holds every candidate
that would commit the text to a surface form of a flagged object: the name's first piece that no
other word shares, or any later piece (:class:`SurfaceBans`; "▁gir" stays free for "girl"), and the answer a yes/no question about an object must not get
(:func:`banned_answer`): "Yes" when it is flagged, "No" when it is affirmed.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from seed.lexicon import ObjectLexicon

_WORDS = re.compile(r"[^\W\d_]+")


@dataclass
class TokenMention:
    """An object named in a response: its category, its words, and the response tokens
    ``[start, end)`` that spell them."""

    category: str
    surface: str
    start: int
    end: int


def token_spans(tokenizer, ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """A response's text and each token's character span in it (special tokens: empty spans at
    the end). One encoding with offsets where it reproduces ``ids``; else prefix by prefix."""
    text = tokenizer.decode(list(ids), skip_special_tokens=True)
    special = set(tokenizer.all_special_ids)
    plain = [i for i, t in enumerate(ids) if t not in special]
    spans = [(len(text), len(text))] * len(ids)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if encoded["input_ids"] == [ids[i] for i in plain]:
        for i, span in zip(plain, encoded["offset_mapping"]):
            spans[i] = tuple(span)
        return text, spans
    start = 0
    for i in plain:
        end = len(tokenizer.decode([ids[k] for k in plain if k <= i], skip_special_tokens=True))
        spans[i], start = (start, end), end
    return text, spans


def find_mentions(tokenizer, response_ids: Sequence[int], lexicon: ObjectLexicon) -> list[TokenMention]:
    """Object mentions of one response, each mapped to the span of tokens its surface occupies."""
    text, spans = token_spans(tokenizer, response_ids)
    out = []
    for m in lexicon.find(text):
        inside = [i for i, (a, b) in enumerate(spans) if a < m.end and b > m.start]
        if inside:
            out.append(TokenMention(m.category, m.surface, inside[0], inside[-1] + 1))
    return out


@dataclass(frozen=True)
class Spelling:
    """One tokenisation of one surface form: ``ids`` as the tokenizer writes them after a word
    (``new_word``: the first token carries the word break) or straight after punctuation."""

    category: str
    surface: str
    ids: tuple[int, ...]
    new_word: bool
    commit: int = 0  # the first token that can only be this name (:func:`commit_index`): bans start there


def spellings(tokenizer, lexicon: ObjectLexicon, categories: Iterable[str]) -> list[Spelling]:
    """Every spelling of every surface form (names, plurals, capitalised) of ``categories``,
    tokenised in context so that sentencepiece / byte-level BPE merges are the ones a response has."""
    wanted = set(categories)
    found: list[tuple[str, str, tuple[int, ...], bool]] = []
    seen = set()
    for category in dict.fromkeys([*categories, *lexicon.categories]):  # every name: one may begin another
        for surface in lexicon.surface_forms(category):
            for text in dict.fromkeys((surface, surface[:1].upper() + surface[1:])):
                for context, new_word in (("a ", True), ("(", False)):
                    ids = _ids_after(tokenizer, context, text)
                    if ids and (category, ids) not in seen:
                        seen.add((category, ids))
                        found.append((category, text, ids, new_word))
    raws: dict[str, list[str]] = {}
    for category, _, ids, _ in found:
        raws.setdefault(category, []).append("".join(tokenizer.convert_ids_to_tokens(list(ids))))
    vocabulary = sorted(t for t in tokenizer.get_vocab() if any(ch.isalpha() for ch in t))
    names = sorted((r, c) for c, rs in raws.items() for r in rs)
    return [Spelling(c, text, ids, new_word, commit_index(tokenizer, ids, c, vocabulary, names)) for c, text, ids, new_word in found if c in wanted]


def _starting(items: Sequence, prefix: str, key=lambda item: item) -> Sequence:
    """The items of a sorted sequence whose key starts with ``prefix``."""
    lo = bisect.bisect_left(items, prefix, key=key)
    return items[lo : bisect.bisect_right(items, prefix + "\U0010ffff", lo, key=key)]


def commit_index(tokenizer, ids: Sequence[int], category: str, vocabulary: Sequence[str], names: Sequence[tuple[str, str]]) -> int:
    """The first token of a spelling of ``category`` after which the text can only go on to its
    name: the first prefix with a letter that no token of the (sorted) ``vocabulary`` extends into
    another word and no spelling of another category begins with; the last token otherwise.
    ``names``: the sorted (raw token string, category) of every spelling. "▁a" begins "▁and" too,
    so "apple" is banned from its second token; "▁dog" from its first. Banning a shared first piece
    instead would ban every word that begins with it (every "a" while apples are flagged)."""
    pieces = tokenizer.convert_ids_to_tokens(list(ids))

    def named(text: str) -> list[str]:  # the categories with a spelling that begins with ``text``
        return [c for _, c in _starting(names, text, key=lambda n: n[0])]

    for j in range(len(pieces) - 1):
        prefix = "".join(pieces[: j + 1])
        if not any(ch.isalpha() for ch in tokenizer.convert_tokens_to_string(pieces[: j + 1])):
            continue  # a bare word-break marker commits to nothing
        words = [v for v in _starting(vocabulary, prefix) if len(v) > len(prefix) and v[len(prefix)].isalpha()]
        if set(named(prefix)) == {category} and all(category in named(v) for v in words):
            return j
    return len(ids) - 1


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

    ``banned(ids, flagged)``: every token that would put the text at or past the commit piece of
    a spelling of a ``flagged`` category (:func:`commit_index`) begun at a word break (a new-word
    spelling anywhere, a glued one only after a non-letter); never inside a longer name of
    something else ("dog" after "hot"). With ``no_repeat`` the categories the text named before a
    spelling begins can not be named again.
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
        names: dict[int, set[str]] = {}  # the categories it names

        def text(k: int) -> str:
            if k not in texts:
                texts[k] = self.tokenizer.decode(ids[:k], skip_special_tokens=True)
            return texts[k]

        def named(k: int) -> set[str]:
            if k not in names:
                names[k] = {m.category for m in self.lexicon.find(text(k))} if no_repeat else set()
            return names[k]

        def can_start(k: int, x: Spelling) -> bool:
            """Whether ``x`` may begin after the first k tokens: at a word break, not inside a longer name."""
            if not x.new_word and text(k) and text(k)[-1].isalnum():
                return False
            words = _WORDS.findall(text(k).lower())
            return not any(words[len(words) - len(g) :] == g for g in self.guards[x.category])

        out = set()
        for x in self.spellings:
            if x.category not in flagged and not no_repeat:
                continue
            for j in range(x.commit, len(x.ids)):  # ids end with the spelling's first j tokens: ban its next
                if j and tuple(ids[-j:]) != x.ids[:j]:
                    continue
                if (x.category in flagged or x.category in named(len(ids) - j)) and can_start(len(ids) - j, x):
                    out.add(x.ids[j])
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
