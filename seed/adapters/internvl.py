"""InternVL: native transformers checkpoints and the remote-code InternVL2 series.

* ``InternVLVLM`` — ``InternVLForConditionalGeneration`` (``OpenGVLab/InternVL3-*-hf`` and other
  ``model_type: internvl`` conversions), ChatML template with ``<IMG_CONTEXT>`` placeholders.
  transformers 5.23 cannot build ``InternVLProcessor`` without torchvision (its video-processor
  class check fails, and ``AutoProcessor`` then silently hands back the bare tokenizer), so the
  processor is assembled here from its image processor and tokenizer, video support left out.
* ``InternVL2RemoteVLM`` — ``OpenGVLab/InternVL2-*`` with the repository's own modelling code
  (``trust_remote_code=True``). Tested on a tiny checkpoint shipping stub modelling code with
  InternVL2's interface (tests/remote_internvl2.py), not on a real one (none can be downloaded in
  our test environment). It reimplements the repository's dynamic tiling (tile size, most tiles
  and thumbnail from the checkpoint's config.json) and uses the tokenizer's
  own chat template (ChatML when it has none) with no system prompt, whereas the repository's
  ``chat()`` adds its own system prompt; numbers may therefore differ a little from ``chat()``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from seed.adapters.base import VisionLanguageModel, check_processor
from seed.errors import SeedError

INTERNVL_TOKENS = ("start_image_token", "end_image_token", "context_image_token")


def _optional_file(path: str, filename: str) -> str | None:
    """Local path of ``filename`` in a model folder or hub repo, or None when it has none."""
    from transformers.utils import cached_file

    return cached_file(path, filename, _raise_exceptions_for_missing_entries=False)


def _image_only_processor_class():
    from transformers import InternVLProcessor

    class ImageOnlyInternVLProcessor(InternVLProcessor):
        """``InternVLProcessor`` with ``video_processor=None`` accepted (no torchvision needed)."""

        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    return ImageOnlyInternVLProcessor


def build_internvl_processor(image_processor, tokenizer, *, image_seq_length: int, chat_template: str | None):
    """An InternVL processor for images and text; the tokenizer must know InternVL's image tokens."""
    missing = [t for t in INTERNVL_TOKENS if getattr(tokenizer, t, None) is None]
    if missing:
        raise SeedError(
            f"the tokenizer does not define InternVL's {', '.join(missing)} "
            "(tokenizer_config.json extra_special_tokens); is this an InternVL checkpoint?"
        )
    tokenizer.padding_side = "left"
    return _image_only_processor_class()(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=None,
        image_seq_length=image_seq_length,
        chat_template=chat_template,
    )


class InternVLVLM(VisionLanguageModel):
    family = "internvl"
    response_separator = ""  # ChatML's generation prompt ends in a newline

    @classmethod
    def from_pretrained(cls, path: str, *, device: str, dtype: torch.dtype, quantization_config=None) -> InternVLVLM:
        from transformers import AutoImageProcessor, AutoTokenizer, InternVLForConditionalGeneration

        if quantization_config is None:
            model = InternVLForConditionalGeneration.from_pretrained(path, dtype=dtype, use_safetensors=True).to(device)
        else:
            model = InternVLForConditionalGeneration.from_pretrained(
                path, dtype=dtype, quantization_config=quantization_config, device_map={"": device}, use_safetensors=True
            )
        processor_config = {}
        if (file := _optional_file(path, "processor_config.json")) is not None:
            processor_config = json.loads(Path(file).read_text(encoding="utf-8"))
        chat_template = processor_config.get("chat_template")
        if (file := _optional_file(path, "chat_template.jinja")) is not None:
            chat_template = Path(file).read_text(encoding="utf-8")
        tokenizer = AutoTokenizer.from_pretrained(path)
        processor = build_internvl_processor(
            AutoImageProcessor.from_pretrained(path),
            tokenizer,
            image_seq_length=processor_config.get("image_seq_length", model.config.image_seq_length),
            chat_template=chat_template or tokenizer.chat_template,
        )
        check_processor(processor, path)
        if processor.chat_template is None:
            raise SeedError(f"{path}: no chat template (chat_template.jinja or the tokenizer's)")
        return cls(model, processor, tokenizer, name_or_path=path, device=device, dtype=dtype)

    def _save_processor(self, out_dir: Path) -> None:
        """Image processor, tokenizer, chat template and processor_config.json, written part by part
        because ``InternVLProcessor.save_pretrained`` needs the video processor we leave out."""
        from seed.io import atomic_write_text, write_json

        self.processor.image_processor.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)
        atomic_write_text(out_dir / "chat_template.jinja", self.processor.chat_template)
        write_json(
            out_dir / "processor_config.json",
            {"image_seq_length": self.processor.image_seq_length, "processor_class": "InternVLProcessor"},
        )


# ---------------------------------------------------------------------- remote code
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tile_image(image: Image.Image, tile: int = 448, max_tiles: int = 12, thumbnail: bool = True) -> list[Image.Image]:
    """InternVL2's dynamic resolution: the grid (≤ max_tiles tiles) closest to the image's aspect
    ratio, the image resized onto it and cut into ``tile``-px squares, plus (with ``thumbnail``) a
    whole-image thumbnail when there is more than one tile."""
    w, h = image.size
    grids = sorted(
        {(c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1) if c * r <= max_tiles},
        key=lambda g: g[0] * g[1],
    )
    # Closest aspect ratio; on a tie prefer more tiles while they are not much larger than the image.
    best, best_diff = (1, 1), float("inf")
    for c, r in grids:
        diff = abs(w / h - c / r)
        if diff < best_diff or (diff == best_diff and w * h > 0.5 * tile * tile * c * r):
            best, best_diff = (c, r), diff
    c, r = best
    resized = image.convert("RGB").resize((c * tile, r * tile), Image.BICUBIC)
    tiles = [resized.crop((x * tile, y * tile, (x + 1) * tile, (y + 1) * tile)) for y in range(r) for x in range(c)]
    if thumbnail and len(tiles) > 1:
        tiles.append(image.convert("RGB").resize((tile, tile), Image.BICUBIC))
    return tiles


