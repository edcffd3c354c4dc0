"""A tiny remote-code InternVL2 checkpoint, built offline in seconds: its modelling code
(``internvl2_code/``) is saved into the folder beside the weights, and config.json says
``"model_type": "internvl_chat"`` with an ``auto_map`` to it, as ``OpenGVLab/InternVL2-*`` repos
do, so ``seed.adapters.load(folder, trust_remote_code=True)`` goes through transformers'
own remote-code path. The tokenizer is a ``Qwen2Tokenizer`` (as InternVL2-1B's) over a trained
byte-level BPE with InternVL2's special tokens; there is no chat template (seed's ChatML is used).

448-px tiles of 112-px patches, pixel-shuffled by 0.5: 4 image tokens per tile, at most
``max_dynamic_patch`` tiles plus a thumbnail. Taught ``CAPTIONS`` like the other subword models.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from subword_models import teach_captions

SPECIALS = ["<pad>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>"]
MAX_TILES = 4


def internvl2_tokenizer():
    """A ``Qwen2Tokenizer`` with the vocabulary and merges of :func:`subword_models.qwen2_tokenizer`."""
    from subword_models import qwen2_tokenizer
    from transformers import Qwen2Tokenizer

    bpe = json.loads(qwen2_tokenizer(SPECIALS).backend_tokenizer.to_str())["model"]
    tok = Qwen2Tokenizer(
        vocab=bpe["vocab"], merges=[tuple(m) for m in bpe["merges"]], unk_token=None, bos_token=None, eos_token="<|im_end|>", pad_token="<pad>"
    )
    tok.add_special_tokens({"additional_special_tokens": SPECIALS})
    return tok


def build_internvl2_remote(out_dir: Path, steps: int = 80) -> Path:
    from internvl2_code.configuration_internvl_chat import InternVLChatConfig
    from internvl2_code.modeling_internvl_chat import InternVLChatModel

    from seed.adapters.internvl import InternVL2RemoteVLM

    InternVLChatConfig.register_for_auto_class()
    InternVLChatModel.register_for_auto_class("AutoModel")  # save_pretrained copies the code and writes auto_map
    tok = internvl2_tokenizer()
    llm = {
        "architectures": ["Qwen2ForCausalLM"], "vocab_size": len(tok), "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512, "tie_word_embeddings": False,
        "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
    }  # fmt: skip
    config = InternVLChatConfig(vision_config={"hidden_size": 16, "image_size": 448, "patch_size": 112}, llm_config=llm, max_dynamic_patch=MAX_TILES)
    torch.manual_seed(0)
    model = InternVLChatModel(config)
    model.img_context_token_id = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    vlm = InternVL2RemoteVLM(model, tok, tok, name_or_path=str(out_dir), device="cpu", dtype=torch.float32)
    teach_captions(vlm, steps)
    vlm.save_pretrained(out_dir)
    return out_dir
