"""POPE throughput: one question at a time through ``vlm.generate`` vs the runner's fast path.

Both run greedy on the same model, questions and (pre-loaded) images in one process; the
script prints questions/s of each, the speed ratio, and how often the two agree (parsed with
the official rule, and as exact text).

    python benchmarks/pope_speed.py                          # embedded world model, its random split
    python benchmarks/pope_speed.py --world /tmp/small-world # another world folder
    python benchmarks/pope_speed.py --model llava-1.5 --images val2014/ --questions random
    python benchmarks/pope_speed.py --random-7b --device cuda --dtype bfloat16

``--random-7b`` builds a randomly initialised model with llava-1.5-7b's published sizes
(CLIP ViT-L/14 at 336 px, 576 image tokens, Vicuna/Llama-2-7B language model) and a
word-level tokenizer built offline; nothing is downloaded. Its language-model head is steered
so that it answers "Yes" or "No" and stops, like a real POPE model, since a
random model's babble would send every question to generation and measure nothing of the
fast path (see ``_steer_to_short_answers``). Images are random 640×480 pictures, six questions each.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from seed.evaluation import pope
from seed.evaluation.yes_no import answer_yes_no
from seed.io import check_images, open_image
from seed.prompts import object_question

# llava-hf/llava-1.5-7b-hf config.json
LLAVA_7B = {
    "vision": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768),
    "text": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5, vocab_size=32064),
}  # fmt: skip


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def random_llava_7b(device: str, dtype: str | None):
    """A random LLaVA-1.5-7B-sized VisionLanguageModel (see the module docstring)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from seed.adapters.llava import LlavaVLM
    from seed.io import resolve_device
    from seed.world.model import TinyLlavaConfig, build_processor
    from seed.world.scenes import world_vocabulary

    device = resolve_device(device)
    torch_dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    processor = build_processor(world_vocabulary(), TinyLlavaConfig(image_size=336, patch_size=14))
    tok = processor.tokenizer
    text = LlamaConfig(**LLAVA_7B["text"], bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**LLAVA_7B["vision"]),
        text_config=text,
        image_token_index=processor.image_token_id,
        image_seq_length=576,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        projector_hidden_act="gelu",
    )
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype)
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(default)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    _steer_to_short_answers(model, tok)
    return LlavaVLM(model, processor, tok, name_or_path="random-llava-1.5-7b", device=device, dtype=torch_dtype)


@torch.no_grad()
def _steer_to_short_answers(model, tok) -> None:
    """Make a random model answer "Yes" or "No" and then stop, as a POPE model does.

    Orthonormal directions a, u, r_yes, r_no: the prompt's last token (":" of "ASSISTANT:")
    embeds far along a, which the Yes and No head rows both read, so one of them comes first;
    which one depends on the context through r_yes − r_no. Yes and No embed far along u,
    which only the EOS row reads. Every other head row is zero.
    """
    ids = {w: tok.convert_tokens_to_ids(w) for w in ("Yes", "No", ":", tok.eos_token)}
    head, embed = model.lm_head.weight, model.get_input_embeddings().weight
    generator = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(head.shape[1], 4, generator=generator))
    a, u, r_yes, r_no = basis.T
    head.zero_()
    head[ids["Yes"]] = (8 * (a + r_yes)).to(head)
    head[ids["No"]] = (8 * (a + r_no)).to(head)
    head[ids[tok.eos_token]] = (8 * u).to(head)
    embed[ids[":"]] = (50 * a).to(embed)
    embed[ids["Yes"]] = embed[ids["No"]] = (50 * u).to(embed)