class InternVL2RemoteVLM(VisionLanguageModel):
    """``OpenGVLab/InternVL2-*`` through its own remote code. ``processor`` is the tokenizer: the
    repository ships its image preprocessing as code, reimplemented in :func:`tile_image`."""

    family = "internvl2"
    response_separator = ""
    language_layers = r"language_model\.model\.layers\.\d+"
    # Qwen2/Llama (1B), InternLM2 (2B, 8B, 26B), Phi-3 (4B) layer layouts.
    projections = (
        r"self_attn\.(?:[qkvo]_proj|qkv_proj)",
        r"mlp\.(?:gate|up|down|gate_up)_proj",
        r"attention\.(?:wqkv|wo)",
        r"feed_forward\.w[123]",
    )
    unquantized_modules = ("vision_model", "mlp1", "language_model.output", "language_model.lm_head")

    @classmethod
    def from_pretrained(cls, path: str, *, device: str, dtype: torch.dtype, quantization_config=None) -> InternVL2RemoteVLM:
        from transformers import AutoModel, AutoTokenizer

        kwargs = {"dtype": dtype, "trust_remote_code": True, "low_cpu_mem_usage": True, "use_safetensors": True}
        if quantization_config is not None:
            kwargs.update(quantization_config=quantization_config, device_map={"": device})
        model = AutoModel.from_pretrained(path, **kwargs)
        if quantization_config is None:
            model = model.to(device)
        if getattr(model, "generation_config", None) is None:
            # transformers adds GenerationMixin (and with it a generation_config) to a remote class on
            # its first load in a process only; later loads get the bare registered class.
            model.generation_config = copy.deepcopy(model.language_model.generation_config)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True, use_fast=False)
        # The chat turn ends with the template's separator, not the tokenizer's </s>.
        for end_of_turn in ("<|im_end|>", "<|end|>"):
            if end_of_turn in tokenizer.get_vocab():
                tokenizer.eos_token = end_of_turn
                model.generation_config.eos_token_id = tokenizer.eos_token_id
                break
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.img_context_token_id = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
        return cls(model, tokenizer, tokenizer, name_or_path=path, device=device, dtype=dtype)

    def build_prompt(self, text: str, image: bool = True) -> str:
        content = f"<image>\n{text}" if image else text
        conversation = [{"role": "user", "content": content}]
        template = self.tokenizer.chat_template or CHATML_TEMPLATE
        return self.tokenizer.apply_chat_template(
            conversation, chat_template=template, add_generation_prompt=True, tokenize=False
        )

    def tiling(self) -> tuple[int, int, bool]:
        """Tile size, most tiles and whether to add a thumbnail, from the checkpoint's config.json
        (``force_image_size``, ``max_dynamic_patch``, ``dynamic_image_size``, ``use_thumbnail``)."""
        config = self.model.config
        size = getattr(config, "force_image_size", None) or config.vision_config.image_size
        tiles = getattr(config, "max_dynamic_patch", 12) if getattr(config, "dynamic_image_size", True) else 1
        return size, tiles, getattr(config, "use_thumbnail", True)

    def _process(self, images, texts):
        pixel_values, expanded = [], []
        images = images if images is not None else [None] * len(texts)
        tiling = self.tiling()
        for image, text in zip(images, texts):
            if image is not None:
                tiles = tile_image(image, *tiling)
                pixel_values += [self._normalise(t) for t in tiles]
                context = "<IMG_CONTEXT>" * (self.model.num_image_token * len(tiles))
                text = text.replace("<image>", f"<img>{context}</img>", 1)
            expanded.append(text)
        batch = dict(self.tokenizer(expanded, return_tensors="pt", padding=True, add_special_tokens=True))
        if pixel_values:
            batch["pixel_values"] = torch.stack(pixel_values)
            batch["image_flags"] = torch.ones(len(pixel_values), 1, dtype=torch.long)
        return batch

    @staticmethod
    def _normalise(tile: Image.Image) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(tile, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]

    kv_cache_with_images = False

    @property
    def image_mean(self) -> Sequence[float]:
        return IMAGENET_MEAN

    @classmethod
    def loading_code(cls, base: str, model_class: str) -> str:
        return f"from transformers import AutoModel\n\nbase = AutoModel.from_pretrained({base!r}, trust_remote_code=True)"

    def _forward_logits(self, batch, keep):
        if "pixel_values" in batch:
            logits = self.model(**batch).logits
        else:  # the remote forward always runs the vision model; text-only goes to the LLM directly
            logits = self.model.language_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return logits[:, -keep:]

    @property
    def image_token_id(self) -> int:
        return self.model.img_context_token_id

    def _hidden_states(self, batch):
        return self.model(**batch, output_hidden_states=True).hidden_states

    def _language_model(self):
        return self.model.language_model

    def word_embeddings(self) -> torch.Tensor:
        return self.model.language_model.get_input_embeddings().weight

    def _generate_new_tokens(self, batch, **kwargs):
        batch = {k: v for k, v in batch.items() if k != "image_flags"}
        # The remote generate() embeds the prompt itself and returns only the new tokens.
        return self.model.generate(**batch, **kwargs)

    def _save_processor(self, out_dir: Path) -> None:
        self.tokenizer.save_pretrained(out_dir)
