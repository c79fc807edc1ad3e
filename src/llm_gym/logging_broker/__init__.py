"""Messages from the training loop to its loggers: a broker, its subscribers, and the curves plot.

A leaf package: it imports nothing from ``training``, ``checkpointing`` or ``cli``.
"""

from llm_gym.logging_broker.broker import MessageBroker, Subscriber
from llm_gym.logging_broker.messages import MetricsRecord, ProgressUpdate, TextMessage

__all__ = ["MessageBroker", "MetricsRecord", "ProgressUpdate", "Subscriber", "TextMessage"]