def random_questions(n: int, seed: int = 0) -> tuple[list[dict], dict[str, Image.Image]]:
    """``n`` POPE-style questions over random 640×480 images, six per image."""
    from seed.world.vocab import CLASS_NAMES

    rng = np.random.default_rng(seed)
    images, questions = {}, []
    for i in range(-(-n // 6)):
        name = f"random_{i:04d}.jpg"
        images[name] = Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
        for j, category in enumerate(rng.choice(CLASS_NAMES, 6, replace=False)):
            questions.append({"question_id": len(questions) + 1, "image": name, "text": object_question(str(category)), "label": "yes" if j % 2 == 0 else "no"})
    return questions[:n], images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="model to load (alias, hub id, folder); default: the embedded world's")
    ap.add_argument("--world", type=Path, help="world folder to use instead of the default world (its model, random split, images)")
    ap.add_argument("--images", type=Path, help="image folder (with --model)")
    ap.add_argument("--questions", default="random", help="question file or shipped split (with --model; default: COCO random)")
    ap.add_argument("--random-7b", action="store_true", help="random LLaVA-1.5-7B-sized model, random images (throughput only)")
    ap.add_argument("--num-questions", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=32, help="questions per fast-path forward")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--threads", type=int, help="torch CPU threads (1 keeps CPU timings steady on a shared machine)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.random_7b:
        vlm = random_llava_7b(args.device, args.dtype)
        questions, loaded = random_questions(args.num_questions)
        images = [loaded[q["image"]] for q in questions]
    else:
        from seed.adapters import load

        if args.model is None:
            from seed.world import World

            world = World(args.world) if args.world else World.default()
            model, qfile, folder = str(world.model), world.pope_questions.format(split="random"), world.images(world.eval_split)
        else:
            if args.images is None:
                ap.error("--model needs --images")
            model, qfile, folder = args.model, args.questions, args.images
        questions = pope.load_questions(qfile).questions[: args.num_questions]
        check_images(folder, [q["image"] for q in questions])
        vlm = load(model, device=args.device, dtype=args.dtype)
        cache = {name: open_image(folder / name) for name in dict.fromkeys(q["image"] for q in questions)}
        images = [cache[q["image"]] for q in questions]
    prompts = [pope.pope_prompt(q["text"], "greedy") for q in questions]
    keys = [q["image"] for q in questions]
    device = str(vlm.device)
    print(f"{vlm!r}\n{len(questions)} questions over {len(set(keys))} images, max_new_tokens {args.max_new_tokens}")

    # Warm-up (kernels, allocator) outside the timings.
    vlm.generate(images[:1], prompts[:1], max_new_tokens=2)
    answer_yes_no(vlm, images[:2], prompts[:2], image_keys=keys[:2], batch_size=2, max_new_tokens=2)

    _sync(device)
    start = time.perf_counter()
    reference = [vlm.generate([im], [p], max_new_tokens=args.max_new_tokens)[0] for im, p in zip(images, prompts)]
    _sync(device)
    t_ref = time.perf_counter() - start

    start = time.perf_counter()
    fast, settled = answer_yes_no(
        vlm, images, prompts, image_keys=keys, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens
    )
    _sync(device)
    t_fast = time.perf_counter() - start

    n = len(questions)
    parsed = sum(pope.parse_answer(a) == pope.parse_answer(b) for a, b in zip(reference, fast))
    exact = sum(a == b for a, b in zip(reference, fast))
    print(f"reference (one at a time, generate): {n / t_ref:8.1f} questions/s ({t_ref:.1f} s)")
    print(f"fast path (batch {args.batch_size}):              {n / t_fast:8.1f} questions/s ({t_fast:.1f} s)")
    print(f"speed ratio: {t_ref / t_fast:.1f}x")
    print(f"settled by one forward: {sum(settled)}/{n}; generated: {n - sum(settled)}")
    print(f"agreement: parsed {parsed}/{n} ({100 * parsed / n:.2f} %), exact text {exact}/{n} ({100 * exact / n:.2f} %)")
    for a, b, q in zip(reference, fast, questions):
        if pope.parse_answer(a) != pope.parse_answer(b):
            print(f"  differs on question {q['question_id']}: reference {a!r}, fast {b!r}")


if __name__ == "__main__":
    main()
