"""Where a run reads its data: the images it purifies, the set it reports on and the validation
set that chooses its rounds; a world's splits fill what is left open. No two sets share an image.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from seed.config import EvolveConfig, ModelSpec
from seed.errors import SeedError
from seed.evaluation.pope import SPLITS, load_questions
from seed.io import image_files, read_json_object
from seed.world import World


@dataclass(frozen=True)
class Datasets:
    """Where purification reads images, evaluation (reported) reads images, questions and
    objects, and the validation set that chooses rounds reads its own (None: ``--select last``)."""

    purify_images: Path
    purify_annotations: Path | None
    eval_images: Path
    eval_annotations: Path
    pope_questions: str | None  # a question file per split, "{split}" in the path; None: built from eval_annotations
    val_images: Path | None = None
    val_annotations: Path | None = None
    val_questions: str | None = None

    def validation(self) -> Datasets | None:
        """The validation set as the evaluated one (None without one)."""
        if self.val_images is None:
            return None
        return dataclasses.replace(self, eval_images=self.val_images, eval_annotations=self.val_annotations, pope_questions=self.val_questions)


def resolve_datasets(spec: ModelSpec, config: EvolveConfig) -> tuple[ModelSpec, Datasets]:
    """The model and data of a run: without ``spec.model`` (or with ``config.world``), a world's
    model and its purify / val / test splits for whatever ``config`` leaves open; a real model
    must be given its purification, evaluation and validation sets (or ``--select last``).
    Refuses any image file name that two of the sets share."""
    world = None
    if spec.model is None or config.world is not None:
        world = World.default() if config.world is None else World.existing(config.world)
        spec = dataclasses.replace(spec, model=spec.model or str(world.model))
    elif config.images is None:
        raise SeedError("purifying a model needs --images DIR (unlabelled images, disjoint from the evaluation images)")
    elif config.eval_images is None or config.eval_annotations is None:
        raise SeedError("evaluating a model needs --eval-images DIR and --eval-annotations instances.json (held-out COCO)")
    own_eval = world is not None and config.eval_images is None and config.eval_annotations is None
    own_val = world is not None and config.val_images is None
    if config.select == "val" and config.val_images is None and not own_val:
        raise SeedError("choosing a round needs a validation set: --val-images DIR and --val-annotations instances.json, or --select last")
    val_images = config.val_images or (world.images(world.val_split) if own_val else None)
    val_annotations = config.val_annotations or (world.annotations(world.val_split) if own_val else None)
    data = Datasets(
        purify_images=Path(config.images or world.images(world.purify_split)),
        purify_annotations=Path(config.annotations) if config.annotations else (world.annotations(world.purify_split) if config.images is None else None),
        eval_images=Path(config.eval_images or world.images(world.eval_split)),
        eval_annotations=Path(config.eval_annotations or world.annotations(world.eval_split)),
        pope_questions=world.pope_questions if own_eval else None,
        val_images=Path(val_images) if val_images and config.select == "val" else None,
        val_annotations=Path(val_annotations) if val_annotations and config.select == "val" else None,
        val_questions=world.pope(world.val_split) if own_val and config.select == "val" else None,
    )
    check_disjoint(purification_images(data), evaluation_images(data))
    if data.validation() is not None:
        check_disjoint(purification_images(data), evaluation_images(data.validation()), "validation")
        check_disjoint(evaluation_images(data.validation()), evaluation_images(data), "validation", "evaluation")
    return spec, data


def purification_images(data: Datasets) -> list[str]:
    """File names purify will read (every image file of the folder, as :func:`seed.purify.purify` lists them)."""
    if not data.purify_images.is_dir():
        raise SeedError(f"--images {data.purify_images}: no such folder")
    return [p.name for p in image_files(data.purify_images)]


def evaluation_images(data: Datasets) -> list[str]:
    """File names of every image POPE or CHAIR may show: the annotated images and the questions' images."""
    names = {img.get("file_name") for img in read_json_object(data.eval_annotations).get("images", []) if isinstance(img, dict)}
    if data.pope_questions is not None:
        for split in SPLITS:
            names.update(q["image"] for q in load_questions(data.pope_questions.format(split=split)).questions)
    return sorted(n for n in names if n)


def check_disjoint(first: Sequence[str], second: Sequence[str], a: str = "purification", b: str = "evaluation") -> None:
    """Refuse a run whose ``a`` images include any ``b`` image (by file name, so copies in another
    folder count too)."""
    shared = sorted(set(first) & set(second))
    if shared:
        raise SeedError(
            f"{len(shared)} {a} image(s) are also {b} images (e.g. {', '.join(shared[:3])}); the sets must be disjoint"
        )
