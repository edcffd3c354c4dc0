"""Distil purified targets into the Hallucination Elimination Adapter (method.md §5–6).

The student is the frozen base plus a LoRA (:func:`seed.adapters.hea.attach_hea`); it is
teacher-forced on each *repaired* response and pulled towards the stored, purified top-K
distributions p̃ by one of :data:`seed.losses.LOSSES`. The loop is a plain
``accelerate`` loop: gradient accumulation, mixed precision and data parallelism (under
``accelerate launch``) come from :class:`accelerate.Accelerator`, not from code here.

    records, tensors = seed.purify.load_shards("runs/purified")
    stats = distill(vlm, records, tensors, "world/purify/images", DistillConfig(loss="reverse-kl"))
    save_hea(vlm, "runs/hea", {"loss": "reverse-kl", **stats})
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from seed.adapters.hea import attach_hea
from seed.config import DistillConfig
from seed.errors import SeedError
from seed.io import open_image
from seed.losses import LOSSES, get_loss, site_weights
from seed.targets import TARGET_KEYS, PurifiedTargets
from seed.tracking import check_tracker, flat_scalars, tracker_run

ImageSource = str | Path | Callable[[Mapping], Image.Image] | None


def _trains_on(record: Mapping, captions: str) -> bool:
    """Whether a stored response is trained on: every answer; captions per ``captions``."""
    if "category" in record or captions == "all":
        return True
    return captions == "repaired" and record["response"] != record["repaired"]


class PurifiedDataset(Dataset):
    """One row per stored response: its image, prompt, repaired text and target tensors
    (``captions``: ``all``, only the ``repaired`` ones, or ``none``)."""

    def __init__(self, records: Sequence[Mapping], tensors: Mapping[str, Tensor], images: ImageSource = None, captions: str = "all"):
        missing = [k for k in ("item", *TARGET_KEYS) if k not in tensors]
        if missing:
            raise SeedError(f"purified shards lack tensor(s) {', '.join(missing)}")
        by_item = {int(r["item"]): r for r in records}
        self.items = [int(i) for i in tensors["item"]]
        absent = [i for i in self.items if i not in by_item]
        if absent:
            raise SeedError(f"purified shards hold item(s) {absent[:5]} that purified.jsonl does not list")
        keep = [k for k, i in enumerate(self.items) if _trains_on(by_item[i], captions)]
        self.items = [self.items[k] for k in keep]
        self.records = [by_item[i] for i in self.items]
        rows = torch.tensor(keep, dtype=torch.long)
        self.tensors = {k: tensors[k][rows] for k in TARGET_KEYS}
        self.images = images

    def __len__(self) -> int:
        return len(self.items)

    def image(self, record: Mapping) -> Image.Image:
        if callable(self.images):
            return self.images(record)
        path = Path(record["image"])
        return open_image(path if self.images is None else Path(self.images) / path)

    def __getitem__(self, i: int) -> dict:
        record = self.records[i]
        return {
            "item": self.items[i],
            "image": self.image(record),
            "prompt": record["prompt"],
            "response": record["repaired"],
            **{k: v[i] for k, v in self.tensors.items()},
        }


def collate(rows: list[dict]) -> dict:
    """Lists for images and texts, stacked tensors for the targets."""
    out = {k: [r[k] for r in rows] for k in ("item", "image", "prompt", "response")}
    out.update({k: torch.stack([r[k] for r in rows]) for k in TARGET_KEYS})
    return out


def aligned_student_logits(logits: Tensor, ids: Tensor, mask: Tensor, batch: Mapping) -> Tensor:
    """The student's ``[B, T, V]`` logits padded or cut to the stored T, after checking that the
    response tokenises now exactly as it did when it was purified."""
    stored_ids, stored_mask = batch["token_ids"].to(ids.device), batch["mask"].to(mask.device)
    T = stored_ids.shape[1]
    if logits.shape[1] < T:
        pad = T - logits.shape[1]
        logits = torch.nn.functional.pad(logits, (0, 0, 0, pad))
        ids = torch.nn.functional.pad(ids, (0, pad), value=-1)
        mask = torch.nn.functional.pad(mask, (0, pad), value=False)
    logits, ids, mask = logits[:, :T], ids[:, :T], mask[:, :T]
    bad = stored_mask & (~mask | (ids != stored_ids))
    if bad.any():
        b, t = (int(x) for x in bad.nonzero()[0])
        now = int(ids[b, t]) if mask[b, t] else "nothing"
        raise SeedError(
            f"item {batch['item'][b]}: the repaired response tokenises to {now} at position {t}, but the "
            f"purified shards stored token {int(stored_ids[b, t])}: the shards were written with a different "
            "tokenizer or model (purify again with this one), or their tensor rows and purified.jsonl records "
            "are out of order"
        )
    return logits


def distill(
    vlm,
    records: Sequence[Mapping],
    tensors: Mapping[str, Tensor],
    images: ImageSource,
    config: DistillConfig | None = None,
    *,
    run_name: str = "distill",
) -> dict:
    """Train the HEA on ``vlm`` (attached here, or continued if ``vlm`` already carries one).

    ``records``/``tensors``: as :func:`seed.targets.load_shards` returns them. ``images``: the
    folder that the records' ``image`` paths are relative to (absolute paths pass through),
    None for paths usable as they are, or a callable ``record -> PIL image``. ``config`` None
    means the :class:`DistillConfig` defaults. With ``config.log_with``, the loss and learning
    rate of every optimizer step go to that tracker's run ``run_name``. Returns training
    statistics; ``vlm`` holds the trained adapter, in eval mode, afterwards.
    """
    config = config or DistillConfig()
    start = time.time()
    run = _setup(vlm, PurifiedDataset(records, tensors, images, config.captions), config, run_name)
    try:
        losses = _train(vlm, run, config)
    finally:
        # Not end_training(): it also destroys the process group, which seed evolve still needs.
        for tracker in run.accelerator.trackers:
            tracker.finish()
        vlm.model = run.accelerator.unwrap_model(run.model)
        if config.gradient_checkpointing:
            vlm.model.gradient_checkpointing_disable()
        vlm.model.eval()
        run.accelerator.free_memory()
    tail = losses[-max(1, min(10, len(losses) // 4)) :]
    return {
        "config": asdict(config),
        "examples": len(run.loader.dataset),
        "steps": len(losses),
        "first_loss": losses[0],
        "final_loss": sum(tail) / len(tail),
        "losses": losses,
        "mixed_precision": run.accelerator.mixed_precision,
        "processes": run.accelerator.num_processes,
        "trainable_parameters": sum(p.numel() for p in run.trainable),
        "seconds": round(time.time() - start, 1),
    }


@dataclass
class _Run:
    """What :func:`_setup` prepares for the loop."""

    accelerator: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    loader: DataLoader
    trainable: list[torch.nn.Parameter]
    total_steps: int


def _setup(vlm, dataset: PurifiedDataset, config: DistillConfig, run_name: str) -> _Run:
    """Accelerator (and tracker run), adapter, optimizer, schedule and data loader, prepared."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    on_cpu = str(vlm.device).startswith("cpu")
    mixed = config.mixed_precision
    if mixed == "auto":
        mixed = "bf16" if not on_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    check_tracker(config.log_with)
    tracking = {} if config.log_with is None else {"log_with": config.log_with, "project_dir": config.logging_dir or "logs"}
    accelerator = Accelerator(gradient_accumulation_steps=config.grad_accum, mixed_precision=mixed, cpu=on_cpu, **tracking)
    set_seed(config.seed)
    if len(dataset) == 0:
        raise SeedError("nothing to distil: the purified shards hold no responses")
    loader = DataLoader(
        dataset, batch_size=config.batch_size, shuffle=True, collate_fn=collate, generator=torch.Generator().manual_seed(config.seed)
    )
    attach_hea(vlm, config.hea)
    if config.gradient_checkpointing:
        vlm.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainable = [p for p in vlm.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(math.ceil(len(dataset) / config.batch_size) / accelerator.num_processes / config.grad_accum)
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=total_steps)
    # vlm placed the model itself (seed.adapters.load uses accelerate's device for this process).
    model, optimizer, loader, scheduler = accelerator.prepare(
        vlm.model, optimizer, loader, scheduler, device_placement=[False, True, True, True]
    )
    vlm.model = model
    if config.log_with is not None:
        project, init_kwargs = tracker_run(config.log_with, run_name)
        accelerator.init_trackers(project, config=flat_scalars(asdict(config)), init_kwargs=init_kwargs)
    return _Run(accelerator, model, optimizer, scheduler, loader, trainable, total_steps)


