"""The embedded world: procedurally drawn COCO-format scenes plus a tiny LLaVA trained on CPU.

Layout of a built world folder::

    world.json                      manifest: seed, bias, sizes, build time, library versions
    {train,purify,heldout}/images/  PNG scenes
    {split}/annotations/instances.json   COCO instances (pycocotools loads them)
    {split}/annotations/captions.json    COCO captions: clean reference captions
    model/                          LlavaForConditionalGeneration + LlavaProcessor (save_pretrained)
    pope/{random,popular,adversarial}.jsonl   POPE built from the held-out annotations

``train`` teaches the model, ``purify`` feeds SEED's purification, ``heldout`` is evaluation only.
:class:`World` names these paths; nothing else spells them out.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from seed.errors import SeedError
from seed.evaluation.pope import SPLITS as POPE_SPLITS
from seed.evaluation.pope import build_pope, write_questions
from seed.coco import load_coco
from seed.io import library_versions, write_json
from seed.prompts import CAPTION_PROMPT, ONE_WORD_SUFFIX, SHORT_ANSWER_SUFFIX
from seed.world.scenes import BiasConfig, Scene, draw_scene, image_targets, patch_targets, reference_caption, training_caption, training_questions, world_vocabulary
from seed.world.model import TinyLlavaConfig, build_model, build_processor
from seed.world.train import TrainConfig, align_projector, pretrain_text, pretrain_vision, tokenize_sequences, train_language
from seed.world.vocab import CLASS_NAMES

SPLITS = ("train", "purify", "heldout")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class World:
    """The paths of a built world."""

    root: Path
    purify_split: str = "purify"
    eval_split: str = "heldout"

    @classmethod
    def default(cls, seed: int = 0) -> World:
        """The default (biased) world for ``seed``, built on first use."""
        return cls(Path(ensure_world(seed)))

    @property
    def model(self) -> Path:
        return self.root / "model"

    def images(self, split: str) -> Path:
        return self.root / split / "images"

    def annotations(self, split: str) -> Path:
        """COCO instances of a split."""
        return self.root / split / "annotations" / "instances.json"

    def captions(self, split: str) -> Path:
        """COCO reference captions of a split."""
        return self.root / split / "annotations" / "captions.json"

    @property
    def pope_questions(self) -> str:
        """The held-out POPE question files, ``{split}`` standing for random, popular or adversarial."""
        return str(self.root / "pope" / "{split}.jsonl")


@dataclass
class WorldConfig:
    seed: int = 0
    bias: BiasConfig = field(default_factory=BiasConfig)
    sizes: dict[str, int] = field(default_factory=lambda: {"train": 4000, "purify": 1000, "heldout": 500})
    model: TinyLlavaConfig = field(default_factory=TinyLlavaConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    format_version: int = FORMAT_VERSION


def cache_root() -> Path:
    return Path(os.environ.get("SEED_HOME", Path.home() / ".cache" / "seed"))


def default_world_dir(seed: int = 0, bias: bool = True) -> Path:
    return cache_root() / f"world-s{seed}{'' if bias else '-nobias'}"


def _is_built(path: Path, config: WorldConfig) -> bool:
    manifest = path / "world.json"
    if not manifest.is_file():
        return False
    return json.loads(manifest.read_text())["config"] == asdict(config)


def ensure_world(seed: int = 0) -> Path:
    """The default (biased) world for ``seed``, built on first use."""
    return build_world(None, seed=seed)


def _coco(split: str, scenes: list[Scene], captions: list[str]) -> tuple[dict, dict]:
    categories = [{"id": i + 1, "name": n, "supercategory": "world"} for i, n in enumerate(CLASS_NAMES)]
    images, anns, caps = [], [], []
    for i, (scene, caption) in enumerate(zip(scenes, captions), 1):
        w, h = scene.image.size
        images.append({"id": i, "file_name": f"{split}_{i:06d}.png", "width": w, "height": h})
        caps.append({"id": i, "image_id": i, "caption": caption})
        for obj in scene.objects:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": CLASS_NAMES.index(obj["category"]) + 1,
                    "bbox": obj["bbox"],
                    "area": obj["area"],
                    "iscrowd": 0,
                }
            )
    info = {"description": f"seed embedded world, split {split}"}
    instances = {"info": info, "images": images, "annotations": anns, "categories": categories}
    return instances, {"info": info, "images": images, "annotations": caps, "categories": categories}


def build_world(
    out: str | Path | None = None,
    *,
    seed: int = 0,
    bias: bool = True,
    force: bool = False,
    device: str = "cpu",
    config: WorldConfig | None = None,
) -> Path:
    """Build (or reuse) a world; returns its folder. Deterministic for a given seed and config."""
    config = config or WorldConfig(seed=seed, bias=BiasConfig() if bias else BiasConfig.off())
    path = Path(out) if out else default_world_dir(config.seed, config.bias != BiasConfig.off())
    if not force and _is_built(path, config):
        return path
    if path.exists() and not (path / "world.json").is_file() and any(path.iterdir()):
        raise SeedError(f"{path} exists and is not a seed world; choose another --out")
    if device not in ("auto", "cpu"):
        raise SeedError("the embedded world trains on the CPU; use --device cpu (or auto)")

    start = time.time()
    tmp = path.parent / f".{path.name}.building-{os.getpid()}"
    built = World(tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    mcfg, tcfg = config.model, config.train
    columns = [TextColumn("{task.description:<22}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn()]
    with Progress(*columns, transient=False) as bar:
        drawn: dict[str, list[Scene]] = {}
        task = bar.add_task("drawing scenes", total=sum(config.sizes.values()))
        for k, split in enumerate(SPLITS):
            rng = np.random.default_rng([config.seed, k])
            scenes = []
            for _ in range(config.sizes[split]):
                scenes.append(draw_scene(rng, mcfg.image_size, config.bias.cooccur))
                bar.advance(task)
            built.images(split).mkdir(parents=True)
            for i, scene in enumerate(scenes, 1):
                scene.image.save(built.images(split) / f"{split}_{i:06d}.png")
            refs = [reference_caption(rng, s.categories) for s in scenes]
            instances, captions = _coco(split, scenes, refs)
            write_json(built.annotations(split), instances)
            write_json(built.captions(split), captions)
            drawn[split] = scenes

        train = drawn["train"]
        processor = build_processor(world_vocabulary(), mcfg)
        model = build_model(processor, mcfg)
        # The vision tower learns from a larger image corpus: the train scenes plus unsaved extra ones.
        rng = np.random.default_rng([config.seed, len(SPLITS) + 1])
        corpus = train + [draw_scene(rng, mcfg.image_size, config.bias.cooccur) for _ in range(tcfg.vision_images - len(train))]
        pixels = processor.image_processor([s.image for s in corpus], return_tensors="pt")["pixel_values"]
        patch_labels = torch.tensor(np.stack([patch_targets(s.label_map, mcfg.patch_size) for s in corpus]))
        image_labels = torch.tensor(np.stack([image_targets(s) for s in corpus]))
        task = bar.add_task("vision pretraining", total=tcfg.vision_steps)
        head = pretrain_vision(model, pixels, patch_labels, image_labels, tcfg, generator, lambda n: bar.advance(task, n))
        pixel_values = pixels[: len(train)].clone()
        del corpus, pixels, patch_labels, image_labels

        # The same biased text feeds both language stages; text-only prompts list the scene's objects.
        rng = np.random.default_rng([config.seed, len(SPLITS)])
        text_items, items = [], []
        for i, scene in enumerate(train):
            objects = list(scene.categories)
            rng.shuffle(objects)
            scene_words = " ".join(objects) + "\n"
            caption = training_caption(rng, scene.categories, config.bias)
            text_items.append((i, scene_words + CAPTION_PROMPT, caption))
            items.append((i, CAPTION_PROMPT, caption))
            for q, a in training_questions(rng, scene.categories, config.bias):
                suffix = SHORT_ANSWER_SUFFIX if rng.random() < 0.7 else ONE_WORD_SUFFIX
                text_items.append((i, scene_words + q + suffix, a))
                items.append((i, q + suffix, a))
        pad = processor.tokenizer.pad_token_id
        task = bar.add_task("language pretraining", total=tcfg.text_steps)
        text_loss = pretrain_text(
            model, tokenize_sequences(processor, text_items, 0), pad, tcfg, generator, lambda n: bar.advance(task, n)
        )
        align_projector(model, head, processor.tokenizer.convert_tokens_to_ids(CLASS_NAMES))
        seqs = tokenize_sequences(processor, items, model.config.image_seq_length)
        task = bar.add_task("multimodal training", total=tcfg.lm_steps)
        lm_loss = train_language(model, pixel_values, seqs, pad, tcfg, generator, lambda n: bar.advance(task, n))
    model.save_pretrained(built.model)
    processor.save_pretrained(built.model)
    _build_pope(built, config.seed)
    write_json(
        tmp / "world.json",
        {
            "config": asdict(config),
            "build_seconds": round(time.time() - start, 1),
            "final_loss": {"vision": round(head.final_loss, 4), "text": round(text_loss, 4), "multimodal": round(lm_loss, 4)},
            "training_sequences": {"text": len(text_items), "multimodal": len(items)},
            "versions": library_versions(),
        },
    )
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, path)
    return path


def _build_pope(world: World, seed: int) -> None:
    """POPE question files from the held-out annotations: up to 500 images with ≥ 3 objects."""
    ann = world.annotations(world.eval_split)
    coco, _ = load_coco(ann)
    eligible = sum(len({a["category_id"] for a in anns}) >= 3 for anns in coco.imgToAnns.values())
    for split in POPE_SPLITS:
        write_questions(world.pope_questions.format(split=split), build_pope(ann, split, num_images=min(500, eligible), seed=seed))
