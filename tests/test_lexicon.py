"""The object lexicon: plurals, multi-word names, synonyms, spans, colour/adjective rules, user lists."""

import pytest

from seed.errors import SeedError
from seed.lexicon import ObjectLexicon
from seed.vocabulary import COCO_CATEGORIES
from seed.world.vocab import CLASS_NAMES


@pytest.fixture(scope="module")
def lexicon():
    return ObjectLexicon.default()


def found(lexicon, text):
    return [(m.category, m.surface) for m in lexicon.find(text)]


def test_categories_are_coco_80_in_id_order(lexicon):
    assert len(COCO_CATEGORIES) == 80
    assert lexicon.categories == COCO_CATEGORIES


def test_every_coco_and_world_name_resolves_to_itself(lexicon):
    for name in COCO_CATEGORIES + tuple(CLASS_NAMES):
        assert lexicon.category_of(name) == name, name


def test_plurals_and_irregulars(lexicon):
    text = "People, men, women and children; mice, knives, buses, skis, benches, ponies, sheep."
    assert [c for c, _ in found(lexicon, text)] == [
        "person", "person", "person", "person", "mouse", "knife", "bus", "skis", "bench", "horse", "sheep",
    ]
    assert lexicon.category_of("tvs") == "tv"
    assert lexicon.category_of("policemen") == "person"


def test_multi_word_longest_match_first(lexicon):
    text = "Hot dogs, a traffic light, teddy bears, cell phones, a dining table, wine glasses and a microwave oven."
    assert found(lexicon, text) == [
        ("hot dog", "Hot dogs"),
        ("traffic light", "traffic light"),
        ("teddy bear", "teddy bears"),
        ("cell phone", "cell phones"),
        ("dining table", "dining table"),
        ("wine glass", "wine glasses"),
        ("microwave", "microwave oven"),
    ]
    # Parts on their own: "hot" names nothing, "dog", "bear", "table", "phone" and "oven" do.
    assert found(lexicon, "a hot day, a dog, a bear, a table, a phone, an oven") == [
        ("dog", "dog"), ("bear", "bear"), ("dining table", "table"), ("cell phone", "phone"), ("oven", "oven"),
    ]


def test_synonyms(lexicon):
    text = "A sofa, a puppy, a kitten, a motorbike, a fridge, a hair dryer and a laptop computer."
    assert [c for c, _ in found(lexicon, text)] == [
        "couch", "dog", "cat", "motorcycle", "refrigerator", "hair drier", "laptop",
    ]


def test_spans_point_into_the_original_text(lexicon):
    text = "  The Dog's  TEDDY-bear sat by two Traffic\nLights; a hot. Dog ran."
    mentions = lexicon.find(text)
    assert [(m.category, m.surface) for m in mentions] == [
        ("dog", "Dog"), ("teddy bear", "TEDDY-bear"), ("traffic light", "Traffic\nLights"), ("dog", "Dog"),
    ]
    for m in mentions:
        assert text[m.start : m.end] == m.surface
    # The possessive 's is not part of the span.
    assert text[mentions[0].end] == "'"


def test_punctuation_stops_multi_word_names(lexicon):
    assert found(lexicon, "It was hot, dog days.") == [("dog", "dog")]
    assert found(lexicon, "a teddy, bear") == [("teddy bear", "teddy"), ("bear", "bear")]


def test_orange_colour_versus_fruit(lexicon):
    assert found(lexicon, "An orange cat.") == [("cat", "cat")]
    assert found(lexicon, "A man in an orange and white shirt") == [("person", "man")]
    assert found(lexicon, "An orange on the plate.") == [("orange", "orange")]
    assert found(lexicon, "A boy holds an orange") == [("person", "boy"), ("orange", "orange")]
    assert found(lexicon, "Oranges, bananas and an orange apple") == [
        ("orange", "Oranges"), ("banana", "bananas"), ("apple", "apple"),
    ]


def test_baby_as_modifier(lexicon):
    assert found(lexicon, "A baby elephant next to a baby.") == [("elephant", "elephant"), ("person", "baby")]


def test_phrases_that_name_no_object(lexicon):
    assert found(lexicon, "A skier on the ski slope near a bus stop and the train tracks.") == [("person", "skier")]
    assert found(lexicon, "A bird's eye view of a bed of lettuce.") == []
    assert found(lexicon, "A bus at the bus stop.") == [("bus", "bus")]


def test_ambiguous_words_name_nothing(lexicon):
    assert found(lexicon, "A glass, a bag, a board and a computer.") == []


def test_user_list_file(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("# extra objects\nlamp\n\ndesk lamp: lamp\nsettee: couch  # a synonym\nlantern: light fixture\n")
    lexicon = ObjectLexicon.default(path)
    assert lexicon.categories[:80] == COCO_CATEGORIES
    assert lexicon.categories[80:] == ("lamp", "light fixture")
    text = "Two desk lamps, a lamp, a lantern and a light fixture by the settee."
    assert found(lexicon, text) == [
        ("lamp", "desk lamps"), ("lamp", "lamp"), ("light fixture", "lantern"),
        ("light fixture", "light fixture"), ("couch", "settee"),
    ]


def test_user_list_entries_override_and_extend():
    lexicon = ObjectLexicon.default(["glass: wine glass", "cup: vase", "rubber duck"])
    assert found(lexicon, "a glass, a cup and two rubber ducks") == [
        ("wine glass", "glass"), ("vase", "cup"), ("rubber duck", "rubber ducks"),
    ]
    # extended() returns a copy; the default is unchanged.
    assert found(ObjectLexicon.default(), "a cup") == [("cup", "cup")]


def test_user_list_errors(tmp_path):
    with pytest.raises(SeedError, match=r"missing\.txt: no such file"):
        ObjectLexicon.default(tmp_path / "missing.txt")
    path = tmp_path / "bad.txt"
    path.write_text("lamp\n: couch\n")
    with pytest.raises(SeedError, match=r"bad\.txt, line 2: ': couch' has no word before ':'"):
        ObjectLexicon.default(path)
    with pytest.raises(SeedError, match=r"entry 1: 'lamp:' has no category after ':'"):
        ObjectLexicon.default(["lamp:"])
    with pytest.raises(SeedError, match=r"'2' has no word"):
        ObjectLexicon.default(["2"])
