"""Ablation in one run, on one held-out set: base, VCD decoding on the base, and the base
distilled with SFT, forward KL and reverse KL (SEED) — every loss trained from the base on the
SAME purified shards, written once by the base model, with the same hyperparameters.

    python benchmarks/ablation.py                         # the embedded world (purify / held-out splits)
    python benchmarks/ablation.py --losses sft,reverse-kl,jsd --lr 5e-4 --epochs 2
    python benchmarks/ablation.py --purified runs/evolve/round-1/purified   # reuse the base's shards
    seed report runs/ablation                                               # the table as an HTML page
    python benchmarks/ablation.py --model llava-1.5 --images unlabelled/ \\
        --eval-images val2014/ --eval-annotations instances_val2014.json --pope-images 500

Prints one table (POPE F1 and yes-ratio per split, CHAIR_i, CHAIR_s, object recall, caption
length) and writes OUT/ablation.json. Each row's files live in OUT/<row>/ (answers, captions,
adapter); a rerun reuses rows already finished (delete OUT/<row>/result.json to redo one).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from rich.console import Console

from seed.adapters import load_spec
from seed.adapters.hea import save_hea
from seed.config import Decoding, DistillConfig, EvolveConfig, HEAConfig, IdentifyConfig, ModelSpec, PurifyConfig
from seed.distill import distill
from seed.evolve import evaluate, resolve_datasets
from seed.io import library_versions, md5_file, read_json, write_json
from seed.purify import purify
from seed.report import metrics_table
from seed.targets import load_shards

LOSS_NAMES = {"sft": "SFT", "forward-kl": "fwd KL", "reverse-kl": "SEED (rev KL)", "jsd": "JSD"}


def main() -> None:
    args = _parse()
    console = Console()
    out = Path(args.out)
    spec = ModelSpec(args.model, None, args.device, args.dtype)
    evolve_config = EvolveConfig(
        images=args.images, eval_images=args.eval_images, eval_annotations=args.eval_annotations,
        pope_images=args.pope_images, chair_images=args.chair_images, select="last",  # one round each: nothing to choose
    )  # fmt: skip
    spec, data = resolve_datasets(spec, evolve_config)
    train = DistillConfig(
        lr=args.lr, epochs=args.epochs, batch_size=args.batch_size, hea=HEAConfig(rank=args.rank, alpha=args.rank * 2),
        captions=args.captions, site_weight=args.site_weight, seed=args.seed,
        log_with=args.log_with, logging_dir=str(out / "logs") if args.log_with else None,
    )  # fmt: skip
    options = {"batch_size": args.eval_batch_size, "pope_images": args.pope_images, "chair_images": args.chair_images}

    start = time.time()
    signals = {} if args.identify is None else {"signals": tuple(args.identify.split(","))}
    purify_config = PurifyConfig(IdentifyConfig(tau=args.tau, **signals))
    if args.purified:
        # Shards written earlier by the base model (e.g. round 1 of `seed evolve`): reuse them.
        purified = Path(args.purified)
        manifest = read_json(purified / "manifest.json")
        if manifest.get("adapter"):
            raise SystemExit(f"{purified} was purified with an adapter ({manifest['adapter']}); the ablation needs the base model's shards")
        purify_config = manifest["fingerprint"]["options"]
    else:
        purified = purify(
            load_spec(spec), images=data.purify_images, annotations=data.purify_annotations, out=out / "purified", config=purify_config
        )
    records, tensors = load_shards(purified)
    console.print(
        f"purified {len(records)} responses ({sum(r['response'] != r['repaired'] for r in records)} repaired) "
        f"from {data.purify_images} in {time.time() - start:.0f} s",
        highlight=False,
    )

    rows: dict[str, dict] = {}

    def row(name: str, label: str, run) -> None:
        """Run one row unless OUT/<name>/result.json holds it already."""
        done = out / name / "result.json"
        if done.is_file():
            rows[name] = read_json(done)
        else:
            t = time.time()
            rows[name] = {"label": label, **run(out / name), "seconds": round(time.time() - t, 1)}
            write_json(done, rows[name])
        console.print(f"{label}: adversarial F1 {100 * rows[name]['eval']['pope']['adversarial']['f1']:.2f}", highlight=False)

    row("base", "base", lambda d: {"eval": evaluate(load_spec(spec), data, d, **options)})
    if not args.no_vcd:
        row(
            "vcd",
            "VCD (base)",
            lambda d: {"eval": evaluate(load_spec(spec), data, d, decoding=Decoding("vcd", args.vcd_alpha, args.vcd_beta), **options)},
        )

    def distilled(loss: str):
        def run(folder: Path) -> dict:
            vlm = load_spec(spec)
            stats = distill(vlm, records, tensors, data.purify_images, dataclasses.replace(train, loss=loss), run_name=loss)
            save_hea(vlm, folder / "adapter", {"loss": loss, "rounds": 1, "data_hash": md5_file(purified / "purified.jsonl")})
            stats = {k: v for k, v in stats.items() if k != "losses"}
            return {"distill": stats, "eval": evaluate(vlm, data, folder, **options)}

        return run

    for loss in args.losses.split(","):
        row(loss, LOSS_NAMES.get(loss, loss), distilled(loss))

    title = f"SEED ablation, held-out {data.eval_images} (same questions and images for every column)"
    table = metrics_table(title, {r["label"]: r["eval"] for r in rows.values()})
    console.print(table)
    write_json(
        out / "ablation.json",
        {
            "rows": rows,
            "purified": {"path": str(purified), "items": len(records), "md5": md5_file(purified / "purified.jsonl")},
            "data": {k: str(v) for k, v in dataclasses.asdict(data).items()},
            "distill": dataclasses.asdict(train),
            "purify": purify_config if isinstance(purify_config, dict) else dataclasses.asdict(purify_config),
            "versions": library_versions(),
            "seconds": round(time.time() - start, 1),
        },
    )
    console.print(f"wrote {out / 'ablation.json'}", highlight=False)


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="alias, hub id or folder (default: the embedded world's model)")
    p.add_argument("--images", default=None, help="images to purify (default: the world's purify split)")
    p.add_argument("--eval-images", default=None, help="held-out images (default: the world's)")
    p.add_argument("--eval-annotations", default=None, help="held-out COCO instances (default: the world's)")
    p.add_argument("--pope-images", type=int, default=500, help="with --eval-annotations: images per POPE split")
    p.add_argument("--chair-images", type=int, default=500)
    p.add_argument("--identify", default=None, help="purify's signals, comma-separated (default: purify's)")
    p.add_argument("--tau", type=float, default=IdentifyConfig.tau, help="purify's flag threshold on h")
    p.add_argument("--purified", default=None, help="reuse shards the base model wrote (e.g. an evolve run's round-1/purified)")
    p.add_argument("--losses", default="sft,forward-kl,reverse-kl")
    p.add_argument("--lr", type=float, default=DistillConfig.lr)
    p.add_argument("--epochs", type=int, default=DistillConfig.epochs)
    p.add_argument("--batch-size", type=int, default=DistillConfig.batch_size)
    p.add_argument("--rank", type=int, default=HEAConfig.rank)
    p.add_argument("--site-weight", type=float, default=DistillConfig.site_weight, help="loss weight of hallucination sites")
    p.add_argument("--captions", default=DistillConfig.captions, help="captions the student trains on: all, repaired or none")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-with", default=None, help="tensorboard or wandb: each loss's per-step loss and learning rate (OUT/logs/<loss>)")
    p.add_argument("--vcd-alpha", type=float, default=1.0)
    p.add_argument("--vcd-beta", type=float, default=0.1)
    p.add_argument("--no-vcd", action="store_true", help="skip the VCD row")
    p.add_argument("--eval-batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default=None)
    p.add_argument("--out", default="runs/ablation")
    return p.parse_args()


if __name__ == "__main__":
    main()
