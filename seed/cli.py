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
    bias: bool = typer.Option(True, "--bias/--no-bias", help="Plant the co-occurrence bias: partners drawn together and named when absent (off = control world)."),
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


# Model options, shared by the model-running paths of the POPE and CHAIR commands.
_MODEL_HELP = (
    "Model to run: alias (llava-1.5, internvl2-2b, ...), hub id or local folder. "
    "Default: the embedded world's model, with the world's own images and questions."
)
ModelOpt = typer.Option(None, "--model", help=_MODEL_HELP)
AdapterOpt = typer.Option(None, "--adapter", help="PEFT adapter folder (e.g. a saved HEA) trained on --model.")
ImagesOpt = typer.Option(None, "--images", help="Folder holding the image files the questions (or annotations) name.")
DtypeOpt = typer.Option(None, "--dtype", help="float32, bfloat16 or float16 (default: bf16 or fp16 on GPU, fp32 on CPU).")
FourBitOpt = typer.Option(False, "--load-in-4bit", help="Quantise the language model to 4-bit NF4 (bitsandbytes).")
EightBitOpt = typer.Option(False, "--load-in-8bit", help="Quantise the language model to 8-bit (bitsandbytes).")
TrustOpt = typer.Option(False, "--trust-remote-code", help="Run the checkpoint's own modelling code (InternVL2); only for code you trust.")
_PROTOCOL_HELP = (
    "greedy: question + '\nAnswer the question using a single word or phrase.', greedy decoding; "
    "sampling: question + ' Please answer this question with one word.', T=1, top_p=1, one run per --seeds."
)
_SEEDS_HELP = "Sampling seeds, comma-separated (default 1,2,3); metrics are the mean with the std over seeds."
_DECODING_HELP = (
    "greedy (the model as is), vcd (visual contrastive decoding against a diffusion-noised image) "
    "or purified (seed purify's identify + purge at every step: the slow twin the adapter replaces)."
)
DecodingOpt = typer.Option("greedy", "--decoding", help=_DECODING_HELP)
VcdAlphaOpt = typer.Option(1.0, "--vcd-alpha", help="VCD contrast strength α.")
VcdBetaOpt = typer.Option(0.1, "--vcd-beta", help="VCD plausibility cut-off β.")
_BATCH_HELP = "Questions per forward pass or generate call."
_ANNOTATIONS_HELP = "COCO-format instances JSON: build the questions from it (as build-pope does, seeded by --build-seed)."


def _model_spec(model, adapter, device, dtype, load_in_4bit, load_in_8bit, trust_remote_code):
    from seed.evaluation.runner import ModelSpec

    return ModelSpec(model, adapter, device, dtype, load_in_4bit, load_in_8bit, trust_remote_code)


def _parse_seeds(text: Optional[str]) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SeedError(f"--seeds must be comma-separated integers, e.g. 1,2,3; not {text!r}") from None


def _refuse_with_answers(given: dict[str, object]) -> None:
    named = [name for name, value in given.items() if value is not None]
    if named:
        raise SeedError(f"answers files are scored as they are; {', '.join(named)} only apply when running a model")


def _run_pope(splits: list[str], output: Optional[Path], spec, decoding: str, vcd_alpha: float, vcd_beta: float, seeds, **options) -> None:
    from seed.evaluation import runner as _runner

    result = _runner.evaluate_pope(
        splits,
        spec,
        decoding=_runner.Decoding(decoding, vcd_alpha, vcd_beta),
        seeds=_parse_seeds(seeds),
        output=output,
        log=lambda line: console.print(line, highlight=False),
        **options,
    )
    Console().print(_pope.metrics_table(result))
    if "std" in result:
        Console().print(_runner.spread_table(result))
    if output is not None:
        console.print(f"wrote {output} (answers beside it)", highlight=False)