def _train(vlm, run: _Run, config: DistillConfig) -> list[float]:
    """The loop: teacher-forced student logits against the stored targets; one loss per optimizer step."""
    accelerator, model = run.accelerator, run.model
    loss_fn = get_loss(config.loss, eps=config.eps, beta=config.beta, chunk_size=config.chunk_size)
    model.train()
    losses: list[float] = []
    window: list[Tensor] = []
    columns = [TextColumn(f"distilling ({config.loss})"), BarColumn(), TextColumn("{task.completed}/{task.total} steps  loss {task.fields[loss]}"), TimeElapsedColumn()]
    with Progress(*columns, disable=not config.progress or not accelerator.is_local_main_process) as bar:
        task = bar.add_task("distill", total=run.total_steps, loss="")
        while len(losses) < run.total_steps:
            for batch in run.loader:
                with accelerator.accumulate(model):
                    logits, ids, mask = vlm.response_logits(batch["image"], batch["prompt"], batch["response"])
                    logits = aligned_student_logits(logits, ids, mask, batch)
                    targets = PurifiedTargets(batch["token_ids"], batch["topk_ids"], batch["topk_probs"]).to(logits.device)
                    weights = None if config.site_weight == 1.0 else site_weights(batch["sites"], config.site_weight).to(logits.device)
                    loss = loss_fn(logits, targets, batch["mask"].to(logits.device), weights)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and config.max_grad_norm:
                        accelerator.clip_grad_norm_(run.trainable, config.max_grad_norm)
                    run.optimizer.step()
                    run.scheduler.step()
                    run.optimizer.zero_grad()
                window.append(loss.detach())
                if accelerator.sync_gradients:
                    losses.append(accelerator.gather(torch.stack(window).mean()[None]).mean().item())
                    window.clear()
                    bar.update(task, advance=1, loss=f"{losses[-1]:.4f}")
                    accelerator.log({"train/loss": losses[-1], "train/lr": run.scheduler.get_last_lr()[0]}, step=len(losses))
                    if len(losses) >= run.total_steps:
                        break
    return losses


__all__ = ["LOSSES", "DistillConfig", "PurifiedDataset", "aligned_student_logits", "collate", "distill"]
