"""Scoring models: loss, perplexity and bits per byte on corpora, and multiple-choice tasks. Used by the training
loop, as the registry components of ``in_loop``, and by ``llm_gym evaluate`` (``llm_gym.inference.evaluation``).

Read in this order: ``text_bytes`` (what a byte is), ``language_modeling``, ``multiple_choice`` (the task format
and its scoring), ``task_formats`` (published files), ``code_lines`` (the task made from the demo corpus),
``in_loop`` (the evaluators a run's config lists).
"""
