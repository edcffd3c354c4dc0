"""Bad inputs against the real ``seed`` command line: each user mistake should end with exit
code 2 and one line on stderr starting with ``error:``.

Builds tiny models, adapters, images, answer and caption files offline in a temporary folder
``$T`` (with the test suite's builders), runs each bad command in this process
(``seed.cli.main`` with ``sys.argv`` set, stdout and stderr captured) and prints a markdown
table ``| # | command | bad input | exit | line printed |``, then a summary line. A case fails
(✗, with the reason) when it exits 0 or with a code other than 2, raises, prints a traceback,
or prints more than its one ``error:`` line on stderr (transformers' loading bars aside;
what a library prints once when it is imported is not seen, as it went out while the fixtures
were built). Exits 1 if any case failed, else 0. About 10 s on a CPU:

    python benchmarks/bad_inputs.py
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import shlex
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import NamedTuple
from unittest.mock import patch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # seed, and the tests' model builders

import torch
from conftest import build_tiny_llava
from PIL import Image
from remote_internvl2 import build_internvl2_remote
from safetensors.torch import load_file

from seed.adapters import load
from seed.adapters.hea import attach_hea, save_hea
from seed.cli import main
from seed.config import HEAConfig
from seed.evaluation.pope import load_questions
from seed.io import first_line

# transformers' loading bars ("Loading weights:  50%|#####     | 32/64 [...]")
PROGRESS = re.compile(r"^\S[^|]*:\s+\d+%\|")
# What the cases may write under $T: removed after each, so that none sees another's output.
SCRATCH = ("out", "merged", "ev", "world", "det", "q.jsonl", "r.html")
# A small purification (few questions, short captions, 2 shards) to resume and to damage.
SMALL = (
    "--questions-per-image 2 --categories dog,cup,car --shard-size 2 --max-new-tokens 6"
)
PURIFIED = f"--model $T/llava --images $T/images {SMALL} --device cpu --out"
POPE_ANSWERS = "eval pope-random --answers $T/answers"
POPE_RUN = "eval pope-random --model $T/llava --images $T/images"
QUESTIONS = "--questions $T/questions.jsonl"
CHAIR = "eval chair --annotations $T/instances.json --captions $T/captions"
PURIFY = "purify --model $T/llava --images $T/images"
DETECT = "detect --model $T/llava --images $T/images --captions $T/captions"
BUILD_POPE = "eval build-pope --out $T/q.jsonl --annotations"
WORLD = "world build --out $T/world"
EVOLVE = "evolve --model $T/llava --out $T/ev"

CASES = [
    # POPE answers files
    ("answers file missing", f"{POPE_ANSWERS}/nope.jsonl"),
    ("answers path is a folder", POPE_ANSWERS),
    ("answers file empty", f"{POPE_ANSWERS}/empty.jsonl"),
    ("answers file: a line cut mid-JSON", f"{POPE_ANSWERS}/malformed.jsonl"),
    ("answers: a question_id answered twice", f"{POPE_ANSWERS}/duplicate.jsonl"),
    ("answers: a question_id the split lacks", f"{POPE_ANSWERS}/unknown.jsonl"),
    ("answers file not UTF-8 (latin-1)", f"{POPE_ANSWERS}/latin1.jsonl"),
    ("answers to half the questions", f"{POPE_ANSWERS}/half.jsonl"),
    ("answers of the popular split scored as random", f"{POPE_ANSWERS}/popular.jsonl"),
    ("answers of the old random split (v2023-08)", f"{POPE_ANSWERS}/old-random.jsonl"),
    ("answer record with neither text nor answer", f"{POPE_ANSWERS}/no-text.jsonl"),
    ("question_id is not an integer", f"{POPE_ANSWERS}/string-id.jsonl"),
    ("answer is a number, not text", f"{POPE_ANSWERS}/number-answer.jsonl"),
    ("answers JSON nested 100 000 deep", f"{POPE_ANSWERS}/deep.jsonl"),
    ("answers: a JSON array of numbers", f"{POPE_ANSWERS}/numbers.json"),
    ("three splits, one answers file", "eval pope --answers $T/answers/random.jsonl"),
    ("three splits, {split} files missing", "eval pope --answers $T/answers/{split}-only.jsonl"),
    ("--parser unknown", f"{POPE_ANSWERS}/random.jsonl --parser lenient"),
    ("--questions: unknown split name", f"{POPE_ANSWERS}/random.jsonl --questions hard"),
    ("--questions file with label 'maybe'", f"{POPE_ANSWERS}/random.jsonl --questions $T/questions-maybe.jsonl"),
    ("--splits: unknown split", "eval pope --answers $T/answers/{split}.jsonl --splits random,tricky"),
    ("one --questions file for three splits", "eval pope --answers $T/answers/{split}.jsonl --questions random"),
    ("--output is an existing folder", f"{POPE_ANSWERS}/random.jsonl --output $T/a-folder"),
    ("--output lies under a file", f"{POPE_ANSWERS}/random.jsonl --output $T/a-file.txt/r.json"),
    ("--answers with --model (files are scored as they are)", f"{POPE_ANSWERS}/random.jsonl --model $T/llava"),
    # POPE with a model
    ("--images folder missing", f"eval pope-random --model $T/llava --images $T/no-such-images {QUESTIONS}"),
    ("--images folder holds a corrupt image", f"eval pope-random --model $T/llava --images $T/corrupt {QUESTIONS}"),
    ("question names an image not in --images", f"{POPE_RUN} --questions $T/questions-im9.jsonl"),
    ("--batch-size 0", f"{POPE_RUN} {QUESTIONS} --batch-size 0"),
    ("--batch-size not a number", f"{POPE_RUN} {QUESTIONS} --batch-size many"),
    ("--max-new-tokens 0", f"{POPE_RUN} {QUESTIONS} --max-new-tokens 0"),
    ("--decoding unknown", f"{POPE_RUN} {QUESTIONS} --decoding beam"),
    ("--vcd-beta 2 (outside [0, 1])", f"{POPE_RUN} {QUESTIONS} --decoding vcd --vcd-beta 2"),
    ("--seeds with greedy decoding", f"{POPE_RUN} {QUESTIONS} --seeds 1,2"),
    ("--device unknown", f"{POPE_RUN} {QUESTIONS} --device tpu"),
    ("--dtype unknown", f"{POPE_RUN} {QUESTIONS} --dtype float8"),
    ("--load-in-4bit with --load-in-8bit", f"{POPE_RUN} {QUESTIONS} --load-in-4bit --load-in-8bit"),
    ("--questions with --annotations", f"{POPE_RUN} {QUESTIONS} --annotations $T/instances.json"),
    ("--output is an existing folder (model run)", f"{POPE_RUN} {QUESTIONS} --output $T/a-folder"),
    # build-pope
    ("build-pope without --split", f"{BUILD_POPE} $T/instances.json"),
    ("build-pope --split unknown", f"{BUILD_POPE} $T/instances.json --split hard"),
    ("build-pope --num-images 0", f"{BUILD_POPE} $T/instances.json --split random --num-images 0"),
    ("build-pope: more images than have 3 objects", f"{BUILD_POPE} $T/instances.json --split random"),
    ("build-pope: annotations are a JSON list", f"{BUILD_POPE} $T/not-coco.json --split random"),
    ("build-pope: annotation of an unknown category_id", f"{BUILD_POPE} $T/instances-category-9.json --split random"),
    ("build-pope: annotations nested 100 000 deep", f"{BUILD_POPE} $T/deep.json --split random"),
    ("build-pope --out is an existing folder", "eval build-pope --annotations $T/instances.json --split random --num-images 4 --out $T/a-folder"),
    # CHAIR
    ("captions of images not annotated (purify_000001.png)", f"{CHAIR}/purify-names.jsonl"),
    ("captions of images not annotated (holiday_photo_1.jpg)", f"{CHAIR}/holiday.jsonl"),
    ("chair --captions without --annotations", "eval chair --captions $T/captions/ok.jsonl"),
    ("chair --annotations file missing", "eval chair --annotations $T/no-such.json --captions $T/captions/ok.jsonl"),
    ("chair: annotations repeat image ids", "eval chair --annotations $T/instances-twice.json --captions $T/captions/ok.jsonl"),
    ("caption record without caption or text", f"{CHAIR}/no-caption.jsonl"),
    ("caption image_id not an integer", f"{CHAIR}/image-id-word.jsonl"),
    ("caption names one image, image_id another", f"{CHAIR}/two-images.jsonl"),
    ("captions file empty", f"{CHAIR}/empty.jsonl"),
    ("chair --ref-captions not a COCO captions file", f"{CHAIR}/ok.jsonl --ref-captions $T/instances.json"),
    ("chair with a model: --images folder missing", "eval chair --model $T/llava --images $T/no-such-images --annotations $T/instances.json"),
    ("chair with a model: annotated images missing", "eval chair --model $T/llava --images $T/images-3 --annotations $T/instances.json"),
    ("chair with a model: --num-images 0", "eval chair --model $T/llava --images $T/images --annotations $T/instances.json --num-images 0"),
    ("chair with a model: --output under a file", "eval chair --model $T/llava --images $T/images --annotations $T/instances.json --output $T/a-file.txt/c.json"),
    # models and adapters
    ("model folder missing", "purify --model $T/no-such-model --images $T/images --out $T/out"),
    ("model folder without config.json", "purify --model $T/llava-no-config --images $T/images --out $T/out"),
    ("model config.json cut mid-JSON", "purify --model $T/llava-bad-config --images $T/images --out $T/out"),
    ("model safetensors truncated", "purify --model $T/llava-truncated --images $T/images --out $T/out"),
    ("model safetensors with a garbled header", "purify --model $T/llava-garbled --images $T/images --out $T/out"),
    ("model folder with pickle weights only (pytorch_model.bin)", "purify --model $T/llava-pickle --images $T/images --out $T/out"),
    ("remote-code InternVL2 without --trust-remote-code", "purify --model $T/internvl2-remote --images $T/images --out $T/out"),
    ("adapter trained on another base", "purify --model $T/other-llava --adapter $T/adapter --images $T/images --out $T/out"),
    ("adapter weights truncated", f"{PURIFY} --adapter $T/adapter-truncated --out $T/out"),
    ("adapter weights with a garbled header", f"{PURIFY} --adapter $T/adapter-garbled --out $T/out"),
    ("adapter folder with pickle weights only", f"{PURIFY} --adapter $T/adapter-pickle --out $T/out"),
    ("adapter folder missing", f"{PURIFY} --adapter $T/no-such-adapter --out $T/out"),
    ("adapter is a model folder", f"{PURIFY} --adapter $T/llava --out $T/out"),
    # purify options and folders
    ("--batch-size 0", f"{PURIFY} --out $T/out --batch-size 0"),
    ("--top-k 0", f"{PURIFY} --out $T/out --top-k 0"),
    ("--top-k larger than the vocabulary", f"{PURIFY} --out $T/out --top-k 100000"),
    ("--tau 1.5", f"{PURIFY} --out $T/out --tau 1.5"),
    ("--tau -0.1", f"{PURIFY} --out $T/out --tau -0.1"),
    ("--shard-size 0", f"{PURIFY} --out $T/out --shard-size 0"),
    ("--samples 0", f"{PURIFY} --out $T/out --samples 0"),
    ("--repair-beams 0", f"{PURIFY} --out $T/out --repair-beams 0"),
    ("--questions-per-image -1", f"{PURIFY} --out $T/out --questions-per-image -1"),
    ("--identify: unknown signal", f"{PURIFY} --out $T/out --identify self-probe,intuition"),
    ("--null-image unknown", f"{PURIFY} --out $T/out --null-image purple"),
    ("--probe-scale 0", f"{PURIFY} --out $T/out --probe-scale 0"),
    ("--lens-layers -1", f"{PURIFY} --out $T/out --lens-layers -1"),
    ("--lens-layers beyond the model's 2 layers", f"{PURIFY} --out $T/out {SMALL} --lens-layers 99"),
    ("--categories with an unknown object", f"{PURIFY} --out $T/out --max-new-tokens 6 --categories dog,unicorn"),
    ("--lexicon file missing", f"{PURIFY} --out $T/out --lexicon $T/no-such-lexicon.txt"),
    ("--identify oracle, --annotations missing", f"{PURIFY} --out $T/out --identify oracle --annotations $T/no-such.json"),
    ("--identify oracle without --annotations", f"{PURIFY} --out $T/out {SMALL} --identify oracle"),
    ("--out is a file", f"{PURIFY} --out $T/a-file.txt"),
    ("--out lies under a file", f"{PURIFY} --out $T/a-file.txt/run"),
    ("--images folder missing", "purify --model $T/llava --images $T/no-such-images --out $T/out"),
    ("--images folder without images", "purify --model $T/llava --images $T/no-images --out $T/out"),
    ("--images folder whose only image is corrupt", f"purify --model $T/llava --images $T/corrupt {SMALL} --out $T/out"),
    ("--model without --images", "purify --model $T/llava --out $T/out"),
    ("--show of a folder without a purification", "purify --show 3 --out $T/no-such-run"),
    # resuming a purification
    ("resume with another model", f"purify --model $T/other-llava --images $T/images {SMALL} --device cpu --out $T/purified"),
    ("resume with an adapter added", f"purify {PURIFIED} $T/purified --adapter $T/adapter"),
    ("resume with another --tau", f"purify {PURIFIED} $T/purified --tau 0.6"),
    ("resume with other images", f"purify --model $T/llava --images $T/images-3 {SMALL} --device cpu --out $T/purified"),
    ("resume into a folder whose manifest.json is cut", f"purify {PURIFIED} $T/purified-cut-manifest"),
    ("resume with a shard's tensors truncated", f"purify {PURIFIED} $T/purified-cut-tensors"),
    ("resume with a shard's records cut", f"purify {PURIFIED} $T/purified-cut-records"),
    # report
    ("report of a missing folder", "report $T/no-such-run"),
    ("report of a folder that is no run", "report $T/a-folder"),
    ("report of a purification with a cut manifest.json", "report $T/purified-cut-manifest"),
    ("report of a purification whose purified.jsonl is cut", "report $T/purified-cut-jsonl --out $T/r.html"),
    ("report --examples -1", "report $T/purified --examples -1"),
    ("report --thumbnail 8", "report $T/purified --thumbnail 8"),
    ("report --out is an existing folder", "report $T/purified --out $T/a-folder"),
    # detect
    ("detect without --captions", "detect --model $T/llava --images $T/images"),
    ("detect: caption of an image not in --images", f"{DETECT}/missing-image.jsonl"),
    ("detect: records without image and caption keys", f"{DETECT}/no-caption.jsonl"),
    ("detect: options name an unknown object", f"{DETECT}/unknown-object.jsonl"),
    ("detect: the caption's image is corrupt", "detect --model $T/llava --images $T/corrupt --captions $T/captions/ok.jsonl"),
    ("detect: unknown option --bogus", f"{DETECT}/ok.jsonl --bogus"),
    ("detect --model without --images", "detect --model $T/llava --captions $T/captions/ok.jsonl"),
    ("detect --identify oracle", f"{DETECT}/ok.jsonl --identify oracle"),
    ("detect --batch-size 0", f"{DETECT}/ok.jsonl --batch-size 0"),
    ("detect --identify detector: folder missing", f"{DETECT}/ok.jsonl --identify detector:$T/no-such-detector"),
    ("detect --output is an existing folder", f"{DETECT}/ok.jsonl --output $T/a-folder"),
    ("detect --annotations file missing", f"{DETECT}/ok.jsonl --annotations $T/no-such.json"),
    ("detect train --teacher oracle", "detect train --model $T/llava --images $T/images --teacher oracle --out $T/det"),
    ("detect train --out is a file", "detect train --model $T/llava --images $T/images --out $T/a-file.txt"),
    # export
    ("export without --merge", "export $T/merged"),
    ("export --merge folder missing", "export --merge $T/no-such-adapter $T/merged"),
    ("export --merge of a model folder", "export --merge $T/llava $T/merged"),
    ("export: adapter_config.json names a base that is gone", "export --merge $T/adapter-of-gone $T/merged"),
    ("export: adapter weights truncated", "export --merge $T/adapter-truncated $T/merged"),
    ("export --dtype unknown", "export --merge $T/adapter $T/merged --dtype float8"),
    ("export into a folder that is no export", "export --merge $T/adapter $T/a-folder"),
    ("export into a path under a file", "export --merge $T/adapter $T/a-file.txt/merged"),
    # world build (all refused before drawing or training)
    ("world build --caption-bias 1.5", f"{WORLD} --caption-bias 1.5"),
    ("world build --cooccur -0.1", f"{WORLD} --cooccur -0.1"),
    ("world build --no-bias with --answer-bias", f"{WORLD} --no-bias --answer-bias 0.2"),
    ("world build --vision-labels unknown", f"{WORLD} --vision-labels pictures"),
    ("world build --device cuda", f"{WORLD} --device cuda"),
    ("world build --seed -1", f"{WORLD} --seed -1"),
    ("world build --out: a folder that is no world", "world build --out $T/a-folder"),
    # evolve (all refused before any work)
    ("evolve --out is a file", "evolve --out $T/a-file.txt"),
    ("evolve --rounds 0", f"{EVOLVE} --rounds 0"),
    ("evolve --yes-ratio 0.7 0.3", f"{EVOLVE} --yes-ratio 0.7 0.3"),
    ("evolve --loss unknown", f"{EVOLVE} --loss mse"),
    ("evolve --select unknown", f"{EVOLVE} --select best"),
    ("evolve --min-recall 2", f"{EVOLVE} --min-recall 2"),
    ("evolve --world folder missing", "evolve --world $T/no-such-world --out $T/ev"),
    ("evolve --model without --images", EVOLVE),
    # the command line itself
    ("unknown command", "purge"),
    ("unknown option", "eval chair --captionz $T/captions/ok.jsonl"),
]  # fmt: skip


class Outcome(NamedTuple):
    code: int | None  # None: it raised
    line: str  # the error line, or what stood in its place
    problem: str | None  # why the case failed; None when it behaved


class _CurrentStderr(io.TextIOBase):
    """Whatever ``sys.stderr`` is when written to (for handlers made before a capture)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)


