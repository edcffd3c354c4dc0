"""The object lexicon: which words in a text name which object category.

Shared by CHAIR (``seed.evaluation.chair``) and the hallucination identifier, so that both
agree on what counts as an object mention. Categories are the 80 COCO categories, the
embedded world's classes (already COCO names) and anything a user adds.

Matching rules, in the order they apply:

* words are runs of letters; a possessive ``'s`` is dropped (``dog's`` → ``dog``);
  matching is case-insensitive and spans keep pointing into the original text;
* each word may be singularized — irregular plurals first (``people``, ``mice``,
  ``knives``), then the ``-men``, ``-ies``, ``-ves``, ``-es`` and ``-s`` rules; a
  singular form is used only if the lexicon knows it, so ``bus`` stays ``bus``;
* multi-word names are merged, longest match first, left to right (``hot dog`` before
  ``dog``, ``microwave oven`` before ``oven``); words of one name may be separated by
  spaces or hyphens (``teddy-bear``) but not by other punctuation;
* some phrases are known *not* to name an object and swallow their words
  (``ski slope``, ``bus stop``, ``train tracks``, ``toilet paper``, ``bed of``,
  ``bird's eye view``): they assert a place or a part, not the object;
* ``orange`` is the fruit only when it stands alone: at the end of a clause or before a
  function word (``an orange on the plate``). Before any other word it is read as the
  colour (``an orange cat``, ``orange and white shirt``). ``oranges`` is always the fruit;
* ``baby`` is a person only when not followed by an object word (``baby elephant``
  names an elephant).

Ambiguous words are left out rather than guessed: ``glass``, ``bag``, ``board``,
``computer``, ``baseball`` and ``football`` name no category on their own.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from seed.errors import SeedError
from seed.vocabulary import COCO_CATEGORIES, COLOUR_WORDS, FUNCTION_WORDS, IRREGULAR_PLURALS, NON_OBJECT_PHRASES, SYNONYMS

_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")
_POSSESSIVE = re.compile(r"['’]s$", re.IGNORECASE)
_JOINER = re.compile(r"[\s\-]*")  # what may separate the words of one name


@dataclass(frozen=True)
class Mention:
    """One object mention: ``text[start:end] == surface`` in the text given to ``find``."""

    category: str
    surface: str
    start: int
    end: int


@dataclass(frozen=True)
class _Word:
    norm: str  # lowercased, possessive dropped
    start: int
    end: int  # end of the word proper (before a possessive 's)
    raw_end: int  # end including the possessive


def _words(text: str) -> list[_Word]:
    out = []
    for m in _WORD.finditer(text):
        raw = m.group()
        word = _POSSESSIVE.sub("", raw)
        out.append(_Word(word.lower(), m.start(), m.start() + len(word), m.end()))
    return out


def _singular_candidates(word: str) -> list[str]:
    """``word`` and what it could be the plural of, most likely first."""
    out = [word]
    if word in IRREGULAR_PLURALS:
        out.append(IRREGULAR_PLURALS[word])
    if word.endswith("men"):
        out.append(word[:-3] + "man")
    if word.endswith("ies") and len(word) > 4:
        out.append(word[:-3] + "y")
    if word.endswith("ves") and len(word) > 4:
        out += [word[:-3] + "f", word[:-3] + "fe"]
    if word.endswith("es") and len(word) > 3:
        out.append(word[:-2])
    if word.endswith("s") and not word.endswith("ss") and len(word) > 2:
        out.append(word[:-1])
    return out


def _plurals(name: str) -> list[str]:
    """English plurals of a (possibly multi-word) name: its last word pluralized."""
    head, _, last = name.rpartition(" ")
    forms = [k for k, v in IRREGULAR_PLURALS.items() if v == last]
    if last.endswith(("s", "x", "z", "ch", "sh")):
        forms.append(last + "es")
    elif last.endswith("y") and last[-2:-1] not in ("a", "e", "i", "o", "u"):
        forms.append(last[:-1] + "ies")
    elif last.endswith("man"):
        forms.append(last[:-3] + "men")
    else:
        forms.append(last + "s")
    return [f"{head} {f}" if head else f for f in forms]


def _split_name(name: str) -> tuple[str, ...]:
    return tuple(w.norm for w in _words(name))


class ObjectLexicon:
    """Maps words and multi-word names to object categories; see the module docstring."""

    def __init__(self, names: Mapping[str, str | None], categories: Iterable[str]):
        """``names``: name → category (``None`` marks a phrase that names no object)."""
        self._names: dict[str, str | None] = dict(names)
        self._categories: tuple[str, ...] = tuple(dict.fromkeys(categories))
        self._phrases: dict[tuple[str, ...], str | None] = {}
        for name, category in self._names.items():
            key = _split_name(name)
            if not key:
                raise SeedError(f"object lexicon: {name!r} contains no word")
            self._phrases[key] = category
        self._vocab = {w for key in self._phrases for w in key}
        self._longest = max((len(key) for key in self._phrases), default=1)

    # ------------------------------------------------------------------ building
    @classmethod
    def default(cls, extra: str | Path | Iterable[str] | None = None) -> ObjectLexicon:
        """COCO's 80 categories with synonyms (the embedded world's classes are COCO categories), then ``extra``.

        ``extra`` is a text file or a list of lines, each ``word`` (a new category of its
        own) or ``word: category`` (``category`` may be an existing category or synonym,
        else it becomes a new category). Blank lines and ``#`` comments are skipped.
        """
        names: dict[str, str | None] = {}
        for category in COCO_CATEGORIES:
            names[category] = category
            for synonym in SYNONYMS.get(category, ()):
                names[synonym] = category
        for phrase in NON_OBJECT_PHRASES:
            names[phrase] = None
        lexicon = cls(names, COCO_CATEGORIES)
        if extra is not None:
            lexicon = lexicon.extended(_read_entries(extra))
        return lexicon

    def extended(self, entries: Iterable[str]) -> ObjectLexicon:
        """A copy with extra ``word`` / ``word: category`` entries; they override ours."""
        names = dict(self._names)
        categories = list(self._categories)
        added: dict[tuple[str, ...], str] = {}  # names this call introduced

        def resolve(name: str) -> str:
            return added.get(_split_name(name)) or self.category_of(name) or name

        for entry in entries:
            word, category = _parse_entry(entry)
            category = resolve(category if category is not None else word)
            names[word] = category
            added[_split_name(word)] = category
            if category not in categories:
                categories.append(category)
                names.setdefault(category, category)
                added.setdefault(_split_name(category), category)
        return ObjectLexicon(names, categories)

    # ------------------------------------------------------------------ lookup
    @property
    def categories(self) -> tuple[str, ...]:
        """All category names: COCO's 80 in id order, then any added ones."""
        return self._categories

    def category_of(self, name: str) -> str | None:
        """The category that ``name`` as a whole stands for (e.g. "tvs" → "tv"), or None."""
        words = _words(name)
        mentions = self.find(name)
        if words and len(mentions) == 1:
            m = mentions[0]
            if (m.start, m.end) == (words[0].start, words[-1].end):
                return m.category
        return None

    def surface_forms(self, category: str) -> list[str]:
        """Every way a text can name ``category``: its names and their plurals, each one the
        lexicon reads back as that category (e.g. "dog", "dogs", "puppy", "puppies")."""
        forms = []
        for name, c in self._names.items():
            if c == category:
                forms += [f for f in (name, *_plurals(name)) if self.category_of(f) == category]
        return list(dict.fromkeys(forms))

    def longer_names(self, surface: str) -> list[tuple[str, ...]]:
        """The words that, before ``surface``, make a longer name of something else: ("hot",) for
        "dog" (hot dog), ("teddy",) for "bear" (teddy bear)."""
        key = _split_name(surface)
        out = []
        for phrase, category in self._phrases.items():
            if len(phrase) > len(key) and phrase[-len(key) :] == key and category != self.category_of(surface):
                out.append(phrase[: -len(key)])
        return out

    def find(self, text: str) -> list[Mention]:
        """Every object mention in ``text``, left to right, with character spans into it."""
        words = _words(text)
        forms = [[f for f in _singular_candidates(w.norm) if f in self._vocab] for w in words]
        mentions: list[Mention] = []
        i = 0
        while i < len(words):
            hit = self._match_at(text, words, forms, i)
            if hit is None:
                i += 1
                continue
            length, category = hit
            if category is not None and not self._is_modifier(text, words, forms, i, length):
                start, end = words[i].start, words[i + length - 1].end
                mentions.append(Mention(category, text[start:end], start, end))
            i += length
        return mentions

    def _match_at(self, text, words, forms, i) -> tuple[int, str | None] | None:
        """The longest name starting at word ``i``: (its number of words, its category)."""
        for length in range(min(self._longest, len(words) - i), 0, -1):
            if any(_breaks(text, words[j], words[j + 1]) for j in range(i, i + length - 1)):
                continue
            for key in itertools.product(*forms[i : i + length]):
                if key in self._phrases:
                    return length, self._phrases[key]
        return None

    def _is_modifier(self, text, words, forms, i, length) -> bool:
        """True where a one-word name is used as an adjective (see the module docstring)."""
        if length != 1:
            return False
        following = _next_words(text, words, i, 2)
        if words[i].norm == "orange":  # "oranges" is always the fruit
            if not following:
                return False
            if following[0] in COLOUR_WORDS:
                return True
            if following[0] in ("and", "or"):
                return len(following) > 1 and following[1] in COLOUR_WORDS
            return following[0] not in FUNCTION_WORDS
        if "baby" in forms[i] and following:
            hit = self._match_at(text, words, forms, i + 1)
            return hit is not None and hit[1] is not None
        return False


