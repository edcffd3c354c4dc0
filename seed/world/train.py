"""Training the tiny LLaVA on CPU, in the order real LVLMs are made, nothing set by hand:

1. vision tower: which objects an image shows, learnt from a caption as image-text corpora have
   them (the objects it names: some of those shown), as CLIP learns from alt-text: one linear
   head over the patch tokens, pooled over the image (multiple-instance), thrown away
   afterwards. No patch labels; ``vision_labels="annotations"`` trains on every annotated object
   instead (a strong perceiver);
2. language model: text-only pretraining on plain documents about scenes (two descriptions of a
   scene, questions about what a description names): reading and copying, no chat, no image;
3. projector (random init) aligned by captioning with the language model frozen (LLaVA stage 1);
4. projector + language model on image + caption and image + question sequences (LLaVA stage 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

Progress = Callable[[int], None]


@dataclass
class TrainConfig:
    vision_images: int = 12000  # train scenes + extra drawn ones (more images: fewer false alarms)
    vision_steps: int = 2000
    vision_batch: int = 128
    vision_lr: float = 6e-3
    text_steps: int = 1600
    text_batch: int = 64
    text_lr: float = 1e-3
    align_steps: int = 300
    align_lr: float = 2e-3
    lm_steps: int = 600
    lm_batch: int = 32
    lm_lr: float = 5e-4
    warmup: int = 50


def _cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + np.cos(np.pi * (step - warmup) / max(1, total - warmup)))


def _optimizer(params, lr: float, total: int, warmup: int):
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine(s, total, warmup))
    return opt, sched


def _step(loss: torch.Tensor, opt, sched, clip: list | None = None) -> None:
    """One optimizer step on ``loss`` (gradient norm of ``clip`` capped at 1 when given)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(clip, 1.0)
    opt.step()
    sched.step()


def pretrain_vision(
    model: LlavaForConditionalGeneration,
    pixel_values: torch.Tensor,
    image_labels: torch.Tensor,
    cfg: TrainConfig,
    generator: torch.Generator,
    progress: Progress = lambda n: None,
) -> float:
    """Teach the vision tower which objects each image shows ([N, C] multi-hot): a linear head
    scores every patch token, a smooth maximum over the patches scores the image (multi-label
    BCE). The head is discarded; returns the last loss."""
    tower = model.model.vision_tower
    head = torch.nn.Linear(tower.config.hidden_size, image_labels.shape[-1])
    opt, sched = _optimizer([*tower.parameters(), *head.parameters()], cfg.vision_lr, cfg.vision_steps, cfg.warmup)
    tower.train()
    loss = torch.tensor(0.0)
    for _ in range(cfg.vision_steps):
        idx = torch.randint(len(pixel_values), (cfg.vision_batch,), generator=generator)
        patches = head(tower(pixel_values=pixel_values[idx]).last_hidden_state[:, 1:])  # [B, P, C], CLS left out
        pooled = (torch.logsumexp(4 * patches, dim=1) - math.log(patches.shape[1])) / 4
        loss = F.binary_cross_entropy_with_logits(pooled, image_labels[idx])
        _step(loss, opt, sched)
        progress(1)
    tower.eval()
    return loss.item()


@dataclass
class Sequences:
    """Tokenised training sequences: image index, prompt ids (image expanded) and response ids."""

    image_index: list[int]
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]


def tokenize_sequences(
    processor: LlavaProcessor, items: list[tuple[int, str, str]], num_image_tokens: int
) -> Sequences:
    """``items`` are (image index, user prompt, response); the chat template is applied here.

    With ``num_image_tokens=0`` the prompts carry no image (text-only pretraining).
    """
    tok = processor.tokenizer
    prompts, responses, index = [], [], []
    cache: dict[str, list[int]] = {}
    for i, prompt, response in items:
        if prompt not in cache:
            content = [{"type": "image"}] if num_image_tokens else []
            chat = [{"role": "user", "content": [*content, {"type": "text", "text": prompt}]}]
            text = processor.apply_chat_template(chat, add_generation_prompt=True)
            text = text.replace(processor.image_token, processor.image_token * num_image_tokens)
            cache[prompt] = tok(text, add_special_tokens=False).input_ids
        prompts.append(cache[prompt])
        responses.append(tok(" " + response, add_special_tokens=False).input_ids + [tok.eos_token_id])
        index.append(i)
    return Sequences(index, prompts, responses)


