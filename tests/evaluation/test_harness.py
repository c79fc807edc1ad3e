"""The lm-evaluation-harness adapter, offline: local task definitions on local data files."""

import json
import math
import re

import pytest
import torch
from click.testing import CliRunner

from llm_gym.cli import main
from llm_gym.data.tokenizers import ByteTokenizer
from llm_gym.evaluation.multiple_choice import MultipleChoiceExample, score_multiple_choice
from llm_gym.inference.trained_model import load_trained_model

pytest.importorskip("lm_eval")

ROWS = [
    {"context": "import js", "choices": ["on", "!!"], "gold": 0},
    {"context": "def f(x):\n    return", "choices": [" x", "]]]"], "gold": 0},
    {"context": "for i in", "choices": [" range(3):", "@@@@"], "gold": 1},
]
TEXTS = ["import json\nimport os\n" * 3, "x = 1\n"]

TASKS = """
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
{body}
"""
CHOICE = """output_type: multiple_choice
doc_to_text: "{{context}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{gold}}"
target_delimiter: ""
metric_list:
  - metric: acc
"""
ROLLING = """output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - metric: bits_per_byte
"""
GENERATION = """output_type: generate_until
doc_to_text: "{{context}}"
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 5
metric_list:
  - metric: exact_match
"""


@pytest.fixture
def task_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for name, rows, body in (
        ("local_choice", ROWS, CHOICE),
        ("local_text", [{"text": text} for text in TEXTS], ROLLING),
        ("local_generation", [{"context": "import js", "answer": "on"}], GENERATION),
    ):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        (tasks / f"{name}.yaml").write_text(TASKS.format(name=name, data=tmp_path / f"{name}.jsonl", body=body))
    return tasks


@pytest.mark.slow
def test_harness_tasks_score_as_llm_gym_does(tiny_run, task_dir, tmp_path):
    result = CliRunner().invoke(main, [
        "evaluate", "--checkpoint_path", str(tiny_run), "--harness_tasks", "local_choice,local_text,local_generation",
        "--harness_include_path", str(task_dir), "--output_path", str(tmp_path / "report.json"), "--device", "cpu",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    harness = json.loads((tmp_path / "report.json").read_text())["harness"]
    trained = load_trained_model(tiny_run)
    examples = [MultipleChoiceExample(row["context"], tuple(row["choices"]), row["gold"]) for row in ROWS]
    ours = score_multiple_choice(trained.model, ByteTokenizer(), examples, 32, 4, torch.device("cpu"))
    assert harness["local_choice"]["acc"] == pytest.approx(ours.accuracy)
    # bits per byte of the texts, every byte predicted after the one before, the first after the end of document.
    nats = 0.0
    for text in TEXTS:
        tokens = [256, *text.encode()]
        for start in range(0, len(tokens) - 1, 32):
            window = tokens[max(start - 1, 0) if start else 0 : start + 32 + 1][-33:]
            with torch.no_grad():
                log_probs = trained.model(torch.tensor([window[:-1]])).log_softmax(-1)[0]
            predicted = min(32, len(tokens) - 1 - start)
            nats -= float(log_probs[-predicted:].gather(-1, torch.tensor(window[-predicted:])[:, None]).sum())
    expected_bpb = nats / math.log(2) / sum(len(text.encode()) for text in TEXTS)
    assert harness["local_text"]["bits_per_byte"] == pytest.approx(expected_bpb, rel=1e-4)
    assert harness["local_generation"]["exact_match"] in (0.0, 1.0)
    assert re.search(r"^harness local_choice: (.*, )?acc \d\.\d{4}", result.output, re.MULTILINE), result.output


def test_unknown_harness_task_is_a_user_error(tiny_run, tmp_path):
    result = CliRunner().invoke(main, ["evaluate", "--checkpoint_path", str(tiny_run), "--harness_tasks",
                                       "no_such_task_anywhere", "--output_path", str(tmp_path / "r.json")])  # fmt: skip
    assert result.exit_code == 2 and "lm-evaluation-harness has no task no_such_task_anywhere" in result.stderr
