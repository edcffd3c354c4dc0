"""Files: atomic writes (files and folders), JSON(L), images, hashes, library versions, devices;
and the one place where what reading inputs and writing outputs raises becomes a one-line
:class:`~seed.errors.SeedError`."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from PIL import Image

from seed.errors import SeedError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


# --------------------------------------------------------------------------- errors of files
def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@contextlib.contextmanager
def reading(what: str):
    """Turn what reading a damaged or unreadable input raises (OS errors, malformed JSON, damaged
    safetensors, JSON nested too deeply) into a one-line SeedError naming ``what``."""
    from safetensors import SafetensorError

    try:
        yield
    except RecursionError:
        raise SeedError(f"{what}: cannot read it (nested too deeply)") from None
    except UnicodeDecodeError:
        raise SeedError(f"{what}: not UTF-8 text") from None
    except (OSError, ValueError, SafetensorError) as e:
        raise SeedError(f"{what}: cannot read it ({first_line(e)})") from None


def safetensors_files(folder: str | Path, what: str) -> list[Path]:
    """The ``*.safetensors`` files of a model or adapter folder, each checked to open (header
    readable, file as long as the header says) before anything loads them. A folder holding only
    pickle weights (``.bin``, ``.pt``, ...) is refused: unpickling runs code."""
    from safetensors import safe_open

    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not files and pickles:
        raise SeedError(
            f"{what}: holds only pickle weights ({', '.join(pickles[:3])}); seed loads safetensors only "
            "(convert them, e.g. with safetensors.torch.save_file)"
        )
    for f in files:
        with reading(f"{what}: {f.name}"), safe_open(f, framework="pt"):
            pass
    return files


def check_output(path: str | Path, folder: bool = False) -> Path:
    """Refuse, before any work, an output path that lies under a file, or that is a folder (a file
    output) or a file (a ``folder`` output)."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise SeedError(f"{path}: is a file, not a folder" if folder else f"{path}: is a folder; give a file path to write to")
    for part in path.parents:
        if part.exists() and not part.is_dir():
            raise SeedError(f"{path}: cannot write there (it lies under {part}, which is a file)")
    return path


def make_dirs(folder: str | Path) -> Path:
    """``folder`` and its parents, created if needed; a file in the way is a one-line SeedError."""
    folder = check_output(folder, folder=True)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SeedError(f"{folder}: cannot create the folder ({e.strerror or first_line(e)})") from None
    return folder


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one
    (with the mode the umask gives a new file)."""
    path = check_output(path)
    make_dirs(path.parent)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 is for the temporary file only
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise SeedError(f"{path}: cannot write it ({e.strerror or first_line(e)})") from None
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def parse_json(text: str, where: str, lineno: int | None = None) -> Any:
    """``json.loads``; malformed or too deeply nested JSON is a one-line SeedError naming ``where``
    (and ``lineno``, the line of a JSON Lines file)."""
    at = f"on line {lineno}" if lineno else ""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SeedError(f"{where}: malformed JSON {at or f'at line {e.lineno}'}: {e.msg}") from None
    except RecursionError:
        raise SeedError(f"{where}: JSON nested too deeply {at}".rstrip()) from None


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise SeedError(f"{path}: {'is a folder, not a file' if path.is_dir() else 'no such file'}")
    with reading(str(path)):
        text = path.read_text(encoding="utf-8")
    return parse_json(text, str(path))


def read_json_object(path: str | Path) -> dict:
    """:func:`read_json` of a file that must hold one JSON object."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise SeedError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def iter_jsonl(path: str | Path) -> Iterator[dict]:
    """Yield the records of a JSON Lines file; blank lines are skipped, bad lines named."""
    path = Path(path)
    if not path.is_file():
        raise SeedError(f"{path}: {'is a folder, not a file' if path.is_dir() else 'no such file'}")
    with reading(str(path)), path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = parse_json(line, str(path), lineno)
            if not isinstance(record, dict):
                raise SeedError(f"{path}: line {lineno} is not a JSON object")
            yield record


def check_replaceable(out: str | Path, marker: str) -> Path:
    """Refuse, before any work, an output folder that :func:`write_dir_atomically` would not replace:
    one that exists, is not empty and does not hold ``marker`` (a previous output of the same kind)."""
    out = check_output(out, folder=True)
    if out.exists() and not (out / marker).is_file() and any(out.iterdir()):
        raise SeedError(f"{out} exists and is not a previous output of this kind (no {marker}); refusing to overwrite it")
    return out


def write_dir_atomically(out: str | Path, write: Callable[[Path], Any], *, marker: str) -> None:
    """Run ``write(tmp)`` on a fresh sibling folder, then swap it in for ``out``.

    An existing ``out`` is replaced only if it holds ``marker`` (i.e. is a previous output of the
    same kind) or is empty, so an unrelated folder is never deleted.
    """
    out = check_replaceable(out, marker)
    make_dirs(out.parent)
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


def read_records(path: str | Path) -> list[dict]:
    """Records of a JSON Lines file or of a file holding one JSON array of objects."""
    path = Path(path)
    if not path.is_file():
        raise SeedError(f"{path}: {'is a folder, not a file' if path.is_dir() else 'no such file'}")
    with reading(str(path)), path.open(encoding="utf-8") as f:
        head = f.read(4096).lstrip()
    if not head.startswith("["):
        return list(iter_jsonl(path))
    data = read_json(path)
    for i, r in enumerate(data, 1):
        if not isinstance(r, dict):
            raise SeedError(f"{path}: element {i} of the JSON array is not an object")
    return data


def differences(recorded: Any, now: Any, prefix: str = "") -> list[str]:
    """The dotted paths at which two JSON values differ (objects compared key by key), e.g.
    ``["model.weights_md5", "options.top_k"]``."""
    if isinstance(recorded, Mapping) and isinstance(now, Mapping):
        keys = list(now) + [k for k in recorded if k not in now]
        return [d for k in keys for d in differences(recorded.get(k), now.get(k), f"{prefix}{k}.")]
    return [] if recorded == now else [prefix.rstrip(".")]


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