def _pope_split_command(split: str):
    def command(
        answers: Optional[Path] = typer.Option(None, "--answers", help=_ANSWERS_HELP),
        questions: Optional[str] = typer.Option(
            None,
            "--questions",
            help=f"Question file (JSON Lines or JSON array) or a shipped name ({', '.join(_pope.SHIPPED)}); "
            f"default: the COCO {split} split with --model, the embedded world's without.",
        ),
        parser: str = typer.Option("official", "--parser", help=_PARSER_HELP),
        output: Optional[Path] = typer.Option(None, "--output", help=_OUTPUT_HELP + " Model runs write the answers beside it."),
        model: Optional[str] = ModelOpt,
        adapter: Optional[str] = AdapterOpt,
        images: Optional[Path] = ImagesOpt,
        annotations: Optional[Path] = typer.Option(None, "--annotations", help=_ANNOTATIONS_HELP),
        num_images: int = typer.Option(500, "--num-images", help="With --annotations: images to sample (6 questions each)."),
        build_seed: int = typer.Option(0, "--build-seed", help="With --annotations: the question-building seed."),
        protocol: str = typer.Option("greedy", "--protocol", help=_PROTOCOL_HELP),
        seeds: Optional[str] = typer.Option(None, "--seeds", help=_SEEDS_HELP),
        decoding: str = DecodingOpt,
        vcd_alpha: float = VcdAlphaOpt,
        vcd_beta: float = VcdBetaOpt,
        batch_size: int = typer.Option(32, "--batch-size", help=_BATCH_HELP),
        max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="Longest answer generated."),
        device: str = DeviceOpt,
        dtype: Optional[str] = DtypeOpt,
        load_in_4bit: bool = FourBitOpt,
        load_in_8bit: bool = EightBitOpt,
        trust_remote_code: bool = TrustOpt,
    ) -> None:
        if answers is not None:
            _refuse_with_answers({"--model": model, "--adapter": adapter, "--images": images, "--annotations": annotations})
            _show_pope(_pope.score_answers_file(answers, questions or split, parser, benchmark=f"pope-{split}"), output)
            return
        spec = _model_spec(model, adapter, device, dtype, load_in_4bit, load_in_8bit, trust_remote_code)
        _run_pope(
            [split], output, spec, decoding, vcd_alpha, vcd_beta, seeds,
            images=images, questions=questions, annotations=annotations, num_images=num_images, build_seed=build_seed,
            protocol=protocol, parser=parser, batch_size=batch_size, max_new_tokens=max_new_tokens,
        )  # fmt: skip

    command.__doc__ = (
        f"POPE {split} split: score an answers file (--answers), or run a model (--model, default the embedded world's) "
        "and score it: accuracy, precision, recall, F1 (yes = positive), yes-ratio."
    )
    return command


for _split in _pope.SPLITS:
    eval_app.command(f"pope-{_split}")(_pope_split_command(_split))


