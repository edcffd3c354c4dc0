"""Small shared helpers: atomic writes, JSON Lines, hashes, library versions, devices."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator

from seed.errors import SeedError


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise SeedError(f"{path}: no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SeedError(f"{path}: malformed JSON at line {e.lineno}: {e.msg}") from None


def iter_jsonl(path: str | Path) -> Iterator[dict]:
    """Yield the records of a JSON Lines file; blank lines are skipped, bad lines named."""
    path = Path(path)
    if not path.is_file():
        raise SeedError(f"{path}: no such file")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise SeedError(f"{path}: malformed JSON on line {lineno}: {e.msg}") from None
            if not isinstance(record, dict):
                raise SeedError(f"{path}: line {lineno} is not a JSON object")
            yield record


def load_coco(annotations: str | Path | dict):
    """A pycocotools ``COCO`` index over an instances file (or its dict), and a name for errors."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    data = annotations if isinstance(annotations, dict) else read_json(annotations)
    where = "annotations" if isinstance(annotations, dict) else str(annotations)
    if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= data.keys():
        raise SeedError(f"{where}: not a COCO instances file (needs images, annotations and categories)")
    coco = COCO()
    coco.dataset = data
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco.createIndex()
    except (KeyError, TypeError) as e:
        raise SeedError(f"{where}: not a COCO instances file (bad record: {e})") from None
    return coco, where


def read_records(path: str | Path) -> list[dict]:
    """Records of a JSON Lines file or of a file holding one JSON array of objects."""
    path = Path(path)
    if path.is_dir():
        raise SeedError(f"{path}: is a folder, not a file")
    if not path.is_file():
        raise SeedError(f"{path}: no such file")
    try:
        with path.open(encoding="utf-8") as f:
            head = f.read(4096).lstrip()
        if not head.startswith("["):
            return list(iter_jsonl(path))
        data = read_json(path)
    except UnicodeDecodeError:
        raise SeedError(f"{path}: not UTF-8 text") from None
    for i, r in enumerate(data, 1):
        if not isinstance(r, dict):
            raise SeedError(f"{path}: element {i} of the JSON array is not an object")
    return data


def md5_file(path: str | Path) -> str:
    h = hashlib.md5()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def md5_strings(items: Iterable[str]) -> str:
    h = hashlib.md5()
    for s in items:
        h.update(s.encode("utf-8") + b"\0")
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose behaviour shapes our numbers, for manifests."""
    out = {}
    for name in ("seed-vlm", "torch", "transformers", "peft", "accelerate", "bitsandbytes", "pycocotools"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def resolve_device(device: str = "auto") -> str:
    """``auto`` → accelerate's choice for this process (cuda:N under ``accelerate launch``)."""
    import torch

    if device == "auto":
        from accelerate import PartialState

        return str(PartialState().device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SeedError(f"--device {device}: CUDA is not available on this machine")
    if device != "cpu" and not device.startswith("cuda"):
        raise SeedError(f"--device must be auto, cpu or cuda, not {device!r}")
    return device
