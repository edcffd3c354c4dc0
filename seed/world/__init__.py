"""The embedded world: procedurally drawn COCO-format scenes plus a tiny LLaVA trained on CPU.

Layout of a built world folder::

    world.json                           manifest: config, build time, losses, library versions
    {train,purify,val,test}/images/      PNG scenes
    {split}/annotations/instances.json   COCO instances (pycocotools loads them)
    {split}/annotations/captions.json    COCO captions: clean reference captions
    {val,test}/pope/{random,popular,adversarial}.jsonl   POPE built from the split's annotations
    model/                               LlavaForConditionalGeneration + LlavaProcessor (save_pretrained)

``train`` teaches the model, ``purify`` feeds SEED's purification, ``val`` chooses (rounds,
defaults), ``test`` is reported once. :class:`World` names these paths; nothing else spells them out.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from seed.adapters import load
from seed.config import PopeConfig
from seed.errors import SeedError
from seed.evaluation.pope import SPLITS as POPE_SPLITS
from seed.evaluation.pope import build_pope, evaluate_pope, write_questions
from seed.coco import load_coco
from seed.io import library_versions, md5_strings, write_json
from seed.prompts import CAPTION_PROMPT, ONE_WORD_SUFFIX, SHORT_ANSWER_SUFFIX
from seed.world.scenes import BiasConfig, Scene, alt_text, draw_scene, multi_hot, named_objects, reference_caption, training_caption, training_questions, world_vocabulary
from seed.world.model import TinyLlavaConfig, build_model, build_processor
from seed.world.train import TrainConfig, pretrain_text, pretrain_vision, text_sequences, tokenize_sequences, train_multimodal
from seed.world.vocab import CLASS_NAMES

SPLITS = ("train", "purify", "val", "test")
FORMAT_VERSION = 3
VISION_LABELS = ("captions", "annotations")
MIN_VAL_F1 = 0.7  # below it the model answers yes/no without looking at the image: no test bed


@dataclass(frozen=True)
class World:
    """The paths of a built world."""

    root: Path
    purify_split: str = "purify"
    val_split: str = "val"
    eval_split: str = "test"

    @classmethod
    def default(cls, seed: int = 0) -> World:
        """The default (biased) world for ``seed``, built on first use."""
        return cls(Path(ensure_world(seed)))

    @classmethod
    def existing(cls, root: str | Path) -> World:
        """A built world of this format at ``root`` (one clear error otherwise)."""
        manifest = Path(root) / "world.json"
        if not manifest.is_file():
            raise SeedError(f"{root}: not a built world (no world.json); build one with `seed world build --out {root}`")
        if json.loads(manifest.read_text()).get("config", {}).get("format_version") != FORMAT_VERSION:
            raise SeedError(f"{root}: a world of an older format; rebuild it with `seed world build --out {root} --force`")
        return cls(Path(root))

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

    def pope(self, split: str) -> str:
        """A split's POPE question files, ``{split}`` standing for random, popular or adversarial."""
        return str(self.root / split / "pope" / "{split}.jsonl")

    @property
    def pope_questions(self) -> str:
        """The test split's POPE question files (see :meth:`pope`)."""
        return self.pope(self.eval_split)


@dataclass
class WorldConfig:
    seed: int = 0
    bias: BiasConfig = field(default_factory=BiasConfig)
    vision_labels: str = "captions"  # what the vision tower learns from: "captions" (alt-text: some shown objects) or "annotations"
    sizes: dict[str, int] = field(default_factory=lambda: {"train": 4000, "purify": 1000, "val": 450, "test": 650})
    model: TinyLlavaConfig = field(default_factory=TinyLlavaConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    format_version: int = FORMAT_VERSION


def cache_root() -> Path:
    return Path(os.environ.get("SEED_HOME", Path.home() / ".cache" / "seed"))


def default_world_dir(seed: int = 0, bias: bool = True, config: WorldConfig | None = None) -> Path:
    """The cache folder of the default world of ``seed`` (``bias=False``: its matched control),
    or of any other ``config`` (named by a hash of it)."""
    default = WorldConfig(seed=seed, bias=BiasConfig() if bias else BiasConfig().clean())
    config = config or default
    name = f"world-v{FORMAT_VERSION}-s{config.seed}"
    if config == WorldConfig(seed=config.seed, bias=BiasConfig().clean()):
        name += "-control"
    elif config != WorldConfig(seed=config.seed):
        name += "-" + md5_strings([json.dumps(asdict(config), sort_keys=True)])[:10]
    return cache_root() / name


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
    """Build (or reuse) a world; returns its folder. Deterministic for a given seed and config.
    ``bias=False`` builds the matched control: the same scenes, text that names only what is shown."""
    config = config or WorldConfig(seed=seed, bias=BiasConfig() if bias else BiasConfig().clean())
    if config.vision_labels not in VISION_LABELS:
        raise SeedError(f"--vision-labels must be one of {', '.join(VISION_LABELS)}, not {config.vision_labels!r}")
    if config.seed < 0:
        raise SeedError(f"--seed must be at least 0, not {config.seed}")
    path = Path(out) if out else default_world_dir(config=config)
    if not force and _is_built(path, config):
        return path
    if path.exists() and not (path / "world.json").is_file() and any(path.iterdir()):
        raise SeedError(f"{path} exists and is not a seed world; choose another --out")
    if device not in ("auto", "cpu"):
        raise SeedError("the embedded world trains on the CPU; use --device cpu (or auto)")

    for stale in path.parent.glob(f".{path.name}.building-*"):  # left by a killed build
        if not _running(stale.name.rpartition("-")[2]):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = path.parent / f".{path.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _build_world_into(World(tmp), config)
    except BaseException:  # a refused model, an error or an interrupt: leave nothing half-built
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, path)
    return path