@eval_app.command("pope")
def eval_pope(
    answers_random: Optional[Path] = typer.Option(None, "--answers-random", help="Answers to the random split. " + _ANSWERS_HELP),
    answers_popular: Optional[Path] = typer.Option(None, "--answers-popular", help="Answers to the popular split."),
    answers_adversarial: Optional[Path] = typer.Option(None, "--answers-adversarial", help="Answers to the adversarial split."),
    parser: str = typer.Option("official", "--parser", help=_PARSER_HELP),
    output: Optional[Path] = typer.Option(None, "--output", help=_OUTPUT_HELP + " Adds per-split metrics; model runs write the answers beside it."),
    model: Optional[str] = ModelOpt,
    adapter: Optional[str] = AdapterOpt,
    images: Optional[Path] = ImagesOpt,
    annotations: Optional[Path] = typer.Option(None, "--annotations", help=_ANNOTATIONS_HELP + " All three splits."),
    num_images: int = typer.Option(500, "--num-images", help="With --annotations: images to sample per split (6 questions each)."),
    build_seed: int = typer.Option(0, "--build-seed", help="With --annotations: the question-building seed."),
    protocol: str = typer.Option("greedy", "--protocol", help=_PROTOCOL_HELP),
    seeds: Optional[str] = typer.Option(None, "--seeds", help=_SEEDS_HELP),
    decoding: str = DecodingOpt,
    vcd_alpha: float = VcdAlphaOpt,
    vcd_beta: float = VcdBetaOpt,
    batch_size: int = typer.Option(32, "--batch-size", help=_BATCH_HELP),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="Longest answer generated."),
    device: str = DeviceOpt,
    dtype: Optional[str] = DtypeOpt,
    load_in_4bit: bool = FourBitOpt,
    load_in_8bit: bool = EightBitOpt,
    trust_remote_code: bool = TrustOpt,
) -> None:
    """All three POPE splits and mean F1, the single POPE score: score one answers file per split, or run a
    model (--model, default the embedded world's) on the COCO splits, built ones (--annotations) or the world's."""
    given = {"random": answers_random, "popular": answers_popular, "adversarial": answers_adversarial}
    if any(path is not None for path in given.values()):
        _refuse_with_answers({"--model": model, "--adapter": adapter, "--images": images, "--annotations": annotations})
        missing = [f"--answers-{name}" for name, path in given.items() if path is None]
        if missing:
            raise SeedError(f"pope needs one answers file per split; missing {', '.join(missing)}")
        _show_pope(_pope.score_pope_files(given, parser), output)
        return
    spec = _model_spec(model, adapter, device, dtype, load_in_4bit, load_in_8bit, trust_remote_code)
    _run_pope(
        list(_pope.SPLITS), output, spec, decoding, vcd_alpha, vcd_beta, seeds,
        images=images, annotations=annotations, num_images=num_images, build_seed=build_seed,
        protocol=protocol, parser=parser, batch_size=batch_size, max_new_tokens=max_new_tokens,
    )  # fmt: skip


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
    output: Optional[Path] = typer.Option(None, "--output", help="Also write the result JSON here: benchmark, metrics, manifest, per-caption mentions. Model runs write the captions beside it."),
    model: Optional[str] = ModelOpt,
    adapter: Optional[str] = AdapterOpt,
    images: Optional[Path] = ImagesOpt,
    num_images: int = typer.Option(500, "--num-images", help="Annotated images to caption, sampled with --image-seed (all if fewer)."),
    image_seed: int = typer.Option(0, "--image-seed", help="Seed of the image sample."),
    batch_size: int = typer.Option(8, "--batch-size", help="Images per generate call."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", help="Longest caption generated."),
    decoding: str = DecodingOpt,
    vcd_alpha: float = VcdAlphaOpt,
    vcd_beta: float = VcdBetaOpt,
    device: str = DeviceOpt,
    dtype: Optional[str] = DtypeOpt,
    load_in_4bit: bool = FourBitOpt,
    load_in_8bit: bool = EightBitOpt,
    trust_remote_code: bool = TrustOpt,
) -> None:
    """CHAIR_i (per mention), CHAIR_s (per caption), object recall, mean length: of a captions file
    (--captions), or of greedy captions a model (--model, default the embedded world's) writes for
    "Please describe this image in detail."."""
    from seed.evaluation import chair as _chair

    if captions is None:
        from seed.evaluation import runner as _runner

        spec = _model_spec(model, adapter, device, dtype, load_in_4bit, load_in_8bit, trust_remote_code)
        result = _runner.evaluate_chair_model(
            spec, images=images, annotations=annotations, ref_captions=ref_captions, lexicon=lexicon,
            num_images=num_images, image_seed=image_seed, batch_size=batch_size, max_new_tokens=max_new_tokens,
            decoding=_runner.Decoding(decoding, vcd_alpha, vcd_beta), output=output, log=lambda line: console.print(line, highlight=False),
        )  # fmt: skip
        Console().print(_chair.metrics_table(result))
        if output is not None:
            console.print(f"wrote {output} (captions beside it)", highlight=False)
        return
    _refuse_with_answers({"--model": model, "--adapter": adapter, "--images": images})
    if annotations is None:
        raise SeedError("chair needs --annotations FILE (COCO-format instances JSON) to know which objects each image holds")
    result = _chair.evaluate_chair(captions, annotations, ref_captions=ref_captions, lexicon=lexicon)
    Console().print(_chair.metrics_table(result))
    if output is not None:
        _chair.write_result(output, result)
        console.print(f"wrote {output}", highlight=False)


