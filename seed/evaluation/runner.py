"""The one model-running loop of every benchmark: images and prompts in, answers or captions out.

Three ways to answer, all through :class:`~seed.adapters.VisionLanguageModel`:

- :func:`answer_yes_no` — greedy yes/no answers, mostly from ONE forward pass. Each image's
  prefix (the prompt up to its last image token) runs once and its KV cache, gathered along
  the batch, serves all of its questions. Each question's suffix is followed by both
  candidates, " Yes" and " No" (tokenised as :meth:`encode` tokenises a response), as two
  branches of one row: a 4-D mask lets each branch see the prefix, the suffix and itself
  only, at the positions it would have alone — two rows' worth of answers for one row's
  compute. The logits at the question's last token give the greedy first token; the logits
  along and after a candidate give the greedy tokens that follow it. When they spell exactly
  the candidate and then EOS, that is what greedy generation returns, and the answer is
  settled; under the official parser a "." after the candidate settles it too (the parser
  reads nothing after the first "."; the text kept is then the candidate plus "."). The
  rest is generated. Families without the prefix-cache path (remote-code InternVL2), or
  attention kernels that ignore 4-D masks, score candidates with full forwards
  (:meth:`response_logits`, two rows per question).
- :func:`generate_answers` — batched generation, greedy or sampled. Sampling seeds torch
  from ``(seed, batch index)`` before each batch, so a run is reproducible for a given seed
  and batch size and does not depend on what ran before it.
- :class:`ContrastiveDecoding` — VCD (Leng et al., CVPR 2024) as a ``LogitsProcessor``: each
  step's scores become ``log p̃`` with ``p̃ = contrastive_purge(z_image, z_null, α, β)``, the
  null logits coming from the same tokens with the image diffused to step 500.

:func:`evaluate_pope` and :func:`evaluate_chair_model` wire these to question files, images,
scoring and output files; the CLI calls only them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from seed.errors import SeedError
from seed.evaluation import pope as P
from seed.io import load_coco, md5_file, write_jsonl

GREEDY_SUFFIX = "\nAnswer the question using a single word or phrase."
SAMPLING_SUFFIX = " Please answer this question with one word."
PROTOCOLS = {"greedy": GREEDY_SUFFIX, "sampling": SAMPLING_SUFFIX}
DEFAULT_SEEDS = (1, 2, 3)
CAPTION_PROMPT = "Please describe this image in detail."
CANDIDATES = ("Yes", "No")
# "greedy" = the model's own distribution (argmax or sampled, as the protocol says); further
# decodings (e.g. "purified") join this tuple and _logits_processor below.
DECODINGS = ("greedy", "vcd", "purified")
VCD_NOISE_STEP = 500
# Families whose forward takes pixel_values with a standard transformers KV cache.
PREFIX_CACHE_FAMILIES = frozenset({"llava", "internvl"})

Progress = Callable[[int], None]


def _no_progress(n: int) -> None:
    pass


# --------------------------------------------------------------------------- images
def open_image(path: str | Path) -> Image.Image:
    """An RGB image; a missing or unreadable file is a one-line SeedError naming it."""
    path = Path(path)
    if not path.is_file():
        raise SeedError(f"{path}: no such image file")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise SeedError(f"{path}: cannot read the image ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def check_images(folder: str | Path, names: Sequence[str | None]) -> None:
    """Refuse (before any model is loaded) a missing folder, a missing name, or a file PIL cannot identify."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SeedError(f"--images {folder}: no such folder")
    for name in dict.fromkeys(names):
        if not name:
            raise SeedError("a question has no image file name")
        path = folder / name
        if not path.is_file():
            raise SeedError(f"{path}: no such image file")
        try:
            with Image.open(path) as image:
                image.verify()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise SeedError(f"{path}: cannot read the image ({type(e).__name__})") from None


class LazyImages(Sequence):
    """Images of a folder by file name, opened on access and the last few kept."""

    def __init__(self, folder: str | Path, names: Sequence[str]):
        self.folder, self.names = Path(folder), list(names)
        self._open = functools.lru_cache(maxsize=64)(lambda name: open_image(self.folder / name))

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self._open(self.names[i])


class _Subset(Sequence):
    """``items[index[0]], items[index[1]], ...`` without reading them all (lazy images stay lazy)."""

    def __init__(self, items: Sequence, index: Sequence[int]):
        self.items, self.index = items, list(index)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.items[j] for j in self.index[i]]
        return self.items[self.index[i]]


