"""Identify: per-object hallucination evidence from the model's own signals (method.md §2).

Every signal ends as a score h ∈ [0, 1] per (image, object category): 1 = hallucinated.
Token-level stages (isolate, purge) then flag the candidate tokens that name a flagged object
(or answer "Yes" to a question about one).

Signals (``--identify``):
- ``contrast``: grounding contrast log p(y | v) − log p(y | ṽ) of the mention's first token;
- ``uncertainty``: −log p of the emitted mention token;
- ``self-probe``: 1 − P(yes) when the model is asked "Is there a {object} in the image?";
- ``consistency``: how rarely the object comes up in S sampled captions of the image, as the
  posterior (S − k + ½)/(S + 1) after k mentions. The model's generative knowledge checks its
  discriminative answers, and its errors there are partly independent of the probe's;
- ``evidence``: shared evidence. Grey out each cell of a grid over the image, re-ask the
  self-probe, and read where each object's "yes" comes from. A co-occurrence hallucination
  ("fork" next to a visible knife) draws its evidence from the region of *another* object the
  model sees; a real object has evidence of its own;
- ``lens``: what the image tokens themselves show. Each projected image token is read as a word
  (cosine softmax over the input embedding matrix, temperature T); h = 1 − max over tokens of
  the object word's probability. It never passes through the language model, so the
  co-occurrence prior the LM learned from its text cannot vote;
- ``oracle``: the category is absent from the image's annotations (ablation only).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from PIL import Image

from seed.lexicon import ObjectLexicon

SIGNALS = ("self-probe", "consistency", "lens", "evidence", "contrast", "uncertainty", "oracle")
PROBE_SUFFIX = "\nAnswer the question using a single word or phrase."


def probe_question(category: str) -> str:
    return f"Is there {'an' if category[0] in 'aeiou' else 'a'} {category} in the image?" + PROBE_SUFFIX


@dataclass
class TokenMention:
    """An object named in a response: its category and the response token that starts it."""

    category: str
    surface: str
    token: int
    scores: dict[str, float] = field(default_factory=dict)


def find_mentions(tokenizer, response_ids: list[int], lexicon: ObjectLexicon) -> list[TokenMention]:
    """Object mentions of one response, each mapped to the first token of its surface form."""
    ends = [len(tokenizer.decode(response_ids[: i + 1], skip_special_tokens=True)) for i in range(len(response_ids))]
    text = tokenizer.decode(response_ids, skip_special_tokens=True)
    out = []
    for m in lexicon.find(text):
        token = next(i for i, end in enumerate(ends) if end > m.start)
        out.append(TokenMention(m.category, m.surface, token))
    return out


def answer_token_ids(vlm) -> tuple[int, int]:
    """The first response token of " Yes" and of " No", as ``vlm.encode`` tokenises responses."""
    batch = vlm.encode(None, ["?", "?"], ["Yes", "No"])
    ids = [row[mask][0].item() for row, mask in zip(batch["input_ids"], batch["response_mask"])]
    # The separator may be its own token; skip it when it is shared by both answers.
    if ids[0] == ids[1]:
        ids = [row[mask][1].item() for row, mask in zip(batch["input_ids"], batch["response_mask"])]
    return ids[0], ids[1]


@torch.no_grad()
def yes_margin(vlm, images: list[Image.Image], categories: list[str], batch_size: int = 64) -> torch.Tensor:
    """logit(Yes) − logit(No) of the first answer token for each (image, category) pair."""
    yes, no = answer_token_ids(vlm)
    out = []
    for i in range(0, len(images), batch_size):
        imgs, cats = images[i : i + batch_size], categories[i : i + batch_size]
        logits, _, _ = vlm.response_logits(imgs, [probe_question(c) for c in cats], ["Yes"] * len(cats))
        out.append(logits[:, 0, yes] - logits[:, 0, no])
    return torch.cat(out) if out else torch.zeros(0)


def consistency_scores(mentions: list[set[str]], samples: int, categories: list[str]) -> dict[str, float]:
    """h(c) = (S − k + ½)/(S + 1) for a category named in k of S sampled responses (Jeffreys prior)."""
    return {c: (samples - sum(c in m for m in mentions) + 0.5) / (samples + 1) for c in categories}


@torch.no_grad()
def lens_scores(vlm, images: list[Image.Image], words: dict[str, list[int]], temperature: float = 0.1) -> list[dict[str, float]]:
    """h(c) = 1 − max_p P(c | image token p), each image token read as a word by cosine softmax
    over the word embeddings; ``words`` maps a category to the token ids that spell it whole."""
    table = torch.nn.functional.normalize(vlm.word_embeddings().float(), dim=-1)
    out = []
    for states in vlm.image_states(images):
        probs = (torch.nn.functional.normalize(states.to(table.device), dim=-1) @ table.T / temperature).softmax(-1)
        out.append({c: 1.0 - probs[:, ids].sum(-1).max().item() for c, ids in words.items()})
    return out


def combine(signals: list[dict[str, float]], clip: float = 1e-4) -> dict[str, float]:
    """Product of experts: h = σ(Σ_s logit h_s) over the signals that score each category.

    Independent pieces of evidence add in log-odds, so a confident signal is not averaged away by
    an unsure one; ``clip`` keeps hard 0/1 scores (the oracle) finite.
    """
    categories = {c for s in signals for c in s}
    out = {}
    for c in sorted(categories):
        logit = sum(torch.logit(torch.tensor(s[c]).clamp(clip, 1 - clip)).item() for s in signals if c in s)
        out[c] = float(torch.sigmoid(torch.tensor(logit)))
    return out


def mask_cell(image: Image.Image, row: int, col: int, grid: int, colour: tuple[int, int, int]) -> Image.Image:
    """``image`` with one cell of a ``grid``×``grid`` partition filled with ``colour``."""
    w, h = image.size
    out = image.copy()
    box = (col * w // grid, row * h // grid, (col + 1) * w // grid, (row + 1) * h // grid)
    out.paste(colour, box)
    return out


def region_evidence(
    vlm, image: Image.Image, categories: list[str], grid: int = 4, batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-probe margins on the image, and how much greying each grid cell lowers them.

    Returns ``(margin [C], evidence [C, grid*grid])`` with evidence ≥ 0.
    """
    colour = tuple(round(255 * m) for m in vlm.processor.image_processor.image_mean)
    masked = [mask_cell(image, r, c, grid, colour) for r in range(grid) for c in range(grid)]
    views = [image, *masked]
    pairs = [(v, c) for v in views for c in categories]
    margins = yes_margin(vlm, [v for v, _ in pairs], [c for _, c in pairs], batch_size)
    margins = margins.view(len(views), len(categories))
    base = margins[0]
    evidence = (base[None, :] - margins[1:]).clamp_min(0).T  # [C, cells]
    return base, evidence


def shared_evidence_scores(margin: torch.Tensor, evidence: torch.Tensor) -> torch.Tensor:
    """Per category, the share of its evidence that lies where a more strongly seen object's does.

    Only objects the model believes present (margin > 0) can explain another's evidence.
    """
    dist = evidence / evidence.sum(-1, keepdim=True).clamp_min(1e-6)
    overlap = torch.minimum(dist[:, None, :], dist[None, :, :]).sum(-1)  # [C, C]
    stronger = (margin[None, :] > margin[:, None]) & (margin[None, :] > 0)
    overlap = torch.where(stronger, overlap, torch.zeros_like(overlap))
    overlap.fill_diagonal_(0)
    return overlap.max(-1).values if len(margin) else margin
