"""Task files as published (HellaSwag, ARC, PIQA), llm_gym's JSONL, the code-line task, and their bad inputs."""

import json

import pytest

from llm_gym.errors import UserError
from llm_gym.evaluation.code_lines import CHOICES, code_line_examples
from llm_gym.evaluation.multiple_choice import MultipleChoiceExample
from llm_gym.evaluation.task_formats import load_task


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_llm_gym_jsonl(tmp_path):
    path = _jsonl(tmp_path / "task.jsonl", [{"context": "1 + 1 =", "choices": [" 2", " 3"], "gold": 0}] * 3)
    assert load_task("jsonl", path) == [MultipleChoiceExample("1 + 1 =", (" 2", " 3"), 0)] * 3
    assert len(load_task("jsonl", path, max_examples=2)) == 2


def test_hellaswag_as_released(tmp_path):
    endings = [", the man [title] continues.", ", he stops.", " x", " y"]
    row = {"activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow.", "ctx_b": "then",
           "endings": endings, "label": 3}  # fmt: skip
    [example] = load_task("hellaswag", _jsonl(tmp_path / "hellaswag_val.jsonl", [row]))
    assert example.context == "Removing ice from car: Then, the man writes over the snow. Then"
    assert example.choices == (" , the man. continues.", " , he stops.", " x", " y")
    assert example.gold == 3


def test_arc_as_released_and_as_dataset_rows(tmp_path):
    released = {"id": "Q1", "answerKey": "B", "question": {"stem": "Which is a gas?", "choices": [
        {"text": "ice", "label": "A"}, {"text": "steam", "label": "B"}, {"text": "rock", "label": "C"}]}}  # fmt: skip
    rows = {"id": "Q1", "question": "Which is a gas?", "answerKey": "2",
            "choices": {"text": ["ice", "steam"], "label": ["1", "2"]}}  # fmt: skip
    [first] = load_task("arc", _jsonl(tmp_path / "ARC-Easy-Test.jsonl", [released]))
    [second] = load_task("arc", _jsonl(tmp_path / "arc_rows.jsonl", [rows]))
    assert first == MultipleChoiceExample("Question: Which is a gas?\nAnswer:", (" ice", " steam", " rock"), 1)
    assert second == MultipleChoiceExample("Question: Which is a gas?\nAnswer:", (" ice", " steam"), 1)


def test_piqa_with_its_labels_file(tmp_path):
    rows = [{"goal": "Open a jar", "sol1": "twist the lid", "sol2": "eat the lid"}] * 2
    path = _jsonl(tmp_path / "valid.jsonl", rows)
    (tmp_path / "valid-labels.lst").write_text("0\n1\n")
    examples = load_task("piqa", path)
    assert [example.gold for example in examples] == [0, 1]
    assert examples[0].context == "Question: Open a jar\nAnswer:"
    assert examples[0].choices == (" twist the lid", " eat the lid")


@pytest.mark.parametrize(
    ("task_format", "content", "message"),
    [
        ("jsonl", "{not json\n", r"task\.jsonl:1: not valid JSON"),
        ("jsonl", '[1, 2]\n', r"task\.jsonl:1: expected a JSON object"),
        ("jsonl", '{"context": "a", "choices": ["b"], "gold": 0}\n', r"'choices' must be a list of at least 2"),
        ("jsonl", '{"context": "a", "choices": ["b", "c"], "gold": 2}\n', r"task\.jsonl:1: the right answer 2"),
        ("jsonl", '{"context": "a", "choices": ["b", "c"], "gold": true}\n', r"'gold' must be int"),
        ("jsonl", '{"choices": ["b", "c"], "gold": 0}\n', r"task\.jsonl:1: missing 'context'"),
        ("jsonl", "\n\n", r"holds no examples"),
        ("arc", '{"question": {"stem": "q", "choices": []}, "answerKey": "A"}\n', r"at least 2 strings"),
        ("piqa", '{"goal": "g", "sol1": "a", "sol2": "b"}\n', r"no 'label', and no task-labels\.lst"),
        ("hellaswag", '{"ctx_a": "a", "ctx_b": "b", "activity_label": "c", "endings": ["x", "y"], "label": "z"}\n',
         r"'label' must be the index"),
    ],
)  # fmt: skip
def test_a_bad_task_file_names_its_line(tmp_path, task_format, content, message):
    path = tmp_path / "task.jsonl"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_task(task_format, path)


def test_missing_and_non_utf8_task_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_task("jsonl", tmp_path / "absent.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes(b'{"context": "caf\xe9"}\n')
    with pytest.raises(UserError, match="not UTF-8"):
        load_task("jsonl", tmp_path / "latin1.jsonl")


def _source(name: str, body: int) -> str:
    return "\n".join([f"def {name}_function_{index}(argument_{index}):" for index in range(body)]
                     + [f"    value_{name}_{index} = compute_{index}(argument)" for index in range(body)])  # fmt: skip


def test_code_lines_hold_the_true_next_line_among_lines_of_other_files():
    documents = [_source(name, 12) for name in ("alpha", "beta", "gamma", "delta")]
    examples = code_line_examples(documents, num_examples=20, seed=0)
    assert len(examples) == 20 and examples == code_line_examples(documents, num_examples=20, seed=0)
    assert examples != code_line_examples(documents, num_examples=20, seed=1)
    for example in examples:
        assert len(example.choices) == CHOICES and len(set(example.choices)) == CHOICES
        right = example.choices[example.gold]
        owner = next(document for document in documents if f"\n{right}" in document)
        assert (example.context + right) in owner
        indentation = {choice[: len(choice) - len(choice.lstrip())] for choice in example.choices}
        assert len(indentation) == 1  # the same indentation: it gives nothing away
        assert all(choice not in owner for index, choice in enumerate(example.choices) if index != example.gold)


def test_code_lines_need_enough_lines():
    with pytest.raises(UserError, match="no code-line examples"):
        code_line_examples(["x = 1\ny = 2\n"])