# --------------------------------------------------------------------------- decoding
@dataclass(frozen=True)
class Decoding:
    """How each next token is chosen: ``greedy`` (the model as is), ``vcd`` (α, β), or ``purified``
    (the decoding-time twin of ``seed purify``: :class:`seed.purify.PurifiedDecoding`)."""

    name: str = "greedy"
    alpha: float = 1.0
    beta: float = 0.1

    def __post_init__(self):
        if self.name not in DECODINGS:
            raise SeedError(f"--decoding must be one of {', '.join(DECODINGS)}, not {self.name!r}")
        if self.name == "vcd":
            if not self.alpha >= 0:
                raise SeedError(f"--vcd-alpha must be >= 0, not {self.alpha}")
            if not 0 <= self.beta <= 1:
                raise SeedError(f"--vcd-beta must be in [0, 1], not {self.beta}")

    def manifest(self) -> dict:
        if self.name == "vcd":
            return {"name": "vcd", "alpha": self.alpha, "beta": self.beta, "null_image": f"diffusion noise, step {VCD_NOISE_STEP}"}
        return {"name": self.name}


class ContrastiveDecoding:
    """VCD as a transformers logits processor for ONE batch of :meth:`vlm.generate`.

    The null branch is the same left-padded batch (``vlm.encode(images, prompts)``, exactly what
    ``generate`` encodes) with its pixel values diffused to step 500 (fixed noise seed), run
    beside the main branch with its own KV cache: each call feeds it the tokens generated
    since the last call. Returns ``log p̃`` (−inf outside VCD's plausibility set), so greedy
    takes argmax p̃ and sampling draws from p̃.
    """

    def __init__(self, vlm, images: Sequence[Image.Image], prompts: Sequence[str], alpha: float, beta: float):
        from seed.adapters import diffusion_noise

        if vlm.family not in PREFIX_CACHE_FAMILIES:
            raise SeedError(f"--decoding vcd is not supported for {vlm.family} models (it needs llava-style pixel_values and a KV cache)")
        self.vlm, self.alpha, self.beta = vlm, alpha, beta
        batch = vlm.encode(list(images), list(prompts))
        batch["pixel_values"] = diffusion_noise(batch["pixel_values"], VCD_NOISE_STEP, torch.Generator().manual_seed(0))
        self.batch = batch
        self.prompt_length = batch["input_ids"].shape[1]
        self.mask = batch["attention_mask"]
        self.cache = None
        self.seen = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        from seed.purge import contrastive_purge

        if self.cache is None:
            if not torch.equal(input_ids[:, : self.prompt_length], self.batch["input_ids"]):
                raise RuntimeError("VCD: generate() was given another prompt batch than the null branch")
            inputs = dict(self.batch)
            new = self.prompt_length
        else:
            new = input_ids.shape[1] - self.seen
            self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], new)], dim=1)
            inputs = {"input_ids": input_ids[:, self.seen :], "attention_mask": self.mask}
        # Position ids as generate() makes them for left-padded rows.
        positions = (self.mask.long().cumsum(-1) - 1).masked_fill(self.mask == 0, 0)[:, -new:]
        out = self.vlm.model(**inputs, position_ids=positions, past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        self.cache, self.seen = out.past_key_values, input_ids.shape[1]
        self.null_logits = out.logits[:, -1]  # this step's null-image logits [B, V]
        probs = contrastive_purge(scores, self.null_logits, self.alpha, self.beta)
        return torch.log(probs).to(scores.dtype)


def _logits_processor(vlm, decoding: Decoding, images, prompts, purified=None):
    if decoding.name == "vcd":
        return ContrastiveDecoding(vlm, images, prompts, decoding.alpha, decoding.beta)
    if decoding.name == "purified":
        return purified.processor(images, prompts)
    return None


# --------------------------------------------------------------------------- generation
def batch_seed(seed: int, batch_index: int) -> int:
    """The torch seed of one sampled batch: a hash of (run seed, batch index)."""
    return int(np.random.SeedSequence([seed, batch_index]).generate_state(1)[0])


def generate_answers(
    vlm,
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    *,
    batch_size: int = 32,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    seed: int | None = None,
    decoding: Decoding = Decoding(),
    on_progress: Progress = _no_progress,
) -> list[str]:
    """Batched :meth:`vlm.generate` over (image, prompt) pairs, in order.

    Sampling uses T=1, top_p=1 and seeds torch with :func:`batch_seed` ``(seed, i)`` before
    batch ``i``; ``seed`` is required then.
    """
    if do_sample and seed is None:
        raise SeedError("sampling needs a seed")
    purified = None
    if decoding.name == "purified":
        from seed.purify import PurifiedDecoding

        purified = PurifiedDecoding(vlm)
    texts: list[str] = []
    for b, start in enumerate(range(0, len(prompts), batch_size)):
        ims, ps = list(images[start : start + batch_size]), list(prompts[start : start + batch_size])
        texts += vlm.generate(
            ims,
            ps,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=1.0,
            top_p=1.0,
            seed=batch_seed(seed, b) if do_sample else None,
            logits_processor=_logits_processor(vlm, decoding, ims, ps, purified),
            num_beams=purified.config.repair_beams if purified is not None and not do_sample else 1,
        )
        on_progress(len(ps))
    return texts


# --------------------------------------------------------------------------- yes/no fast path
@dataclass(frozen=True)
class _Candidates:
    """Token ids of each candidate answer (no EOS) and what may follow it to settle the answer."""

    ids: dict[str, list[int]]
    enders: dict[str, dict[int, list[int]]]  # candidate → {next token id: ids kept in the text}
    texts: dict[tuple[int, ...], str]


def _candidates(vlm, image: Image.Image, prompt: str, parser: str) -> _Candidates | None:
    """Candidate ids as :meth:`vlm.encode` tokenises a response after this prompt.

    Every prompt ends in the same generation prompt, so one image/prompt serves the run.
    None when the candidates are unknown words or do not start with distinct tokens.
    """
    gen = vlm.model.generation_config
    eos = gen.eos_token_id if gen.eos_token_id is not None else vlm.tokenizer.eos_token_id
    stops = set(eos if isinstance(eos, (list, tuple)) else [eos])

    def response_ids(text: str) -> list[int]:
        batch = vlm.encode([image], [prompt], responses=[text])
        return batch["input_ids"][0][batch["response_mask"][0]].tolist()[:-1]  # drop the EOS

    ids, enders, texts = {}, {}, {}
    for name in CANDIDATES:
        ids[name] = response_ids(name)
        enders[name] = {s: ids[name] for s in stops}
        if parser == "official":  # the official parser reads nothing after the first "."
            with_period = response_ids(name + ".")
            if len(with_period) == len(ids[name]) + 1 and with_period[:-1] == ids[name]:
                enders[name].setdefault(with_period[-1], with_period)
        for kept in enders[name].values():
            texts[tuple(kept)] = vlm.tokenizer.decode(kept, skip_special_tokens=True).strip()
    unknown = vlm.tokenizer.unk_token_id
    first = [c[0] for c in ids.values() if c]
    if len(first) < len(ids) or len(set(first)) < len(first) or any(unknown in c for c in ids.values()):
        return None  # the vocabulary cannot spell the candidates apart: generate everything
    return _Candidates(ids, enders, texts)


def _settle(chains: Mapping[str, list[int]], cands: _Candidates) -> str | None:
    """The answer text if a candidate's greedy chain is the candidate followed by an ender.

    ``chains[c]`` are the argmax tokens predicted at the question's last token and at every
    token of candidate ``c`` (length ``len(ids[c]) + 1``).
    """
    for name, chain in chains.items():
        ids = cands.ids[name]
        if chain[: len(ids)] == ids and chain[len(ids)] in cands.enders[name]:
            return cands.texts[tuple(cands.enders[name][chain[len(ids)]])]
    return None


def _image_token_id(vlm) -> int:
    config = vlm.model.config
    for key in ("image_token_id", "image_token_index"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    raise SeedError(f"{vlm.name_or_path}: the config names no image token")


def _split_chunk(vlm, images: list, prompt_lists: list[list[str]], image_token: int) -> list:
    """Several images' prompts → per image (prefix inputs for one row, suffix ids per prompt), or None.

    The prefix runs through the last image token. Each image is processed once, with its first
    prompt, in one processor call. The other prompts' suffixes are their chat texts tokenised
    without the image — the placeholder is a special token, so what follows it tokenises on
    its own — behind whatever the processor's expansion puts after the last image token. That
    is checked on each first prompt; where it fails, or where per-image tensors (e.g. tiles)
    cannot be told apart in the batch, the image goes the slow way (:func:`_split_by_encoding`).
    """
    n = len(images)
    batch = vlm.encode(images, [ps[0] for ps in prompt_lists])
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    per_image = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask") and torch.is_tensor(v)}
    separable = all(v.shape[0] == n for v in per_image.values())
    texts = _prompt_texts(vlm, [p for ps in prompt_lists for p in ps])
    plain = iter(vlm.tokenizer(texts)["input_ids"])
    out = []
    for i, prompts in enumerate(prompt_lists):
        tails = [next(plain) for _ in prompts]
        row = ids[i][mask[i]]
        found = (row == image_token).nonzero()
        suffixes = None
        if separable and len(found):
            end = int(found[-1]) + 1
            suffixes = _text_suffixes(tails, image_token, row[end:])
        if suffixes is None:
            out.append(_split_by_encoding(vlm, images[i], prompts, image_token))
            continue
        start = ids.shape[1] - len(row)
        inputs = {"input_ids": row[None, :end], "attention_mask": torch.ones_like(row[None, :end])}
        for key, value in per_image.items():
            inputs[key] = value[i : i + 1, start : start + end] if value.shape[:2] == ids.shape else value[i : i + 1]
        out.append((inputs, suffixes))
    return out


def _prompt_texts(vlm, prompts: list[str]) -> list[str]:
    """``vlm.build_prompt`` of each prompt, rendering the chat template once when it is a plain
    substitution (checked on the first prompt)."""
    marker = "SEEDPROMPTMARKER"
    template = vlm.build_prompt(marker)
    if template.count(marker) == 1 and template.replace(marker, prompts[0]) == vlm.build_prompt(prompts[0]):
        return [template.replace(marker, p) for p in prompts]
    return [vlm.build_prompt(p) for p in prompts]


def _text_suffixes(tokenised: list[list[int]], image_token: int, first_suffix: torch.Tensor) -> list[torch.Tensor] | None:
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


def _split_by_encoding(vlm, image, prompts: list[str], image_token: int):
    """:func:`_split_prompts` the slow way: each prompt encoded with its own copy of the image;
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


def _stack(inputs: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([x[k] for x in inputs]) for k in inputs[0]}


def _signature(inputs: dict[str, torch.Tensor]) -> tuple:
    """Prefixes batch together when every tensor matches in all but the first dimension."""
    return tuple((k, tuple(v.shape[1:])) for k, v in sorted(inputs.items()))


def _attention_implementation(vlm) -> str:
    return getattr(vlm.model.config.get_text_config(), "_attn_implementation", None) or "eager"


def _suffix_chains(vlm, prefix_kv, owners: torch.Tensor, suffixes: list[torch.Tensor], cands: _Candidates) -> list[dict[str, list[int]]]:
    """Greedy chains of every candidate after every suffix, in ONE forward against cached prefixes.

    prefix_kv: per layer (keys, values) ``[G, H, P, D]``; owners: ``[Q]`` long, the prefix each
    suffix continues. Row q holds ``suffix_q, Yes, No`` then right padding. A 4-D mask makes
    each candidate a branch of its own: it sees the prefix, the suffix and its own earlier
    tokens, and takes the positions right after the suffix — what it would see if it were
    the only continuation — so one row scores both. Padding attends to the prefix only (no
    empty softmax rows); nothing real attends to it.
    """
    from torch.nn.utils.rnn import pad_sequence
    from transformers import DynamicCache

    P = prefix_kv[0][0].shape[2]
    pad = vlm.tokenizer.pad_token_id if vlm.tokenizer.pad_token_id is not None else 0
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
    if _attention_implementation(vlm) == "sdpa":
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
        logits_to_keep=L - first,
    )
    predicted = out.logits.argmax(-1).cpu()  # [Q, L - first]; column c is position first + c
    chains = {}
    for b, name in enumerate(CANDIDATES):
        # Read at the suffix's last token (predicts the first candidate token), then at each token of the branch.
        read = torch.cat([lengths[:, None] - 1, lengths[:, None] + starts[b] + torch.arange(len(cands.ids[name]))[None, :]], dim=1)
        chains[name] = predicted.gather(1, read - first).tolist()
    return [{name: chains[name][q] for name in CANDIDATES} for q in range(Q)]


@torch.inference_mode()
def _first_pass_cached(vlm, images, prompts, keys, cands, batch_size, on_progress) -> list[str | None]:
    """Settled answers via shared image prefixes; None where the prefix cannot be shared."""
    image_token = _image_token_id(vlm)
    by_image: dict[Hashable, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        by_image[key].append(i)
    answers: list[str | None] = [None] * len(prompts)
    groups = list(by_image.values())
    g = 0
    while g < len(groups):
        # A chunk: whole images until it holds batch_size questions (at least one image).
        chunk, count = [], 0
        while g < len(groups) and (not chunk or count + len(groups[g]) <= batch_size):
            chunk.append(groups[g])
            count += len(groups[g])
            g += 1
        split = _split_chunk(vlm, [images[qs[0]] for qs in chunk], [[prompts[i] for i in qs] for qs in chunk], image_token)
        by_signature: dict[tuple, list] = defaultdict(list)
        for qs, parts in zip(chunk, split):
            if parts is not None:
                by_signature[_signature(parts[0])].append((qs, parts))
        for members in by_signature.values():
            prefix = _stack([parts[0] for _, parts in members])
            prefix = {k: v.to(vlm.device, dtype=vlm.dtype if v.is_floating_point() else None) for k, v in prefix.items()}
            out = vlm.model(**prefix, use_cache=True, logits_to_keep=1)
            prefix_kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
            questions = [(i, m, suffix) for m, (qs, parts) in enumerate(members) for i, suffix in zip(qs, parts[1])]
            for start in range(0, len(questions), batch_size):
                part = questions[start : start + batch_size]
                owners = torch.tensor([m for _, m, _ in part])
                chains = _suffix_chains(vlm, prefix_kv, owners, [s for _, _, s in part], cands)
                for (i, _, _), chain in zip(part, chains):
                    answers[i] = _settle(chain, cands)
        on_progress(count)
    return answers


@torch.inference_mode()
def _first_pass_full(vlm, images, prompts, cands, batch_size, on_progress) -> list[str | None]:
    """Settled answers from full teacher-forced forwards (families without the prefix cache)."""
    answers: list[str | None] = []
    for start in range(0, len(prompts), batch_size):
        ims, ps = list(images[start : start + batch_size]), list(prompts[start : start + batch_size])
        n = len(ps)
        logits, _, _ = vlm.response_logits(ims + ims, ps + ps, [c for c in CANDIDATES for _ in range(n)])
        predicted = logits.argmax(-1).cpu()
        for q in range(n):
            chains = {c: predicted[j * n + q, : len(cands.ids[c]) + 1].tolist() for j, c in enumerate(CANDIDATES)}
            answers.append(_settle(chains, cands))
        on_progress(n)
    return answers


def answer_yes_no(
    vlm,
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    *,
    image_keys: Sequence[Hashable] | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 32,
    parser: str = "official",
    on_progress: Progress = _no_progress,
) -> tuple[list[str], list[bool]]:
    """Greedy answers to yes/no prompts: one forward where it settles the answer, else generation.

    ``images[i]`` belongs to ``prompts[i]``; questions sharing an ``image_keys`` value (default:
    the same image object) share one prefix pass. ``batch_size`` is questions per forward. Returns the answer texts and, per question, whether it was settled by the
    forward pass (True) or generated (False). ``parser`` decides whether a "." may settle.
    """
    P.parse_answer("", parser)
    if not prompts:
        return [], []
    keys = list(image_keys) if image_keys is not None else [id(images[i]) for i in range(len(prompts))]
    cands = _candidates(vlm, images[0], prompts[0], parser)
    settled: list[str | None] = [None] * len(prompts)
    if cands is not None and max(len(ids) for ids in cands.ids.values()) < max_new_tokens:
        if vlm.family in PREFIX_CACHE_FAMILIES and _attention_implementation(vlm) in ("sdpa", "eager"):
            settled = _first_pass_cached(vlm, images, prompts, keys, cands, batch_size, lambda n: None)
        else:
            settled = _first_pass_full(vlm, images, prompts, cands, batch_size, lambda n: None)
    on_progress(sum(a is not None for a in settled))
    rest = [i for i, a in enumerate(settled) if a is None]
    generated = generate_answers(
        vlm, _Subset(images, rest), [prompts[i] for i in rest], batch_size=batch_size, max_new_tokens=max_new_tokens, on_progress=on_progress
    )
    texts = list(settled)
    for i, text in zip(rest, generated):
        texts[i] = text
    return texts, [a is not None for a in settled]


# --------------------------------------------------------------------------- POPE
def pope_prompt(question: str, protocol: str) -> str:
    """The user prompt of a POPE question under a protocol (pope.md)."""
    if protocol not in PROTOCOLS:
        raise SeedError(f"--protocol must be greedy or sampling, not {protocol!r}")
    return question + PROTOCOLS[protocol]


def answer_pope(
    vlm,
    questions: Sequence[dict],
    image_dir: str | Path,
    *,
    protocol: str = "greedy",
    seed: int | None = None,
    decoding: Decoding = Decoding(),
    parser: str = "official",
    batch_size: int = 32,
    max_new_tokens: int = 32,
    fast: bool = True,
    on_progress: Progress = _no_progress,
) -> tuple[list[dict], dict[str, int]]:
    """Answer POPE questions → (answer records ``question_id, prompt, text`` in question order,
    ``{"first_token": n, "generated": n, "cut_at_period": n}``).

    greedy protocol, greedy decoding, ``fast``: :func:`answer_yes_no`; otherwise generation
    (sampling needs ``seed``; see :func:`generate_answers`).
    """
    prompts = [pope_prompt(q["text"], protocol) for q in questions]
    names = [q["image"] for q in questions]
    images = LazyImages(image_dir, names)
    if protocol == "greedy" and decoding.name == "greedy" and fast:
        texts, settled = answer_yes_no(
            vlm, images, prompts, image_keys=names, batch_size=batch_size, max_new_tokens=max_new_tokens, parser=parser, on_progress=on_progress
        )
    else:
        texts = generate_answers(
            vlm,
            images,
            prompts,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            do_sample=protocol == "sampling",
            seed=seed,
            decoding=decoding,
            on_progress=on_progress,
        )
        settled = [False] * len(texts)
    records = [{"question_id": q["question_id"], "prompt": p, "text": t} for q, p, t in zip(questions, prompts, texts)]
    counts = {"first_token": sum(settled), "generated": len(settled) - sum(settled)}
    # Candidates never end in ".", so a settled text that does was cut at the first ".".
    counts["cut_at_period"] = sum(s and t.endswith(".") for s, t in zip(settled, texts))
    return records, counts


@dataclass(frozen=True)
class ModelSpec:
    """What to load: the arguments of :func:`seed.adapters.load` (``model`` None = the world's)."""

    model: str | None = None
    adapter: str | None = None
    device: str = "auto"
    dtype: str | None = None
    load_in_4bit: bool = False
    load_in_8bit: bool = False
    trust_remote_code: bool = False

    def load(self):
        from seed.adapters import load

        return load(
            self.model,
            adapter=self.adapter,
            device=self.device,
            dtype=self.dtype,
            load_in_4bit=self.load_in_4bit,
            load_in_8bit=self.load_in_8bit,
            trust_remote_code=self.trust_remote_code,
        )


def _jsonl_md5(records: Sequence[dict]) -> str:
    """md5 of the records as :func:`pope.write_questions` writes them (same as md5 of that file)."""
    h = hashlib.md5()
    for q in records:
        h.update((json.dumps({k: q[k] for k in ("question_id", "image", "text", "label")}) + "\n").encode("utf-8"))
    return h.hexdigest()


def _pope_questions(split: str, questions, annotations, num_images: int, build_seed: int, world: Path | None) -> tuple[list[dict], str, str]:
    """(questions, md5, where from) of one split."""
    if questions is not None and annotations is not None:
        raise SeedError("give either --questions or --annotations (to build the questions), not both")
    if annotations is not None:
        built = P.build_pope(annotations, split, num_images=num_images, seed=build_seed)
        return built, _jsonl_md5(built), f"built from {annotations} ({split}, {num_images} images, seed {build_seed})"
    source = questions if questions is not None else (world / "pope" / f"{split}.jsonl" if world is not None else split)
    qs = P.load_questions(source)
    return qs.questions, qs.md5, str(qs.path)


def answers_path(output: str | Path, split: str | None = None, seed: int | None = None) -> Path:
    """Where the answers of a run go: beside ``output``, e.g. ``res.json`` → ``res.random.seed1.answers.jsonl``."""
    output = Path(output)
    parts = [output.stem] + ([split] if split else []) + ([f"seed{seed}"] if seed is not None else [])
    return output.with_name(".".join(parts) + ".answers.jsonl")


def _mean(metrics: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out = {}
    for k in P.METRIC_KEYS:
        values = [m[k] for m in metrics]
        out[k] = values[0] if len(set(values)) == 1 else sum(values) / len(values)
    return out


def _std(metrics: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """Sample standard deviation (n − 1) over seeds of the fractional metrics; None for one seed."""
    keys = [k for k in P.METRIC_KEYS if k not in ("n", "unparsed")]
    return {k: statistics.stdev([m[k] for m in metrics]) if len(metrics) > 1 else None for k in keys}


def _world_dir() -> Path:
    from seed.world import ensure_world

    return Path(ensure_world())


def evaluate_pope(
    splits: Sequence[str],
    spec: ModelSpec = ModelSpec(),
    *,
    images: str | Path | None = None,
    questions: str | Path | None = None,
    annotations: str | Path | None = None,
    num_images: int = 500,
    build_seed: int = 0,
    protocol: str = "greedy",
    seeds: Sequence[int] | None = None,
    decoding: Decoding = Decoding(),
    parser: str = "official",
    batch_size: int = 32,
    max_new_tokens: int = 32,
    output: str | Path | None = None,
    vlm=None,
    log: Callable[[str], None] = lambda s: None,
) -> dict:
    """Run a model on POPE split(s) and score it → a result record (``pope`` when several splits).

    Questions: ``questions`` (file or shipped name, one split only), else built from
    ``annotations`` with :func:`pope.build_pope`, else — without ``spec.model`` — the embedded
    world's own POPE files, else the shipped COCO split. Images: ``images``, else (no model)
    the world's held-out images. Sampling runs every seed (default 1, 2, 3) and reports the
    mean, with ``std`` (sample, n − 1) and ``per_seed`` beside it. With ``output``, the result
    JSON goes there and the answers beside it (:func:`answers_path`).
    """
    # Refuse bad options before anything slow happens.
    pope_prompt("", protocol)
    P.parse_answer("", parser)
    if batch_size < 1:
        raise SeedError(f"--batch-size must be at least 1, not {batch_size}")
    if max_new_tokens < 1:
        raise SeedError(f"--max-new-tokens must be at least 1, not {max_new_tokens}")
    if protocol == "greedy" and seeds is not None:
        raise SeedError("--seeds applies to --protocol sampling only (greedy decoding has no randomness)")
    if protocol == "sampling":
        seeds = list(seeds) if seeds is not None else list(DEFAULT_SEEDS)
        if not seeds or len(set(seeds)) != len(seeds):
            raise SeedError("--seeds must list distinct integers, e.g. 1,2,3")
    if questions is not None and len(splits) > 1:
        raise SeedError("--questions gives one split; for all three use --annotations or the default files")
    world = _world_dir() if spec.model is None and vlm is None and (images is None or (questions is None and annotations is None)) else None

    sets = {s: _pope_questions(s, questions, annotations, num_images, build_seed, world) for s in splits}
    if images is None:
        if world is None:
            raise SeedError("running a model on POPE needs --images DIR (the folder of the questions' image files)")
        images = world / "heldout" / "images"
    check_images(images, [q["image"] for qs, _, _ in sets.values() for q in qs])

    vlm = vlm if vlm is not None else spec.load()
    runs = seeds if protocol == "sampling" else [None]
    per_seed: list[dict[str, dict]] = []
    answered = {"first_token": 0, "generated": 0, "cut_at_period": 0}
    files: dict[str, str] = {}
    for seed in runs:
        scores = {}
        for split, (qs, _, _) in sets.items():
            start = time.time()
            records, counts = answer_pope(
                vlm, qs, images, protocol=protocol, seed=seed, decoding=decoding, parser=parser,
                batch_size=batch_size, max_new_tokens=max_new_tokens,
            )  # fmt: skip
            for k in answered:
                answered[k] += counts[k]
            scores[split] = P.score(qs, records, parser)
            log(
                f"{split}{'' if seed is None else f' seed {seed}'}: {len(qs)} questions in {time.time() - start:.1f} s "
                f"({counts['first_token']} from one forward, {counts['generated']} generated)"
            )
            if output is not None:
                path = answers_path(output, split if len(splits) > 1 else None, seed)
                P.write_answers(path, records)
                files[f"{split}{'' if seed is None else f'.seed{seed}'}"] = str(path)
        per_seed.append(scores)

    manifest = P.make_manifest(
        parser=parser,
        questions_md5=sets[splits[0]][1] if len(splits) == 1 else {s: v[1] for s, v in sets.items()},
        model=vlm.name_or_path,
        adapter=spec.adapter,
        protocol=protocol,
        seeds=seeds if protocol == "sampling" else None,
    )
    manifest.update(
        decoding=decoding.manifest(),
        prompt_suffix=PROTOCOLS[protocol],
        max_new_tokens=max_new_tokens,
        family=vlm.family,
        dtype=str(vlm.dtype).removeprefix("torch."),
        images=str(images),
        questions={s: v[2] for s, v in sets.items()},
        answered=answered,
        answers_files=files or None,
    )
    if answered["cut_at_period"]:
        manifest["answer_text"] = "answers settled by one forward pass end at their first '.' (the official parser reads nothing after it)"

    def combine(scores: dict[str, dict]) -> tuple[dict, dict | None]:
        if len(splits) == 1:
            return scores[splits[0]], None
        mean = {k: sum(m[k] for m in scores.values()) / len(scores) for k in P.METRIC_KEYS if k not in ("n", "unparsed")}
        mean["n"] = sum(m["n"] for m in scores.values())
        mean["unparsed"] = sum(m["unparsed"] for m in scores.values())
        return mean, scores

    benchmark = "pope" if len(splits) > 1 else f"pope-{splits[0]}"
    combined = [combine(s) for s in per_seed]
    metrics = _mean([m for m, _ in combined])
    split_metrics = None if len(splits) == 1 else {s: _mean([sp[s] for _, sp in combined]) for s in splits}
    result = P.result_record(benchmark, metrics, manifest, splits=split_metrics)
    if protocol == "sampling":
        result["std"] = _std([m for m, _ in combined])
        if split_metrics is not None:
            result["splits_std"] = {s: _std([sp[s] for _, sp in combined]) for s in splits}
        result["per_seed"] = [
            {"seed": seed, "metrics": m, **({"splits": sp} if sp is not None else {})} for seed, (m, sp) in zip(seeds, combined)
        ]
    if output is not None:
        P.write_result(output, result)
    return result


def spread_table(result: Mapping[str, Any]):
    """A rich table of mean ± std over seeds (sampling protocol), in %."""
    from rich.table import Table

    seeds = ", ".join(str(s) for s in result["manifest"]["seeds"])
    table = Table(title=f"{result['benchmark']}: mean ± std over seeds {seeds}")
    for column in ("split", "Acc %", "F1 %", "yes-ratio %"):
        table.add_column(column, justify="left" if column == "split" else "right")

    def cell(mean: float, std: float | None) -> str:
        return f"{100 * mean:.2f}" + ("" if std is None else f" ± {100 * std:.2f}")

    rows = [(name, result["splits"][name], result["splits_std"][name]) for name in result.get("splits", {})]
    rows.append(("mean" if rows else result["benchmark"].removeprefix("pope-"), result["metrics"], result["std"]))
    for name, m, s in rows:
        table.add_row(name, *(cell(m[k], s[k]) for k in ("accuracy", "f1", "yes_ratio")))
    return table


# --------------------------------------------------------------------------- CHAIR
def describe_images(
    vlm,
    images: Sequence[Image.Image],
    *,
    prompt: str = CAPTION_PROMPT,
    batch_size: int = 8,
    max_new_tokens: int = 128,
    decoding: Decoding = Decoding(),
    on_progress: Progress = _no_progress,
) -> list[str]:
    """Greedy captions, batched."""
    return generate_answers(
        vlm, images, [prompt] * len(images), batch_size=batch_size, max_new_tokens=max_new_tokens, decoding=decoding, on_progress=on_progress
    )


def captions_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(f"{output.stem}.captions.jsonl")


def evaluate_chair_model(
    spec: ModelSpec = ModelSpec(),
    *,
    images: str | Path | None = None,
    annotations: str | Path | None = None,
    ref_captions: str | Path | None = None,
    lexicon: str | Path | None = None,
    num_images: int = 500,
    image_seed: int = 0,
    batch_size: int = 8,
    max_new_tokens: int = 128,
    output: str | Path | None = None,
    vlm=None,
    decoding: Decoding = Decoding(),
    log: Callable[[str], None] = lambda s: None,
) -> dict:
    """Caption ``num_images`` annotated images (sampled with ``image_seed``, taken in id order)
    with "Please describe this image in detail." (``decoding``, greedy by default) and score them
    with CHAIR.

    Without ``spec.model``, images and annotations default to the embedded world's held-out
    split. With ``output``, the captions go beside it (:func:`captions_path`).
    """
    from seed.evaluation import chair as C

    if batch_size < 1 or max_new_tokens < 1 or num_images < 1:
        raise SeedError("--batch-size, --max-new-tokens and --num-images must be at least 1")
    if spec.model is None and vlm is None and (images is None or annotations is None):
        world = _world_dir()
        images = images if images is not None else world / "heldout" / "images"
        annotations = annotations if annotations is not None else world / "heldout" / "annotations" / "instances.json"
    if images is None or annotations is None:
        raise SeedError("captioning with a model needs --images DIR and --annotations instances.json")
    coco, _ = load_coco(annotations)
    ids = sorted(coco.imgs)
    if len(ids) > num_images:
        ids = sorted(random.Random(image_seed).sample(ids, num_images))
    names = [coco.imgs[i].get("file_name") for i in ids]
    check_images(images, names)

    vlm = vlm if vlm is not None else spec.load()
    start = time.time()
    captions = describe_images(vlm, LazyImages(images, names), batch_size=batch_size, max_new_tokens=max_new_tokens, decoding=decoding)
    log(f"{len(captions)} captions in {time.time() - start:.1f} s")
    records = [{"image_id": i, "image": n, "prompt": CAPTION_PROMPT, "caption": c} for i, n, c in zip(ids, names, captions)]
    result = C.evaluate_chair(records, annotations, ref_captions=ref_captions, lexicon=lexicon)
    result["manifest"].update(
        model=vlm.name_or_path,
        adapter=spec.adapter,
        prompt=CAPTION_PROMPT,
        decoding=decoding.manifest(),
        max_new_tokens=max_new_tokens,
        images={"path": str(images), "count": len(ids), "sample_seed": image_seed},
    )
    if output is not None:
        path = captions_path(output)
        write_jsonl(path, records)
        result["manifest"]["captions"] = {"path": str(path), "md5": md5_file(path)}
        C.write_result(output, result)
    return result
