"""POPE (Li et al., EMNLP 2023): yes/no object probing.

``questions`` builds and reads question sets (the three COCO splits ship with the package, MIT,
RUCAIBox/POPE, together with the old 2910-question random split ``random.v2023-08`` so that
answers made for it are recognised); ``scoring`` parses answers, joins them to questions by
``question_id`` and scores them; ``run`` runs a model on them.
"""

from seed.evaluation.pope.questions import DATA_DIR, SHIPPED, SPLITS, QuestionSet, build_pope, load_questions, write_questions
from seed.config import DEFAULT_SEEDS, PopeConfig
from seed.evaluation.pope.run import answer_pope, answers_path, evaluate_pope, pope_prompt, question_sets
from seed.evaluation.pope.scoring import (
    METRIC_KEYS,
    PARSERS,
    answer_records,
    join_answers,
    load_answers,
    make_manifest,
    parse_answer,
    result_record,
    score,
    score_answers_file,
    score_pope_files,
    score_splits,
    write_answers,
    write_result,
)

__all__ = [
    "DATA_DIR", "DEFAULT_SEEDS", "METRIC_KEYS", "PARSERS", "SHIPPED", "SPLITS", "PopeConfig", "QuestionSet", "answer_pope", "answer_records",
    "answers_path", "build_pope", "evaluate_pope", "join_answers", "load_answers", "load_questions", "make_manifest", "parse_answer",
    "pope_prompt", "question_sets", "result_record", "score", "score_answers_file", "score_pope_files", "score_splits",
    "write_answers", "write_questions", "write_result",
]  # fmt: skip
