"""The shared model-running loop of every benchmark: images and prompts in, texts out.

:func:`generate_answers` batches :meth:`vlm.generate` over (image, prompt) pairs, greedy or
sampled, under any :class:`~seed.decoding.Decoding`. Sampling seeds torch from ``(seed, batch
index)`` before each batch, so a run is reproducible for a given seed and batch size and does not
depend on what ran before it. The yes/no fast path (:mod:`seed.evaluation.yes_no`) settles most
POPE answers without it and generates the rest here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from seed.decoding import Decoding, decoder as build_decoder
from seed.errors import SeedError
from seed.prompts import CAPTION_PROMPT

Progress = Callable[[int], None]


def no_progress(n: int) -> None:
    pass


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
    on_progress: Progress = no_progress,
) -> list[str]:
    """Batched :meth:`vlm.generate` over (image, prompt) pairs, in order.

    Sampling uses T=1, top_p=1 and seeds torch with :func:`batch_seed` ``(seed, i)`` before
    batch ``i``; ``seed`` is required then.
    """
    if do_sample and seed is None:
        raise SeedError("sampling needs a seed")
    decoder = build_decoder(vlm, decoding)
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
            **decoder(ims, ps, do_sample),
        )
        on_progress(len(ps))
    return texts


def describe_images(
    vlm,
    images: Sequence[Image.Image],
    *,
    prompt: str = CAPTION_PROMPT,
    batch_size: int = 8,
    max_new_tokens: int = 128,
    decoding: Decoding = Decoding(),
    on_progress: Progress = no_progress,
) -> list[str]:
    """Greedy captions, batched."""
    return generate_answers(
        vlm, images, [prompt] * len(images), batch_size=batch_size, max_new_tokens=max_new_tokens, decoding=decoding, on_progress=on_progress
    )
