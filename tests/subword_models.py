"""Tiny checkpoints laid out like the real ones, with trained subword tokenizers, built offline in
seconds: a llava-1.5-shaped LLaVA (Llama-style sentencepiece BPE with byte fallback, 336 px,
576 image tokens, ``vision_feature_select_strategy="default"``, llava-1.5's chat template) and a
native InternVL-hf one (Qwen2-style byte-level BPE, ChatML, tiles). Object names split into
several tokens in both, as they do in every real tokenizer ("▁gira|ffe", "▁h|ot|▁dog").

Each model is trained for a few seconds to describe any image with one of ``CAPTIONS``, so that
its captions name objects — many of them absent from a test's annotations.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from seed.prompts import CAPTION_PROMPT, SHORT_ANSWER_SUFFIX, object_question

OBJECTS = ["giraffe", "hot dog", "teddy bear", "snowboard", "broccoli", "dining table", "dog", "cup", "stop sign", "bus"]
CAPTIONS = [
    "There is a giraffe, a hot dog and a teddy bear in the image.",
    "The image shows a snowboard next to a dog and a bus.",
    "A dining table with broccoli, a cup and a stop sign.",
]
# Image i shows only the first object its caption names: the others are hallucinated. The model is
# also taught, less often, the caption that stops there: the grounded answer is in its distribution,
# second to the hallucinating one, as in a real LVLM.
SHOWN = [["giraffe"], ["snowboard"], ["dining table"]]
GROUNDED = ["There is a giraffe.", "The image shows a snowboard.", "A dining table."]
LLAVA15_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}"
    "{{ item['text'] }}{% endif %}{% endfor %}{% if message['role'] == 'user' %} {% else %}{{ eos_token }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def corpus() -> list[str]:
    """The text both tokenizers learn from, weighted as real ones are: the ordinary words of the
    captions, questions and prompts often (they become whole tokens), object names rarely (they
    split into pieces), and words that share a name's first piece ("▁gir|l", "▁snow")."""
    lines = [*CAPTIONS, *(object_question(o) + SHORT_ANSWER_SUFFIX for o in OBJECTS), CAPTION_PROMPT]
    names = {w for o in OBJECTS for w in o.split()}
    ordinary = [w for line in lines for w in re.findall(r"[A-Za-z]+", line) if w.lower() not in names]
    more = ["girl", "snow", "she", "hence", "football", "hotel", "an", "yes", "no", "Yes", "No", "bears", "dogs", "cups"]
    return [" ".join(ordinary + more)] * 10 + CAPTIONS * 2 + lines


def llama_tokenizer(vocab_size: int = 160):
    """Llama-style: sentencepiece-like BPE over "▁"-marked words, byte fallback, <s> prepended."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    core = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    core.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(content=" ", left=1)]
    )
    bytes_ = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size + 256, special_tokens=specials + bytes_, show_progress=False)
    core.train_from_iterator(corpus(), trainer)  # pieces never span two words, as in sentencepiece
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)  # as llama's tokenizer.json
    return LlamaTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        add_bos_token=True, add_eos_token=False, extra_special_tokens={"image_token": "<image>"}, padding_side="left",
    )  # fmt: skip


def qwen2_tokenizer(specials: list[str], vocab_size: int = 130):
    """Qwen2-style byte-level BPE (no unknown token), ChatML's special tokens kept whole."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size + 256, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    core.train_from_iterator(corpus(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<pad>", padding_side="left",
        extra_special_tokens={"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"},
    )  # fmt: skip


