"""The ``seed`` command line: parses options and calls the Python API, nothing more."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from seed.errors import SeedError

app = typer.Typer(
    name="seed",
    help="SEED: identify, isolate and purge hallucinations, then distil them away (self-evolving distillation).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
world_app = typer.Typer(help="The embedded world: procedurally drawn COCO-format scenes and a tiny LLaVA model.", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate hallucination: POPE (random, popular, adversarial) and CHAIR.", no_args_is_help=True)
app.add_typer(world_app, name="world")
app.add_typer(eval_app, name="eval")

console = Console(stderr=True)

DeviceOpt = typer.Option("auto", "--device", help="auto, cpu or cuda[:N].")


# --------------------------------------------------------------------------- world
@world_app.command("build")
def world_build(
    out: Optional[Path] = typer.Option(None, help="Folder of the world (default: the cache, ~/.cache/seed)."),
    seed: int = typer.Option(0, help="Seed: the same seed gives the same world."),
    bias: bool = typer.Option(True, "--bias/--no-bias", help="Plant co-occurrence bias in the training text (off = control world)."),
    force: bool = typer.Option(False, help="Rebuild even if a finished world is there."),
    device: str = DeviceOpt,
) -> None:
    """Draw the scenes and train the tiny LLaVA model (cached: a second call reuses it)."""
    from seed.world import build_world

    path = build_world(out, seed=seed, bias=bias, force=force, device=device)
    typer.echo(str(path))


# ---- eval: pope
from seed.evaluation import pope as _pope  # noqa: E402  (light: no torch, pycocotools on use)

_ANSWERS_HELP = "JSON Lines (or a JSON array) of question_id with text (LLaVA style) or answer; joined by question_id."
_PARSER_HELP = "official (RUCAIBox/POPE rule: any word No/no/not → no, else yes) or strict (unparsed answers counted and scored wrong)."
_OUTPUT_HELP = "Also write the result JSON here: benchmark, metrics, manifest (parser, questions md5, library versions)."


def _show_pope(result: dict, output: Optional[Path]) -> None:
    Console().print(_pope.metrics_table(result))
    if output is not None:
        _pope.write_result(output, result)
        console.print(f"wrote {output}", highlight=False)


def _pope_split_command(split: str):
    def command(
        answers: Optional[Path] = typer.Option(None, "--answers", help=_ANSWERS_HELP),
        questions: Optional[str] = typer.Option(
            None,
            "--questions",
            help=f"Question file (JSON Lines or JSON array) or a shipped name ({', '.join(_pope.SHIPPED)}); "
            f"default: the COCO {split} split.",
        ),
        parser: str = typer.Option("official", "--parser", help=_PARSER_HELP),
        output: Optional[Path] = typer.Option(None, "--output", help=_OUTPUT_HELP),
    ) -> None:
        # The model-running path (--model, --images, --protocol, --batch-size) joins here: it
        # writes the answers with _pope.write_answers and scores them like an answers file.
        if answers is None:
            raise SeedError(f"pope-{split} needs --answers FILE ({_ANSWERS_HELP})")
        _show_pope(_pope.score_answers_file(answers, questions or split, parser, benchmark=f"pope-{split}"), output)

    command.__doc__ = f"Score answers to the POPE {split} split: accuracy, precision, recall, F1 (yes = positive), yes-ratio."
    return command


for _split in _pope.SPLITS:
    eval_app.command(f"pope-{_split}")(_pope_split_command(_split))


@eval_app.command("pope")
def eval_pope(
    answers_random: Optional[Path] = typer.Option(None, "--answers-random", help="Answers to the random split. " + _ANSWERS_HELP),
    answers_popular: Optional[Path] = typer.Option(None, "--answers-popular", help="Answers to the popular split."),
    answers_adversarial: Optional[Path] = typer.Option(None, "--answers-adversarial", help="Answers to the adversarial split."),
    parser: str = typer.Option("official", "--parser", help=_PARSER_HELP),
    output: Optional[Path] = typer.Option(None, "--output", help=_OUTPUT_HELP + " Adds per-split metrics."),
) -> None:
    """Score the three COCO splits (one answers file each) and report mean F1, the single POPE score."""
    given = {"random": answers_random, "popular": answers_popular, "adversarial": answers_adversarial}
    missing = [f"--answers-{name}" for name, path in given.items() if path is None]
    if missing:
        raise SeedError(f"pope needs one answers file per split; missing {', '.join(missing)}")
    _show_pope(_pope.score_pope_files(given, parser), output)


@eval_app.command("build-pope")
def eval_build_pope(
    annotations: Optional[Path] = typer.Option(None, "--annotations", help="COCO-format instances JSON (images, annotations, categories)."),
    split: Optional[str] = typer.Option(None, "--split", help="random, popular or adversarial: how the 'no' objects are chosen."),
    num_images: int = typer.Option(500, "--num-images", help="Images to sample among those with 3 or more objects (6 questions each)."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed: the same seed gives the same file."),
    out: Optional[Path] = typer.Option(None, "--out", help="Question file to write (official POPE JSON Lines)."),
) -> None:
    """Build POPE questions from COCO-format annotations, as the POPE paper does."""
    if annotations is None or split is None or out is None:
        raise SeedError("build-pope needs --annotations FILE, --split random|popular|adversarial and --out FILE")
    questions = _pope.build_pope(annotations, split, num_images=num_images, seed=seed)
    _pope.write_questions(out, questions)
    console.print(f"wrote {len(questions)} questions ({len(questions) // 6} images) to {out}", highlight=False)


# ---- eval: chair
@eval_app.command("chair")
def eval_chair(
    captions: Optional[Path] = typer.Option(None, "--captions", help="JSON Lines (or a JSON array) of image_id (COCO id) or image (file name) with caption (or text)."),
    annotations: Optional[Path] = typer.Option(None, "--annotations", help="COCO-format instances JSON: the ground-truth objects of each image."),
    ref_captions: Optional[Path] = typer.Option(None, "--ref-captions", help="COCO captions JSON: objects named in the reference captions also count as present."),
    lexicon: Optional[Path] = typer.Option(None, "--lexicon", help="Extra object words, one 'word' or 'word: category' per line, added to COCO's 80 categories."),
    output: Optional[Path] = typer.Option(None, "--output", help="Also write the result JSON here: benchmark, metrics, manifest, per-caption mentions."),
) -> None:
    """Score captions with CHAIR: CHAIR_i (per mention), CHAIR_s (per caption), object recall, mean length."""
    from seed.evaluation import chair as _chair

    # Generating the captions with a model (--model, --images, ...) joins here: it writes a
    # captions file (or records) that is scored exactly like --captions.
    if captions is None:
        raise SeedError("chair needs --captions FILE (JSON Lines of image_id or image, and caption)")
    if annotations is None:
        raise SeedError("chair needs --annotations FILE (COCO-format instances JSON) to know which objects each image holds")
    result = _chair.evaluate_chair(captions, annotations, ref_captions=ref_captions, lexicon=lexicon)
    Console().print(_chair.metrics_table(result))
    if output is not None:
        _chair.write_result(output, result)
        console.print(f"wrote {output}", highlight=False)


def main() -> None:
    """Console entry point: user mistakes become one line on stderr and exit code 2."""
    try:
        app()
    except SeedError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
