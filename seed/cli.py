"""The ``seed`` command line: parses options and calls the Python API, nothing more.

Options come from the config dataclasses (:mod:`seed.options`); without ``--model`` a command
runs on the embedded world (:class:`seed.world.World`), whose paths fill what is left open.
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich import markup
from rich.console import Console

from seed.config import POPE_SPLITS, ChairConfig, Decoding, DetectConfig, DetectorConfig, EvolveConfig, ModelSpec, PopeConfig, PurifyConfig, ReportConfig
from seed.errors import SeedError
from seed.options import Options, with_configs

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

MODEL = Options(ModelSpec)
DECODING = Options(Decoding, names={"name": "decoding", "alpha": "vcd-alpha", "beta": "vcd-beta"})
DEVICE = Options(ModelSpec, only=("device",))
EVOLVE = Options(
    EvolveConfig,
    only=(
        "rounds", "images", "annotations", "eval_images", "eval_annotations", "pope_images", "chair_images", "val_images", "val_annotations",
        "select", "world", "selection_split",
        "patience", "yes_ratio", "min_recall", "eval_batch_size", "distill.loss", "distill.beta", "distill.site_weight",
        "distill.captions", "distill.hea.rank", "distill.hea.alpha", "distill.lr", "distill.lr_scheduler", "distill.warmup_steps",
        "distill.epochs", "distill.max_steps", "distill.batch_size", "distill.grad_accum", "distill.chunk_size",
        "purify.identify.signals", "purify.identify.tau", "purify.identify.lens_layers", "purify.max_new_tokens", "distill.log_with", "distill.logging_dir",
    ),
    names={"purify.identify.signals": "identify"},
)  # fmt: skip
_OUTPUT_HELP = "Also write the result JSON here: benchmark, metrics, manifest (parser, questions md5, library versions)."


def _say(line: str) -> None:
    console.print(line, highlight=False)


def _on_world(spec: ModelSpec):
    """The embedded world's model when no --model is given (and the :class:`~seed.world.World`, for its data)."""
    from seed.world import World

    if spec.model is not None:
        return spec, None
    world = World.default()
    return dataclasses.replace(spec, model=str(world.model)), world


def _refuse_with_files(**given) -> None:
    named = [f"--{name.replace('_', '-')}" for name, value in given.items() if value is not None]
    if named:
        raise SeedError(f"files of answers or captions are scored as they are; {', '.join(named)} only apply when running a model")


# --------------------------------------------------------------------------- world
@world_app.command("build")
@with_configs(device=DEVICE)
def world_build(
    device: ModelSpec,
    out: Optional[Path] = typer.Option(None, help="Folder of the world (default: the cache, ~/.cache/seed)."),
    seed: int = typer.Option(0, help="Seed: the same seed gives the same world."),
    caption_bias: Optional[float] = typer.Option(None, help="Share of training captions that also name an absent partner of a shown object (default: the world's)."),
    answer_bias: Optional[float] = typer.Option(None, help="Share of training questions about an absent partner answered \"Yes\" (default: the world's)."),
    cooccur: Optional[float] = typer.Option(None, help="Chance that a drawn object brings its partner into the scene (default: the world's)."),
    vision_labels: str = typer.Option("captions", help="What the vision tower learns from: captions (alt-text naming some of the shown objects) or annotations (all of them)."),
    bias: bool = typer.Option(True, "--bias/--no-bias", help="--no-bias: the matched control, the same scenes with text that names only what is shown."),
    force: bool = typer.Option(False, help="Rebuild even if a finished world is there."),
) -> None:
    """Draw the scenes and train the tiny LLaVA model (cached: a second call reuses it)."""
    from seed.world import WorldConfig, build_world
    from seed.world.scenes import BiasConfig

    rates = {"caption_rate": caption_bias, "answer_rate": answer_bias, "cooccur": cooccur}
    if not bias and (caption_bias or answer_bias):
        raise SeedError("--no-bias builds the control with clean text; leave out --caption-bias and --answer-bias")
    if any(r is not None and not 0 <= r <= 1 for r in rates.values()):
        raise SeedError("--caption-bias, --answer-bias and --cooccur are shares in [0, 1]")
    chosen = BiasConfig(**{k: v for k, v in rates.items() if v is not None})
    config = WorldConfig(seed=seed, bias=chosen if bias else chosen.clean(), vision_labels=vision_labels)
    typer.echo(str(build_world(out, force=force, device=device.device, config=config)))


