"""The prompts seed asks a model, defined once: the caption prompt, the short-answer suffixes
of the two POPE protocols, and the object question."""

CAPTION_PROMPT = "Please describe this image in detail."
SHORT_ANSWER_SUFFIX = "\nAnswer the question using a single word or phrase."  # LLaVA-1.5's, POPE greedy
ONE_WORD_SUFFIX = " Please answer this question with one word."  # POPE sampling
PROTOCOLS = {"greedy": SHORT_ANSWER_SUFFIX, "sampling": ONE_WORD_SUFFIX}


def object_question(name: str) -> str:
    """The POPE question about one object ("an" before a vowel)."""
    article = "an" if name[:1].lower() in "aeiou" else "a"
    return f"Is there {article} {name} in the image?"


def probe_question(category: str) -> str:
    """The self-probe: the POPE question with the short-answer suffix."""
    return object_question(category) + SHORT_ANSWER_SUFFIX
