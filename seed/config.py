"""Every option of seed, declared once: the config dataclasses of each stage, with their
defaults, help texts (``field(metadata={"help": ...})``, as PEFT does) and range checks. The
command line is derived from them (:mod:`seed.options`); the stage modules take them as they are.
This module imports nothing heavy, so that ``seed --help`` stays quick.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from seed.errors import SeedError
from seed.prompts import PROTOCOLS

SIGNALS = ("self-probe", "consistency", "lens", "evidence", "contrast", "uncertainty", "oracle")
NULL_IMAGES = ("none", "grey", "noise")
DECODINGS = ("greedy", "vcd", "purified")
LOSSES = ("reverse-kl", "forward-kl", "jsd", "sft")
DEFAULT_EPS = 1e-8
"""Floor for p̃ in the reverse KL. Keep ``V·eps ≪ 1``: see :func:`seed.losses.reverse_kl`."""
CAPTIONS = ("all", "repaired", "none")  # which stored captions the student trains on (answers: all)
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
SCHEDULERS = ("constant_with_warmup", "linear", "cosine")
POPE_SPLITS = ("random", "popular", "adversarial")
PARSERS = ("official", "strict")
TRACKERS = ("tensorboard", "wandb")  # experiment trackers, through accelerate
DEFAULT_SEEDS = (1, 2, 3)


def _at_least(minimum: float, **options) -> None:
    """Refuse an option below ``minimum`` (named as on the command line); None means unset."""
    for name, value in options.items():
        if value is not None and not value >= minimum:
            raise SeedError(f"--{name.replace('_', '-')} must be at least {minimum}, not {value}")


# --------------------------------------------------------------------------- models and decoding
@dataclass(frozen=True)
class ModelSpec:
    """What to load: the arguments of :func:`load` (``model`` None: the caller's default model)."""

    model: str | None = field(
        default=None,
        metadata={"help": "Model to run: alias (llava-1.5, internvl2-2b, ...), hub id or local folder. Default: the embedded world's model."},
    )
    adapter: str | None = field(default=None, metadata={"help": "PEFT adapter folder (e.g. a saved HEA) trained on --model."})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda[:N]."})
    dtype: str | None = field(default=None, metadata={"help": "float32, bfloat16 or float16 (default: bf16 or fp16 on GPU, fp32 on CPU)."})
    load_in_4bit: bool = field(default=False, metadata={"help": "Quantise the language model to 4-bit NF4 (bitsandbytes)."})
    load_in_8bit: bool = field(default=False, metadata={"help": "Quantise the language model to 8-bit (bitsandbytes)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run the checkpoint's own modelling code (InternVL2); only for code you trust."})


@dataclass(frozen=True)
class Decoding:
    """How each next token is chosen: ``greedy`` (the model as is), ``vcd`` (α, β) or ``purified``."""

    name: str = field(
        default="greedy",
        metadata={
            "help": "greedy (the model as is), vcd (visual contrastive decoding against a diffusion-noised image) "
            "or purified (seed purify's identify + purge at every step: the slow twin the adapter replaces)."
        },
    )
    alpha: float = field(default=1.0, metadata={"help": "VCD contrast strength α."})
    beta: float = field(default=0.1, metadata={"help": "VCD plausibility cut-off β."})

    def __post_init__(self):
        if self.name not in DECODINGS:
            raise SeedError(f"--decoding must be one of {', '.join(DECODINGS)}, not {self.name!r}")
        if self.name == "vcd":
            if not self.alpha >= 0:
                raise SeedError(f"--vcd-alpha must be >= 0, not {self.alpha}")
            if not 0 <= self.beta <= 1:
                raise SeedError(f"--vcd-beta must be in [0, 1], not {self.beta}")


# --------------------------------------------------------------------------- identify → purify
@dataclass
class IdentifyConfig:
    """Which signals score the objects of an image, and where a score becomes a flag."""

    signals: tuple[str, ...] = field(default=("self-probe",), metadata={"help": f"Signals that flag hallucinated objects: {', '.join(SIGNALS)}, detector:DIR."})
    tau: float = field(default=0.5, metadata={"help": "Flag a category when its hallucination score h > tau (affirm it when h < 1 - tau)."})
    probe_offset: float = field(default=0.0, metadata={"help": "A self-probe yes-margin below this counts against the object."})
    probe_scale: float = field(default=1.0, metadata={"help": "Yes-margin units that move the self-probe's h from 0.5 to σ(1)."})
    samples: int = field(default=8, metadata={"help": "Sampled captions per image for the consistency signal."})
    lens_temperature: float = field(default=0.1, metadata={"help": "The lens signal's cosine softmax temperature (layer 0)."})
    lens_layers: tuple[int, ...] = field(default=(0,), metadata={"help": "Layers the lens reads image tokens at: 0 = input embeddings (cosine), l ≥ 1 = logit lens of layer l."})
    null_image: str = field(default="none", metadata={"help": f"The contrast signal's null image: {', '.join(NULL_IMAGES)}."})
    questions_per_image: int = field(default=8, metadata={"help": "Most yes/no questions per image: half affirmed objects, as many flagged."})
    categories: tuple[str, ...] | None = field(
        default=None, metadata={"help": "The question/flag pool (default: every lexicon category the tokenizer can spell, in however many tokens)."}
    )
    lexicon: str | None = field(default=None, metadata={"help": "Extra object words, one 'word' or 'word: category' per line."})

    def __post_init__(self) -> None:
        self.signals = tuple(self.signals)
        unknown = [s for s in self.signals if s not in SIGNALS and not s.startswith("detector:")]
        if unknown or not self.signals:
            raise SeedError(f"--identify takes {', '.join(SIGNALS)} or detector:DIR; got {', '.join(unknown) or 'nothing'}")
        missing = next((s for s in self.signals if s.startswith("detector:") and not Path(s.removeprefix("detector:")).is_dir()), None)
        if missing:
            raise SeedError(f"--identify {missing}: no such folder (train one with seed detect train --out DIR)")
        _at_least(1, samples=self.samples)
        _at_least(0, questions_per_image=self.questions_per_image)
        if not 0 <= self.tau <= 1:
            raise SeedError(f"--tau is a hallucination score threshold in [0, 1], not {self.tau}")
        if not (self.probe_scale > 0 and self.lens_temperature > 0 and self.lens_layers and min(self.lens_layers) >= 0):
            raise SeedError(f"--probe-scale and --lens-temperature must be > 0 and --lens-layers ≥ 0, not {self.probe_scale}, {self.lens_temperature}, {self.lens_layers}")
        if self.null_image not in NULL_IMAGES:
            raise SeedError(f"--null-image takes {', '.join(NULL_IMAGES)}, not {self.null_image!r}")
        if self.categories is not None:
            self.categories = tuple(self.categories)


@dataclass
class PurifyConfig:
    """Options of one purification run."""

    identify: IdentifyConfig = field(default_factory=IdentifyConfig)
    repair_beams: int = field(default=4, metadata={"help": "Beams of the purified decoding that repairs captions."})
    top_k: int = field(default=8, metadata={"help": "Stored top-K width."})
    max_new_tokens: int = field(default=128, metadata={"help": "Longest caption the teacher writes (tokens); a caption cut by it is not stored as a target."})
    do_sample: bool = field(default=False, metadata={"help": "Sample the teacher's captions (T=1) instead of greedy decoding."})
    batch_size: int = field(default=16, metadata={"help": "Responses per teacher forward pass."})
    shard_size: int = field(default=32, metadata={"help": "Images per stored shard (the unit of resumption)."})
    seed: int = field(default=0, metadata={"help": "Seed of the sampled signals and captions (shard s uses seed + s)."})

    def __post_init__(self):
        _at_least(1, repair_beams=self.repair_beams, top_k=self.top_k, max_new_tokens=self.max_new_tokens)
        _at_least(1, batch_size=self.batch_size, shard_size=self.shard_size)


# --------------------------------------------------------------------------- distill
@dataclass
class HEAConfig:
    """The adapter's shape: a LoRA on the language model's attention and MLP projections."""

    rank: int = field(default=16, metadata={"help": "LoRA rank of the HEA."})
    alpha: int = field(default=32, metadata={"help": "LoRA alpha of the HEA."})
    dropout: float = field(default=0.0, metadata={"help": "LoRA dropout of the HEA."})
    target_modules: str | None = field(default=None, metadata={"help": "PEFT target_modules regex (default: the family's language-model projections)."})

    def __post_init__(self):
        if self.rank < 1 or self.alpha < 1:
            raise SeedError(f"the HEA's rank and alpha must be at least 1, not {self.rank}, {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise SeedError(f"the HEA's dropout must be in [0, 1), not {self.dropout}")


@dataclass
class DistillConfig:
    """How to train the HEA on one set of purified shards (``max_steps``, optimizer steps,
    overrides ``epochs`` when set)."""

    loss: str = field(
        default="reverse-kl",
        metadata={"help": "reverse-kl (SEED, mode-seeking), forward-kl (mass-covering), jsd (generalized JSD, --beta) or sft (cross-entropy on the repaired responses)."},
    )
    beta: float = field(default=0.5, metadata={"help": "With --loss jsd: 0 → forward KL, 1 → reverse KL."})
    eps: float = field(default=DEFAULT_EPS, metadata={"help": "Floor of p̃ in the reverse KL (keep it ≪ 1/vocabulary)."})
    chunk_size: int | None = field(
        default=None, metadata={"help": "Reverse KL over this many time steps at a time, recomputed in backward (saves memory on large vocabularies)."}
    )
    site_weight: float = field(default=1.0, metadata={"help": "Loss weight of hallucination sites, the tokens purification changed (1 = unweighted)."})
    captions: str = field(
        default="all", metadata={"help": "Captions the adapter trains on: all, repaired (the ones purification changed) or none; answers always."}
    )
    hea: HEAConfig = field(default_factory=HEAConfig)
    lr: float = field(default=2e-4, metadata={"help": "Learning rate of the adapter."})
    lr_scheduler: str = field(default="constant_with_warmup", metadata={"help": f"Learning-rate schedule: {', '.join(SCHEDULERS)}."})
    warmup_steps: int = field(default=0, metadata={"help": "Learning-rate warm-up steps."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0 = off)."})
    epochs: int = field(default=2, metadata={"help": "Passes over each round's purified responses."})
    max_steps: int | None = field(default=None, metadata={"help": "Optimizer steps (overrides --epochs)."})
    batch_size: int = field(default=16, metadata={"help": "Responses per forward pass (per process)."})
    grad_accum: int = field(default=1, metadata={"help": "Batches per optimizer step."})
    mixed_precision: str = field(default="auto", metadata={"help": "auto (bf16 on GPUs that support it, off elsewhere), no, bf16 or fp16."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations in backward (less memory, slower)."})
    seed: int = field(default=0, metadata={"help": "Seed of the adapter's initialisation and the data order."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})
    log_with: str | None = field(
        default=None,
        metadata={"help": f"Log per-step loss and learning rate (and seed evolve's per-round metrics) to {' or '.join(TRACKERS)}, through accelerate's trackers; nothing is logged when unset."},
    )
    logging_dir: str | None = field(default=None, metadata={"help": "Folder of the tracker's files (default: OUT/logs under seed evolve, ./logs otherwise)."})

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise SeedError(f"--loss must be one of {', '.join(LOSSES)}, not {self.loss!r}")
        if self.captions not in CAPTIONS:
            raise SeedError(f"captions must be one of {', '.join(CAPTIONS)}, not {self.captions!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise SeedError(f"mixed precision must be one of {', '.join(MIXED_PRECISION)}, not {self.mixed_precision!r}")
        if self.lr_scheduler not in SCHEDULERS:
            raise SeedError(f"the learning-rate schedule must be one of {', '.join(SCHEDULERS)}, not {self.lr_scheduler!r}")
        _at_least(1, batch_size=self.batch_size, grad_accum=self.grad_accum, epochs=self.epochs, max_steps=self.max_steps)
        if self.chunk_size is not None and self.chunk_size < 1:
            raise SeedError(f"the loss chunk size must be at least 1, not {self.chunk_size}")
        if not self.lr > 0 or not self.eps > 0:
            raise SeedError(f"the learning rate and eps must be > 0, not {self.lr}, {self.eps}")
        if not 0 <= self.beta <= 1:
            raise SeedError(f"--beta must be in [0, 1], not {self.beta}")
        _at_least(0, site_weight=self.site_weight, warmup_steps=self.warmup_steps, weight_decay=self.weight_decay, max_grad_norm=self.max_grad_norm)
        if self.log_with is not None and self.log_with not in TRACKERS:
            raise SeedError(f"--log-with must be {' or '.join(TRACKERS)}, not {self.log_with!r}")


# --------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class PopeConfig:
    """Which POPE questions a model answers, on which images, and how."""

    splits: tuple[str, ...] = field(default=POPE_SPLITS, metadata={"help": f"POPE splits to run, comma-separated: {', '.join(POPE_SPLITS)}."})
    images: str | None = field(default=None, metadata={"help": "Folder holding the image files the questions (or annotations) name."})
    questions: str | None = field(
        default=None,
        metadata={
            "help": "Question file (JSON Lines or JSON array; '{split}' in the path stands for each split) or a shipped "
            "name (random, popular, adversarial, random.v2023-08). Default: the shipped COCO split(s) with --model or --answers; "
            "the embedded world's when its model runs (no --model)."
        },
    )
    annotations: str | None = field(
        default=None, metadata={"help": "COCO-format instances JSON: build the questions from it (as build-pope does, seeded by --build-seed)."}
    )
    num_images: int = field(default=500, metadata={"help": "With --annotations: images to sample per split (6 questions each)."})
    build_seed: int = field(default=0, metadata={"help": "With --annotations: the question-building seed."})
    protocol: str = field(
        default="greedy",
        metadata={
            "help": "greedy: question + '\\nAnswer the question using a single word or phrase.', greedy decoding; "
            "sampling: question + ' Please answer this question with one word.', T=1, top_p=1, one run per --seeds."
        },
    )
    seeds: tuple[int, ...] | None = field(
        default=None, metadata={"help": "Sampling seeds, comma-separated (default 1,2,3); metrics are the mean with the std over seeds."}
    )
    parser: str = field(
        default="official",
        metadata={"help": "official (RUCAIBox/POPE rule: any word No/no/not → no, else yes) or strict (unparsed answers counted and scored wrong)."},
    )
    batch_size: int = field(default=32, metadata={"help": "Questions per forward pass or generate call."})
    max_new_tokens: int = field(default=32, metadata={"help": "Longest answer generated."})

    def __post_init__(self):
        object.__setattr__(self, "splits", tuple(self.splits))
        if not self.splits or any(s not in POPE_SPLITS for s in self.splits):
            raise SeedError(f"--splits takes {', '.join(POPE_SPLITS)}; got {', '.join(self.splits) or 'nothing'}")
        if self.protocol not in PROTOCOLS:
            raise SeedError(f"--protocol must be greedy or sampling, not {self.protocol!r}")
        if self.parser not in PARSERS:
            raise SeedError(f"unknown parser {self.parser!r}: choose {' or '.join(PARSERS)}")
        _at_least(1, batch_size=self.batch_size, max_new_tokens=self.max_new_tokens, num_images=self.num_images)
        if self.protocol == "greedy" and self.seeds is not None:
            raise SeedError("--seeds applies to --protocol sampling only (greedy decoding has no randomness)")
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise SeedError("--seeds must list distinct integers, e.g. 1,2,3")
        if self.questions is not None and self.annotations is not None:
            raise SeedError("give either --questions or --annotations (to build the questions), not both")
        if self.questions is not None and len(self.splits) > 1 and "{split}" not in self.questions:
            raise SeedError("--questions gives one split; for several put {split} in its path, or use --annotations")

    def run_seeds(self) -> list[int | None]:
        """One run per sampling seed; one unseeded run for greedy decoding."""
        return list(self.seeds or DEFAULT_SEEDS) if self.protocol == "sampling" else [None]


@dataclass(frozen=True)
class ChairConfig:
    """Which annotated images a model captions for CHAIR, and how they are scored."""

    images: str | None = field(default=None, metadata={"help": "Folder holding the annotated image files."})
    annotations: str | None = field(default=None, metadata={"help": "COCO-format instances JSON: the ground-truth objects of each image."})
    ref_captions: str | None = field(default=None, metadata={"help": "COCO captions JSON: objects named in the reference captions also count as present."})
    lexicon: str | None = field(default=None, metadata={"help": "Extra object words, one 'word' or 'word: category' per line, added to COCO's 80 categories."})
    num_images: int = field(default=500, metadata={"help": "Annotated images to caption, sampled with --image-seed (all if fewer)."})
    image_seed: int = field(default=0, metadata={"help": "Seed of the image sample."})
    batch_size: int = field(default=8, metadata={"help": "Images per generate call."})
    max_new_tokens: int = field(default=128, metadata={"help": "Longest caption generated."})

    def __post_init__(self):
        _at_least(1, batch_size=self.batch_size, max_new_tokens=self.max_new_tokens, num_images=self.num_images)


# --------------------------------------------------------------------------- evolve
@dataclass
class EvolveConfig:
    """One self-evolution run: purification and distillation options, where the data comes from,
    and how rounds are kept.

    Purification uses ``images`` (default: the embedded world's purify split; ``annotations`` only
    feed the ``oracle`` signal); evaluation uses ``eval_images`` + ``eval_annotations`` (default:
    the world's test split and its POPE files; otherwise POPE is built from the annotations
    with ``pope_images`` images per split), reported once per round. Rounds are chosen on a
    validation set (``val_images`` + ``val_annotations``, default the world's val split), never on
    the reported one: by ``selection_split`` F1, rounds whose yes-ratio lies inside ``yes_ratio``
    and whose caption object recall keeps ``min_recall`` of the base's first (fewer objects named
    hides hallucination, method.md). ``select="last"`` keeps the last round without labels.
    """

    rounds: int = field(default=2, metadata={"help": "Most purify → distil → evaluate rounds."})
    distill: DistillConfig = field(default_factory=DistillConfig)
    purify: PurifyConfig = field(default_factory=PurifyConfig)
    images: str | None = field(default=None, metadata={"help": "Unlabelled images to purify (required with --model; default: the world's purify split)."})
    annotations: str | None = field(default=None, metadata={"help": "COCO instances of --images; only the oracle signal reads them."})
    eval_images: str | None = field(default=None, metadata={"help": "Held-out images for POPE and CHAIR (required with --model)."})
    eval_annotations: str | None = field(
        default=None, metadata={"help": "COCO instances of --eval-images: POPE is built from them, CHAIR scored against them."}
    )
    pope_images: int = field(default=500, metadata={"help": "With --eval-annotations: images per POPE split (6 questions each)."})
    chair_images: int = field(default=500, metadata={"help": "Images captioned for CHAIR."})
    val_images: str | None = field(default=None, metadata={"help": "Validation images that choose the round to keep (default: the world's val split)."})
    val_annotations: str | None = field(default=None, metadata={"help": "COCO instances of --val-images (POPE is built from them, CHAIR scored against them)."})
    select: str = field(default="val", metadata={"help": "How the kept round is chosen: val (by the validation set) or last (label-free: the last round)."})
    world: str | None = field(default=None, metadata={"help": "A built world folder to run on (its model, purify, val and test splits; default: the default world)."})
    selection_split: str = field(default="adversarial", metadata={"help": f"The POPE split whose validation F1 ranks the rounds: {', '.join(POPE_SPLITS)}."})
    patience: int = field(default=1, metadata={"help": "Stop after this many rounds without a better selection F1."})
    yes_ratio: tuple[float, float] = field(
        default=(0.40, 0.60), metadata={"help": "Yes-ratio window: rounds inside it rank first; a round moving away from it stops the run."}
    )
    min_recall: float = field(
        default=0.9, metadata={"help": "Stop when caption object recall falls below this share of the base's; such rounds are kept last."}
    )
    eval_batch_size: int = field(default=32, metadata={"help": "Questions per forward pass when evaluating."})

    def __post_init__(self):
        _at_least(1, rounds=self.rounds, patience=self.patience, pope_images=self.pope_images, chair_images=self.chair_images)
        _at_least(1, eval_batch_size=self.eval_batch_size)
        if not 0 <= self.min_recall <= 1:
            raise SeedError(f"--min-recall is a share of the base's recall in [0, 1], not {self.min_recall}")
        if self.select not in ("val", "last") or (self.val_images is None) != (self.val_annotations is None):
            raise SeedError(f"--select is val or last (not {self.select!r}); --val-images and --val-annotations go together")
        if self.selection_split not in POPE_SPLITS:
            raise SeedError(f"the selection split must be one of {', '.join(POPE_SPLITS)}, not {self.selection_split!r}")
        lo, hi = self.yes_ratio
        if not 0 <= lo < hi <= 1:
            raise SeedError(f"the yes-ratio window must satisfy 0 <= low < high <= 1, not {self.yes_ratio}")
        self.yes_ratio = (float(lo), float(hi))


# --------------------------------------------------------------------------- report
@dataclass(frozen=True)
class ReportConfig:
    """What ``seed report`` shows besides the run folder's own files."""

    images: str | None = field(
        default=None, metadata={"help": "Folder of the purified images (default: the one the run names, or the embedded world's purify split)."}
    )
    annotations: str | None = field(
        default=None,
        metadata={"help": "COCO instances of those images: identification is scored against them (default: the run's, or the world's)."},
    )
    examples: int = field(default=24, metadata={"help": "Purified examples in the gallery."})
    thumbnail: int = field(default=192, metadata={"help": "Longest side of the gallery's thumbnails, in pixels."})

    def __post_init__(self):
        if self.examples < 0 or self.thumbnail < 16:
            raise SeedError("--examples must be at least 0 and --thumbnail at least 16 pixels")


# --------------------------------------------------------------------------- detect
@dataclass
class DetectConfig:
    """How ``seed detect`` judges the objects a caption names."""

    identify: IdentifyConfig = field(default_factory=IdentifyConfig)
    batch_size: int = field(default=16, metadata={"help": "Captions per batch."})
    max_new_tokens: int = field(default=128, metadata={"help": "Longest sampled caption (the consistency signal)."})

    def __post_init__(self):
        if "oracle" in self.identify.signals:
            raise SeedError("seed detect judges captions without labels: --identify oracle is what --annotations scores against")
        _at_least(1, batch_size=self.batch_size, max_new_tokens=self.max_new_tokens)


@dataclass
class DetectorConfig:
    """``seed detect train``: a one-pass detector distilled from the multi-signal identification."""

    teacher: IdentifyConfig = field(
        default_factory=lambda: IdentifyConfig(signals=("self-probe", "lens", "consistency", "evidence")),
        metadata={"help": "The identification the detector learns from (its signals, pool, τ)."},
    )
    layer: int | None = field(default=None, metadata={"help": "Hidden-state layer the head reads (default: the middle of the language model)."})
    images: int = field(default=1000, metadata={"help": "Unlabelled images to learn from (at most)."})
    coarse_steps: int = field(default=1000, metadata={"help": "Steps on the teacher's image-level object scores."})
    fine_steps: int = field(default=1000, metadata={"help": "Steps on the teacher's scores of the objects the model's own captions name."})
    lr: float = field(default=1e-3, metadata={"help": "Learning rate of the head."})
    batch_size: int = field(default=16, metadata={"help": "Images per teacher batch."})
    max_new_tokens: int = field(default=128, metadata={"help": "Longest caption the model writes for the fine stage."})
    seed: int = field(default=0, metadata={"help": "Seed of the head's initialisation and the sampled signals."})

    def __post_init__(self):
        if "oracle" in self.teacher.signals:
            raise SeedError("the detector learns from the model's own signals, without labels: the teacher cannot be the oracle")
        if min(self.images, self.batch_size, self.max_new_tokens) < 1 or min(self.coarse_steps, self.fine_steps) < 0 or not self.lr > 0:
            raise SeedError("--images, --batch-size and --max-new-tokens must be at least 1, the step counts at least 0, --lr > 0")
