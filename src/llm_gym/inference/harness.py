"""lm-evaluation-harness on llm_gym checkpoints: its model interface (``lm_eval.api.model.LM``), registered as
``llm_gym``, and ``run_harness_tasks`` behind ``llm_gym evaluate --harness_tasks``.

An optional extra (``pip install 'llm_gym[harness]'``): importing this module needs ``lm_eval``.

- ``loglikelihood``: each continuation's summed log-probability after its context, and whether it is the greedy
  continuation (``multiple_choice.continuation_log_likelihoods``, as llm_gym's own tasks score it);
- ``loglikelihood_rolling``: a whole text's log-probability, in windows of the model's ``sequence_length``, the
  first token predicted after the end-of-document token;
- ``generate_until``: greedy (or, with ``do_sample``, seeded) generation with the KV cache, cut at the first stop
  string or after ``max_gen_toks`` tokens.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lm_eval
import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.tasks import TaskManager

from llm_gym.errors import UserError
from llm_gym.evaluation.multiple_choice import continuation_log_likelihoods, encode_pair
from llm_gym.inference.generation import stream_tokens
from llm_gym.inference.trained_model import TrainedModel, load_trained_model

DEFAULT_MAX_GEN_TOKS = 256


@register_model("llm_gym")
class LLMGymLM(LM):
    """``lm_eval --model llm_gym --model_args checkpoint_path=DIR`` once this module is imported, or
    ``LLMGymLM(trained=load_trained_model(...))`` from Python."""

    def __init__(
        self,
        checkpoint_path: str | None = None,
        trained: TrainedModel | None = None,
        batch_size: int | str = 8,
        device: str | None = None,
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        **_harness_options: Any,
    ):
        super().__init__()
        if trained is None:
            if checkpoint_path is None:
                raise UserError("the llm_gym harness model needs checkpoint_path=DIR")
            trained = load_trained_model(Path(checkpoint_path), device or "cpu")
        self.model, self.tokenizer = trained.model, trained.load_tokenizer()
        self.model_device = next(self.model.parameters()).device
        self.batch_size = 8 if str(batch_size).startswith("auto") else int(batch_size)
        self.max_gen_toks = max_gen_toks

    def loglikelihood(self, requests: Sequence[Any]) -> list[tuple[float, bool]]:
        pairs = [encode_pair(self.tokenizer, *request.args) for request in requests]
        return continuation_log_likelihoods(
            self.model, pairs, self.model.sequence_length, self.batch_size, self.model_device
        )

    def loglikelihood_rolling(self, requests: Sequence[Any]) -> list[float]:
        length = self.model.sequence_length
        totals = []
        for request in requests:
            (text,) = request.args
            tokens = self.tokenizer.encode(text)
            # Window i predicts tokens [i·L, (i+1)·L) after the one before them (the end-of-document token first).
            windows = [
                ([tokens[start - 1] if start else self.tokenizer.eos_id], tokens[start : start + length])
                for start in range(0, len(tokens), length)
            ]
            scores = continuation_log_likelihoods(self.model, windows, length, self.batch_size, self.model_device)
            totals.append(sum(score for score, _ in scores))
        return totals

    def generate_until(self, requests: Sequence[Any]) -> list[str]:
        return [self._generate(context, dict(options)) for context, options in (request.args for request in requests)]

    def _generate(self, context: str, options: dict[str, Any]) -> str:
        until = options.pop("until", None) or []
        stops = [until] if isinstance(until, str) else list(until)
        max_new_tokens = int(options.pop("max_gen_toks", self.max_gen_toks))
        sampling = bool(options.pop("do_sample", False))
        temperature = float(options.pop("temperature", 0.0)) if sampling else 0.0
        prompt = (self.tokenizer.encode(context) or [self.tokenizer.eos_id])[-self.model.sequence_length :]
        generator = torch.Generator(self.model_device).manual_seed(0)
        new_ids: list[int] = []
        text = ""
        for token in stream_tokens(
            self.model,
            torch.tensor([prompt], device=self.model_device),
            max_new_tokens,
            temperature,
            generator=generator,
            eos_id=self.tokenizer.eos_id,
        ):
            if int(token) == self.tokenizer.eos_id:
                break
            new_ids.append(int(token))
            text = self.tokenizer.decode(new_ids)
            if any(stop in text for stop in stops):
                break
        cut = min((text.index(stop) for stop in stops if stop in text), default=len(text))
        return text[:cut]


def _plain_metrics(results: dict[str, Any]) -> dict[str, float]:
    """``acc,none`` → ``acc``; standard errors and non-numbers left out."""
    return {
        key.removesuffix(",none"): float(value)
        for key, value in results.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and "_stderr" not in key
    }


def run_harness_tasks(
    trained: TrainedModel,
    tasks: Sequence[str],
    batch_size: int,
    include_path: Path | None = None,
    limit: int | None = None,
) -> dict[str, dict[str, float]]:
    """Each task's metrics from ``lm_eval.simple_evaluate``; ``include_path`` adds a directory of task YAML files
    (local data files, no download)."""
    manager = TaskManager(include_path=str(include_path) if include_path else None)
    unknown = [task for task in tasks if not manager.match_tasks([task])]
    if unknown:
        raise UserError(
            f"lm-evaluation-harness has no task {unknown[0]}"
            + ("" if include_path else "; a task of your own needs --harness_include_path DIR")
        )
    results = lm_eval.simple_evaluate(
        model=LLMGymLM(trained=trained, batch_size=batch_size),
        tasks=list(tasks),
        task_manager=manager,
        limit=limit,
        bootstrap_iters=0,
        log_samples=False,
    )
    return {task: _plain_metrics(metrics) for task, metrics in sorted(results["results"].items())}
