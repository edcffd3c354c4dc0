"""Checks that need a GPU, on a random model with LLaVA-1.5-7B's architecture (nothing downloaded):

1. one purify batch (16 random 640×480 images, the default label-free signals) in bf16: seconds;
2. one QLoRA distillation step at batch 16 on its purified targets: the base loaded in 4-bit NF4
   through ``seed.adapters.load`` (the random model is saved first), the HEA trained in bf16 with
   gradient checkpointing: peak GPU memory and seconds.

    python benchmarks/gpu_check.py                                   # the random 7B on cuda
    python benchmarks/gpu_check.py --model ~/.cache/seed/world-v3-s0/model --image-dir ~/.cache/seed/world-v3-s0/purify/images \
        --device cpu --no-4bit --images 4 --batch-size 4                 # a smoke test on the CPU

Prints one table. The POPE fast path against batch-1 ``generate`` on the same random 7B is
``benchmarks/pope_speed.py --random-7b``; ``benchmarks/gpu_check.sh`` runs both.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from seed.adapters import load
from seed.config import DistillConfig, HEAConfig, IdentifyConfig, PurifyConfig
from seed.distill import distill
from seed.isolate import SurfaceBans
from seed.lexicon import ObjectLexicon
from seed.purify import purify_shard


def _images(folder: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        files.append(folder / f"random_{i:03d}.jpg")
        Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(files[-1])
    return files


def _peak(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="a checkpoint folder instead of the random LLaVA-1.5-7B")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--image-dir", type=Path, help="take the images from here (default: random 640×480 pictures)")
    ap.add_argument("--batch-size", type=int, default=16, help="distillation batch")
    ap.add_argument("--no-4bit", action="store_true", help="train on the unquantised base (e.g. on the CPU)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="seed-gpu-check-"))
    rows: list[tuple[str, str]] = []
    if args.model is None:
        sys.path.insert(0, str(Path(__file__).parent))
        from pope_speed import random_llava_7b

        start = time.perf_counter()
        vlm = random_llava_7b(args.device, "bfloat16")
        vlm.model.save_pretrained(work / "model")
        vlm.processor.save_pretrained(work / "model")
        rows.append(("random LLaVA-1.5-7B built and saved (s)", f"{time.perf_counter() - start:.0f}"))
        model = str(work / "model")
    else:
        model = args.model
        vlm = load(model, device=args.device)
    (work / "images").mkdir()
    files = sorted(args.image_dir.glob("*.png"))[: args.images] if args.image_dir else _images(work / "images", args.images)
    folder = files[0].parent
    lexicon = ObjectLexicon.default()
    config = PurifyConfig(IdentifyConfig(categories=lexicon.categories[:16]), batch_size=args.images)
    bans = SurfaceBans(vlm.tokenizer, lexicon, config.identify.categories)

    start = time.perf_counter()
    records, tensors = purify_shard(vlm, files, 0, config, lexicon, bans, None)
    rows.append((f"purify batch: {args.images} images, 16 categories, self-probe × lens (s)", f"{time.perf_counter() - start:.1f}"))
    records = [r for r in records if "item" in r]
    del vlm
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    base = load(model, device=args.device, load_in_4bit=not args.no_4bit)
    loaded = _peak(args.device)
    train = DistillConfig(max_steps=1, batch_size=args.batch_size, gradient_checkpointing=True, hea=HEAConfig(), progress=False)
    start = time.perf_counter()
    stats = distill(base, records, tensors, folder, train)
    kind = "QLoRA (4-bit base)" if not args.no_4bit else "LoRA"
    rows += [
        (f"{kind}: base loaded, peak GPU memory (GiB)", f"{loaded:.2f}"),
        (f"{kind} step, batch {args.batch_size}: peak GPU memory (GiB)", f"{_peak(args.device):.2f}"),
        (f"{kind} step, batch {args.batch_size}: seconds", f"{time.perf_counter() - start:.1f}"),
        ("trainable parameters", f"{stats['trainable_parameters']:,}"),
    ]
    table = Table(title=f"gpu_check on {torch.cuda.get_device_name() if args.device.startswith('cuda') else args.device}")
    table.add_column("check")
    table.add_column("value", justify="right")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


if __name__ == "__main__":
    main()