# --------------------------------------------------------------------------- eval: pope
def _pope_command(split: str | None):
    """``seed eval pope`` (``split`` None: --splits, all three by default) or its one-split alias."""

    @with_configs(model=MODEL, config=Options(PopeConfig, fixed={"splits": (split,)} if split else {}), decoding=DECODING)
    def command(
        model: ModelSpec,
        config: PopeConfig,
        decoding: Decoding,
        answers: Optional[Path] = typer.Option(
            None, "--answers", help="Score this answers file instead of running a model: JSON Lines (or a JSON array) of question_id "
            "with text (LLaVA style) or answer, joined by question_id; '{split}' in the path stands for each split."
        ),
        output: Optional[Path] = typer.Option(None, "--output", help=_OUTPUT_HELP + " Model runs write the answers beside it."),
    ) -> None:
        from seed.evaluation.pope import evaluate_pope, score_answers_file, score_pope_files, write_result
        from seed.report import pope_table, spread_table

        if answers is not None:
            _refuse_with_files(model=model.model, adapter=model.adapter, images=config.images, annotations=config.annotations)
            if len(config.splits) == 1:
                name = config.splits[0]
                answers_file = str(answers).replace("{split}", name)
                result = score_answers_file(answers_file, config.questions or name, config.parser, benchmark=f"pope-{name}", split=name)
            elif "{split}" not in str(answers):
                raise SeedError("several splits need one answers file each: put {split} in the --answers path")
            else:
                result = score_pope_files({s: str(answers).replace("{split}", s) for s in config.splits}, config.parser, config.questions)
            Console().print(pope_table(result))
            if output is not None:
                write_result(output, result)
                _say(f"wrote {output}")
            return
        model, world = _on_world(model)
        if world is not None:
            questions = config.questions if config.questions or config.annotations else world.pope_questions
            config = dataclasses.replace(config, images=config.images or str(world.images(world.eval_split)), questions=questions)
        result = evaluate_pope(model, config, decoding=decoding, output=output, log=_say)
        Console().print(pope_table(result))
        if "std" in result:
            Console().print(spread_table(result))
        if output is not None:
            _say(f"wrote {output} (answers beside it)")

    which = f"the {split} split" if split else "the --splits (all three by default, and their mean F1: the single POPE score)"
    command.__doc__ = (
        f"POPE, {which}: score an answers file (--answers), or run a model (--model, default the embedded world's, on its own "
        "images and questions) and score it: accuracy, precision, recall, F1 (yes = positive), yes-ratio."
    )
    return command


eval_app.command("pope")(_pope_command(None))
for _split in POPE_SPLITS:
    eval_app.command(f"pope-{_split}")(_pope_command(_split))


