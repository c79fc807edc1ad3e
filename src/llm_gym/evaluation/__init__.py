"""Scoring models: loss, perplexity and bits per byte on corpora, multiple-choice tasks, and what ``llm_gym evaluate``
writes. Used by the ``evaluate`` command and, as registry components, by the training loop.

Read in this order: ``text_bytes`` (what a byte is), ``language_modeling``, ``multiple_choice`` (the task format
and its scoring), ``task_formats`` (published files), ``code_lines`` (the task made from the demo corpus),
``checkpoint`` (the command), ``report`` (its table and JSON).
"""
