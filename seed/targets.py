"""The purified-target format: what ``seed purify`` stores and distillation reads.

A purification folder holds ``manifest.json`` (with the run's fingerprint), and per shard
``shard-NNNNN.safetensors``, its readable twin ``shard-NNNNN.jsonl`` (one record per stored
response, in row order, then one ``{"skipped": ...}`` line per unreadable image and one
``{"dropped": ...}`` line per repair that failed its check) and ``shard-NNNNN.check.json`` (the
record count and both files' md5, written last: the shard's commit mark, verified on resume and
on load), and ``purified.jsonl`` (every shard's records) once all shards are done. Tensors, one
row per stored response, T = the longest response of the shard (right-padded, ``mask`` False on
padding):

- ``item`` ``[N]`` long: the record's ``item`` id;
- ``token_ids`` ``[N, T]`` long: the (repaired) response tokens, EOS included;
- ``topk_ids`` ``[N, T, K]`` long and ``topk_probs`` ``[N, T, K]`` float: the teacher's top-K
  candidates and their purified probabilities p̃;
- ``flags`` ``[N, T, K]`` bool: H_t; ``sites`` ``[N, T]`` bool: positions whose emitted token
  was in H_t (the repaired ones); ``mask`` ``[N, T]`` bool.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from seed.errors import SeedError
from seed.io import atomic_write_bytes, iter_jsonl, md5_file, read_json_object, write_json

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


def check_path(out: str | Path, index: int) -> Path:
    """The check file of shard ``index``: its record count and md5s, the shard's commit mark."""
    return Path(out) / f"shard-{index:05d}.check.json"


def write_shard(out: str | Path, index: int, records: list[dict], tensors: dict[str, Tensor]) -> None:
    """Write one shard: its records, its tensors, then its check file (the shard's commit mark)."""
    from safetensors.torch import save

    tensor_file, record_file = shard_paths(out, index)
    text = "".join(json.dumps(r) + "\n" for r in records).encode("utf-8")
    payload = save({k: v.contiguous() for k, v in tensors.items()} or {"item": torch.zeros(0, dtype=torch.long)})
    atomic_write_bytes(record_file, text)
    atomic_write_bytes(tensor_file, payload)
    check = {"records": len(records), "records_md5": hashlib.md5(text).hexdigest(), "tensors_md5": hashlib.md5(payload).hexdigest()}
    write_json(check_path(out, index), {**check, "tensors_bytes": len(payload)})


def shard_done(out: str | Path, index: int) -> bool:
    """Whether shard ``index`` was finished (its check file is there); a damaged one is refused."""
    if not check_path(out, index).is_file():
        return False
    verify_shard(out, index)
    return True


def verify_shard(out: str | Path, index: int) -> None:
    """Refuse a shard whose files are not the ones written: missing, cut or changed."""
    tensor_file, record_file = shard_paths(out, index)
    check = read_json_object(check_path(out, index))
    problem = None
    if not record_file.is_file() or not tensor_file.is_file():
        problem = f"its {'records' if not record_file.is_file() else 'tensors'} file is missing"
    elif (lines := sum(1 for line in record_file.open("rb") if line.strip())) != check.get("records"):
        problem = f"its records file holds {lines} of {check.get('records')} records"
    elif md5_file(record_file) != check.get("records_md5"):
        problem = "its records file has changed since it was written"
    elif (size := tensor_file.stat().st_size) != check.get("tensors_bytes"):
        problem = f"its tensors file is {size} of {check.get('tensors_bytes')} bytes"
    elif md5_file(tensor_file) != check.get("tensors_md5"):
        problem = "its tensors file has changed since it was written"
    if problem:
        name = tensor_file.stem
        raise SeedError(f"{Path(out) / name} is damaged ({problem}); delete {name}.* and rerun to redo it")


def shard_records(out: str | Path, index: int) -> tuple[list[dict], list[dict]]:
    """(the stored records of shard ``index``, in row order; its notes: skipped images, dropped repairs, cut captions)."""
    lines = list(iter_jsonl(shard_paths(out, index)[1]))
    return [r for r in lines if not _is_note(r)], [r for r in lines if _is_note(r)]


def _is_note(record: dict) -> bool:
    return "skipped" in record or "dropped" in record or "cut_caption" in record


def load_shards(out: str | Path) -> tuple[list[dict], dict[str, Tensor]]:
    """The stored records of a finished purification and its shard tensors concatenated (padded
    to one T), every shard verified first."""
    from safetensors.torch import load_file

    out = Path(out)
    manifest = read_json_object(out / "manifest.json") if (out / "manifest.json").is_file() else {}
    if not manifest.get("complete"):
        raise SeedError(f"{out}: not a finished purification (run seed purify again to resume it)")
    if not isinstance(manifest.get("shards"), int):
        raise SeedError(f"{out}: a purification without shard checks (made by an older seed); purify again")
    records, parts = [], []
    for index in range(manifest["shards"]):
        verify_shard(out, index)
        records += shard_records(out, index)[0]
        parts.append(load_file(shard_paths(out, index)[0]))
    parts = [p for p in parts if "token_ids" in p]
    if not parts:
        raise SeedError(f"{out}: the purification stored no responses")
    return records, cat_padded(parts)
