"""Multiple-choice scoring: by hand for a tiny model, batched, on two ranks; the pairing of context and choice."""

import json

import pytest
import torch

from distributed import run_on_ranks
from llm_gym.data.tokenizer_training import train_bpe_tokenizer
from llm_gym.data.tokenizers import ByteTokenizer, load_tokenizer
from llm_gym.evaluation.multiple_choice import (
    MultipleChoiceExample,
    continuation_log_likelihoods,
    encode_pair,
    score_multiple_choice,
)
from models.model_builders import LLAMA_STYLE, build

BYTES = ByteTokenizer()
EXAMPLES = [
    MultipleChoiceExample("ab", ("c", "cd", "xyz"), 0),
    MultipleChoiceExample("hello ", ("world", "there"), 1),
    MultipleChoiceExample("", ("abc", "a"), 1),
    MultipleChoiceExample("x = 1\n", ("y = 2", "def"), 0),
    MultipleChoiceExample("0123456789abcdefghijk", ("lm", "zz"), 0),
]


def _model():
    return build(LLAMA_STYLE, vocab_size=257, sequence_length=16, seed=3).eval()


def _by_hand(model, context: str, choice: str) -> float:
    """Log-probability of the choice's bytes after the context's, one position at a time, no batching."""
    context_ids = BYTES.encode(context.rstrip()) or [BYTES.eos_id]
    choice_ids = BYTES.encode(context[len(context.rstrip()) :] + choice)
    tokens = (context_ids + choice_ids)[-17:]
    total = 0.0
    with torch.no_grad():
        log_probs = model(torch.tensor([tokens[:-1]])).log_softmax(-1)[0]
    for offset in range(len(choice_ids)):
        position = len(tokens) - 1 - len(choice_ids) + offset
        total += float(log_probs[position, tokens[position + 1]])
    return total


def test_a_task_scored_by_hand():
    model = _model()
    correct = correct_norm = 0
    for example in EXAMPLES:
        scores = [_by_hand(model, example.context, choice) for choice in example.choices]
        normalised = [score / len(choice) for score, choice in zip(scores, example.choices, strict=True)]
        correct += scores.index(max(scores)) == example.gold
        correct_norm += normalised.index(max(normalised)) == example.gold
    result = score_multiple_choice(model, BYTES, EXAMPLES, max_length=16, batch_size=3, device=torch.device("cpu"))
    assert (result.examples, result.correct, result.correct_norm) == (5, correct, correct_norm)
    assert result.chance == pytest.approx((1 / 3 + 1 / 2 * 4) / 5)
    assert result.metrics() == {"accuracy": correct / 5, "accuracy_norm": correct_norm / 5}


def test_log_likelihoods_do_not_depend_on_the_batch():
    model = _model()
    requests = [encode_pair(BYTES, example.context, choice) for example in EXAMPLES for choice in example.choices]
    alone = continuation_log_likelihoods(model, requests, 16, 1, torch.device("cpu"))
    batched = continuation_log_likelihoods(model, requests, 16, 4, torch.device("cpu"))
    assert [score for score, _ in alone] == pytest.approx([score for score, _ in batched], abs=1e-5)
    assert [greedy for _, greedy in alone] == [greedy for _, greedy in batched]
    assert alone[0][0] == pytest.approx(_by_hand(model, "ab", "c"), abs=1e-5)


def test_greedy_is_whether_each_choice_token_is_the_argmax():
    model = _model()
    context = BYTES.encode("abc")
    with torch.no_grad():
        best = int(model(torch.tensor([context]))[0, -1].argmax())
    [(_, greedy), (_, not_greedy)] = continuation_log_likelihoods(
        model, [(context, [best]), (context, [(best + 1) % 257])], 16, 2, torch.device("cpu")
    )
    assert greedy and not not_greedy


def test_whitespace_ending_the_context_moves_to_the_choice(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"text": "hello world, hello there, world peace\n" * 50}) + "\n")
    train_bpe_tokenizer([corpus], 300, tmp_path / "tokenizer.json")
    tokenizer = load_tokenizer(tmp_path / "tokenizer.json")
    context_ids, choice_ids = encode_pair(tokenizer, "hello ", "world")
    assert tokenizer.decode(context_ids) == "hello" and tokenizer.decode(choice_ids) == " world"
    assert context_ids + choice_ids == tokenizer.encode("hello world")
    assert encode_pair(tokenizer, "", "hello") == ([tokenizer.eos_id], tokenizer.encode("hello"))


def test_an_overlong_context_loses_its_start():
    model = _model()
    long_context = BYTES.encode("z" * 40 + "0123456789abcdefghijk")
    short_context = BYTES.encode("0123456789abcdefghijk")
    choice = BYTES.encode("lm")
    [(long_score, _), (short_score, _)] = continuation_log_likelihoods(
        model, [(long_context, choice), (short_context, choice)], 16, 2, torch.device("cpu")
    )
    assert long_score == pytest.approx(short_score, abs=1e-5)


def _score_on_this_rank():
    from llm_gym.parallel.distributed import init_distributed

    env = init_distributed("cpu")
    result = score_multiple_choice(_model(), BYTES, EXAMPLES, 16, 2, env.device, rank=env.rank, world_size=2)
    return result.examples, result.correct, result.correct_norm, result.chance


@pytest.mark.slow
def test_two_ranks_count_every_example_once():
    alone = score_multiple_choice(_model(), BYTES, EXAMPLES, 16, 2, torch.device("cpu"))
    for counts in run_on_ranks(_score_on_this_rank, 2):
        assert counts[:3] == (alone.examples, alone.correct, alone.correct_norm)
        assert counts[3] == pytest.approx(alone.chance)
