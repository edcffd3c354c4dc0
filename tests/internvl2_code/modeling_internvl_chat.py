"""A tiny InternVL2-style chat model with the interface of OpenGVLab's ``InternVLChatModel``:
``vision_model`` (here a conv patchifier with a class token and one MLP block instead of InternViT),
pixel shuffle to ``num_image_token`` tokens per 448-px tile, the ``mlp1`` projector, a causal LM as
``language_model``, a forward that writes the projected tiles over the ``<IMG_CONTEXT>`` embeddings
(tiles with ``image_flags`` 0 dropped) and a ``generate`` that embeds the prompt itself and returns
only the new tokens. No GenerationMixin: transformers adds it when AutoModel loads the class."""

import torch
from torch import nn
from transformers import LlamaForCausalLM, PreTrainedModel, Qwen2ForCausalLM
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutputWithPast

from .configuration_internvl_chat import InternVisionConfig, InternVLChatConfig

LLM_CLASSES = {"Qwen2ForCausalLM": Qwen2ForCausalLM, "LlamaForCausalLM": LlamaForCausalLM}


class InternVisionModel(nn.Module):
    """Patches → tokens (class token first), position embeddings, one pre-norm MLP block."""

    def __init__(self, config: InternVisionConfig):
        super().__init__()
        d, patches = config.hidden_size, (config.image_size // config.patch_size) ** 2
        self.patch_embedding = nn.Conv2d(config.num_channels, d, kernel_size=config.patch_size, stride=config.patch_size)
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, d))
        self.position_embedding = nn.Parameter(torch.zeros(1, patches + 1, d))
        self.norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, pixel_values, output_hidden_states=False, return_dict=True):
        x = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.expand(x.shape[0], -1, -1), x], dim=1) + self.position_embedding
        states = (x, x + self.mlp(self.norm(x)))
        return BaseModelOutput(last_hidden_state=states[-1], hidden_states=states if output_hidden_states else None)


class InternVLChatModel(PreTrainedModel):
    config_class = InternVLChatConfig
    main_input_name = "pixel_values"
    base_model_prefix = "language_model"
    _no_split_modules = ["LlamaDecoderLayer", "Qwen2DecoderLayer"]
    _supports_sdpa = True
    supports_gradient_checkpointing = True

    def __init__(self, config: InternVLChatConfig):
        super().__init__(config)
        image_size = config.force_image_size or config.vision_config.image_size
        self.num_image_token = int((image_size // config.vision_config.patch_size) ** 2 * config.downsample_ratio**2)
        self.downsample_ratio = config.downsample_ratio
        self.select_layer = config.select_layer
        self.vision_model = InternVisionModel(config.vision_config)
        self.language_model = LLM_CLASSES[config.llm_config.architectures[0]](config.llm_config)
        width, llm_width = config.vision_config.hidden_size * int(1 / config.downsample_ratio) ** 2, config.llm_config.hidden_size
        self.mlp1 = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, llm_width), nn.GELU(), nn.Linear(llm_width, llm_width))
        self.img_context_token_id = None  # set by the caller from its tokenizer, as with the real model
        self.post_init()

    def pixel_shuffle(self, x, scale_factor=0.5):
        """[N, W, H, C] → [N, W·s, H·s, C/s²]: neighbouring patches folded into channels (ps_version v2)."""
        n, w, h, c = x.size()
        x = x.reshape(n, w, int(h * scale_factor), int(c / scale_factor)).permute(0, 2, 1, 3)
        x = x.reshape(n, int(h * scale_factor), int(w * scale_factor), int(c / scale_factor**2))
        return x.permute(0, 2, 1, 3).contiguous()

    def extract_feature(self, pixel_values):
        out = self.vision_model(pixel_values, output_hidden_states=self.select_layer != -1)
        vit = out.last_hidden_state if self.select_layer == -1 else out.hidden_states[self.select_layer]
        vit = vit[:, 1:, :]  # drop the class token
        side = int(vit.shape[1] ** 0.5)
        vit = self.pixel_shuffle(vit.reshape(vit.shape[0], side, side, -1), scale_factor=self.downsample_ratio)
        return self.mlp1(vit.reshape(vit.shape[0], -1, vit.shape[-1]))

    def _merge(self, input_ids, vit_embeds):
        embeds = self.language_model.get_input_embeddings()(input_ids)
        B, N, C = embeds.shape
        embeds = embeds.reshape(B * N, C)
        selected = input_ids.reshape(B * N) == self.img_context_token_id
        embeds[selected] = embeds[selected] * 0.0 + vit_embeds.reshape(-1, C).to(embeds.dtype)
        return embeds.reshape(B, N, C)

    def forward(
        self,
        pixel_values,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        image_flags=None,
        past_key_values=None,
        labels=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ):
        image_flags = image_flags.squeeze(-1)
        vit_embeds = self.extract_feature(pixel_values)[image_flags == 1]
        outputs = self.language_model(
            inputs_embeds=self._merge(input_ids, vit_embeds),
            attention_mask=attention_mask,
            position_ids=position_ids,
            **({"past_key_values": past_key_values} if past_key_values is not None else {}),  # (deprecated name when unused)
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            labels=labels,
        )
        return CausalLMOutputWithPast(
            loss=outputs.loss, logits=outputs.logits, past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states, attentions=outputs.attentions,
        )  # fmt: skip

    @torch.no_grad()
    def generate(self, pixel_values=None, input_ids=None, attention_mask=None, visual_features=None, generation_config=None,
                 output_hidden_states=None, **generate_kwargs):  # fmt: skip
        assert self.img_context_token_id is not None
        if pixel_values is not None:
            vit_embeds = visual_features if visual_features is not None else self.extract_feature(pixel_values)
            embeds = self._merge(input_ids, vit_embeds)
        else:
            embeds = self.language_model.get_input_embeddings()(input_ids)
        return self.language_model.generate(
            inputs_embeds=embeds, attention_mask=attention_mask, generation_config=generation_config,
            output_hidden_states=output_hidden_states, use_cache=True, **generate_kwargs,
        )  # fmt: skip

    @property
    def lm_head(self):
        return self.language_model.get_output_embeddings()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()
