"""Greedy yes/no answers, mostly from ONE forward pass (the POPE fast path).

Each image's prefix (the prompt up to its last image token) runs once and its KV cache,
gathered along the batch, serves all of its questions. Each question's suffix is followed by
both candidates, " Yes" and " No" (tokenised as :meth:`encode` tokenises a response), as two
branches of one row: a 4-D mask lets each branch see the prefix, the suffix and itself only,
at the positions it would have alone — two rows' worth of answers for one row's compute. The
logits at the question's last token give the greedy first token; the logits along and after a
candidate give the greedy tokens that follow it. When they spell exactly the candidate and then
EOS, that is what greedy generation returns, and the answer is settled; under the official
parser a "." after the candidate settles it too (the parser reads nothing after the first ".";
the text kept is then the candidate plus "."). The rest is generated. Models without the
prefix-cache path (remote-code InternVL2), or attention kernels that ignore 4-D masks, score
candidates with full forwards (:meth:`response_logits`, two rows per question).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from seed.adapters.prefix import prefix_batches
from seed.evaluation.runner import Progress, generate_answers, no_progress
from seed.io import Subset

CANDIDATES = ("Yes", "No")


@dataclass(frozen=True)
class Candidates:
    """Token ids of each candidate answer (no EOS) and what may follow it to settle the answer."""

    ids: dict[str, list[int]]
    enders: dict[str, dict[int, list[int]]]  # candidate → {next token id: ids kept in the text}
    texts: dict[tuple[int, ...], str]


def answer_candidates(vlm, image: Image.Image, prompt: str, period_settles: bool = True) -> Candidates | None:
    """Candidate ids as :meth:`vlm.encode` tokenises a response after this prompt, and their enders:
    EOS, and with ``period_settles`` a "." too.

    Every prompt ends in the same generation prompt, so one image/prompt serves the run.
    None when the candidates are unknown words or do not start with distinct tokens.
    """
    stops = vlm.eos_token_ids

    def response_ids(text: str) -> list[int]:
        batch = vlm.encode([image], [prompt], responses=[text])
        return batch["input_ids"][0][batch["response_mask"][0]].tolist()[:-1]  # drop the EOS

    ids, enders, texts = {}, {}, {}
    for name in CANDIDATES:
        ids[name] = response_ids(name)
        enders[name] = {s: ids[name] for s in stops}
        if period_settles:
            with_period = response_ids(name + ".")
            if len(with_period) == len(ids[name]) + 1 and with_period[:-1] == ids[name]:
                enders[name].setdefault(with_period[-1], with_period)
        for kept in enders[name].values():
            texts[tuple(kept)] = vlm.tokenizer.decode(kept, skip_special_tokens=True).strip()
    unknown = vlm.tokenizer.unk_token_id
    first = [c[0] for c in ids.values() if c]
    if len(first) < len(ids) or len(set(first)) < len(first) or any(unknown in c for c in ids.values()):
        return None  # the vocabulary cannot spell the candidates apart: generate everything
    return Candidates(ids, enders, texts)


def settle(chains: Mapping[str, list[int]], cands: Candidates) -> str | None:
    """The answer text if a candidate's greedy chain is the candidate followed by an ender.

    ``chains[c]`` are the argmax tokens predicted at the question's last token and at every
    token of candidate ``c`` (length ``len(ids[c]) + 1``).
    """
    for name, chain in chains.items():
        ids = cands.ids[name]
        if chain[: len(ids)] == ids and chain[len(ids)] in cands.enders[name]:
            return cands.texts[tuple(cands.enders[name][chain[len(ids)]])]
    return None


def branch_rows(suffixes: list[torch.Tensor], cands: Candidates, pad: int, prefix_length: int):
    """Rows ``suffix_q, Yes, No`` then right padding, for :func:`suffix_chains`.

    Returns ``(input_ids [Q, L], position_ids [Q, L], allowed [Q, 1, L, P + L] bool, lengths [Q],
    starts)``, ``starts[b]`` being the offset of candidate b's first token after the suffix.
    A candidate branch sees the prefix, the suffix and its own earlier tokens, at the positions
    right after the suffix; padding attends to the prefix only (no empty softmax rows).
    """
    from torch.nn.utils.rnn import pad_sequence

    P = prefix_length
    # The candidates laid end to end: token, branch number, and offset of its branch's first token.
    tokens = [t for name in CANDIDATES for t in cands.ids[name]]
    branch_of = [b for b, name in enumerate(CANDIDATES) for _ in cands.ids[name]]
    starts = [sum(len(cands.ids[c]) for c in CANDIDATES[:b]) for b in range(len(CANDIDATES))]
    width = len(tokens)
    lengths = torch.tensor([len(s) for s in suffixes])
    L = int(lengths.max()) + width
    Q = len(suffixes)

    rel = torch.arange(L)[None, :] - lengths[:, None]  # [Q, L]: position relative to the suffix end
    in_suffix = rel < 0
    in_branch = (rel >= 0) & (rel < width)
    slot = rel.clamp(0, width - 1)
    branch = torch.where(in_branch, torch.tensor(branch_of)[slot], -1)
    input_ids = torch.full((Q, L), pad, dtype=torch.long)
    input_ids[:, : L - width] = pad_sequence(list(suffixes), batch_first=True, padding_value=pad)
    input_ids = torch.where(in_branch, torch.tensor(tokens)[slot], input_ids)
    branch_rel = rel - torch.tensor(starts)[branch.clamp(min=0)]  # offset inside its own branch
    positions = P + torch.where(in_suffix, torch.arange(L)[None, :], torch.where(in_branch, lengths[:, None] + branch_rel, 0))

    j = torch.arange(L)[None, :, None]
    k = torch.arange(L)[None, None, :]
    causal = k <= j
    qb, kb = branch[:, :, None], branch[:, None, :]
    text = (in_suffix[:, :, None] & in_suffix[:, None, :] & causal) | ((qb >= 0) & in_suffix[:, None, :]) | ((qb >= 0) & (qb == kb) & causal)
    allowed = torch.cat([torch.ones((Q, L, P), dtype=torch.bool), text], dim=2)[:, None]  # [Q, 1, L, P + L]
    return input_ids, positions, allowed, lengths, starts


def suffix_chains(vlm, prefix_kv, owners: torch.Tensor, suffixes: list[torch.Tensor], cands: Candidates) -> list[dict[str, list[int]]]:
    """Greedy chains of every candidate after every suffix, in ONE forward against cached prefixes.

    prefix_kv: per layer (keys, values) ``[G, H, P, D]``; owners: ``[Q]`` long, the prefix each
    suffix continues. Each row holds both candidates as branches (:func:`branch_rows`), so one
    row scores both, each seeing what it would see if it were the only continuation.
    """
    from transformers import DynamicCache

    input_ids, positions, allowed, lengths, starts = branch_rows(suffixes, cands, vlm.pad_token_id, prefix_kv[0][0].shape[2])
    if vlm.attention_implementation == "sdpa":
        mask = allowed
    else:  # eager adds the mask to the scores
        dtype = vlm.model.get_input_embeddings().weight.dtype
        mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)

    index = owners.to(prefix_kv[0][0].device)
    cache = DynamicCache(ddp_cache_data=[(k_[index], v_[index]) for k_, v_ in prefix_kv], config=vlm.model.config)
    first = int(lengths.min()) - 1
    out = vlm.model(
        input_ids=input_ids.to(vlm.device),
        attention_mask=mask.to(vlm.device),
        position_ids=positions.to(vlm.device),
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=input_ids.shape[1] - first,
    )
    predicted = out.logits.argmax(-1).cpu()  # [Q, L - first]; column c is position first + c
    chains = {}
    for b, name in enumerate(CANDIDATES):
        # Read at the suffix's last token (predicts the first candidate token), then at each token of the branch.
        read = torch.cat([lengths[:, None] - 1, lengths[:, None] + starts[b] + torch.arange(len(cands.ids[name]))[None, :]], dim=1)
        chains[name] = predicted.gather(1, read - first).tolist()
    return [{name: chains[name][q] for name in CANDIDATES} for q in range(len(suffixes))]


@torch.inference_mode()
def settle_with_prefix_cache(vlm, images, prompts, keys, cands, batch_size) -> list[str | None]:
    """Settled answers via shared image prefixes; None where the prefix cannot be shared."""
    answers: list[str | None] = [None] * len(prompts)
    for batch in prefix_batches(vlm, images, prompts, keys, batch_size):
        for i, chain in zip(batch.questions, suffix_chains(vlm, batch.prefix_kv, batch.owners, batch.suffixes, cands)):
            answers[i] = settle(chain, cands)
    return answers


@torch.inference_mode()
def settle_with_full_forwards(vlm, images, prompts, cands, batch_size) -> list[str | None]:
    """Settled answers from full teacher-forced forwards (families without the prefix cache)."""
    answers: list[str | None] = []
    for start in range(0, len(prompts), batch_size):
        ims, ps = list(images[start : start + batch_size]), list(prompts[start : start + batch_size])
        n = len(ps)
        logits, _, _ = vlm.response_logits(ims + ims, ps + ps, [c for c in CANDIDATES for _ in range(n)])
        predicted = logits.argmax(-1).cpu()
        for q in range(n):
            chains = {c: predicted[j * n + q, : len(cands.ids[c]) + 1].tolist() for j, c in enumerate(CANDIDATES)}
            answers.append(settle(chains, cands))
    return answers


def answer_yes_no(
    vlm,
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    *,
    image_keys: Sequence[Hashable] | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 32,
    period_settles: bool = True,
    on_progress: Progress = no_progress,
) -> tuple[list[str], list[bool]]:
    """Greedy answers to yes/no prompts: one forward where it settles the answer, else generation.

    ``images[i]`` belongs to ``prompts[i]``; questions sharing an ``image_keys`` value (default:
    the same image object) share one prefix pass. ``batch_size`` is questions per forward. Returns the answer texts and, per question, whether it was settled by the
    forward pass (True) or generated (False). ``period_settles``: a "." after the candidate settles
    the answer too (right for POPE's official parser, which reads nothing after the first ".").
    """
    if not prompts:
        return [], []
    keys = list(image_keys) if image_keys is not None else [id(images[i]) for i in range(len(prompts))]
    cands = answer_candidates(vlm, images[0], prompts[0], period_settles)
    settled: list[str | None] = [None] * len(prompts)
    if cands is not None and max(len(ids) for ids in cands.ids.values()) < max_new_tokens:
        if vlm.supports_prefix_cache:
            settled = settle_with_prefix_cache(vlm, images, prompts, keys, cands, batch_size)
        else:
            settled = settle_with_full_forwards(vlm, images, prompts, cands, batch_size)
    on_progress(sum(a is not None for a in settled))
    rest = [i for i, a in enumerate(settled) if a is None]
    generated = generate_answers(
        vlm, Subset(images, rest), [prompts[i] for i in rest], batch_size=batch_size, max_new_tokens=max_new_tokens, on_progress=on_progress
    )
    texts = list(settled)
    for i, text in zip(rest, generated):
        texts[i] = text
    return texts, [a is not None for a in settled]