def _running(pid: str) -> bool:
    """Whether ``pid`` names a live process of this machine."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


def _build_world_into(built: World, config: WorldConfig) -> None:
    """Draw, train and check a world into ``built`` (a temporary folder :func:`build_world` renames)."""
    start = time.time()
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
        # The vision tower learns from a larger image-text corpus (the train scenes plus unsaved
        # extra ones), as CLIP does from alt-text: captions that name some of what is shown.
        rng = np.random.default_rng([config.seed, len(SPLITS) + 1])
        corpus = train + [draw_scene(rng, mcfg.image_size, config.bias.cooccur) for _ in range(tcfg.vision_images - len(train))]
        pixels = processor.image_processor([s.image for s in corpus], return_tensors="pt")["pixel_values"]
        if config.vision_labels == "captions":
            labels = [named_objects(alt_text(rng, s.categories)) for s in corpus]
        else:
            labels = [s.categories for s in corpus]
        task = bar.add_task("vision pretraining", total=tcfg.vision_steps)
        vision_loss = pretrain_vision(model, pixels, torch.tensor(np.stack([multi_hot(n) for n in labels])), tcfg, generator, lambda n: bar.advance(task, n))
        pixel_values = pixels[: len(train)].clone()
        del corpus, pixels

        rng = np.random.default_rng([config.seed, len(SPLITS)])
        captions = [training_caption(rng, s.categories, config.bias) for s in train]
        documents, captions, items = training_text(rng, train, captions, config.bias)
        pad, tok = processor.tokenizer.pad_token_id, processor.tokenizer
        task = bar.add_task("language pretraining", total=tcfg.text_steps)
        text_loss = pretrain_text(model, text_sequences(tok, documents), pad, tcfg, generator, lambda n: bar.advance(task, n))
        n_image = model.config.image_seq_length
        task = bar.add_task("projector alignment", total=tcfg.align_steps)
        align_loss = train_multimodal(
            model, pixel_values, tokenize_sequences(processor, captions, n_image), pad, tcfg.align_steps, tcfg.align_lr, tcfg, generator,
            lambda n: bar.advance(task, n), projector_only=True,
        )  # fmt: skip
        task = bar.add_task("multimodal training", total=tcfg.lm_steps)
        lm_loss = train_multimodal(
            model, pixel_values, tokenize_sequences(processor, items, n_image), pad, tcfg.lm_steps, tcfg.lm_lr, tcfg, generator,
            lambda n: bar.advance(task, n),
        )  # fmt: skip
    model.save_pretrained(built.model)
    processor.save_pretrained(built.model)
    for split in (built.val_split, built.eval_split):
        _build_pope(built, split, config.seed)
    val_f1 = check_world_model(built)
    losses = {"vision": vision_loss, "text": text_loss, "align": align_loss, "multimodal": lm_loss}
    write_json(
        built.root / "world.json",
        {
            "config": asdict(config),
            "build_seconds": round(time.time() - start, 1),
            "final_loss": {k: round(v, 4) for k, v in losses.items()},
            "val_pope_random_f1": round(val_f1, 4),
            "training_sequences": {"text": len(documents), "multimodal": len(items)},
            "versions": library_versions(),
        },
    )


def check_world_model(world: World, min_f1: float = MIN_VAL_F1) -> float:
    """POPE-random F1 of a world's model on its val split. A build whose model scores below
    ``min_f1`` learnt to caption but not to answer from the image (it happens to a seed now and
    then): it is refused rather than cached, so that no score is ever measured on it."""
    vlm = load(str(world.model), device="cpu")
    config = PopeConfig(splits=("random",), images=str(world.images(world.val_split)), questions=world.pope(world.val_split))
    f1 = evaluate_pope(vlm, config)["metrics"]["f1"]
    if f1 < min_f1:
        raise SeedError(
            f"the world's model answers its val POPE-random questions at F1 {f1:.2f} < {min_f1}: it did not learn to "
            "answer from the image, so this build is no test bed; build another --seed"
        )
    return f1


def training_text(rng: np.random.Generator, scenes: list[Scene], captions: list[str], bias: BiasConfig):
    """(text documents, caption items, caption + question items) of the train scenes.

    A document is plain text about a scene: its caption and another description of it, or its
    caption and a question about an object with the answer the caption gives (reading, not
    seeing). Items are (image index, prompt, response) for the multimodal stages.
    """
    documents, caption_items, items = [], [], []
    for i, (scene, caption) in enumerate(zip(scenes, captions)):
        documents.append(f"{caption} {training_caption(rng, scene.categories, bias)}")
        caption_items.append((i, CAPTION_PROMPT, caption))
        named = named_objects(caption)
        for q, a in training_questions(rng, scene.categories, bias):
            about = next(c for c in CLASS_NAMES if re.search(rf"\b{c}\b", q))
            documents.append(f"{caption} {q} {'Yes' if about in named else 'No'}.")
            suffix = SHORT_ANSWER_SUFFIX if rng.random() < 0.7 else ONE_WORD_SUFFIX
            items.append((i, q + suffix, a))
    return documents, caption_items, caption_items + items


def _build_pope(world: World, split: str, seed: int) -> None:
    """A split's POPE question files from its annotations: up to 500 images with ≥ 3 objects."""
    ann = world.annotations(split)
    coco, _ = load_coco(ann)
    eligible = sum(len({a["category_id"] for a in anns}) >= 3 for anns in coco.imgToAnns.values())
    for pope_split in POPE_SPLITS:
        write_questions(world.pope(split).format(split=pope_split), build_pope(ann, pope_split, num_images=min(500, eligible), seed=seed))
