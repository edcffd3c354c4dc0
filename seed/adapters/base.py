"""The one interface the rest of seed uses to run a vision-language model.

A :class:`VisionLanguageModel` holds a transformers model (or a PEFT wrapper of it) and its
processor, and offers what SEED needs from any family: chat prompts, left-padded batches,
teacher-forced response logits (optionally under a *null image*), batched generation, and the
LoRA target pattern of the language model. Subclasses (one per family) only fill in the hooks
marked below; callers never ask which family they hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import torch
from PIL import Image

from seed.config import NULL_IMAGES
from seed.errors import SeedError


# VCD-style image corruption: the forward-diffusion marginal of a 1000-step linear beta schedule.
DIFFUSION_STEPS = 1000
DIFFUSION_BETAS = (1e-4, 0.02)


def diffusion_noise(pixel_values: torch.Tensor, step: int = 500, generator: torch.Generator | None = None) -> torch.Tensor:
    """``sqrt(ᾱ_t)·x + sqrt(1-ᾱ_t)·ε`` with ε ~ N(0, I), ᾱ_t from a linear β schedule (1e-4..0.02, 1000 steps).

    ``pixel_values``: any shape, already normalised by the processor (as in VCD). ``step`` is the
    0-based diffusion step t. ``generator`` (CPU) makes the noise reproducible. Same shape and
    dtype as the input.
    """
    if not 0 <= step < DIFFUSION_STEPS:
        raise SeedError(f"diffusion step must be in [0, {DIFFUSION_STEPS}), not {step}")
    betas = torch.linspace(*DIFFUSION_BETAS, DIFFUSION_STEPS, dtype=torch.float64)
    alpha_bar = torch.cumprod(1.0 - betas, dim=0)[step].item()
    noise = torch.randn(pixel_values.shape, generator=generator, dtype=torch.float32).to(pixel_values.device)
    noised = alpha_bar**0.5 * pixel_values.float() + (1.0 - alpha_bar) ** 0.5 * noise
    return noised.to(pixel_values.dtype)


class VisionLanguageModel:
    """A model + processor pair behind the interface SEED uses.

    ``prompts`` arguments are the user's texts (a question, "Describe the image."); the chat
    template is applied here (:meth:`build_prompt`). ``images=None`` means text-only prompts.
    Nothing here switches gradients off: wrap teacher calls in ``torch.no_grad()``.
    """

    family: ClassVar[str]
    # What separates the generation prompt from a teacher-forced response. LLaVA's prompt ends in
    # "ASSISTANT:", so the answer starts with a space; ChatML ends in a newline and needs none.
    response_separator: ClassVar[str] = " "
    # Module name prefix of the decoder layers and the LoRA-able projections inside one layer.
    language_layers: ClassVar[str] = r"model\.language_model\.layers\.\d+"
    projections: ClassVar[tuple[str, ...]] = (r"self_attn\.[qkvo]_proj", r"mlp\.(?:gate|up|down)_proj")
    # Full module prefixes that bitsandbytes must leave in full precision.
    unquantized_modules: ClassVar[tuple[str, ...]] = ("model.vision_tower", "model.multi_modal_projector", "lm_head")
    # Whether the forward takes pixel_values with a standard transformers KV cache (prefix reuse, VCD).
    kv_cache_with_images: ClassVar[bool] = True

    def __init__(self, model, processor, tokenizer, *, name_or_path: str, device: str, dtype: torch.dtype):
        self.model = model
        self.processor = processor
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        self.name_or_path = name_or_path
        self.device = device
        self.dtype = dtype
        self.adapter: str | None = None  # the adapter folder this model carries (set when loaded or saved)

    # ------------------------------------------------------------------ family hooks
    @classmethod
    def from_pretrained(cls, path: str, *, device: str, dtype: torch.dtype, quantization_config=None) -> VisionLanguageModel:
        raise NotImplementedError

    def build_prompt(self, text: str, image: bool = True) -> str:
        """The family's chat prompt for one user turn, generation prompt included."""
        content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]
        conversation = [{"role": "user", "content": content}]
        return self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)

    def _process(self, images: list[Image.Image] | None, texts: list[str]) -> dict[str, torch.Tensor]:
        """Tokenise chat prompts (image placeholders expanded) into a left-padded CPU batch."""
        batch = self.processor(images=images, text=texts, return_tensors="pt", padding=True)
        return dict(batch)

    def _forward_logits(self, batch: dict[str, torch.Tensor], keep: int) -> torch.Tensor:
        """Logits of the last ``keep`` positions, [B, keep, V]."""
        return self.model(**batch, logits_to_keep=keep).logits

    def _generate_new_tokens(self, batch: dict[str, torch.Tensor], **kwargs) -> torch.Tensor:
        """Generated token ids after the prompt, [B, N]."""
        out = self.model.generate(**batch, **kwargs)
        return out[:, batch["input_ids"].shape[1] :]

    @property
    def image_mean(self) -> Sequence[float]:
        """The image processor's mean colour (0–1 per channel): what a "grey" image shows."""
        return self.processor.image_processor.image_mean

    @property
    def image_token_id(self) -> int:
        """The placeholder token whose positions carry the projected image features."""
        return self.processor.image_token_id

    @classmethod
    def loading_code(cls, base: str, model_class: str) -> str:
        """Python that loads ``base`` with plain transformers (for model cards)."""
        return f"from transformers import {model_class}\n\nbase = {model_class}.from_pretrained({base!r})"

    def _save_processor(self, out_dir: Path) -> None:
        self.processor.save_pretrained(out_dir)

    def save_pretrained(self, out_dir: str | Path) -> None:
        """Write model + processor so that :func:`seed.adapters.load` and plain transformers read them."""
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            raise SeedError("this model carries an adapter: save it with save_hea, or bake it in with merge_and_export")
        self.model.save_pretrained(out_dir)
        self._save_processor(Path(out_dir))

    # ------------------------------------------------------------------ capabilities
    @property
    def attention_implementation(self) -> str:
        """The language model's attention kernel (``eager``, ``sdpa``, ...)."""
        return getattr(self.model.config.get_text_config(), "_attn_implementation", None) or "eager"

    @property
    def supports_prefix_cache(self) -> bool:
        """Whether an image prefix's KV cache can be reused under 4-D attention masks."""
        return self.kv_cache_with_images and self.attention_implementation in ("sdpa", "eager")

    @property
    def eos_token_ids(self) -> set[int]:
        """The ids that end a generated response."""
        eos = self.model.generation_config.eos_token_id
        eos = eos if eos is not None else self.tokenizer.eos_token_id
        return set(eos if isinstance(eos, (list, tuple)) else [eos])

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    # ------------------------------------------------------------------ the interface
    def lora_target_modules(self) -> str:
        """PEFT ``target_modules`` regex: attention and MLP projections of the language model only.

        PEFT full-matches it against module names, so the vision tower (whose CLIP/InternViT
        attention also has ``q_proj``/``v_proj``) and the projector are never wrapped.
        """
        return rf"{self.language_layers}\.(?:{'|'.join(self.projections)})"

    def encode(self, images: list[Image.Image] | None, prompts: list[str], responses: list[str] | None = None) -> dict[str, torch.Tensor]:
        """A left-padded batch on the model's device.

        Keys: ``input_ids`` [B, L], ``attention_mask`` [B, L], ``pixel_values`` when images are
        given, and with ``responses`` also ``response_mask`` [B, L] (bool, True on the response
        tokens: separator + response, then EOS).
        """
        texts = [self.build_prompt(p, image=images is not None) for p in prompts]
        response_ids = None if responses is None else self._response_token_ids(texts, responses)
        return self._encode(images, texts, response_ids)

    def response_logits(
        self,
        images: list[Image.Image] | None,
        prompts: list[str],
        responses: list[str],
        null_image: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One teacher-forced forward pass over ``responses``.

        Returns ``(logits [B, T, V] float32, response_ids [B, T], mask [B, T] bool)`` where
        ``logits[:, t]`` is the distribution that predicts ``response_ids[:, t]``; T is the longest
        response including its EOS, shorter rows are right-padded (mask False, logits 0).

        ``null_image`` replaces the image while keeping the very same response tokens:
        ``"none"`` drops the image from the prompt, ``"grey"`` shows a uniform image of the
        processor's mean colour (≈0 after normalisation), ``"noise"`` diffuses the real
        pixel values to step 500 (:func:`diffusion_noise`, fixed seed, so reruns agree).
        """
        if null_image is not None and null_image not in NULL_IMAGES:
            raise SeedError(f"null image must be one of {', '.join(NULL_IMAGES)}, not {null_image!r}")
        if null_image is not None and images is None:
            raise SeedError("a null image replaces an image: pass the images too")
        if len(responses) != len(prompts):
            raise SeedError(f"{len(prompts)} prompts but {len(responses)} responses")
        texts = [self.build_prompt(p, image=images is not None) for p in prompts]
        # Tokenised once, against the image prompt: every variant scores identical tokens.
        response_ids = self._response_token_ids(texts, responses)
        if null_image == "none":
            images, texts = None, [self.build_prompt(p, image=False) for p in prompts]
        elif null_image == "grey":
            colour = tuple(round(255 * m) for m in self.image_mean)
            images = [Image.new("RGB", im.size, colour) for im in images]
        batch = self._encode(images, texts, response_ids)
        if null_image == "noise":
            generator = torch.Generator().manual_seed(0)
            batch["pixel_values"] = diffusion_noise(batch["pixel_values"], generator=generator)

        batch.pop("response_mask")
        lengths = torch.tensor([len(r) for r in response_ids], device=self.device)
        T = int(lengths.max())
        # Left padding: every row ends at position L-1, so response token t of a row of n response
        # tokens sits at L-n+t and is predicted at L-n+t-1, inside the last T+1 positions.
        kept = self._forward_logits(batch, keep=T + 1)[:, -(T + 1) :]
        steps = torch.arange(T, device=self.device)
        mask = steps[None, :] < lengths[:, None]
        index = torch.where(mask, (T - lengths)[:, None] + steps[None, :], 0)
        logits = kept.gather(1, index[:, :, None].expand(-1, -1, kept.shape[-1])).float()
        logits = logits.masked_fill(~mask[:, :, None], 0.0)

        ids = torch.full((len(response_ids), T), self.pad_token_id, dtype=torch.long)
        for b, row in enumerate(response_ids):
            ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        return logits, ids.to(self.device), mask

    @torch.no_grad()
    def response_states(
        self, images: list[Image.Image], prompts: list[str], responses: list[str], layer: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """The language model's hidden states AT each response token (after reading it), from
        one teacher-forced pass: ``(states [B, T, D] float32, response_ids [B, T], mask [B, T],
        image states: one float32 [P, D] per row)``, laid out as :meth:`response_logits`;
        ``layer`` indexes ``hidden_states`` (0 = embeddings)."""
        texts = [self.build_prompt(p, image=images is not None) for p in prompts]
        response_ids = self._response_token_ids(texts, responses)
        batch = self._encode(images, texts, response_ids)
        batch.pop("response_mask")
        hidden = self.model(**batch, output_hidden_states=True).hidden_states[layer]
        image = [row[keep].float() for row, keep in zip(hidden, batch["input_ids"] == self.image_token_id)]
        lengths = torch.tensor([len(r) for r in response_ids], device=hidden.device)
        T = int(lengths.max())
        steps = torch.arange(T, device=hidden.device)
        mask = steps[None, :] < lengths[:, None]
        # Response token t of a row of n sits at L-n+t: index T-n+t+1 among the last T+1 positions.
        index = torch.where(mask, (T - lengths)[:, None] + steps[None, :] + 1, 0)
        kept = hidden[:, -(T + 1) :]
        states = kept.gather(1, index[:, :, None].expand(-1, -1, kept.shape[-1])).float()
        ids = torch.full((len(response_ids), T), self.pad_token_id, dtype=torch.long)
        for b, row in enumerate(response_ids):
            ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        return states.masked_fill(~mask[:, :, None], 0.0), ids.to(hidden.device), mask, image

    @torch.no_grad()
    def image_states(self, images: list[Image.Image], layers: Sequence[int] | None = None) -> list[torch.Tensor]:
        """The language model's hidden states at each image's placeholder positions (P = all
        tiles' tokens), float32: [P, D] of the projected features it reads, or [len(layers), P, D]
        of the given layers (``hidden_states`` indices, 0 = input)."""
        batch = self.encode(images, [""] * len(images))
        hidden = self._hidden_states(batch)
        image = batch["input_ids"] == self.image_token_id
        return [torch.stack([hidden[l][b][image[b]] for l in layers or (0,)]).float()[0 if layers is None else slice(None)] for b in range(len(images))]

    def _hidden_states(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Every layer's hidden states of the language model, [B, L, D] each (0 = input)."""
        return self.model(**batch, output_hidden_states=True, logits_to_keep=1).hidden_states

    def _language_model(self):
        """The causal language model (``get_decoder``, ``get_output_embeddings``)."""
        return self.model

    @property
    def text_layers(self) -> int:
        """How many decoder layers the language model has (hidden-state indices run 0 to this)."""
        return self._language_model().get_decoder().config.num_hidden_layers

    @torch.no_grad()
    def unembed(self, states: torch.Tensor, layer: int) -> torch.Tensor:
        """Vocabulary logits of ``layer``'s hidden states (the logit lens): the final norm (the
        last layer's states have it already), then the output embedding."""
        lm = self._language_model()
        weight, decoder = lm.get_output_embeddings().weight, lm.get_decoder()
        states = states.to(weight.dtype)
        return ((decoder.norm(states) if layer < decoder.config.num_hidden_layers else states) @ weight.T).float()

    def word_embeddings(self) -> torch.Tensor:
        """The language model's input embedding matrix, [V, D]."""
        return self.model.get_input_embeddings().weight

    def generate(
        self,
        images: list[Image.Image] | None,
        prompts: list[str],
        *,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        logits_processor=None,
        num_beams: int = 1,
        return_finished: bool = False,
    ) -> list[str] | tuple[list[str], list[bool]]:
        """Batched generation; decoded responses with special tokens skipped, stripped.

        Sampling uses exactly ``temperature`` and ``top_p`` (no top-k), whatever the checkpoint's
        generation_config says. ``seed`` seeds torch's global generator first. With
        ``return_finished``, also whether each response ended (EOS) before ``max_new_tokens``.
        """
        from transformers import GenerationConfig, LogitsProcessorList

        batch = self.encode(images, prompts)
        base = self.model.generation_config
        # Unset fields would be filled from the checkpoint's generation_config (and top_k=50), so
        # everything that reshapes the distribution is set explicitly.
        sampling = {"temperature": temperature, "top_p": top_p, "top_k": 0} if do_sample else {}
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            num_beams=num_beams,
            **sampling,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            eos_token_id=base.eos_token_id if base.eos_token_id is not None else self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            bos_token_id=base.bos_token_id,
        )
        kwargs = {"generation_config": config}
        if logits_processor is not None:
            kwargs["logits_processor"] = LogitsProcessorList(
                logits_processor if isinstance(logits_processor, (list, tuple)) else [logits_processor]
            )
        if seed is not None:
            torch.manual_seed(seed)
        with torch.no_grad():
            new_tokens = self._generate_new_tokens(batch, **kwargs)
        texts = [t.strip() for t in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
        if not return_finished:
            return texts
        ended = torch.isin(new_tokens, torch.tensor(sorted(self.eos_token_ids), device=new_tokens.device)).any(-1)
        return texts, ended.tolist()

    # ------------------------------------------------------------------ internals
    def _response_token_ids(self, texts: list[str], responses: list[str]) -> list[list[int]]:
        """Token ids of separator + response + EOS, as they tokenise *after* each prompt text.

        The prompt and prompt + response are tokenised together and the prompt's tokens cut off,
        so that sentencepiece/BPE merge the leading space the way generation produces it.
        """
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise SeedError(f"{self.name_or_path}: the tokenizer has no EOS token")
        out = []
        for text, response in zip(texts, responses, strict=True):
            prompt_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            full_ids = self.tokenizer(text + self.response_separator + response, add_special_tokens=False)["input_ids"]
            if full_ids[: len(prompt_ids)] != prompt_ids:
                raise SeedError(f"the response {response[:40]!r} changes how its prompt tokenises; cannot teacher-force it")
            out.append(full_ids[len(prompt_ids) :] + [eos])
        return out

    def _encode(
        self,
        images: list[Image.Image] | None,
        texts: list[str],
        response_ids: list[list[int]] | None,
    ) -> dict[str, torch.Tensor]:
        if images is not None and len(images) != len(texts):
            raise SeedError(f"{len(images)} images but {len(texts)} prompts")
        batch = self._process(images, texts)
        if response_ids is not None:
            batch = self._append_responses(batch, response_ids)
        return {
            k: v.to(self.device, dtype=self.dtype if v.is_floating_point() else None) if torch.is_tensor(v) else v
            for k, v in batch.items()
        }

    def _append_responses(self, batch: dict[str, torch.Tensor], response_ids: list[list[int]]) -> dict[str, torch.Tensor]:
        """Put each response right after its (unpadded) prompt and left-pad the rows again."""
        prompts = [ids[mask.bool()] for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
        rows = [torch.cat([p, torch.tensor(r, dtype=p.dtype)]) for p, r in zip(prompts, response_ids)]
        L = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), L), self.pad_token_id, dtype=batch["input_ids"].dtype)
        attention_mask = torch.zeros((len(rows), L), dtype=batch["attention_mask"].dtype)
        response_mask = torch.zeros((len(rows), L), dtype=torch.bool)
        for b, (row, r) in enumerate(zip(rows, response_ids)):
            input_ids[b, L - len(row) :] = row
            attention_mask[b, L - len(row) :] = 1
            response_mask[b, L - len(r) :] = True
        out = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask", "token_type_ids")}
        return {"input_ids": input_ids, "attention_mask": attention_mask, **out, "response_mask": response_mask}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name_or_path!r}, family={self.family!r}, device={self.device!r}, dtype={self.dtype})"


def check_processor(processor, name: str) -> None:
    """Refuse a processor without an image processor or tokenizer (AutoProcessor may silently degrade)."""
    missing = [part for part in ("image_processor", "tokenizer") if getattr(processor, part, None) is None]
    if missing:
        raise SeedError(
            f"{name}: the processor loaded as {type(processor).__name__} has no {' or '.join(missing)}; "
            "the checkpoint's processor files are incomplete or need a package that is not installed"
        )
