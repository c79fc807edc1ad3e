"""Multiple-choice tasks from local files: llm_gym's own JSONL, and the published files of HellaSwag, ARC and PIQA.

Nothing is downloaded: the user points at files they have. Each published format is read as its authors
release it and also as the Hugging Face datasets rows of the same task (exported with ``to_json``), and is
turned into a context and choices the way lm-evaluation-harness words them, so accuracies compare.

- ``jsonl``: ``{"context": str, "choices": [str, ...], "gold": int}`` a line.
- ``hellaswag``: ``hellaswag_val.jsonl`` (``activity_label``, ``ctx_a``, ``ctx_b``, ``endings``, ``label``).
- ``arc``: ``ARC-Easy-Test.jsonl`` / ``ARC-Challenge-Test.jsonl`` (``question.stem``, ``question.choices``,
  ``answerKey``), or rows with ``question``, ``choices.text``, ``choices.label``, ``answerKey``.
- ``piqa``: ``valid.jsonl`` (``goal``, ``sol1``, ``sol2``) with its labels in ``valid-labels.lst`` beside it
  (one 0/1 a line), or rows that carry ``label`` themselves.
- ``code_lines``: a demo-corpus JSONL (``{"text": ...}`` a line, ``.jsonl.gz`` too), from which ``code_lines``
  makes the task.
"""

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from llm_gym.data.inputs import iter_texts
from llm_gym.errors import MissingInputError, UserError
from llm_gym.evaluation.code_lines import code_line_examples
from llm_gym.evaluation.multiple_choice import MultipleChoiceExample


def _json_lines(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, object)`` for each non-blank line; ``where`` is ``path:line`` for messages."""
    if not path.is_file():
        raise MissingInputError(f"task file {path} does not exist")
    try:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise UserError(f"{where}: not valid JSON ({error.msg})") from None
                if not isinstance(row, dict):
                    raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
                yield where, row
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def _field(row: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = row
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise UserError(f"{where}: missing '{key}'")
        value = value[part]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise UserError(f"{where}: '{key}' must be {names}, got {type(value).__name__}")
    return value


def _strings(values: list[Any], key: str, where: str) -> tuple[str, ...]:
    if len(values) < 2 or not all(isinstance(value, str) for value in values):
        raise UserError(f"{where}: '{key}' must be a list of at least 2 strings")
    return tuple(values)


def _example(context: str, choices: tuple[str, ...], gold: int, where: str) -> MultipleChoiceExample:
    if not 0 <= gold < len(choices):
        raise UserError(f"{where}: the right answer {gold} is not the index of one of the {len(choices)} choices")
    return MultipleChoiceExample(context, choices, gold)


def read_jsonl_task(path: Path) -> list[MultipleChoiceExample]:
    examples = []
    for where, row in _json_lines(path):
        choices = _strings(_field(row, "choices", list, where), "choices", where)
        examples.append(_example(_field(row, "context", str, where), choices, _field(row, "gold", int, where), where))
    return examples


def _hellaswag_text(text: str) -> str:
    # WikiHow's contexts carry markup; lm-evaluation-harness removes it the same way.
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def read_hellaswag(path: Path) -> list[MultipleChoiceExample]:
    examples = []
    for where, row in _json_lines(path):
        ctx_b = _field(row, "ctx_b", str, where)
        context = _field(row, "ctx_a", str, where) + " " + ctx_b[:1].upper() + ctx_b[1:]
        query = _hellaswag_text(_field(row, "activity_label", str, where) + ": " + context)
        endings = _strings(_field(row, "endings", list, where), "endings", where)
        label = _field(row, "label", (int, str), where)
        if isinstance(label, str) and not label.isdigit():
            raise UserError(f"{where}: 'label' must be the index of the right ending, got {label!r}")
        choices = tuple(" " + _hellaswag_text(ending) for ending in endings)
        examples.append(_example(query, choices, int(label), where))
    return examples


def read_arc(path: Path) -> list[MultipleChoiceExample]:
    examples = []
    for where, row in _json_lines(path):
        question = _field(row, "question", (dict, str), where)
        if isinstance(question, dict):  # the AI2 release
            stem = _field(row, "question.stem", str, where)
            options = _field(row, "question.choices", list, where)
            if not all(isinstance(option, dict) for option in options):
                raise UserError(f"{where}: 'question.choices' must be a list of {{text, label}} objects")
            texts = [option.get("text") for option in options]
            labels = [option.get("label") for option in options]
        else:  # the Hugging Face rows
            stem = question
            texts = _field(row, "choices.text", list, where)
            labels = _field(row, "choices.label", list, where)
        answer = _field(row, "answerKey", str, where)
        choices = _strings(texts, "choices", where)
        if answer not in labels:
            raise UserError(f"{where}: answerKey {answer!r} is not one of the choice labels {labels}")
        examples.append(
            _example(f"Question: {stem}\nAnswer:", tuple(" " + text for text in choices), labels.index(answer), where)
        )
    return examples


def _piqa_labels(path: Path) -> list[int] | None:
    labels_path = path.with_name(path.name.removesuffix(".jsonl") + "-labels.lst")
    if not labels_path.is_file():
        return None
    labels = []
    for number, line in enumerate(labels_path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip() not in ("0", "1"):
            raise UserError(f"{labels_path}:{number}: a PIQA label is 0 or 1, got {line.strip()!r}")
        labels.append(int(line))
    return labels


def read_piqa(path: Path) -> list[MultipleChoiceExample]:
    rows = list(_json_lines(path))
    labels = _piqa_labels(path)
    if labels is not None and len(labels) != len(rows):
        raise UserError(f"{path}: {len(rows)} questions but {len(labels)} labels in its -labels.lst file")
    examples = []
    for index, (where, row) in enumerate(rows):
        if labels is not None:
            label = labels[index]
        elif "label" in row:
            label = _field(row, "label", int, where)
        else:
            raise UserError(f"{where}: no 'label', and no {path.name.removesuffix('.jsonl')}-labels.lst beside it")
        goal = _field(row, "goal", str, where)
        choices = (" " + _field(row, "sol1", str, where), " " + _field(row, "sol2", str, where))
        examples.append(_example(f"Question: {goal}\nAnswer:", choices, label, where))
    return examples


def read_code_lines(path: Path) -> list[MultipleChoiceExample]:
    return code_line_examples(list(iter_texts([path], "text")))


TASK_FORMATS: dict[str, Callable[[Path], list[MultipleChoiceExample]]] = {
    "jsonl": read_jsonl_task,
    "hellaswag": read_hellaswag,
    "arc": read_arc,
    "piqa": read_piqa,
    "code_lines": read_code_lines,
}


def load_task(task_format: str, path: Path, max_examples: int | None = None) -> list[MultipleChoiceExample]:
    """The task's first ``max_examples`` examples (all if None); a ``UserError`` names a bad file and line."""
    if task_format not in TASK_FORMATS:
        raise UserError(f"unknown task format '{task_format}'; known: {', '.join(TASK_FORMATS)}")
    examples = TASK_FORMATS[task_format](Path(path))
    if not examples:
        raise UserError(f"task file {path} holds no examples")
    return examples[:max_examples]