def _breaks(text: str, left: _Word, right: _Word) -> bool:
    """True if anything but spaces or hyphens (or a possessive 's) separates two words."""
    return _JOINER.fullmatch(text, left.raw_end, right.start) is None


def _next_words(text: str, words: list[_Word], i: int, n: int) -> list[str]:
    """Up to ``n`` words after word ``i`` in the same clause (stops at punctuation)."""
    out = []
    for j in range(i, min(i + n, len(words) - 1)):
        if _breaks(text, words[j], words[j + 1]):
            break
        out.append(words[j + 1].norm)
    return out


def _parse_entry(entry: str) -> tuple[str, str | None]:
    """``word`` or ``word: category`` → (word, category or None), lowercased."""
    word, sep, category = entry.partition(":")
    word, category = word.strip().lower(), category.strip().lower()
    if not _split_name(word):
        raise SeedError(f"object lexicon entry {entry.strip()!r} has no word before ':'")
    if sep and not _split_name(category):
        raise SeedError(f"object lexicon entry {entry.strip()!r} has no category after ':'")
    return word, (category or None)


def _read_entries(extra: str | Path | Iterable[str]) -> list[str]:
    """Lines of a user lexicon (file or list), comments and blanks dropped, errors located."""
    if isinstance(extra, (str, Path)):
        path = Path(extra)
        if not path.is_file():
            raise SeedError(f"{path}: no such file (object lexicon)")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise SeedError(f"{path}: not UTF-8 text (object lexicon)") from None
        where = f"{path}, line"
    else:
        lines, where = list(extra), "object lexicon, entry"
    entries = []
    for n, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        word, sep, category = line.partition(":")
        if not _split_name(word):
            raise SeedError(f"{where} {n}: {line!r} has no word before ':'")
        if sep and not _split_name(category):
            raise SeedError(f"{where} {n}: {line!r} has no category after ':'")
        entries.append(line)
    return entries