# ---- purify
_IDENTIFY_HELP = "Signals that flag hallucinated objects, comma-separated: self-probe, consistency, lens, evidence, contrast, uncertainty, oracle (default: self-probe,lens)."


def _signals(identify: str | None) -> tuple[str, ...] | None:
    return None if identify is None else tuple(s.strip() for s in identify.split(",") if s.strip())

@app.command("purify")
def purify_command(
    model: Optional[str] = typer.Option(None, help="Model id, alias (llava-1.5) or folder; default: the embedded world's model."),
    adapter: Optional[str] = typer.Option(None, help="HEA folder: purify with base + adapter as the teacher."),
    images: Optional[Path] = typer.Option(None, help="Folder of images (default: the world's purify split)."),
    annotations: Optional[Path] = typer.Option(None, help="COCO instances for --identify oracle (never needed otherwise)."),
    out: Path = typer.Option(Path("runs/purified"), help="Output folder (a killed run resumes here)."),
    identify: Optional[str] = typer.Option(None, help=_IDENTIFY_HELP),
    tau: float = typer.Option(0.5, help="Flag a category when its hallucination score h > tau."),
    samples: Optional[int] = typer.Option(None, help="Sampled captions per image for the consistency signal (default 8)."),
    null_image: Optional[str] = typer.Option(None, help="Null image of the contrast signal: none (default), grey or noise."),
    do_sample: bool = typer.Option(False, "--do-sample", help="Sample the teacher's captions (T=1) instead of greedy decoding."),
    top_k: int = typer.Option(8, help="Stored top-K width."),
    batch_size: int = typer.Option(16),
    show: int = typer.Option(0, help="Print N purified examples with flagged words highlighted, then exit."),
    device: str = DeviceOpt,
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow InternVL2 remote code."),
) -> None:
    """Identify, isolate and purge hallucinations; store the purified targets."""
    from seed.purify import PurifyConfig, purify, show_examples

    if show:
        show_examples(out, show)
        return
    if images is None:
        if model is not None:
            raise SeedError("purify needs --images DIR when --model is given")
        from seed.world import ensure_world

        world = ensure_world()
        images = world / "purify" / "images"
        annotations = annotations or (world / "purify" / "annotations" / "instances.json" if "oracle" in (identify or "") else None)
    given = {"identify": _signals(identify), "samples": samples, "null_image": null_image}
    config = PurifyConfig(tau=tau, top_k=top_k, batch_size=batch_size, do_sample=do_sample, **{k: v for k, v in given.items() if v is not None})
    vlm = None
    if model is not None or adapter is not None or trust_remote_code:
        from seed.adapters import load

        vlm = load(model, adapter=adapter, device=device, trust_remote_code=trust_remote_code)
    path = purify(vlm, images=images, out=out, adapter=adapter, annotations=annotations, config=config, device=device)
    typer.echo(str(path))


# ---- evolve
_LOSS_HELP = "reverse-kl (SEED, mode-seeking), forward-kl (mass-covering), jsd (generalized JSD, --beta) or sft (cross-entropy on the repaired responses)."


