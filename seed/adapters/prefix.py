"""Shared image prefixes: run each image's prompt up to its last image token once, and every
question about that image as a suffix over the cached keys and values.

The POPE fast path (:mod:`seed.evaluation.yes_no`) and the self-probe (:func:`seed.identify.yes_margin`)
both ask many short questions about one image behind a long image prefix (576 tokens on
LLaVA-1.5). :func:`prefix_batches` groups the questions by image, splits each prompt into its
prefix and suffix (checked against the processor's own encoding), runs the prefixes and yields
the suffixes to score with the cache; :func:`suffix_logits` reads the next-token logits after
each suffix.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass

import torch


@dataclass
class PrefixBatch:
    """Questions (indices into the caller's prompts) whose suffixes continue cached prefixes."""

    questions: list[int]
    prefix_kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values) [G, H, P, D]
    owners: torch.Tensor  # [Q] long: the prefix each suffix continues
    suffixes: list[torch.Tensor]


def prefix_batches(vlm, images: Sequence, prompts: Sequence[str], keys: Sequence[Hashable], batch_size: int) -> Iterator[PrefixBatch]:
    """Batches of at most ``batch_size`` questions over shared image prefixes; questions sharing a
    key share one prefix pass. Questions whose prompt cannot be split are not yielded."""
    image_token = vlm.image_token_id
    by_image: dict[Hashable, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        by_image[key].append(i)
    groups = list(by_image.values())
    g = 0
    while g < len(groups):
        # A chunk: whole images until it holds batch_size questions (at least one image).
        chunk, count = [], 0
        while g < len(groups) and (not chunk or count + len(groups[g]) <= batch_size):
            chunk.append(groups[g])
            count += len(groups[g])
            g += 1
        split = split_prompts(vlm, [images[qs[0]] for qs in chunk], [[prompts[i] for i in qs] for qs in chunk], image_token)
        by_signature: dict[tuple, list] = defaultdict(list)
        for qs, parts in zip(chunk, split):
            if parts is not None:
                by_signature[batch_signature(parts[0])].append((qs, parts))
        for members in by_signature.values():
            prefix = stack_inputs([parts[0] for _, parts in members])
            prefix = {k: v.to(vlm.device, dtype=vlm.dtype if v.is_floating_point() else None) for k, v in prefix.items()}
            out = vlm.model(**prefix, use_cache=True, logits_to_keep=1)
            prefix_kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
            questions = [(i, m, suffix) for m, (qs, parts) in enumerate(members) for i, suffix in zip(qs, parts[1])]
            for start in range(0, len(questions), batch_size):
                part = questions[start : start + batch_size]
                yield PrefixBatch([i for i, _, _ in part], prefix_kv, torch.tensor([m for _, m, _ in part]), [s for _, _, s in part])


def suffix_logits(vlm, batch: PrefixBatch) -> torch.Tensor:
    """The next-token logits after each suffix of ``batch``, [Q, V] float32."""
    from torch.nn.utils.rnn import pad_sequence
    from transformers import DynamicCache

    P = batch.prefix_kv[0][0].shape[2]
    lengths = torch.tensor([len(s) for s in batch.suffixes])
    ids = pad_sequence(list(batch.suffixes), batch_first=True, padding_value=vlm.pad_token_id)  # right-padded
    mask = torch.cat([torch.ones(len(ids), P, dtype=torch.long), (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()], dim=1)
    index = batch.owners.to(batch.prefix_kv[0][0].device)
    cache = DynamicCache(ddp_cache_data=[(k[index], v[index]) for k, v in batch.prefix_kv], config=vlm.model.config)
    out = vlm.model(
        input_ids=ids.to(vlm.device),
        attention_mask=mask.to(vlm.device),
        position_ids=(P + torch.arange(ids.shape[1]))[None].expand(len(ids), -1).to(vlm.device),
        past_key_values=cache,
        use_cache=True,
    )
    return out.logits[torch.arange(len(ids)), lengths - 1].float()


def split_prompts(vlm, images: list, prompt_lists: list[list[str]], image_token: int) -> list:
    """Several images' prompts → per image (prefix inputs for one row, suffix ids per prompt), or None.

    The prefix runs through the last image token. Each image is processed once, with its first
    prompt, in one processor call. The other prompts' suffixes are their chat texts tokenised
    without the image — the placeholder is a special token, so what follows it tokenises on
    its own — behind whatever the processor's expansion puts after the last image token. That
    is checked on each first prompt; where it fails, or where per-image tensors (e.g. tiles)
    cannot be told apart in the batch, the image goes the slow way (:func:`split_by_encoding`).
    """
    n = len(images)
    batch = vlm.encode(images, [ps[0] for ps in prompt_lists])
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    per_image = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask") and torch.is_tensor(v)}
    separable = all(v.shape[0] == n for v in per_image.values())
    texts = prompt_texts(vlm, [p for ps in prompt_lists for p in ps])
    plain = iter(vlm.tokenizer(texts)["input_ids"])
    out = []
    for i, prompts in enumerate(prompt_lists):
        tails = [next(plain) for _ in prompts]
        row = ids[i][mask[i]]
        found = (row == image_token).nonzero()
        suffixes = None
        if separable and len(found):
            end = int(found[-1]) + 1
            suffixes = text_suffixes(tails, image_token, row[end:])
        if suffixes is None:
            out.append(split_by_encoding(vlm, images[i], prompts, image_token))
            continue
        start = ids.shape[1] - len(row)
        inputs = {"input_ids": row[None, :end], "attention_mask": torch.ones_like(row[None, :end])}
        for key, value in per_image.items():
            inputs[key] = value[i : i + 1, start : start + end] if value.shape[:2] == ids.shape else value[i : i + 1]
        out.append((inputs, suffixes))
    return out


def prompt_texts(vlm, prompts: list[str]) -> list[str]:
    """``vlm.build_prompt`` of each prompt, rendering the chat template once when it is a plain
    substitution (checked on the first prompt)."""
    marker = "SEEDPROMPTMARKER"
    template = vlm.build_prompt(marker)
    if template.count(marker) == 1 and template.replace(marker, prompts[0]) == vlm.build_prompt(prompts[0]):
        return [template.replace(marker, p) for p in prompts]
    return [vlm.build_prompt(p) for p in prompts]


def text_suffixes(tokenised: list[list[int]], image_token: int, first_suffix: torch.Tensor) -> list[torch.Tensor] | None:
    """Suffix ids of every prompt from its text-only tokenisation, checked against the first one."""
    tails = []
    for ids in tokenised:
        marks = [i for i, t in enumerate(ids) if t == image_token]
        if not marks:
            return None
        tails.append(ids[marks[-1] + 1 :])
    bridge = len(first_suffix) - len(tails[0])
    if bridge < 0 or first_suffix[bridge:].tolist() != tails[0]:
        return None
    head = first_suffix[:bridge]
    return [first_suffix] + [torch.cat([head, torch.tensor(t, dtype=head.dtype)]) for t in tails[1:]]


def split_by_encoding(vlm, image, prompts: list[str], image_token: int):
    """:func:`split_prompts` the slow way: each prompt encoded with its own copy of the image;
    per-image tensors (pixel values, ...) are then cut to one image's share."""
    batch = vlm.encode([image] * len(prompts), prompts)
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    rows = [row[m] for row, m in zip(ids, mask)]
    image_positions = (rows[0] == image_token).nonzero()
    if len(image_positions) == 0:
        return None
    end = int(image_positions[-1]) + 1
    prefix = rows[0][:end]
    if any(len(r) <= end or not torch.equal(r[:end], prefix) for r in rows):
        return None
    inputs = {"input_ids": prefix[None], "attention_mask": torch.ones_like(prefix)[None]}
    k = len(prompts)
    for key, value in batch.items():
        if key in ("input_ids", "attention_mask") or not torch.is_tensor(value):
            continue
        if value.shape[:2] == ids.shape:  # per-token tensors: cut like input_ids
            start = ids.shape[1] - len(rows[0])
            inputs[key] = value[:1, start : start + end]
        elif value.shape[0] % k == 0:
            inputs[key] = value[: value.shape[0] // k]
        else:
            return None
    return inputs, [r[end:] for r in rows]


def stack_inputs(inputs: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([x[k] for x in inputs]) for k in inputs[0]}


def batch_signature(inputs: dict[str, torch.Tensor]) -> tuple:
    """Prefixes batch together when every tensor matches in all but the first dimension."""
    return tuple((k, tuple(v.shape[1:])) for k, v in sorted(inputs.items()))
