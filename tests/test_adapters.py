"""The model layer on tiny offline LLaVA and InternVL checkpoints loaded through ``load()``."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from PIL import Image

from seed.adapters import VisionLanguageModel, diffusion_noise, load, resolve_model_name
from seed.adapters.base import check_processor
from seed.adapters.internvl import tile_image
from seed.errors import SeedError

PROMPTS = ["is there a dog in the image ?", "describe the image ."]
RESPONSES = ["yes", "a red cup and a dog with a blue car ."]
PLACEHOLDER = {"llava": "<image>\n", "internvl": "<IMG_CONTEXT>\n"}


@pytest.fixture(scope="module", params=["llava", "internvl"])
def vlm(request) -> VisionLanguageModel:
    return load(str(request.getfixturevalue(f"tiny_{request.param}_dir")), device="cpu")


def test_load_gives_the_family_and_attributes(vlm):
    assert vlm.family in ("llava", "internvl")
    assert vlm.tokenizer.padding_side == "left"
    assert vlm.device == "cpu" and vlm.dtype == torch.float32
    assert vlm.processor.image_processor is not None and vlm.processor.tokenizer is vlm.tokenizer
    assert not vlm.model.training


def test_build_prompt_with_and_without_image(vlm):
    with_image, without = vlm.build_prompt("is there a dog ?"), vlm.build_prompt("is there a dog ?", image=False)
    assert PLACEHOLDER[vlm.family] in with_image
    assert with_image.replace(PLACEHOLDER[vlm.family], "") == without
    assert without.rstrip().endswith(("ASSISTANT:", "<|im_start|>assistant"))


def test_encode_is_left_padded_with_a_response_mask(vlm, tiny_images):
    batch = vlm.encode(tiny_images, PROMPTS, RESPONSES)
    ids, attention, response = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
    assert ids.shape == attention.shape == response.shape and ids.shape[0] == 2
    assert batch["pixel_values"].dtype == torch.float32
    for row_ids, row_attention, row_response, text in zip(ids, attention, response, RESPONSES):
        # Left padding: zeros then ones; padding holds the pad id; the response ends the row with EOS.
        assert torch.equal(row_attention, row_attention.sort().values)
        assert (row_ids[row_attention == 0] == vlm.tokenizer.pad_token_id).all()
        n = int(row_response.sum())
        assert row_response[-n:].all() and not row_response[:-n].any()
        assert row_ids[-1] == vlm.tokenizer.eos_token_id
        decoded = vlm.tokenizer.decode(row_ids[-n:], skip_special_tokens=True)
        assert decoded.replace(" ", "") == text.replace(" ", "")  # clean-up may drop the space before "." 
    assert (attention == 0).any(), "the shorter row should be padded"

    text_only = vlm.encode(None, PROMPTS)
    assert "pixel_values" not in text_only and "response_mask" not in text_only
    assert (text_only["input_ids"] != vlm.processor.image_token_id).all()


def test_response_logits_are_the_plain_forward_logits(vlm, tiny_images):
    with torch.no_grad():
        logits, ids, mask = vlm.response_logits(tiny_images, PROMPTS, RESPONSES)
        batch = vlm.encode(tiny_images, PROMPTS, RESPONSES)
        response = batch.pop("response_mask")
        plain = vlm.model(**batch).logits
    lengths = response.sum(1)
    assert logits.dtype == torch.float32 and logits.shape == (2, int(lengths.max()), plain.shape[-1])
    assert mask.tolist() == [[t < n for t in range(logits.shape[1])] for n in lengths.tolist()]
    for b in range(2):
        positions = response[b].nonzero().squeeze(1)
        n = len(positions)
        assert torch.equal(ids[b, :n], batch["input_ids"][b, positions])
        torch.testing.assert_close(logits[b, :n], plain[b, positions - 1].float())
        assert (logits[b, n:] == 0).all()


def test_image_states_are_the_language_model_inputs_at_the_image_tokens(vlm, tiny_images):
    states = vlm.image_states(tiny_images)
    batch = vlm.encode(tiny_images, ["", ""])
    image = batch["input_ids"] == vlm.processor.image_token_id
    with torch.no_grad():
        embeds = vlm.model(**batch, output_hidden_states=True).hidden_states[0]
    width = vlm.word_embeddings().shape[1]
    for b, row in enumerate(states):
        assert row.dtype == torch.float32 and row.shape == (int(image[b].sum()), width) and len(row) > 0
        torch.testing.assert_close(row, embeds[b][image[b]].float())
    # Not the placeholder's own embedding: the image features were merged in.
    assert not torch.allclose(states[0][0], vlm.word_embeddings()[vlm.processor.image_token_id].float())


def test_the_logit_lens_reads_every_layer_and_its_last_layer_is_the_models_own_prediction(vlm, tiny_images):
    from seed.identify import lens_scores

    last = vlm.model.get_decoder().config.num_hidden_layers
    states = vlm.image_states(tiny_images, layers=(1, last))
    batch = vlm.encode(tiny_images, ["", ""])
    image = batch["input_ids"] == vlm.processor.image_token_id
    with torch.no_grad():
        out = vlm.model(**batch, output_hidden_states=True)
    for b, row in enumerate(states):
        assert row.shape == (2, int(image[b].sum()), vlm.word_embeddings().shape[1])
        torch.testing.assert_close(row[0], out.hidden_states[1][b][image[b]].float())
        torch.testing.assert_close(vlm.unembed(row[1], last), out.logits[b][image[b]].float(), atol=1e-4, rtol=1e-4)
    words = {"dog": [(vlm.tokenizer.convert_tokens_to_ids("dog"),)], "cat": [(vlm.tokenizer.convert_tokens_to_ids("cat"),)]}
    for layers in ((0,), (1, last)):
        scores = lens_scores(vlm, tiny_images, words, layers=layers)
        assert len(scores) == 2 and all(0 <= h <= 1 for s in scores for h in s.values())
    assert lens_scores(vlm, tiny_images, words, layers=(0,)) != lens_scores(vlm, tiny_images, words, layers=(last,))


def test_null_images_score_the_same_tokens_differently(vlm, tiny_images):
    with torch.no_grad():
        logits, ids, mask = vlm.response_logits(tiny_images, PROMPTS, RESPONSES)
        for null in ("none", "grey", "noise"):
            null_logits, null_ids, null_mask = vlm.response_logits(tiny_images, PROMPTS, RESPONSES, null_image=null)
            assert null_logits.shape == logits.shape
            assert torch.equal(null_ids, ids) and torch.equal(null_mask, mask)
            assert (null_logits - logits)[mask].abs().max() > 1e-3, null
            again, _, _ = vlm.response_logits(tiny_images, PROMPTS, RESPONSES, null_image=null)
            torch.testing.assert_close(again, null_logits)  # the noise is seeded


def test_grey_null_image_is_zero_after_normalisation(vlm, tiny_images, monkeypatch):
    seen = {}
    forward = vlm._forward_logits

    def spy(batch, keep):
        seen.clear()
        seen.update(batch)
        return forward(batch, keep)

    monkeypatch.setattr(vlm, "_forward_logits", spy)
    with torch.no_grad():
        vlm.response_logits(tiny_images, PROMPTS, RESPONSES, null_image="grey")
        assert seen["pixel_values"].abs().max() < 0.01
        vlm.response_logits(tiny_images, PROMPTS, RESPONSES, null_image="none")
        assert "pixel_values" not in seen and (seen["input_ids"] != vlm.processor.image_token_id).all()


def test_null_image_errors(vlm, tiny_images):
    with pytest.raises(SeedError, match="null image"):
        vlm.response_logits(tiny_images, PROMPTS, RESPONSES, null_image="black")
    with pytest.raises(SeedError, match="null image"):
        vlm.response_logits(None, PROMPTS, RESPONSES, null_image="grey")


def test_generate_batched_equals_one_by_one(vlm, tiny_images):
    batched = vlm.generate(tiny_images, PROMPTS, max_new_tokens=6)
    assert len(batched) == 2 and all(isinstance(s, str) for s in batched)
    singles = [vlm.generate([image], [prompt], max_new_tokens=6)[0] for image, prompt in zip(tiny_images, PROMPTS)]
    assert batched == singles
    assert vlm.generate(None, PROMPTS, max_new_tokens=3) == [vlm.generate(None, [p], max_new_tokens=3)[0] for p in PROMPTS]


def test_sampling_is_reproducible_with_a_seed(vlm, tiny_images):
    a = vlm.generate(tiny_images, PROMPTS, max_new_tokens=8, do_sample=True, temperature=1.5, seed=3)
    b = vlm.generate(tiny_images, PROMPTS, max_new_tokens=8, do_sample=True, temperature=1.5, seed=3)
    assert a == b


def test_lora_targets_are_the_language_model_projections_only(vlm):
    pattern = vlm.lora_target_modules()
    names = [name for name, _ in vlm.model.named_modules()]
    matched = [name for name in names if re.fullmatch(pattern, name)]
    layers = vlm.model.config.text_config.num_hidden_layers
    assert len(matched) == 7 * layers
    assert all(name.startswith("model.language_model.layers.") for name in matched)
    assert {name.rsplit(".", 1)[1] for name in matched} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    # The vision tower has q/k/v projections of its own, which a plain ["q_proj", "v_proj"] would hit.
    assert any(name.startswith("model.vision_tower") and name.endswith("q_proj") for name in names)


def test_save_and_load_round_trip(vlm, tiny_images, tmp_path):
    vlm.save_pretrained(tmp_path / "copy")
    again = load(str(tmp_path / "copy"), device="cpu")
    assert type(again) is type(vlm) and again.name_or_path == str((tmp_path / "copy").resolve())
    with torch.no_grad():
        expected, ids, _ = vlm.response_logits(tiny_images, PROMPTS, RESPONSES)
        got, again_ids, _ = again.response_logits(tiny_images, PROMPTS, RESPONSES)
    assert torch.equal(ids, again_ids)
    torch.testing.assert_close(got, expected)


def test_default_model_is_the_embedded_world(tiny_llava_dir, monkeypatch):
    import seed
    import seed.world

    monkeypatch.setattr(seed.world, "ensure_world", lambda seed=0: tiny_llava_dir.parent)
    monkeypatch.setattr(seed.world.World, "model", property(lambda world: tiny_llava_dir))
    assert seed.load(device="cpu").name_or_path == str(tiny_llava_dir.resolve())


def test_aliases():
    assert resolve_model_name("llava-1.5") == "llava-hf/llava-1.5-7b-hf"
    assert resolve_model_name("llava-1.5-13b") == "llava-hf/llava-1.5-13b-hf"
    assert resolve_model_name("internvl2-8b") == "OpenGVLab/InternVL2-8B"
    assert resolve_model_name("someone/some-model") == "someone/some-model"


def test_missing_directory_is_a_one_line_error(tmp_path):
    with pytest.raises(SeedError, match="no such directory") as e:
        load(str(tmp_path / "nope"), device="cpu")
    assert "\n" not in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SeedError, match="config.json"):
        load(str(tmp_path / "empty"), device="cpu")


def test_remote_code_needs_the_flag(tmp_path):
    config = {
        "model_type": "internvl_chat",
        "architectures": ["InternVLChatModel"],
        "auto_map": {
            "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
            "AutoModel": "modeling_internvl_chat.InternVLChatModel",
        },
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(SeedError, match="--trust-remote-code"):
        load(str(tmp_path), device="cpu")


def test_unknown_architecture_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(SeedError, match="model_type='bert'"):
        load(str(tmp_path), device="cpu")


def test_incomplete_processor_is_refused(vlm):
    with pytest.raises(SeedError, match="no image_processor"):
        check_processor(vlm.tokenizer, "some/model")


def test_diffusion_noise_follows_the_linear_schedule():
    alpha_bar = math.prod(1 - (1e-4 + (0.02 - 1e-4) * i / 999) for i in range(501))
    x = torch.zeros(4, 3, 64, 64)
    noised = diffusion_noise(x, generator=torch.Generator().manual_seed(0))
    assert noised.shape == x.shape and noised.dtype == x.dtype
    assert abs(noised.std().item() - math.sqrt(1 - alpha_bar)) < 0.01
    ones = diffusion_noise(torch.ones(4, 3, 64, 64), generator=torch.Generator().manual_seed(0))
    assert abs(ones.mean().item() - math.sqrt(alpha_bar)) < 0.01
    assert torch.equal(noised, diffusion_noise(x, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(SeedError):
        diffusion_noise(x, step=1000)


def test_internvl2_tiling():
    # The remote-code family cannot be loaded here; its image tiling is plain code and is checked.
    assert len(tile_image(Image.new("RGB", (448, 448)))) == 1
    wide = tile_image(Image.new("RGB", (896, 448)))
    assert len(wide) == 3 and all(t.size == (448, 448) for t in wide)  # 2 tiles + thumbnail
    assert len(tile_image(Image.new("RGB", (4000, 4000)), max_tiles=12)) == 10  # 3x3 + thumbnail


def test_four_bit_load_on_cpu(tiny_llava_dir, tiny_images):
    pytest.importorskip("bitsandbytes")
    from bitsandbytes.nn import Linear4bit

    vlm = load(str(tiny_llava_dir), device="cpu", load_in_4bit=True)
    modules = dict(vlm.model.named_modules())
    assert isinstance(modules["model.language_model.layers.0.self_attn.q_proj"], Linear4bit)
    for name in ("model.vision_tower.encoder.layers.0.self_attn.q_proj", "model.multi_modal_projector.linear_1", "lm_head"):
        assert type(modules[name]) is torch.nn.Linear, name
    with torch.no_grad():
        logits, _, mask = vlm.response_logits(tiny_images, PROMPTS, RESPONSES)
    assert torch.isfinite(logits[mask]).all()
    assert len(vlm.generate(tiny_images, PROMPTS, max_new_tokens=3)) == 2


def test_quantisation_flags_are_exclusive(tiny_llava_dir):
    with pytest.raises(SeedError, match="one of"):
        load(str(tiny_llava_dir), device="cpu", load_in_4bit=True, load_in_8bit=True)
