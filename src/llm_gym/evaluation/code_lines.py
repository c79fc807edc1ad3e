"""A multiple-choice task made from source code, with no download: which line comes next?

Made from held-out documents (the demo corpus's ``test.jsonl``), so a model trained on the other splits has
never seen them. Each example shows up to ``CONTEXT_LINES`` lines of a file and offers its true next line among
lines from other files with the same indentation, so indentation alone does not give the answer: the model
has to follow names, syntax and what the code is doing. Only lines that occur once in the whole input are
used, so no distractor is the right line in disguise. The examples depend only on the documents and the seed.
"""

import random
from collections import Counter, defaultdict
from collections.abc import Sequence

from llm_gym.errors import UserError
from llm_gym.evaluation.multiple_choice import MultipleChoiceExample

CONTEXT_LINES = 8
CHOICES = 4
EXAMPLES = 500
_LINE_LENGTHS = range(12, 101)
"""Characters of a usable line without its indentation: long enough to tell apart, short enough to read."""


def _indentation(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def code_line_examples(
    documents: Sequence[str], num_examples: int = EXAMPLES, seed: int = 0
) -> list[MultipleChoiceExample]:
    """Up to ``num_examples`` examples, in a seeded order, each with ``CHOICES`` choices."""
    document_lines = [text.splitlines() for text in documents]
    occurrences = Counter(line.strip() for lines in document_lines for line in lines)
    by_indentation: dict[str, list[tuple[int, str]]] = defaultdict(list)
    candidates = []
    for document, lines in enumerate(document_lines):
        for index, line in enumerate(lines):
            text = line.strip()
            if len(text) not in _LINE_LENGTHS or text.startswith("#") or occurrences[text] != 1:
                continue
            by_indentation[_indentation(line)].append((document, line))
            if sum(1 for previous in lines[max(0, index - CONTEXT_LINES) : index] if previous.strip()) >= 2:
                candidates.append((document, index))
    rng = random.Random(seed)
    rng.shuffle(candidates)
    examples = []
    for document, index in candidates:
        if len(examples) == num_examples:
            break
        line = document_lines[document][index]
        others = [other for owner, other in by_indentation[_indentation(line)] if owner != document]
        if len(others) < CHOICES - 1:
            continue
        choices = rng.sample(others, CHOICES - 1)
        gold = rng.randrange(CHOICES)
        choices.insert(gold, line)
        context = "\n".join(document_lines[document][max(0, index - CONTEXT_LINES) : index]) + "\n"
        examples.append(MultipleChoiceExample(context, tuple(choices), gold))
    if not examples:
        raise UserError(
            f"no code-line examples: the documents need lines of {_LINE_LENGTHS.start}-{_LINE_LENGTHS.stop - 1} "
            f"characters that occur once, with {CHOICES - 1} such lines of the same indentation in other documents"
        )
    return examples