def collate(seqs: Sequences, rows: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded input ids, attention mask and labels (-100 outside the response)."""
    full = [seqs.prompt_ids[r] + seqs.response_ids[r] for r in rows]
    length = max(map(len, full))
    ids = torch.full((len(rows), length), pad_id)
    labels = torch.full((len(rows), length), -100)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for j, (r, f) in enumerate(zip(rows, full)):
        ids[j, length - len(f) :] = torch.tensor(f)
        mask[j, length - len(f) :] = 1
        n = len(seqs.response_ids[r])
        labels[j, length - n :] = torch.tensor(seqs.response_ids[r])
    return ids, mask, labels


def text_sequences(tokenizer, documents: list[str]) -> Sequences:
    """Plain documents for language pretraining: every token after BOS is a target."""
    ids = [tokenizer(d, add_special_tokens=False).input_ids + [tokenizer.eos_token_id] for d in documents]
    return Sequences([0] * len(ids), [[tokenizer.bos_token_id]] * len(ids), ids)


def _language_params(model: LlavaForConditionalGeneration) -> list[torch.nn.Parameter]:
    return [p for n, p in model.named_parameters() if "vision_tower" not in n and "multi_modal_projector" not in n]


def pretrain_text(
    model: LlavaForConditionalGeneration,
    seqs: Sequences,
    pad_id: int,
    cfg: TrainConfig,
    generator: torch.Generator,
    progress: Progress = lambda n: None,
) -> float:
    """Language-model pretraining on text-only sequences (no image tokens); returns the last loss."""
    lm, head = model.model.language_model, model.lm_head
    params = _language_params(model)
    opt, sched = _optimizer(params, cfg.text_lr, cfg.text_steps, cfg.warmup)
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(cfg.text_steps):
        rows = torch.randint(len(seqs.prompt_ids), (cfg.text_batch,), generator=generator).tolist()
        ids, mask, labels = collate(seqs, rows, pad_id)
        logits = head(lm(input_ids=ids, attention_mask=mask).last_hidden_state)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        _step(loss, opt, sched, params)
        progress(1)
    model.eval()
    return loss.item()


def train_multimodal(
    model: LlavaForConditionalGeneration,
    pixel_values: torch.Tensor,
    seqs: Sequences,
    pad_id: int,
    steps: int,
    lr: float,
    cfg: TrainConfig,
    generator: torch.Generator,
    progress: Progress = lambda n: None,
    projector_only: bool = False,
) -> float:
    """Projector (+ language model unless ``projector_only``) on image sequences; the vision
    tower stays frozen. Returns the last loss."""
    trained = ("multi_modal_projector",) if projector_only else ("multi_modal_projector", "language_model", "lm_head")
    params = []
    for n, p in model.named_parameters():
        p.requires_grad_(any(t in n for t in trained))
        params += [p] if p.requires_grad else []
    opt, sched = _optimizer(params, lr, steps, cfg.warmup)
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        rows = torch.randint(len(seqs.image_index), (cfg.lm_batch,), generator=generator).tolist()
        ids, mask, labels = collate(seqs, rows, pad_id)
        images = pixel_values[[seqs.image_index[r] for r in rows]]
        loss = model(input_ids=ids, attention_mask=mask, pixel_values=images, labels=labels).loss
        _step(loss, opt, sched, params)
        progress(1)
    model.eval()
    model.requires_grad_(True)
    return loss.item()
