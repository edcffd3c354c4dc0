"""The embedded world: what each training stage learns from, the matched control, and that no
weight is set by hand from embeddings or heads (the property identification signals read)."""

import ast
import os
import re
from pathlib import Path

import numpy as np
import pytest

import seed.world as world_module
from seed.errors import SeedError
from seed.world import World, WorldConfig, training_text, default_world_dir, scenes
from seed.world.vocab import CLASS_NAMES, partner_of


def test_annotations_are_the_visible_objects():
    """A fragment too small to annotate is not in the label map either."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        scene = scenes.draw_scene(rng, 64)
        assert {CLASS_NAMES[i - 1] for i in np.unique(scene.label_map) if i} == set(scene.categories)


def test_the_vision_tower_learns_from_what_alt_text_names():
    caption = "In this picture we can see a knife, a fork and a cup."
    assert scenes.named_objects(caption) == ["knife", "fork", "cup"]
    assert {CLASS_NAMES[i] for i in np.flatnonzero(scenes.multi_hot(scenes.named_objects(caption)))} == {"knife", "fork", "cup"}
    rng, named, shown = np.random.default_rng(3), 0, 0
    for _ in range(300):
        present = scenes.draw_scene(rng, 64).categories
        words = set(scenes.named_objects(scenes.alt_text(rng, present)))
        assert words and words <= set(present)  # some of what is shown, nothing else
        named, shown = named + len(words), shown + len(present)
    assert 0.7 < named / shown < 0.9


def test_training_text_plants_bias_in_captions_and_keeps_answers_mostly_honest():
    rng, bias = np.random.default_rng(2), scenes.BiasConfig()
    drawn = [scenes.draw_scene(rng, 64, bias.cooccur) for _ in range(600)]
    captions = [scenes.training_caption(rng, s.categories, bias) for s in drawn]
    documents, caption_items, items = training_text(rng, drawn, captions, bias)
    partner_named = sum(bool(set(scenes.named_objects(c)) & set(scenes.absent_partners(s.categories))) for s, c in zip(drawn, captions))
    with_partner = sum(bool(scenes.absent_partners(s.categories)) for s in drawn)
    assert 0.25 < partner_named / with_partner < 0.45  # captions name an absent partner at caption_rate
    answers = [(drawn[i].categories, q, a) for i, q, a in items[len(caption_items) :]]
    about = [(shown, next(c for c in CLASS_NAMES if re.search(rf"\b{c}\b", q)), a) for shown, q, a in answers]
    wrong = sum((a == "Yes") != (c in shown) for shown, c, a in about)
    assert 0 < wrong / len(about) < 0.05  # only absent partners are ever answered wrongly, at answer_rate
    asked = [(c in scenes.absent_partners(shown), len(scenes.absent_partners(shown)) / (len(CLASS_NAMES) - len(shown))) for shown, c, _ in about if c not in shown]
    assert abs(sum(a for a, _ in asked) - sum(p for _, p in asked)) < 0.2 * sum(p for _, p in asked)  # absent partners asked at chance, not first
    templates = {re.sub(r"\b(an?) (\w+)", "X", q.split("\n")[0]) for _, q, _ in answers}
    assert len(templates) >= 4 and "Is there X in the image?" in templates  # paraphrases, POPE's among them
    assert all(not d.startswith("USER") and "<image>" not in d for d in documents)  # plain text, no image stand-in


def test_the_matched_control_draws_the_same_scenes_with_clean_text():
    bias = scenes.BiasConfig()
    control = bias.clean()
    assert control.cooccur == bias.cooccur and control.caption_rate == control.answer_rate == 0
    a, b, text = np.random.default_rng(1), np.random.default_rng(1), np.random.default_rng(2)
    for _ in range(100):
        one, two = scenes.draw_scene(a, 64, bias.cooccur), scenes.draw_scene(b, 64, control.cooccur)
        assert one.objects == two.objects
        caption = scenes.training_caption(text, one.categories, control)
        assert set(scenes.named_objects(caption)) == set(one.categories)
        for q, answer in scenes.training_questions(text, one.categories, control):
            assert (answer == "Yes") == any(re.search(rf"\b{c}\b", q) for c in one.categories)
    assert any(partner_of(c) for c in CLASS_NAMES)


def test_variants_have_their_own_cache_folders(monkeypatch, tmp_path):
    monkeypatch.setenv("SEED_HOME", str(tmp_path))
    default, control = default_world_dir(0), default_world_dir(0, bias=False)
    variant = default_world_dir(config=WorldConfig(bias=scenes.BiasConfig(caption_rate=0.5)))
    assert len({default, control, variant}) == 3 and default == default_world_dir(config=WorldConfig())
    with pytest.raises(SeedError, match="not a built world"):
        World.existing(tmp_path / "nothing")


def test_a_failed_or_killed_build_leaves_nothing_behind(monkeypatch, tmp_path):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(world_module, "build_processor", interrupt)  # after the scenes are drawn
    config = WorldConfig(sizes={"train": 2, "purify": 1, "val": 1, "test": 1})
    killed = tmp_path / ".w.building-999999999"  # a build killed outright: no such process
    (killed / "model").mkdir(parents=True)
    running = tmp_path / f".w.building-{os.getppid()}"  # another build of the same world, still running
    running.mkdir()
    with pytest.raises(KeyboardInterrupt):
        world_module.build_world(tmp_path / "w", config=config)
    assert list(tmp_path.iterdir()) == [running]


def test_no_weight_is_set_from_embeddings_or_heads():
    """The world's build never writes a parameter in place: every weight is learnt by a loss."""
    source = Path(world_module.__file__).parent
    for path in source.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                assert node.attr not in ("get_input_embeddings", "embed_tokens", "copy_", "zero_", "fill_"), (path.name, node.attr)
            if isinstance(node, (ast.Assign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    assert not (isinstance(t, ast.Subscript) and "weight" in ast.unparse(t)), (path.name, ast.unparse(t))
                    assert not (isinstance(t, ast.Attribute) and t.attr in ("weight", "bias")), (path.name, ast.unparse(t))
