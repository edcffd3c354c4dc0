"""How each next token is chosen when a benchmark (or any caller of generate) decodes:

- ``greedy`` — the model's own distribution (argmax, or sampled when the protocol samples);
- ``vcd`` — visual contrastive decoding (Leng et al., CVPR 2024): each step's scores become
  ``log p̃`` with ``p̃ = contrastive_purge(z_image, z_null, α, β)``, the null logits coming from
  the same tokens with the image diffused to step 500;
- ``purified`` — the decoding-time twin of ``seed purify``: identify each image once, then
  decode under :class:`~seed.purge.PurgeProcessor`.

:func:`decoder` gives a callable ``(images, prompts, do_sample) → generate() kwargs``
for one batch, which :func:`seed.evaluation.runner.generate_answers` calls before each batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from PIL import Image

from seed.adapters import diffusion_noise
from seed.config import Decoding, PurifyConfig
from seed.errors import SeedError
from seed.identify import identify_images
from seed.isolate import SurfaceBans, answer_token_ids, banned_answer, split_claims
from seed.lexicon import ObjectLexicon
from seed.prompts import CAPTION_PROMPT
from seed.purge import PurgeProcessor, contrastive_purge

VCD_NOISE_STEP = 500


def manifest(decoding: Decoding) -> dict:
    """What a result's manifest records of its decoding."""
    if decoding.name == "vcd":
        return {"name": "vcd", "alpha": decoding.alpha, "beta": decoding.beta, "null_image": f"diffusion noise, step {VCD_NOISE_STEP}"}
    return {"name": decoding.name}


def decoder(vlm, decoding: Decoding):
    """A callable ``(images, prompts, do_sample) → extra generate() kwargs`` for each batch."""
    if decoding.name == "vcd":
        if not vlm.kv_cache_with_images:
            raise SeedError(f"--decoding vcd is not supported for {vlm.family} models (it needs llava-style pixel_values and a KV cache)")
        return lambda images, prompts, do_sample: {"logits_processor": ContrastiveDecoding(vlm, images, prompts, decoding.alpha, decoding.beta)}
    if decoding.name == "purified":
        return PurifiedDecoding(vlm)
    return lambda images, prompts, do_sample: {}


class ContrastiveDecoding:
    """VCD as a transformers logits processor for ONE batch of :meth:`vlm.generate`.

    The null branch is the same left-padded batch (``vlm.encode(images, prompts)``, exactly what
    ``generate`` encodes) with its pixel values diffused to step 500 (fixed noise seed), run
    beside the main branch with its own KV cache: each call feeds it the tokens generated
    since the last call. Returns ``log p̃`` (−inf outside VCD's plausibility set), so greedy
    takes argmax p̃ and sampling draws from p̃.
    """

    def __init__(self, vlm, images: Sequence[Image.Image], prompts: Sequence[str], alpha: float, beta: float):
        self.vlm, self.alpha, self.beta = vlm, alpha, beta
        batch = vlm.encode(list(images), list(prompts))
        batch["pixel_values"] = diffusion_noise(batch["pixel_values"], VCD_NOISE_STEP, torch.Generator().manual_seed(0))
        self.batch = batch
        self.prompt_length = batch["input_ids"].shape[1]
        self.mask = batch["attention_mask"]
        self.cache = None
        self.seen = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
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


class PurifiedDecoding:
    """The decoding-time twin of ``seed purify`` (``seed eval ... --decoding purified``).

    Each image is identified once (cached by its pixels) with purify's signals; every generation
    then runs under :class:`~seed.purge.PurgeProcessor`: flagged objects banned, no object named
    twice, and for a question about an object "Yes" banned when it is flagged, "No" when the
    signals affirm it. Several extra passes per image: the cost SEED's adapter removes.
    """

    def __init__(self, vlm, config: PurifyConfig | None = None):
        self.vlm, self.config = vlm, config or PurifyConfig()
        self.lexicon = ObjectLexicon.default(self.config.identify.lexicon)
        self.bans = SurfaceBans(vlm.tokenizer, self.lexicon, self.config.identify.categories or self.lexicon.categories)
        self.yes, self.no = answer_token_ids(vlm)
        self.scores: dict[str, dict[str, float]] = {}

    def __call__(self, images: Sequence[Image.Image], prompts: Sequence[str], do_sample: bool) -> dict:
        """generate() kwargs of one batch: the purge, with beam search unless sampling."""
        return {"logits_processor": self.processor(images, prompts), "num_beams": 1 if do_sample else self.config.repair_beams}

    def identify(self, images: Sequence[Image.Image]) -> list[str]:
        """Score the images not seen before (purify's captions and signals); returns each image's key."""
        config = self.config
        keys = [hashlib.md5(im.tobytes()).hexdigest() for im in images]
        todo = {k: im for k, im in zip(keys, images) if k not in self.scores}
        if todo:
            ims = list(todo.values())
            captions = self.vlm.generate(ims, [CAPTION_PROMPT] * len(ims), max_new_tokens=config.max_new_tokens, do_sample=config.do_sample)
            found = identify_images(
                self.vlm, ims, captions, config.identify, self.lexicon, self.bans,
                batch_size=config.batch_size, max_new_tokens=config.max_new_tokens,
            )  # fmt: skip
            self.scores.update(zip(todo, found.scores))
        return keys

    def processor(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> PurgeProcessor:
        banned, flagged_rows = [], []
        for key, prompt in zip(self.identify(images), prompts):
            scores = self.scores[key]
            flagged, affirmed = split_claims(scores, self.config.identify.tau)
            about = {m.category for m in self.lexicon.find(prompt)} & set(scores)
            answer = banned_answer(about, flagged, affirmed, self.yes, self.no)
            banned.append(set() if answer is None else {answer})
            flagged_rows.append(flagged)
        return PurgeProcessor(banned, flagged_rows, self.bans)