@eval_app.command("build-pope")
def eval_build_pope(
    annotations: Optional[Path] = typer.Option(None, "--annotations", help="COCO-format instances JSON (images, annotations, categories)."),
    split: Optional[str] = typer.Option(None, "--split", help="random, popular or adversarial: how the 'no' objects are chosen."),
    num_images: int = typer.Option(500, "--num-images", help="Images to sample among those with 3 or more objects (6 questions each)."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed: the same seed gives the same file."),
    out: Optional[Path] = typer.Option(None, "--out", help="Question file to write (official POPE JSON Lines)."),
) -> None:
    """Build POPE questions from COCO-format annotations, as the POPE paper does."""
    from seed.evaluation.pope import build_pope, write_questions

    if annotations is None or split is None or out is None:
        raise SeedError("build-pope needs --annotations FILE, --split random|popular|adversarial and --out FILE")
    questions = build_pope(annotations, split, num_images=num_images, seed=seed)
    write_questions(out, questions)
    _say(f"wrote {len(questions)} questions ({len(questions) // 6} images) to {out}")


# --------------------------------------------------------------------------- eval: chair
@eval_app.command("chair")
@with_configs(model=MODEL, config=Options(ChairConfig), decoding=DECODING)
def eval_chair(
    model: ModelSpec,
    config: ChairConfig,
    decoding: Decoding,
    captions: Optional[Path] = typer.Option(
        None, "--captions", help="Score this file instead of running a model: JSON Lines (or a JSON array) of image_id (COCO id) "
        "or image (file name) with caption (or text)."
    ),
    output: Optional[Path] = typer.Option(
        None, "--output", help="Also write the result JSON here: benchmark, metrics, manifest, per-caption mentions. Model runs write the captions beside it."
    ),
) -> None:
    """CHAIR_i (per mention), CHAIR_s (per caption), object recall, mean length: of a captions file
    (--captions), or of greedy captions a model (--model, default the embedded world's) writes for
    "Please describe this image in detail."."""
    from seed.evaluation import chair
    from seed.report import chair_table

    if captions is not None:
        _refuse_with_files(model=model.model, adapter=model.adapter, images=config.images)
        if config.annotations is None:
            raise SeedError("chair needs --annotations FILE (COCO-format instances JSON) to know which objects each image holds")
        result = chair.evaluate_chair(captions, config.annotations, ref_captions=config.ref_captions, lexicon=config.lexicon)
        Console().print(chair_table(result))
        if output is not None:
            chair.write_result(output, result)
            _say(f"wrote {output}")
        return
    model, world = _on_world(model)
    if world is not None:
        split = world.eval_split
        config = dataclasses.replace(
            config, images=config.images or str(world.images(split)), annotations=config.annotations or str(world.annotations(split))
        )
    result = chair.evaluate_chair_model(model, config, decoding=decoding, output=output, log=_say)
    Console().print(chair_table(result))
    if output is not None:
        _say(f"wrote {output} (captions beside it)")


# --------------------------------------------------------------------------- purify
@app.command("purify")
@with_configs(model=MODEL, config=Options(PurifyConfig, names={"identify.signals": "identify"}))
def purify_command(
    model: ModelSpec,
    config: PurifyConfig,
    images: Optional[Path] = typer.Option(None, help="Folder of images (default: the world's purify split)."),
    annotations: Optional[Path] = typer.Option(None, help="COCO instances for --identify oracle (never needed otherwise)."),
    out: Path = typer.Option(Path("runs/purified"), help="Output folder (a killed run resumes here)."),
    show: int = typer.Option(0, help="Print N purified examples with flagged words highlighted, then exit."),
) -> None:
    """Identify, isolate and purge hallucinations; store the purified targets."""
    from seed.purify import purify, show_examples

    if show:
        show_examples(out, show)
        return
    if images is None and model.model is not None:
        raise SeedError("purify needs --images DIR when --model is given")
    model, world = _on_world(model)
    if images is None:
        images = world.images(world.purify_split)
        if annotations is None and "oracle" in config.identify.signals:
            annotations = world.annotations(world.purify_split)
    typer.echo(str(purify(model, images=images, out=out, annotations=annotations, config=config)))


# --------------------------------------------------------------------------- evolve, export
@app.command("evolve")
@with_configs(model=MODEL, config=EVOLVE)
def evolve_command(
    model: ModelSpec,
    config: EvolveConfig,
    out: Path = typer.Option(
        Path("runs/evolve"), "--out", help="Run folder: round-N/{purified,adapter,*.json}, history.json, adapter/ (the kept round). Rerun to resume."
    ),
) -> None:
    """Self-evolving distillation: purify with the model, distil the purified targets into its HEA, evaluate on
    held-out POPE (all splits, yes-ratio) and CHAIR; repeat, keep the best round, and print before and after.
    With no options it runs on the embedded world."""
    from seed.evolve import evolve

    evolve(model, out=out, config=config, console=Console())


@app.command("report")
@with_configs(config=Options(ReportConfig))
def report_command(
    config: ReportConfig,
    run_dir: Path = typer.Argument(
        Path("runs/evolve"), help="A seed evolve run folder (default: seed evolve's), a seed purify output folder or a folder holding ablation.json."
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="The HTML file to write (default: RUN_DIR/report.html)."),
) -> None:
    """One self-contained HTML page of a run: before/after table, per-round charts, identification
    quality and a gallery of purified examples (images inlined; opens with no network)."""
    from seed.html_report import write_report

    _say(f"wrote {write_report(run_dir, out, config)}")


@app.command("export")
@with_configs(model=Options(ModelSpec, only=("device", "dtype", "trust_remote_code")))
def export_command(
    model: ModelSpec,
    out: Optional[Path] = typer.Argument(None, help="Folder for the merged model (model + processor)."),
    merge: Optional[Path] = typer.Option(None, "--merge", help="Adapter folder (a saved HEA) to bake into the base model it names."),
) -> None:
    """Merge an HEA into its base model and save a plain transformers checkpoint (no adapter at inference)."""
    from seed.adapters import export

    if merge is None or out is None:
        raise SeedError("export needs --merge ADAPTER_DIR and an output folder: seed export --merge runs/evolve/adapter merged/")
    path = export(merge, out, device=model.device, dtype=model.dtype, trust_remote_code=model.trust_remote_code)
    _say(f"wrote {path}")


detect_app = typer.Typer(help="Which objects in a caption are hallucinated; `seed detect train` distils a one-pass detector.")
app.add_typer(detect_app, name="detect")


@detect_app.callback(invoke_without_command=True)
@with_configs(model=MODEL, config=Options(DetectConfig, names={"identify.signals": "identify"}))
def detect_command(
    context: typer.Context,
    model: ModelSpec,
    config: DetectConfig,
    captions: Optional[Path] = typer.Option(
        None, "--captions", help='JSON Lines (or a JSON array) of {"image", "caption"[, "options"]}: captions from any model or person.'
    ),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder of the captions' image files (default with no --model: the world's held-out images)."),
    annotations: Optional[Path] = typer.Option(None, "--annotations", help="COCO instances: also score every signal as a detector (AUROC, precision, recall, F1)."),
    output: Optional[Path] = typer.Option(None, "--output", help="Write the judged captions here (JSON Lines), the metrics beside it (.metrics.json)."),
) -> None:
    """Which objects in each caption are hallucinated: every identification signal's score per object, their
    combined probability and a flag; with --annotations, how well each signal detects absent objects."""
    from seed.coco import objects_by_file
    from seed.detection import detect, detection_metrics
    from seed.io import check_output, write_json, write_jsonl
    from seed.report import detection_table

    if context.invoked_subcommand is not None:
        return
    if captions is None:
        raise SeedError('detect needs --captions FILE (JSON Lines of {"image", "caption"})')
    model, world = _on_world(model)
    if images is None:
        if world is None:
            raise SeedError("detect needs --images DIR with --model")
        images = world.images(world.eval_split)
    if output is not None:
        check_output(output)
    if annotations is not None:
        objects_by_file(annotations)  # a missing or broken file is refused before any work
    results = detect(model, captions, images, config)
    flagged = sum(o["flagged"] for r in results for o in r["options"])
    _say(f"{len(results)} captions, {sum(len(r['options']) for r in results)} objects judged, {flagged} flagged")
    if output is not None:
        write_jsonl(output, results)
        _say(f"wrote {output}")
    if annotations is not None:
        metrics = detection_metrics(results, annotations, config.identify.tau)
        Console().print(detection_table(metrics))
        if output is not None:
            write_json(output.with_name(output.stem + ".metrics.json"), metrics)


