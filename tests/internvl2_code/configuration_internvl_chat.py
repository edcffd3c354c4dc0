"""Configuration of a tiny InternVL2-style chat model: the fields of OpenGVLab's
``InternVLChatConfig`` that shape the model, with a conv patchifier for the vision config."""

from transformers import LlamaConfig, PretrainedConfig, Qwen2Config

LLM_CONFIGS = {"Qwen2ForCausalLM": Qwen2Config, "LlamaForCausalLM": LlamaConfig}


class InternVisionConfig(PretrainedConfig):
    model_type = "intern_vit_6b"

    def __init__(self, hidden_size=32, image_size=448, patch_size=112, num_channels=3, layer_norm_eps=1e-6, **kwargs):
        self.hidden_size = hidden_size
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.layer_norm_eps = layer_norm_eps
        super().__init__(**kwargs)


class InternVLChatConfig(PretrainedConfig):
    model_type = "internvl_chat"
    sub_configs = {"vision_config": InternVisionConfig, "llm_config": PretrainedConfig}

    def __init__(
        self,
        vision_config=None,
        llm_config=None,
        select_layer=-1,
        force_image_size=None,
        downsample_ratio=0.5,
        template="internvl2_5",
        dynamic_image_size=True,
        use_thumbnail=True,
        ps_version="v2",
        min_dynamic_patch=1,
        max_dynamic_patch=12,
        **kwargs,
    ):
        vision_config = vision_config or {}
        llm_config = llm_config or {"architectures": ["Qwen2ForCausalLM"]}
        self.vision_config = vision_config if isinstance(vision_config, PretrainedConfig) else InternVisionConfig(**vision_config)
        if not isinstance(llm_config, PretrainedConfig):
            llm_config = LLM_CONFIGS[llm_config["architectures"][0]](**llm_config)
        self.llm_config = llm_config
        self.select_layer = select_layer
        self.force_image_size = force_image_size
        self.downsample_ratio = downsample_ratio
        self.template = template
        self.dynamic_image_size = dynamic_image_size
        self.use_thumbnail = use_thumbnail
        self.ps_version = ps_version
        self.min_dynamic_patch = min_dynamic_patch
        self.max_dynamic_patch = max_dynamic_patch
        super().__init__(**kwargs)
