"""A hallucination detector distilled from the multi-signal identification (HKD4VLM's idea).

The teacher is the slow identification (:mod:`seed.identify`: self-probe, lens, sampled-caption
consistency, masked-view evidence) run on unlabelled images. The student is a small head on the
language model's own hidden states from ONE teacher-forced pass over the caption: the state at
the last token of an object's mention queries the image tokens' states (one attention head),
and a logistic layer reads the mention with what it found. It learns coarse to fine: first the teacher's image-level
object scores (read at "There is a {object}." for every object of the pool), then the teacher's
scores of the objects the model's own captions name. It saves as safetensors + a config, and
loads only onto the base it was trained on.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from PIL import Image

from seed.adapters.hea import base_fingerprint
from seed.config import DetectorConfig
from seed.errors import SeedError
from seed.identify import combine, find_mentions, signal_scores, yes_margin
from seed.io import image_files, open_image, write_dir_atomically, write_json
from seed.isolate import SurfaceBans
from seed.lexicon import ObjectLexicon
from seed.prompts import CAPTION_PROMPT, object_question

CONFIG_FILE, WEIGHTS_FILE = "detector_config.json", "detector.safetensors"


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


def _stack(examples) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
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
        """P(hallucinated) of each option; an option the caption does not name is appended to it
        as "There is a {object}." (still one pass)."""
        texts = []
        for caption, opts in zip(captions, options):
            named = {m.category for m in self.lexicon.find(caption)}
            texts.append(" ".join([caption, *(template(o) for o in opts if o not in named)]))
        out = []
        for (named, image), opts in zip(mention_features(vlm, images, texts, self.lexicon, self.layer), options):
            found = [o for o in opts if o in named]
            if not found:
                out.append({})
                continue
            m, pixels, keep, _ = _stack([(named[o], image, 0.0) for o in found])
            out.append(dict(zip(found, torch.sigmoid(self.head(m, pixels, keep)).tolist())))
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
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
            raise SeedError(f"{folder}: not a detector folder (needs {CONFIG_FILE} and {WEIGHTS_FILE}; made by seed detect train)")
        config = json.loads((folder / CONFIG_FILE).read_text())
        if config.get("base_config_md5") != base_fingerprint(vlm.name_or_path)["base_config_md5"]:
            raise SeedError(f"detector {folder} was trained on {config.get('base_model')}, not on {vlm.name_or_path}")
        weights = load_file(str(folder / WEIGHTS_FILE))
        head = Head(config["hidden_size"], weights["query.weight"].shape[0])
        head.load_state_dict(weights)
        return cls(head.eval(), config["layer"], lexicon, config)


def teacher_examples(vlm, images: list[Image.Image], config: DetectorConfig, lexicon, bans, pool: list[str], layer: int):
    """(coarse, fine) lists of (mention state, image states, teacher h) for a batch of unlabelled images."""
    n = len(images)
    captions = vlm.generate(images, [CAPTION_PROMPT] * n, max_new_tokens=config.max_new_tokens)
    flat = yes_margin(vlm, [im for im in images for _ in pool], [c for _ in images for c in pool], config.batch_size * 4)
    margins = [dict(zip(pool, flat[i * len(pool) : (i + 1) * len(pool)].tolist())) for i in range(n)]
    asked = [sorted({m.category for m in lexicon.find(c)} & set(pool)) for c in captions]
    by_signal = signal_scores(vlm, images, captions, asked, margins, config.teacher, lexicon, bans, None, config.max_new_tokens)
    teacher = [combine([scores[i] for scores in by_signal.values()]) for i in range(n)]
    coarse, fine = [], []
    for i, image in enumerate(images):  # "There is a {c}." for every object of the pool, in one batch per image
        for (named, states), c in zip(mention_features(vlm, [image] * len(pool), [template(c) for c in pool], lexicon, layer), pool):
            if c in named:
                coarse.append((named[c], states, teacher[i][c]))
    for (named, states), h in zip(mention_features(vlm, images, captions, lexicon, layer), teacher):
        fine += [(m, states, h[c]) for c, m in named.items() if c in h]
    return coarse, fine


def train_detector(vlm, images: str | Path, out: str | Path, config: DetectorConfig | None = None, lexicon: ObjectLexicon | None = None) -> dict:
    """Distil the teacher into a head on ``vlm``'s hidden states, from the images of a folder
    (no labels read); save it to ``out``; return what it learned from."""
    config, lexicon = config or DetectorConfig(), lexicon or ObjectLexicon.default(None)
    files = image_files(images)[: config.images]
    if not files:
        raise SeedError(f"{images}: no images to learn from")
    start = time.time()
    torch.manual_seed(config.seed)
    bans = SurfaceBans(vlm.tokenizer, lexicon, config.teacher.categories or lexicon.categories)
    pool = list(config.teacher.categories or sorted(bans.category_ids()))
    layers = vlm.model.config.get_text_config().num_hidden_layers
    layer = config.layer if config.layer is not None else layers // 2
    coarse, fine = [], []
    for k in range(0, len(files), config.batch_size):
        c, f = teacher_examples(vlm, [open_image(p) for p in files[k : k + config.batch_size]], config, lexicon, bans, pool, layer)
        coarse, fine = coarse + c, fine + f
    if not coarse:
        raise SeedError("the teacher gave the detector nothing to learn from (no object the tokenizer can spell?)")
    head = Head(coarse[0][0].shape[0])
    states = torch.stack([m for m, _, _ in coarse + fine])
    head.mean.copy_(states.mean(0))
    head.std.copy_(states.std(0).clamp_min(1e-6))
    losses = {stage: _fit(head, examples, steps, config.lr)
              for stage, examples, steps in (("coarse", coarse, config.coarse_steps), ("fine", fine, config.fine_steps))}  # fmt: skip
    meta = {"base_model": vlm.name_or_path, **base_fingerprint(vlm.name_or_path), "config": asdict(config), "pool": pool}
    stats = {"images": len(files), "coarse_examples": len(coarse), "fine_examples": len(fine), "losses": losses, "seconds": round(time.time() - start, 1)}
    Detector(head, layer, lexicon, {**meta, "trained": stats}).save(out)
    return stats


def _fit(head: Head, examples, steps: int, lr: float, batch: int = 512) -> float | None:
    """Adam on the binary cross-entropy against the teacher's soft labels, in random minibatches;
    the last loss."""
    if not examples or not steps:
        return None
    m, image, keep, y = _stack(examples)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    for _ in range(steps):
        rows = torch.randint(len(y), (min(batch, len(y)),))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(m[rows], image[rows], keep[rows]), y[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    head.eval()
    return loss.item()