@detect_app.command("train")
@with_configs(model=MODEL, config=Options(DetectorConfig, names={"teacher.signals": "teacher", "images": "num-images"}, only=(
    "teacher.signals", "layer", "images", "coarse_steps", "fine_steps", "lr", "batch_size", "max_new_tokens", "seed")))  # fmt: skip
def detect_train_command(
    model: ModelSpec,
    config: DetectorConfig,
    images: Optional[Path] = typer.Option(None, "--images", help="Unlabelled images to learn from (default with no --model: the world's purify split)."),
    out: Path = typer.Option(Path("runs/detector"), "--out", help="Folder for the detector (safetensors + config)."),
) -> None:
    """Distil the multi-signal identification into a one-pass detector: a head on the model's hidden states at
    each mention, learnt from unlabelled images (first the teacher's image-level object scores, then its scores of
    the objects the model's own captions name). Use it as a signal: `--identify detector:OUT` in seed detect, purify and evolve."""
    from seed.adapters import load_spec
    from seed.detection import train_detector
    from seed.detector import CONFIG_FILE
    from seed.io import check_replaceable

    if images is None and model.model is not None:
        raise SeedError("detect train needs --images DIR with --model")
    model, world = _on_world(model)
    check_replaceable(out, CONFIG_FILE)
    stats = train_detector(load_spec(model), images or world.images(world.purify_split), out, config)
    _say(f"wrote {out}: {stats['images']} images, {stats['coarse_examples']} + {stats['fine_examples']} examples, {stats['seconds']} s")


def main() -> None:
    """Console entry point: user mistakes (usage errors included) become one line on stderr and
    exit code 2, and so do the OS errors (a full disk, a folder without write permission) that no reader or writer
    turned into one first."""
    from typer._click.exceptions import ClickException, NoArgsIsHelpError  # the click that typer vendors

    warnings.filterwarnings("ignore", category=FutureWarning)  # libraries' deprecation notes are for developers
    try:
        code = app(standalone_mode=False)
    except NoArgsIsHelpError as e:  # `seed` or `seed eval` alone: the help, as before
        print(e.format_message())
        sys.exit(2)
    except typer.Abort:
        console.print("[bold red]error:[/] interrupted", highlight=False)
        sys.exit(130)
    except ClickException as e:  # usage mistakes: an unknown command or option, a value of the wrong type
        console.print(f"[bold red]error:[/] {markup.escape(e.format_message())}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except SeedError as e:
        console.print(f"[bold red]error:[/] {markup.escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        console.print(f"[bold red]error:[/] {where}{e.strerror or e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)
