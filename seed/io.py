"""Files: atomic writes (files and folders), JSON(L), COCO objects per image, images, hashes,
library versions, devices."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from PIL import Image

from seed.errors import SeedError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


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


def write_dir_atomically(out: str | Path, write: Callable[[Path], Any], *, marker: str) -> None:
    """Run ``write(tmp)`` on a fresh sibling folder, then swap it in for ``out``.

    An existing ``out`` is replaced only if it holds ``marker`` (i.e. is a previous output of the
    same kind) or is empty, so an unrelated folder is never deleted.
    """
    out = Path(out)
    if out.exists() and not (out / marker).is_file() and any(out.iterdir()):
        raise SeedError(f"{out} exists and is not a previous export; refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def load_coco(annotations: str | Path | dict):
    """A pycocotools ``COCO`` index over an instances file (or its dict), and a name for errors."""
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


def objects_by_file(annotations: str | Path | dict) -> dict[str, set[str]]:
    """The annotated category names of every image of a COCO instances file, by ``file_name``."""
    coco, _ = load_coco(annotations)
    names = {c["id"]: c["name"] for c in coco.dataset["categories"]}
    return {img["file_name"]: {names[a["category_id"]] for a in coco.imgToAnns.get(i, [])} for i, img in coco.imgs.items()}


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


# --------------------------------------------------------------------------- images
def image_files(folder: str | Path) -> list[Path]:
    """The image files of a folder (by suffix), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SeedError(f"{folder}: no such folder")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def open_image(path: str | Path) -> Image.Image:
    """An RGB image; a missing or unreadable file is a one-line SeedError naming it."""
    path = Path(path)
    if not path.is_file():
        raise SeedError(f"{path}: no such image file")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise SeedError(f"{path}: cannot read the image ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def check_images(folder: str | Path, names: Sequence[str | None]) -> None:
    """Refuse (before any model is loaded) a missing folder, a missing name, or a file PIL cannot identify."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SeedError(f"--images {folder}: no such folder")
    for name in dict.fromkeys(names):
        if not name:
            raise SeedError("a question has no image file name")
        path = folder / name
        if not path.is_file():
            raise SeedError(f"{path}: no such image file")
        try:
            with Image.open(path) as image:
                image.verify()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise SeedError(f"{path}: cannot read the image ({type(e).__name__})") from None


class LazyImages(Sequence):
    """Images of a folder by file name, opened on access and the last few kept."""

    def __init__(self, folder: str | Path, names: Sequence[str]):
        self.folder, self.names = Path(folder), list(names)
        self._open = functools.lru_cache(maxsize=64)(lambda name: open_image(self.folder / name))

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self._open(self.names[i])


class Subset(Sequence):
    """``items[index[0]], items[index[1]], ...`` without reading them all (lazy images stay lazy)."""

    def __init__(self, items: Sequence, index: Sequence[int]):
        self.items, self.index = items, list(index)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.items[j] for j in self.index[i]]
        return self.items[self.index[i]]