def run_cli(args: list[str]) -> Outcome:
    """Run ``seed ARGS`` in this process, as a new process would, and judge what it did."""
    out, err, code, raised = io.StringIO(), io.StringIO(), None, None
    logging.Logger.warning_once.cache_clear()  # transformers' once-per-process warnings
    with (
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        patch.object(sys, "argv", ["seed", *args]),
        warnings.catch_warnings(),  # warnings shown once per process show again
    ):
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
        except Exception as e:  # noqa: BLE001 - an escaped exception is what we look for
            raised = f"{type(e).__name__}: {first_line(e)}"
    said = [
        s for s in err.getvalue().splitlines() if s.strip() and not PROGRESS.match(s)
    ]
    errors = [s for s in said if s.startswith("error:")]
    boxed = [s.strip("│ ") for s in said if s.startswith("│")]  # a usage-error panel
    shown = [s for s in (said if code else out.getvalue().splitlines()) if s.strip()]
    problem = (
        f"raised {raised.split(':')[0]}" if raised
        else "traceback" if "Traceback" in out.getvalue() + err.getvalue()
        else f"exit {code}" if code != 2
        else "no error: line" if not errors
        else f"{len(said)} lines on stderr" if len(said) > 1
        else None
    )  # fmt: skip
    if raised or errors:
        return Outcome(code, raised or errors[-1], problem)
    return Outcome(code, " ".join(boxed) if boxed else (shown or [""])[-1], problem)