@app.command("evolve")
def evolve_command(
    model: Optional[str] = typer.Option(None, "--model", help=_MODEL_HELP.replace("images and questions", "purify and held-out splits")),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="HEA to start from (trained on --model); training continues it."),
    rounds: int = typer.Option(2, "--rounds", help="Most purify → distil → evaluate rounds."),
    loss: str = typer.Option("reverse-kl", "--loss", help=_LOSS_HELP),
    identify: Optional[str] = typer.Option(None, "--identify", help=_IDENTIFY_HELP),
    out: Path = typer.Option(Path("runs/evolve"), "--out", help="Run folder: round-N/{purified,adapter,*.json}, history.json, adapter/ (the kept round). Rerun to resume."),
    images: Optional[Path] = typer.Option(None, "--images", help="Unlabelled images to purify (required with --model; default: the world's purify split)."),
    annotations: Optional[Path] = typer.Option(None, "--annotations", help="COCO instances of --images; only the oracle signal reads them."),
    eval_images: Optional[Path] = typer.Option(None, "--eval-images", help="Held-out images for POPE and CHAIR (required with --model)."),
    eval_annotations: Optional[Path] = typer.Option(None, "--eval-annotations", help="COCO instances of --eval-images: POPE is built from them, CHAIR scored against them."),
    pope_images: int = typer.Option(500, "--pope-images", help="With --eval-annotations: images per POPE split (6 questions each)."),
    chair_images: int = typer.Option(500, "--chair-images", help="Images captioned for CHAIR."),
    patience: int = typer.Option(1, "--patience", help="Stop after this many rounds without a better adversarial F1."),
    min_recall: float = typer.Option(0.9, "--min-recall", help="Stop when caption object recall falls below this share of the base's; such rounds are kept last."),
    lr: float = typer.Option(4e-4, "--lr", help="Learning rate of the adapter."),
    epochs: int = typer.Option(2, "--epochs", help="Passes over each round's purified responses."),
    captions: str = typer.Option("all", "--captions", help="Captions the adapter trains on: all (default), repaired (the ones purification changed) or none; answers always."),
    batch_size: int = typer.Option(16, "--batch-size", help="Responses per forward pass (per process)."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Batches per optimizer step."),
    rank: int = typer.Option(16, "--rank", help="LoRA rank of the HEA."),
    alpha: int = typer.Option(32, "--alpha", help="LoRA alpha of the HEA."),
    site_weight: float = typer.Option(4.0, "--site-weight", help="Loss weight of hallucination sites, the tokens purification changed (1 = unweighted)."),
    beta: float = typer.Option(0.5, "--beta", help="With --loss jsd: 0 → forward KL, 1 → reverse KL."),
    device: str = DeviceOpt,
    dtype: Optional[str] = DtypeOpt,
    load_in_4bit: bool = FourBitOpt,
    load_in_8bit: bool = EightBitOpt,
    trust_remote_code: bool = TrustOpt,
) -> None:
    """Self-evolving distillation: purify with the model, distil the purified targets into its HEA, evaluate on
    held-out POPE (all splits, yes-ratio) and CHAIR; repeat, keep the best round, and print before and after.
    With no options it runs on the embedded world."""
    from seed.distill import DistillConfig
    from seed.evolve import EvolveConfig, evolve

    config = EvolveConfig(
        rounds=rounds, loss=loss, patience=patience, min_recall=min_recall,
        identify=_signals(identify),
        distill=DistillConfig(lr=lr, epochs=epochs, batch_size=batch_size, grad_accum=grad_accum, rank=rank, alpha=alpha, site_weight=site_weight, beta=beta, captions=captions),
        images=str(images) if images else None, annotations=str(annotations) if annotations else None,
        eval_images=str(eval_images) if eval_images else None, eval_annotations=str(eval_annotations) if eval_annotations else None,
        pope_images=pope_images, chair_images=chair_images,
    )  # fmt: skip
    spec = _model_spec(model, adapter, device, dtype, load_in_4bit, load_in_8bit, trust_remote_code)
    evolve(spec, out=out, config=config, console=Console())


@app.command("export")
def export_command(
    out: Optional[Path] = typer.Argument(None, help="Folder for the merged model (model + processor)."),
    merge: Optional[Path] = typer.Option(None, "--merge", help="Adapter folder (a saved HEA) to bake into the base model it names."),
    device: str = DeviceOpt,
    dtype: Optional[str] = DtypeOpt,
    trust_remote_code: bool = TrustOpt,
) -> None:
    """Merge an HEA into its base model and save a plain transformers checkpoint (no adapter at inference)."""
    from seed.evolve import export

    if merge is None or out is None:
        raise SeedError("export needs --merge ADAPTER_DIR and an output folder: seed export --merge runs/evolve/adapter merged/")
    path = export(merge, out, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    console.print(f"wrote {path}", highlight=False)


def main() -> None:
    """Console entry point: user mistakes become one line on stderr and exit code 2."""
    try:
        app()
    except SeedError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
