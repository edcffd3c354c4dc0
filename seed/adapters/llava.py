"""LLaVA (``llava-hf/llava-1.5-*-hf`` and anything saved as ``LlavaForConditionalGeneration``).

The HF chat template is used as shipped: ``USER: <image>\\n{text} ASSISTANT:``, without the
original Vicuna system prompt, and the image processor as configured (llava-hf: resize +
centre crop, no pad-to-square).
"""

from __future__ import annotations

import torch

from seed.adapters.base import VisionLanguageModel, check_processor


class LlavaVLM(VisionLanguageModel):
    family = "llava"
    response_separator = " "

    @classmethod
    def from_pretrained(cls, path: str, *, device: str, dtype: torch.dtype, quantization_config=None) -> LlavaVLM:
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        processor = AutoProcessor.from_pretrained(path)
        check_processor(processor, path)
        if quantization_config is None:
            model = LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype, use_safetensors=True).to(device)
        else:
            model = LlavaForConditionalGeneration.from_pretrained(
                path, dtype=dtype, quantization_config=quantization_config, device_map={"": device}, use_safetensors=True
            )
        return cls(model, processor, processor.tokenizer, name_or_path=path, device=device, dtype=dtype)