def build_llava15_like(out_dir: Path, steps: int = 120) -> Path:
    """A llava-1.5-shaped tiny LLaVA that says one of ``CAPTIONS`` (image-dependent) when asked to describe."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    from seed.adapters.llava import LlavaVLM

    tok = llama_tokenizer()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, do_center_crop=True, do_convert_rgb=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
    )  # fmt: skip
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
        chat_template=LLAVA15_TEMPLATE, num_additional_image_tokens=1,
    )  # fmt: skip
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=336, patch_size=14)
    text = LlamaConfig(
        vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=1024, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"), image_seq_length=576,
        vision_feature_select_strategy="default", vision_feature_layer=-2, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = tok.eos_token_id, tok.pad_token_id
    vlm = LlavaVLM(model, processor, tok, name_or_path=str(out_dir), device="cpu", dtype=torch.float32)
    teach_captions(vlm, steps)
    vlm.save_pretrained(out_dir)
    return out_dir


def build_internvl_bpe(out_dir: Path, steps: int = 60) -> Path:
    """A native InternVL-hf tiny model with a Qwen2-style byte-level BPE tokenizer, taught ``CAPTIONS``."""
    from transformers import GotOcr2ImageProcessorPil, InternVLConfig, InternVLForConditionalGeneration, InternVLVisionConfig, Qwen2Config

    from seed.adapters.internvl import InternVLVLM, build_internvl_processor

    specials = ["<pad>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
    tok = qwen2_tokenizer(specials)
    template = (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% for item in message['content'] %}"
        "{% if item['type'] == 'image' %}<IMG_CONTEXT>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
        "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    image_processor = GotOcr2ImageProcessorPil(size={"height": 32, "width": 32}, crop_to_patches=True, max_patches=4)
    processor = build_internvl_processor(image_processor, tok, image_seq_length=4, chat_template=template)
    config = InternVLConfig(
        vision_config=InternVLVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8),
        text_config=Qwen2Config(
            vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=512, tie_word_embeddings=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        ),
        image_token_id=tok.context_image_token_id, image_seq_length=4, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = InternVLForConditionalGeneration(config)
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = tok.eos_token_id, tok.pad_token_id
    vlm = InternVLVLM(model, processor, tok, name_or_path=str(out_dir), device="cpu", dtype=torch.float32)
    teach_captions(vlm, steps)
    vlm.save_pretrained(out_dir)
    return out_dir


def caption_images():
    """Three plain images, one per caption (by colour), at a real photo size."""
    from PIL import Image

    return [Image.new("RGB", (640, 480), colour) for colour in ((200, 40, 40), (40, 200, 40), (40, 40, 200))]


def caption_lessons() -> tuple[list, list[str], list[str], list[float]]:
    """(images, prompts, responses, weights): image i → ``CAPTIONS[i]`` (weight 3) and
    ``GROUNDED[i]`` (1), "Yes" to its shown object and "No" to an object its caption does not name."""
    images = caption_images()
    lessons = []
    for i, caption in enumerate(CAPTIONS):
        absent = [o for o in OBJECTS if o not in caption]
        lessons += [(images[i], CAPTION_PROMPT, caption, 3.0), (images[i], CAPTION_PROMPT, GROUNDED[i], 1.0)]
        lessons += [(images[i], object_question(SHOWN[i][0]) + SHORT_ANSWER_SUFFIX, "Yes", 1.0)]
        lessons += [(images[i], object_question(absent[i]) + SHORT_ANSWER_SUFFIX, "No", 1.0)]
    return tuple(map(list, zip(*lessons)))


def teach_captions(vlm, steps: int) -> None:
    """Full-batch Adam steps on :func:`caption_lessons`, the batch encoded once."""
    images, prompts, responses, weights = caption_lessons()
    batch = vlm.encode(images, prompts, responses)
    mask = batch.pop("response_mask")[:, 1:]
    targets = batch["input_ids"][:, 1:][mask]
    weights = torch.tensor(weights)[:, None].expand_as(mask)[mask]
    optimizer = torch.optim.Adam(vlm.model.parameters(), lr=1e-2)
    vlm.model.train()
    for _ in range(steps):
        losses = torch.nn.functional.cross_entropy(vlm.model(**batch).logits[:, :-1][mask], targets, reduction="none")
        loss = (losses * weights).sum() / weights.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    vlm.model.eval()
