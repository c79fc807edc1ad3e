"""The broker's dispatch and shutdown, and the loggers' registration."""

import pytest
from pydantic import ValidationError

from llm_gym.assembly import make_registry
from llm_gym.logging_broker import MessageBroker, MetricsRecord, ProgressUpdate, Subscriber, TextMessage
from llm_gym.logging_broker.console import Console
from llm_gym.logging_broker.metrics_file import MetricsJsonl
from llm_gym.registry.component import Component


class Recorder(Subscriber):
    def __init__(self, name: str, log: list, message_types: tuple[type, ...], fail_on_close: bool = False):
        self.name, self.log, self.message_types, self.fail_on_close = name, log, message_types, fail_on_close

    def consume(self, message):
        self.log.append((self.name, message))

    def close(self):
        self.log.append((self.name, "closed"))
        if self.fail_on_close:
            raise RuntimeError(f"{self.name} failed to close")


def test_messages_reach_the_subscribers_of_their_type_in_order():
    log = []
    broker = MessageBroker()
    broker.add_subscriber(Recorder("metrics", log, (MetricsRecord,)))
    broker.add_subscriber(Recorder("everything", log, (MetricsRecord, ProgressUpdate, TextMessage)))
    record, update, note = MetricsRecord(1, "train", {"loss": 2.0}), ProgressUpdate(1, 10, {}), TextMessage("hi")
    for message in (record, update, note):
        broker.publish(message)
    assert log == [("metrics", record), ("everything", record), ("everything", update), ("everything", note)]


def test_a_message_without_subscribers_is_dropped():
    MessageBroker().publish(TextMessage("nobody listens"))


def test_close_closes_every_subscriber_even_after_a_failure():
    log = []
    broker = MessageBroker(
        [Recorder("a", log, (), fail_on_close=True), Recorder("b", log, (), fail_on_close=True), Recorder("c", log, ())]
    )
    with pytest.raises(RuntimeError, match="a failed to close"):
        broker.close()
    assert log == [("a", "closed"), ("b", "closed"), ("c", "closed")]
    broker.close()  # already closed: nothing closes twice
    assert len(log) == 3


def test_the_context_manager_closes_on_error():
    log = []
    with pytest.raises(KeyError), MessageBroker([Recorder("a", log, (TextMessage,))]) as broker:
        broker.publish(TextMessage("before"))
        raise KeyError("training failed")
    assert log[-1] == ("a", "closed")


def build_logger(node: dict, experiment_dir, resume_step=None):
    registry = make_registry()
    validated = registry.validate(Component("logger"), node)
    extra_kwargs = {"experiment_dir": experiment_dir, "resolved_config": {"x": 1}, "resume_step": resume_step}
    return registry.build_component_by_config(validated, extra_kwargs=extra_kwargs)


def test_the_builtin_loggers_are_registered():
    assert make_registry().type_hint_names("logger") == ["Console", "MetricsJsonl", "TensorBoard", "WandB"]


@pytest.mark.parametrize(("type_hint", "cls"), [("Console", Console), ("MetricsJsonl", MetricsJsonl)])
def test_a_logger_node_builds_with_the_run_arguments(tmp_path, type_hint, cls):
    logger = build_logger({"type_hint": type_hint}, tmp_path)
    assert isinstance(logger, cls)
    logger.close()


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"type_hint": "Console", "config": {"progress": True}}, "progress"),
        ({"type_hint": "WandB", "config": {"mode": "cloud"}}, "'online', 'offline' or 'disabled'"),
        ({"type_hint": "Printer"}, "unknown type_hint 'Printer'"),
    ],
)
def test_a_bad_logger_node_is_refused(node, message):
    with pytest.raises(ValidationError, match=message):
        make_registry().validate(Component("logger"), node)