def argv(command: str, t: Path) -> list[str]:
    """The arguments of ``command``, with ``$T`` standing for the folder ``t``."""
    return shlex.split(command.replace("$T", shlex.quote(str(t))))


# --------------------------------------------------------------------------- fixtures
def jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def damage(path: Path, how: str) -> None:
    """Cut ``path`` in half (truncated) or overwrite the start of its header (garbled)."""
    data = path.read_bytes()
    garbled = data[:8] + b"#" * 64 + data[72:]
    path.write_bytes(data[: len(data) // 2] if how == "truncated" else garbled)


def answers(split: str) -> list[dict]:
    """LLaVA-style answers, all "yes", to the shipped POPE ``split``."""
    return [
        {"question_id": q["question_id"], "prompt": q["text"], "text": "yes"}
        for q in load_questions(split).questions
    ]


def instances(names: list[str]) -> dict:
    """COCO instances: image i shows a dog, a cup and the i-th of a car, fork, knife, spoon."""
    categories = ("dog", "cup", "car", "fork", "knife", "spoon")
    shows = [(i, c) for i in range(1, len(names) + 1) for c in (1, 2, 2 + i)]
    return {
        "images": [{"id": i, "file_name": n} for i, n in enumerate(names, 1)],
        "annotations": [
            {"id": k, "image_id": i, "category_id": c, "bbox": [0, 0, 8, 8]}
            for k, (i, c) in enumerate(shows, 1)
        ],
        "categories": [{"id": i, "name": n} for i, n in enumerate(categories, 1)],
    }


def build_models(t: Path) -> None:
    """Tiny LLaVAs (and damaged copies), a remote-code InternVL2 and HEA adapters."""
    llava = build_tiny_llava(t / "llava")
    build_tiny_llava(t / "other-llava", seed=1)
    build_internvl2_remote(t / "internvl2-remote", steps=0)
    vlm = attach_hea(load(str(llava), device="cpu"), HEAConfig(rank=2, alpha=4))
    adapter = save_hea(vlm, t / "adapter", {})
    for how in ("truncated", "garbled"):
        damage(shutil.copytree(llava, t / f"llava-{how}") / "model.safetensors", how)
        copy = shutil.copytree(adapter, t / f"adapter-{how}")
        damage(copy / "adapter_model.safetensors", how)
    pickled = shutil.copytree(llava, t / "llava-pickle")
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    weights = (
        shutil.copytree(adapter, t / "adapter-pickle") / "adapter_model.safetensors"
    )
    weights.rename(weights.with_suffix(".bin"))
    (t / "llava-no-config").mkdir()
    shutil.copytree(llava, t / "llava-bad-config")
    (t / "llava-bad-config" / "config.json").write_text('{"model_type": "llava",')
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(t / "gone")
    shutil.copytree(adapter, t / "adapter-of-gone")
    (t / "adapter-of-gone" / "adapter_config.json").write_text(json.dumps(config))


def build_files(t: Path) -> None:
    """Images, annotations, questions, answers and captions, good and bad."""
    for folder, count in (("images", 4), ("images-3", 3)):
        (t / folder).mkdir()
        for i in range(count):
            image = Image.new("RGB", (32, 32), (60 * i, 90, 200 - 40 * i))
            image.save(t / folder / f"im{i}.png")
    for folder, name, text in (
        ("corrupt", "im0.png", "\x89PNG\r\n\x1a\n" + "\0" * 40),
        ("no-images", "notes.txt", "no pictures here"),
        ("a-folder", "keep.txt", "keep"),
    ):
        (t / folder).mkdir()
        (t / folder / name).write_text(text, encoding="latin-1")
    (t / "a-file.txt").write_text("keep")
    coco = instances([f"im{i}.png" for i in range(4)])
    category_9 = {**coco, "annotations": [{**coco["annotations"][0], "category_id": 9}]}
    for name, data in (
        ("instances", coco),
        ("instances-twice", {**coco, "images": coco["images"] * 2}),
        ("instances-category-9", category_9),
        ("not-coco", [1, 2, 3]),
    ):
        (t / f"{name}.json").write_text(json.dumps(data))
    (t / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    dog = {"question_id": 1, "image": "im0.png", "text": "Is there a dog in the image?"}
    jsonl(t / "questions.jsonl", [{**dog, "label": "yes"}])
    jsonl(t / "questions-im9.jsonl", [{**dog, "label": "yes", "image": "im9.png"}])
    jsonl(t / "questions-maybe.jsonl", [{**dog, "label": "maybe"}])

    a, c = t / "answers", t / "captions"
    a.mkdir()
    c.mkdir()
    full = answers("random")
    for name, records in {
        "random": full,
        "duplicate": [*full, full[0]],
        "unknown": [*full, {"question_id": 99999, "text": "yes"}],
        "half": full[: len(full) // 2],
        "popular": answers("popular"),
        "popular-only": answers(
            "popular"
        ),  # {split}-only.jsonl: no random, adversarial
        "old-random": answers("random.v2023-08"),
        "no-text": [{"question_id": 1}],
        "string-id": [{"question_id": "one", "text": "yes"}],
        "number-answer": [{"question_id": 1, "text": 1}],
    }.items():
        jsonl(a / f"{name}.jsonl", records)
    (a / "empty.jsonl").write_text("")
    (a / "malformed.jsonl").write_text(
        json.dumps(full[0]) + "\n" + json.dumps(full[1])[:-9]
    )
    (a / "latin1.jsonl").write_bytes(
        '{"question_id": 1, "text": "oui, très"}'.encode("latin-1")
    )
    (a / "deep.jsonl").write_text(
        '{"question_id": 1, "text": ' + "[" * 100_000 + "]" * 100_000 + "}"
    )
    (a / "numbers.json").write_text("[1, 2, 3]")
    for name, record in {
        "ok": {"image": "im0.png", "caption": "A dog and a cup."},
        "purify-names": {"image": "purify_000001.png", "caption": "A dog and a cup."},
        "holiday": {"image": "holiday_photo_1.jpg", "caption": "A dog on a beach."},
        "no-caption": {"image": "im0.png", "words": "A dog."},
        "image-id-word": {"image_id": "first", "caption": "A dog."},
        "two-images": {"image": "im0.png", "image_id": 2, "caption": "A dog."},
        "missing-image": {"image": "im9.png", "caption": "A dog and a cup."},
        "unknown-object": {
            "image": "im0.png",
            "caption": "A dog.",
            "options": ["unicorn"],
        },
    }.items():
        jsonl(c / f"{name}.jsonl", [record])
    (c / "empty.jsonl").write_text("")


def build_purified(t: Path) -> None:
    """A finished purification, and copies with a cut manifest, shard or purified.jsonl."""
    first = run_cli(argv(f"purify {PURIFIED} $T/purified", t))
    if first.code != 0:
        sys.exit(f"the purification that the resume cases need failed: {first.line}")
    for damaged, name, cut in (
        ("manifest", "manifest.json", lambda data: data[:30]),
        ("tensors", "shard-00001.safetensors", lambda data: data[:-100]),
        (
            "records",
            "shard-00001.jsonl",
            lambda data: data[: data.rindex(b"\n", 0, -1) + 1],
        ),
        ("jsonl", "purified.jsonl", lambda data: data[:-20]),
    ):
        path = shutil.copytree(t / "purified", t / f"purified-cut-{damaged}") / name
        path.write_bytes(cut(path.read_bytes()))


def wipe(t: Path) -> None:
    for path in (t / name for name in SCRATCH):
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- the table
def cell(text: str, t: Path) -> str:
    return text.replace(str(t), "$T").replace("|", "\\|")


def run_all() -> int:
    start, failed = time.time(), []
    with tempfile.TemporaryDirectory(prefix="seed-bad-inputs-") as tmp:
        t = Path(tmp).resolve()
        build_models(t)
        build_files(t)
        build_purified(t)
        for handler in logging.getLogger("transformers").handlers:  # made uncaptured
            if isinstance(handler, logging.StreamHandler):
                handler.setStream(_CurrentStderr())
        print(
            "| # | command | bad input | exit | line printed |\n|---|---|---|---|---|"
        )
        for n, (bad, command) in enumerate(CASES, 1):
            outcome = run_cli(argv(command, t))
            wipe(t)
            code = "—" if outcome.code is None else str(outcome.code)
            if outcome.problem:
                failed.append(f"#{n} ({outcome.problem})")
                code += f" ✗ {outcome.problem}"
            line = cell(outcome.line, t)
            print(
                f"| {n} | `seed {cell(command, t)}` | {bad} | {code} | {line} |",
                flush=True,
            )
    verdict = f"{len(failed)} failed: {', '.join(failed)}" if failed else "none failed"
    print(f"\n{len(CASES)} bad inputs in {time.time() - start:.0f} s; {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_all())
