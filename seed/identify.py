"""Identify: per-object hallucination evidence from the model's own signals (method.md §2).

Every signal ends as a score h ∈ [0, 1] per (image, object category): 1 = hallucinated; the
selected signals combine as a product of experts (:func:`combine`). Signals (``--identify``):

- ``self-probe``: 1 − P(yes) when the model is asked "Is there a {object} in the image?";
- ``consistency``: how rarely the object comes up in S sampled captions of the image, as the
  posterior (S − k + ½)/(S + 1) after k mentions: the model's generative knowledge checks its
  discriminative answers;
- ``lens``: what the image tokens themselves show. Each projected image token is read as a word
  (cosine softmax over the input embedding matrix, temperature T); h = 1 − max over tokens of
  the object word's probability. It bypasses the language model and its co-occurrence prior;
- ``evidence``: shared evidence. Grey out each cell of a grid over the image, re-ask the
  self-probe, and read where each object's "yes" comes from: a co-occurrence hallucination
  draws its evidence from the region of *another* object the model sees;
- ``contrast``: grounding contrast log p(y | v) − log p(y | ṽ) of the mention's first token;
- ``uncertainty``: 1 − p of the emitted mention token;
- ``oracle``: the category is absent from the image's annotations (ablation only);
- ``detector:DIR``: a one-pass detector distilled from these signals (``seed detect train``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from seed.adapters.prefix import prefix_batches, suffix_logits
from seed.config import SIGNALS, IdentifyConfig
from seed.detector import Detector
from seed.errors import SeedError
from seed.isolate import SurfaceBans, answer_token_ids, find_mentions, split_claims
from seed.lexicon import ObjectLexicon
from seed.prompts import CAPTION_PROMPT, probe_question

__all__ = ["SIGNALS", "IdentifyConfig", "identify_images"]


# --------------------------------------------------------------------------- raw signals → h
def grounding_contrast(logp_image: Tensor, logp_null: Tensor, topk_ids: Tensor | None = None) -> Tensor:
    """Grounding contrast g(y) = log p(y | v) − log p(y | ṽ) per candidate.

    Low (≤ 0) g means the candidate is as likely without the image: language-prior driven.

    Args:
        logp_image: with ``topk_ids``, full-vocabulary logits or log-probs ``[..., V]`` of the
            teacher with the real image; without, log-probs already gathered ``[..., K]``.
        logp_null: the same with the null image ṽ.
        topk_ids: optional ``[..., K]`` long candidate ids. When given, both inputs are
            normalised with ``log_softmax`` (a no-op on log-probs) and gathered at them.

    Returns:
        ``[..., K]`` fp32 contrast.
    """
    logp_image, logp_null = logp_image.float(), logp_null.float()
    if topk_ids is not None:
        logp_image = F.log_softmax(logp_image, dim=-1).gather(-1, topk_ids)
        logp_null = F.log_softmax(logp_null, dim=-1).gather(-1, topk_ids)
    return logp_image - logp_null


def uncertainty(logp_emitted: Tensor) -> Tensor:
    """Surprisal −log p_t(y_t) of the emitted token; ``[...]`` log-probs → ``[...]`` fp32."""
    return -logp_emitted.float()


def to_unit(scores: Tensor, *, offset: float = 0.0, scale: float = 1.0) -> Tensor:
    """Map a raw signal to a hallucination score h = σ((s − offset) / scale) ∈ [0, 1].

    Higher ``scores`` must mean "more likely hallucinated": pass ``-g`` for the grounding
    contrast, the surprisal as is. ``h = 0.5`` exactly at ``offset``; ``scale > 0`` sets how
    many units of the signal move h from 0.5 to σ(1) ≈ 0.73.
    """
    if not scale > 0:
        raise SeedError(f"to_unit needs scale > 0, got {scale}")
    return torch.sigmoid((scores.float() - offset) / scale)


@torch.no_grad()
def yes_margin(vlm, images: list[Image.Image], categories: list[str], batch_size: int = 64) -> torch.Tensor:
    """logit(Yes) − logit(No) of the first answer token for each (image, category) pair.

    Where the model supports it, each image's prefix runs once and its questions reuse the cache
    (:mod:`seed.adapters.prefix`); questions about the same image must share the image object.
    """
    yes, no = answer_token_ids(vlm)
    prompts = [probe_question(c) for c in categories]
    margins = torch.full((len(prompts),), float("nan"))
    if vlm.supports_prefix_cache:
        for batch in prefix_batches(vlm, images, prompts, [id(im) for im in images], batch_size):
            logits = suffix_logits(vlm, batch)
            margins[batch.questions] = (logits[:, yes] - logits[:, no]).cpu()
    rest = [i for i in range(len(prompts)) if torch.isnan(margins[i])]
    for start in range(0, len(rest), batch_size):
        part = rest[start : start + batch_size]
        logits, _, _ = vlm.response_logits([images[i] for i in part], [prompts[i] for i in part], ["Yes"] * len(part))
        margins[part] = (logits[:, 0, yes] - logits[:, 0, no]).cpu()
    return margins


def pool_margins(vlm, images: list[Image.Image], pools: Sequence[Sequence[str]], batch_size: int = 64) -> list[dict[str, float]]:
    """The self-probe's yes-margin (:func:`yes_margin`) of every category of each image's pool."""
    flat = iter(yes_margin(vlm, [im for im, pool in zip(images, pools) for _ in pool], [c for pool in pools for c in pool], batch_size).tolist())
    return [{c: next(flat) for c in pool} for pool in pools]


def consistency_scores(mentions: list[set[str]], samples: int, categories: list[str]) -> dict[str, float]:
    """h(c) = (S − k + ½)/(S + 1) for a category named in k of S sampled responses (Jeffreys prior)."""
    return {c: (samples - sum(c in m for m in mentions) + 0.5) / (samples + 1) for c in categories}


@torch.no_grad()
def lens_scores(
    vlm, images: list[Image.Image], words: dict[str, list[tuple[int, ...]]], temperature: float = 0.1, layers: Sequence[int] = (0,)
) -> list[dict[str, float]]:
    """h(c) = 1 − max over ``layers`` and image tokens p of P(c | p): at layer 0 each projected
    image token is read as a word by cosine softmax over the word embeddings; at a layer l ≥ 1 by
    the logit lens (the model's own unembedding of its layer-l state). ``words`` maps a category
    to its spellings (token-id tuples): the one-token ones add up; a category spelt only in
    pieces scores the geometric mean over its pieces of their best image token."""
    table = torch.nn.functional.normalize(vlm.word_embeddings().float(), dim=-1)
    out = []
    for states in vlm.image_states(images, layers):
        probs = []
        for layer, h in zip(layers, states):
            if layer == 0:
                probs.append((torch.nn.functional.normalize(h.to(table.device), dim=-1) @ table.T / temperature).softmax(-1))
            else:
                probs.append(vlm.unembed(h, layer).softmax(-1))
        out.append({c: 1.0 - max(_word_probability(p, spellings) for p in probs) for c, spellings in words.items()})
    return out


def _word_probability(probs: torch.Tensor, spellings: list[tuple[int, ...]]) -> float:
    """max over image tokens of P(word) ([P, V] probabilities): one-token spellings add up; a word
    spelt only in pieces takes the geometric mean over its pieces of their best token."""
    whole = [ids[0] for ids in spellings if len(ids) == 1]
    if whole:
        return probs[:, whole].sum(-1).max().item()
    return max(probs[:, list(ids)].max(0).values.log().mean().exp().item() for ids in spellings)


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
    colour = tuple(round(255 * m) for m in vlm.image_mean)
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


# --------------------------------------------------------------------------- one batch of images
def category_scores(vlm, images, captions, asked, margins, config: IdentifyConfig, lexicon, bans, truth, max_new_tokens: int):
    """h(c) ∈ [0, 1] per image and category: the selected signals (:func:`signal_scores`) as a
    product of experts, and the signals left out because they carried no information on this
    batch (:func:`informative`)."""
    by_signal = signal_scores(vlm, images, captions, asked, margins, config, lexicon, bans, truth, max_new_tokens)
    ignored = [name for name, scores in by_signal.items() if name != "oracle" and not informative(scores)]
    kept = [scores for name, scores in by_signal.items() if name not in ignored]
    return [combine([scores[i] for scores in kept]) for i in range(len(images))], ignored


def signal_scores(
    vlm,
    images: list[Image.Image],
    captions: list[str],
    asked: list[list[str]],
    margins: list[dict[str, float]],
    config: IdentifyConfig,
    lexicon: ObjectLexicon,
    bans: SurfaceBans,
    truth: list[set[str]] | None,
    max_new_tokens: int,
) -> dict[str, list[dict[str, float]]]:
    """Each selected signal's h(c) ∈ [0, 1] per image: ``{signal: [{category: h}, ...]}``.

    Self-probe, consistency, lens, oracle and a distilled detector (``detector:DIR``) score every
    category of the image's pool (the keys of ``margins[i]``, so a repair cannot swap a flagged
    object for another doubtful one); shared evidence, the costly signal, scores the categories in
    ``asked``; contrast and uncertainty score the objects the caption names, over each mention's
    tokens (the most doubtful mention counts).
    """
    if "oracle" in config.signals and truth is None:
        raise SeedError("--identify oracle needs --annotations for the purification images")
    n = len(images)
    pools = [list(m) for m in margins]
    by_signal: dict[str, list[dict[str, float]]] = {}
    if "self-probe" in config.signals:
        by_signal["self-probe"] = [
            dict(zip(m, to_unit(-torch.tensor(list(m.values())), offset=-config.probe_offset, scale=config.probe_scale).tolist())) for m in margins
        ]
    if "consistency" in config.signals:
        by_signal["consistency"] = _consistency(vlm, images, pools, config.samples, lexicon, max_new_tokens)
    if "lens" in config.signals:
        words = {c: ids for c, ids in bans.category_ids().items() if c in set().union(*pools)}
        by_signal["lens"] = lens_scores(vlm, images, words, config.lens_temperature, config.lens_layers)
    if "oracle" in config.signals:
        by_signal["oracle"] = [{c: float(c not in truth[i]) for c in pools[i]} for i in range(n)]
    if "evidence" in config.signals:
        by_signal["evidence"] = [_shared_evidence(vlm, images[i], asked[i]) for i in range(n)]
    for name in (s for s in config.signals if s.startswith("detector:")):
        by_signal[name] = Detector.load(name.removeprefix("detector:"), vlm, lexicon).probabilities(vlm, images, captions, pools)
    token_signals = [s for s in ("contrast", "uncertainty") if s in config.signals]
    if token_signals:
        for name, scores in zip(token_signals, zip(*_mention_scores(vlm, images, captions, token_signals, config, lexicon))):
            by_signal[name] = list(scores)
    return by_signal


def informative(scores: list[dict[str, float]], spread: float = 1e-3) -> bool:
    """Whether a signal tells categories apart at all on this batch: a signal that gives every
    category the same h (e.g. a lens that reads nothing on this model) would flag all or none."""
    values = [h for per_image in scores for h in per_image.values()]
    return len(values) < 2 or max(values) - min(values) > spread


def _shared_evidence(vlm, image, categories: list[str]) -> dict[str, float]:
    if not categories:
        return {}
    base, evidence = region_evidence(vlm, image, categories)
    return dict(zip(categories, shared_evidence_scores(base, evidence).tolist()))


def _consistency(vlm, images, pools: list[list[str]], samples: int, lexicon: ObjectLexicon, max_new_tokens: int) -> list[dict[str, float]]:
    """The consistency signal of each image over its pool, from ``samples`` sampled captions each."""
    sampled: list[list[set[str]]] = [[] for _ in images]
    for _ in range(samples):
        texts = vlm.generate(images, [CAPTION_PROMPT] * len(images), max_new_tokens=max_new_tokens, do_sample=True)
        for i, text in enumerate(texts):
            sampled[i].append({m.category for m in lexicon.find(text)})
    return [consistency_scores(sampled[i], samples, pools[i]) for i in range(len(images))]


def _mention_scores(vlm, images, captions, signals, config, lexicon) -> list[list[dict[str, float]]]:
    """Per image, one {category: h} per token signal over the caption's mentions.

    contrast: h = σ(−g) with g = log p(y | v) − log p(y | ṽ); uncertainty: h = 1 − p(y).
    """
    prompts = [CAPTION_PROMPT] * len(images)
    logits, ids, mask = vlm.response_logits(images, prompts, captions)
    logp = logits.log_softmax(-1).gather(-1, ids[..., None])[..., 0]
    g = None
    if "contrast" in signals:
        null = vlm.response_logits(images, prompts, captions, null_image=config.null_image)[0]
        g = grounding_contrast(logp, null.log_softmax(-1).gather(-1, ids[..., None])[..., 0])
    out = []
    for b in range(len(images)):
        found: dict[str, dict[str, float]] = {s: {} for s in signals}
        for m in find_mentions(vlm.tokenizer, ids[b][mask[b]].tolist(), lexicon):
            span = slice(m.start, m.end)  # the whole mention: log p of its tokens add up
            if g is not None:
                found["contrast"][m.category] = max(found["contrast"].get(m.category, 0.0), to_unit(-g[b, span].sum()).item())
            if "uncertainty" in found:
                found["uncertainty"][m.category] = max(found["uncertainty"].get(m.category, 0.0), 1 - logp[b, span].sum().exp().item())
        out.append([found[s] for s in signals])
    return out


def check_identification(vlm, config: IdentifyConfig, lexicon: ObjectLexicon) -> None:
    """Refuse, before any work, what only the model or the lexicon can tell wrong: a lens layer the
    language model does not have, a category the lexicon does not know."""
    layers = vlm.text_layers
    if max(config.lens_layers) > layers:
        raise SeedError(f"--lens-layers {max(config.lens_layers)}: the language model has layers 0 (input) to {layers}")
    unknown = [c for c in config.categories or () if c not in lexicon.categories]
    if unknown:
        raise SeedError(f"--categories: unknown object {unknown[0]!r} (not a category of the object lexicon; see --lexicon)")


@dataclass
class Identification:
    """What the teacher says about a batch of images before anything is purged."""

    captions: list[str]  # greedy
    margins: list[dict[str, float]]  # self-probe yes-margin per pool category
    asked: list[list[str]]  # the categories the purification questions are about (balanced yes/no)
    scores: list[dict[str, float]]  # h(c)
    ignored: list[str]  # signals that told no category from another here


@torch.no_grad()
def identify_images(
    vlm,
    images: list[Image.Image],
    captions: list[str],
    config: IdentifyConfig,
    lexicon: ObjectLexicon,
    bans: SurfaceBans,
    truth: list[set[str]] | None = None,
    *,
    batch_size: int = 16,
    max_new_tokens: int = 48,
) -> Identification:
    """Probe and score a batch of captioned images (method.md §2); ``batch_size`` × 4 probes per forward."""
    pool = list(config.categories or sorted(bans.category_ids()))  # default: every category the tokenizer can spell
    n = len(images)
    margins = pool_margins(vlm, images, [pool] * n, batch_size * 4)
    # The costly evidence signal scores what the caption names and what the model most wants to affirm.
    mentioned = [sorted({m.category for m in lexicon.find(c)} & set(pool)) for c in captions]
    candidates = []
    for i in range(n):
        rest = sorted((c for c in pool if c not in mentioned[i]), key=lambda c: -margins[i][c])
        candidates.append((mentioned[i] + rest)[: max(config.questions_per_image, len(mentioned[i]))])
    scores, ignored = category_scores(vlm, images, captions, candidates, margins, config, lexicon, bans, truth, max_new_tokens)
    asked = [balanced_questions(scores[i], margins[i], config.tau, config.questions_per_image) for i in range(n)]
    return Identification(captions, margins, asked, scores, ignored)


def balanced_questions(scores: dict[str, float], margins: dict[str, float], tau: float, limit: int) -> list[str]:
    """The categories of the pool (``margins``) to ask about: as many flagged as affirmed, POPE-style.

    Affirmed ones (h < 1 − τ) least-confident first, up to ``limit // 2``, and as many flagged
    ones (h > τ, at least one), the ones the model most wants to affirm first: the hard negatives.
    Far more "no" than "yes" targets would teach the student to answer "no" across the board.
    """
    flagged, affirmed = (sorted(c for c in claims if c in margins) for claims in split_claims(scores, tau))  # the pool only
    yes = sorted(affirmed, key=lambda c: margins[c])[: limit // 2]
    no = sorted(flagged, key=lambda c: -margins[c])[: max(len(yes), 1)]
    return yes + no


