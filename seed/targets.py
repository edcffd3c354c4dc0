"""The purified-target format: what ``seed purify`` stores and distillation reads.

A purification folder holds ``manifest.json``, ``shard-NNNNN.safetensors`` with its readable twin
``shard-NNNNN.jsonl`` (one record per stored response, in row order), and ``purified.jsonl``
(every shard's records) once all shards are done. Tensors, one row per response, T = the
longest response of the shard (right-padded, ``mask`` False on padding):

- ``item`` ``[N]`` long: the record's ``item`` id;
- ``token_ids`` ``[N, T]`` long: the (repaired) response tokens, EOS included;
- ``topk_ids`` ``[N, T, K]`` long and ``topk_probs`` ``[N, T, K]`` float: the teacher's top-K
  candidates and their purified probabilities p̃;
- ``flags`` ``[N, T, K]`` bool: H_t; ``sites`` ``[N, T]`` bool: positions whose emitted token
  was in H_t (the repaired ones); ``mask`` ``[N, T]`` bool.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from seed.errors import SeedError
from seed.io import atomic_write_bytes, atomic_write_text, iter_jsonl

# Stored per-item tensors the trainer reads (``flags`` is not needed: p̃ already has the purge).
TARGET_KEYS = ("token_ids", "topk_ids", "topk_probs", "sites", "mask")


@dataclass(frozen=True)
class PurifiedTargets:
    """One batch of stored purified targets.

    Attributes:
        token_ids: ``[B, T]`` long, the repaired response tokens (hard labels for SFT).
        topk_ids: ``[B, T, K]`` long, the teacher's top-K candidate ids per position.
        topk_probs: ``[B, T, K]`` float, purified probabilities p̃ over ``topk_ids``.
    """

    token_ids: Tensor
    topk_ids: Tensor
    topk_probs: Tensor

    def to(self, device: torch.device | str) -> PurifiedTargets:
        return PurifiedTargets(self.token_ids.to(device), self.topk_ids.to(device), self.topk_probs.to(device))


def cat_padded(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Concatenate per-batch tensors along rows, right-padding the T axis (dim 1) to one length."""
    T = max(p["mask"].shape[1] for p in parts)
    out = {}
    for key in parts[0]:
        if parts[0][key].dim() == 1:  # per-row values, e.g. item ids
            out[key] = torch.cat([p[key] for p in parts])
            continue
        out[key] = torch.cat([torch.nn.functional.pad(p[key], (0, 0) * (p[key].dim() - 2) + (0, T - p[key].shape[1])) for p in parts])
    return out


def shard_paths(out: str | Path, index: int) -> tuple[Path, Path]:
    """(tensors, records) files of shard ``index``."""
    out = Path(out)
    return out / f"shard-{index:05d}.safetensors", out / f"shard-{index:05d}.jsonl"


def write_shard(out: str | Path, index: int, records: list[dict], tensors: dict[str, Tensor]) -> None:
    """Write one shard: its records first, its tensors last (the tensors file is the shard's commit mark)."""
    from safetensors.torch import save

    tensor_file, record_file = shard_paths(out, index)
    atomic_write_text(record_file, "".join(json.dumps(r) + "\n" for r in records))
    payload = {k: v.contiguous() for k, v in tensors.items()} or {"item": torch.zeros(0, dtype=torch.long)}
    atomic_write_bytes(tensor_file, save(payload))


def load_shards(out: str | Path) -> tuple[list[dict], dict[str, Tensor]]:
    """The records of ``purified.jsonl`` and the shard tensors concatenated (padded to one T)."""
    from safetensors.torch import load_file

    out = Path(out)
    manifest = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").is_file() else {}
    if not manifest.get("complete"):
        raise SeedError(f"{out}: not a finished purification (run seed purify again to resume it)")
    records = list(iter_jsonl(out / "purified.jsonl"))
    parts = [load_file(out / name) for name in manifest["shards"]]
    return records, cat_padded([p for p in parts if "token_ids" in p])
