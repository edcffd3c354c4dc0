"""Hallucinated-object detection on the embedded world: the slow multi-signal teacher, the
distilled one-pass student (``seed detect train``) and each single signal, side by side.

Two caption sources over the world's held-out images, judged by the biased world's model: its
own greedy captions, and captions of the matched control world's model (``seed world build
--no-bias``), so that the detector also judges captions that are not its own. For each: AUROC,
F1 of h > τ, and captions per second (teacher and student).

    python benchmarks/detect.py [--train-images N] [--detector runs/detector]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from seed.adapters import load
from seed.config import DetectConfig, DetectorConfig, IdentifyConfig
from seed.detection import detect, detection_metrics, train_detector
from seed.io import image_files, open_image
from seed.prompts import CAPTION_PROMPT
from seed.world import World, build_world


def captions_of(vlm, folder: Path, limit: int) -> list[dict]:
    files = image_files(folder)[:limit]
    out = []
    for k in range(0, len(files), 32):
        images = [open_image(f) for f in files[k : k + 32]]
        texts = vlm.generate(images, [CAPTION_PROMPT] * len(images), max_new_tokens=64)
        out += [{"image": f.name, "caption": t} for f, t in zip(files[k : k + 32], texts)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-images", type=int, default=DetectorConfig().images)
    ap.add_argument("--captions", type=int, default=500, help="held-out images captioned by each model")
    ap.add_argument("--detector", type=Path, help="a trained detector folder (default: train one into runs/detector)")
    args = ap.parse_args()
    world, control = World.default(), World(build_world(bias=False))
    vlm = load(str(world.model), device="cpu")
    teacher = DetectorConfig().teacher
    detector = args.detector or Path("runs/detector")
    if args.detector is None:
        stats = train_detector(vlm, world.images(world.purify_split), detector, DetectorConfig(images=args.train_images))
        Console().print(f"trained the detector on {stats['images']} unlabelled images in {stats['seconds']} s", highlight=False)
    heldout, truth = world.images(world.eval_split), world.annotations(world.eval_split)
    sources = {"own captions": captions_of(vlm, heldout, args.captions),
               "control model's captions": captions_of(load(str(control.model), device="cpu"), heldout, args.captions)}  # fmt: skip
    everything = dataclasses.replace(teacher, signals=(*teacher.signals, "contrast", "uncertainty"))
    table = Table(title="hallucinated-object detection, world held-out images (positive = the image does not hold the object)")
    for column in ("captions", "detector", "AUROC", "F1 %", "captions/s"):
        table.add_column(column, justify="left" if column in ("captions", "detector") else "right")
    for source, records in sources.items():
        rows = []
        for name, config in (("teacher", DetectConfig(teacher)), ("student", DetectConfig(IdentifyConfig(signals=(f"detector:{detector}",)))), ("all signals", DetectConfig(everything))):
            start = time.perf_counter()
            results = detect(vlm, records, heldout, config)
            speed = len(records) / (time.perf_counter() - start)
            metrics = detection_metrics(results, truth, config.identify.tau)
            rows.append((f"{name} (combined)", metrics["combined"], f"{speed:.1f}"))
            if name == "all signals":
                rows += [(f"  {signal}", m, "") for signal, m in metrics.items() if signal != "combined"]
        for label, m, speed in rows:
            table.add_row(source, label, "n/a" if m["auroc"] is None else f"{m['auroc']:.3f}", f"{100 * m['f1']:.1f}", speed)
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
