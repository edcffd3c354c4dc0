"""The embedded world's scenes: labels agree with annotations, and the control's text is clean."""

import re

import numpy as np

from seed.prompts import object_question
from seed.world import scenes
from seed.world.vocab import CLASS_NAMES


def test_vision_labels_are_the_annotations():
    """A fragment too small to annotate is not labelled either: the vision tower is never told
    to see an object that the captions and POPE treat as absent, nor the reverse."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        scene = scenes.draw_scene(rng, 64)
        labelled = {CLASS_NAMES[i - 1] for i in np.unique(scene.label_map) if i}
        assert labelled == set(scene.categories)
        image = scenes.image_targets(scene)
        assert {CLASS_NAMES[i] for i in np.flatnonzero(image)} == set(scene.categories)
        assert (scenes.patch_targets(scene.label_map, 8).max(0) <= image).all()


def test_the_control_text_names_only_what_the_image_shows():
    rng = np.random.default_rng(1)
    off = scenes.BiasConfig.off()
    for _ in range(200):
        present = scenes.draw_scene(rng, 64, off.cooccur).categories
        caption = scenes.training_caption(rng, present, off)
        assert set(re.findall(r"\w+", caption)) & set(CLASS_NAMES) == set(present)
        for q, a in scenes.training_questions(rng, present, off):
            assert (a == "Yes") == any(q == object_question(c) for c in present)
