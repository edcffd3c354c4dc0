"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

# --------------------------------------------------------------------------- tiny models
# Randomly initialised LLaVA and InternVL checkpoints (well under 1 M parameters each), built
# offline and saved the way real checkpoints are, so tests load them through seed.adapters.load.

TINY_WORDS = [
    "USER", "ASSISTANT", "user", "assistant", ":", "?", ".", ",",
    "a", "an", "the", "is", "there", "in", "image", "yes", "no", "Yes", "No", "describe", "and", "with", "of",
    "dog", "cat", "cup", "spoon", "knife", "fork", "car", "truck", "red", "blue", "green",
]  # fmt: skip

INTERNVL_SPECIAL = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]

# ChatML with InternVL's image placeholder (expanded by the processor into <img>…</img>).
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<IMG_CONTEXT>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_llava(out_dir: Path, seed: int = 0) -> Path:
    from seed.world.model import TinyLlavaConfig, build_model, build_processor

    # Smaller than the world's model: 16 image tokens keep the tests quick.
    sizes = TinyLlavaConfig(image_size=32, patch_size=8, vision_hidden=32, text_hidden=64, text_layers=2, text_intermediate=128)
    torch.manual_seed(seed)
    processor = build_processor(TINY_WORDS, sizes)
    build_model(processor, sizes).save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def build_tiny_internvl(out_dir: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        GotOcr2ImageProcessorPil,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLVisionConfig,
        PreTrainedTokenizerFast,
        Qwen2Config,
    )

    from seed.adapters.internvl import InternVLVLM, build_internvl_processor

    vocab = {tok: i for i, tok in enumerate(INTERNVL_SPECIAL)}
    for w in TINY_WORDS:
        vocab.setdefault(w, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.add_special_tokens(INTERNVL_SPECIAL)  # kept whole, not split by the pre-tokenizer
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
        padding_side="left",
    )
    # 32-px tiles of 8-px patches, pixel-shuffled by 0.5: 4 image tokens per tile; ≤ 4 tiles + thumbnail.
    image_processor = GotOcr2ImageProcessorPil(size={"height": 32, "width": 32}, crop_to_patches=True, max_patches=4)
    processor = build_internvl_processor(image_processor, tokenizer, image_seq_length=4, chat_template=INTERNVL_CHAT_TEMPLATE)
    config = InternVLConfig(
        vision_config=InternVLVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
        ),
        text_config=Qwen2Config(
            vocab_size=len(vocab),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            tie_word_embeddings=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_id=tokenizer.context_image_token_id,
        image_seq_length=4,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = InternVLForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    InternVLVLM(model, processor, tokenizer, name_or_path=str(out_dir), device="cpu", dtype=torch.float32).save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def tiny_llava_dir(tmp_path_factory) -> Path:
    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture(scope="module")
def tiny_internvl_dir(tmp_path_factory) -> Path:
    return build_tiny_internvl(tmp_path_factory.mktemp("tiny-internvl"))


@pytest.fixture(scope="module")
def tiny_images() -> list[Image.Image]:
    """Two distinct images of different sizes and aspect ratios."""
    first = Image.new("RGB", (64, 64), (200, 30, 30))
    first.paste((30, 30, 220), (16, 16, 48, 48))
    second = Image.new("RGB", (96, 48), (20, 160, 40))
    second.paste((240, 240, 20), (60, 8, 90, 40))
    return [first, second]


@pytest.fixture(scope="session")
def llava15_dir(tmp_path_factory) -> Path:
    """A llava-1.5-shaped checkpoint with a Llama-style subword tokenizer, taught three captions."""
    from subword_models import build_llava15_like

    return build_llava15_like(tmp_path_factory.mktemp("llava15"))


@pytest.fixture(scope="session")
def internvl_bpe_dir(tmp_path_factory) -> Path:
    """A native InternVL-hf checkpoint with a Qwen2-style byte-level BPE tokenizer, taught three captions."""
    from subword_models import build_internvl_bpe

    return build_internvl_bpe(tmp_path_factory.mktemp("internvl-bpe"))


# --------------------------------------------------------------------------- trackers
@pytest.fixture
def tensorboard_scalars():
    """Reads back what a TensorBoard run folder holds: tag → [(step, value)], as TensorBoard does."""

    def read(folder: Path) -> dict[str, list[tuple[int, float]]]:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(folder))
        events.Reload()
        return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}

    return read


@pytest.fixture(scope="session")
def internvl2_remote_dir(tmp_path_factory) -> Path:
    """A remote-code InternVL2 checkpoint (its modelling code in the folder), taught three captions."""
    from remote_internvl2 import build_internvl2_remote

    return build_internvl2_remote(tmp_path_factory.mktemp("internvl2-remote"))
