"""llm_gym: distributed, reproducible pretraining of GPT-style language models from one YAML file."""

__version__ = "0.1.0"
