"""The distilled hallucination detector (HKD4VLM's idea), an identification signal (``detector:DIR``).

A small head on the language model's own hidden states from ONE teacher-forced pass over the
caption: the state at the last token of an object's mention queries the image tokens' states
(one attention head), and a logistic layer reads the mention with what it found. It is trained
(:func:`seed.detection.train_detector`) on the slow multi-signal identification's scores of
unlabelled images, saves as safetensors + a config, and loads only onto the base it was trained on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from seed.adapters.hea import base_fingerprint
from seed.errors import SeedError
from seed.io import md5_file, write_dir_atomically, write_json
from seed.isolate import find_mentions
from seed.lexicon import ObjectLexicon
from seed.prompts import CAPTION_PROMPT, object_question

CONFIG_FILE, WEIGHTS_FILE = "detector_config.json", "detector.safetensors"


def detector_identity(signals: Sequence[str]) -> dict[str, str | None]:
    """md5 of the weights of every ``detector:DIR`` among ``signals`` (run fingerprints name a
    detector by content, not by folder)."""
    folders = {s: Path(s.removeprefix("detector:")) / WEIGHTS_FILE for s in signals if s.startswith("detector:")}
    return {s: md5_file(f) if f.is_file() else None for s, f in folders.items()}


def template(category: str) -> str:
    """The caption the coarse stage (and an option a caption does not name) is read in."""
    return object_question(category).replace("Is there", "There is").rstrip("?") + "."


class Head(torch.nn.Module):
    """P(hallucinated) logit from a mention's state ``m`` [N, D] and the image tokens' states
    ``image`` [N, P, D] (padding masked by ``keep`` [N, P]); inputs standardised by stored statistics."""

    def __init__(self, dim: int, width: int = 32):
        super().__init__()
        self.query, self.key = torch.nn.Linear(dim, width), torch.nn.Linear(dim, width)
        self.out = torch.nn.Linear(2 * dim, 1)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def forward(self, m: torch.Tensor, image: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        m, image = (m - self.mean) / self.std, (image - self.mean) / self.std
        scores = (self.key(image) @ self.query(m)[:, :, None]).squeeze(-1) / self.query.out_features**0.5
        weights = scores.masked_fill(~keep, float("-inf")).softmax(-1)
        return self.out(torch.cat([m, (weights[:, :, None] * image).sum(1)], -1)).squeeze(-1)


def mention_features(vlm, images, captions: list[str], lexicon: ObjectLexicon, layer: int) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """Per caption: {category: hidden state at the last token of its last mention} and the image
    tokens' states, from one pass."""
    states, ids, mask, image = vlm.response_states(images, [CAPTION_PROMPT] * len(images), captions, layer)
    out = []
    for b in range(len(images)):
        mentions = find_mentions(vlm.tokenizer, ids[b][mask[b]].tolist(), lexicon)
        out.append(({m.category: states[b, m.end - 1].cpu() for m in mentions}, image[b].cpu()))
    return out


def stack_examples(examples) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mention states [N, D], padded image states [N, P, D], keep [N, P], teacher h [N])."""
    from torch.nn.utils.rnn import pad_sequence

    image = pad_sequence([i for _, i, _ in examples], batch_first=True)
    lengths = torch.tensor([len(i) for _, i, _ in examples])
    keep = torch.arange(image.shape[1])[None] < lengths[:, None]
    return torch.stack([m for m, _, _ in examples]), image, keep, torch.tensor([h for _, _, h in examples], dtype=torch.float32)


class Detector:
    """The student: ``probability(vlm, images, captions, options)`` in one pass per caption."""

    def __init__(self, head: Head, layer: int, lexicon: ObjectLexicon, meta: dict | None = None):
        self.head, self.layer, self.lexicon, self.meta = head, layer, lexicon, meta or {}

    @torch.no_grad()
    def probabilities(self, vlm, images: list[Image.Image], captions: list[str], options: list[list[str]]) -> list[dict[str, float]]:
        """P(hallucinated) of each option: read at the caption's own mention of it (one pass per
        caption), or, for an option the caption does not name, at "There is a {object}." (one
        pass each, as the coarse stage learned it)."""
        reads: list[tuple[int, str, dict[str, torch.Tensor], torch.Tensor]] = []
        for i, (named, image) in enumerate(mention_features(vlm, images, captions, self.lexicon, self.layer)):
            reads += [(i, c, named, image) for c in options[i] if c in named]
        done = {(i, c) for i, c, _, _ in reads}
        rest = [(i, c) for i, opts in enumerate(options) for c in opts if (i, c) not in done]
        for start in range(0, len(rest), 64):
            part = rest[start : start + 64]
            features = mention_features(vlm, [images[i] for i, _ in part], [template(c) for _, c in part], self.lexicon, self.layer)
            reads += [(i, c, named, image) for (i, c), (named, image) in zip(part, features) if c in named]
        out: list[dict[str, float]] = [{} for _ in images]
        if reads:
            m, pixels, keep, _ = stack_examples([(named[c], image, 0.0) for _, c, named, image in reads])
            for (i, c, _, _), p in zip(reads, torch.sigmoid(self.head(m, pixels, keep)).tolist()):
                out[i][c] = p
        return out

    def save(self, out: str | Path) -> Path:
        from safetensors.torch import save_file

        def write(tmp: Path) -> None:
            tmp.mkdir(parents=True)
            save_file({k: v.detach().contiguous() for k, v in self.head.state_dict().items()}, str(tmp / WEIGHTS_FILE))
            write_json(tmp / CONFIG_FILE, {"layer": self.layer, "hidden_size": self.head.mean.shape[0], **self.meta})

        write_dir_atomically(out, write, marker=CONFIG_FILE)
        return Path(out)

    @classmethod
    def load(cls, folder: str | Path, vlm, lexicon: ObjectLexicon) -> Detector:
        """The detector in ``folder`` for ``vlm`` (refused on another base)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
            raise SeedError(f"{folder}: not a detector folder (needs {CONFIG_FILE} and {WEIGHTS_FILE}; made by seed detect train)")
        config = json.loads((folder / CONFIG_FILE).read_text())
        if config.get("base_config_md5") != base_fingerprint(vlm.name_or_path, weights=False)["base_config_md5"]:
            raise SeedError(f"detector {folder} was trained on {config.get('base_model')}, not on {vlm.name_or_path}")
        weights = load_file(str(folder / WEIGHTS_FILE))
        head = Head(config["hidden_size"], weights["query.weight"].shape[0])
        head.load_state_dict(weights)
        return cls(head.eval(), config["layer"], lexicon, config)
