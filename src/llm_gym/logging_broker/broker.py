"""Publish/subscribe between the training loop and its loggers."""

from collections.abc import Iterable
from typing import Any, ClassVar


class Subscriber:
    """A consumer of messages. ``message_types`` lists the (exact) message classes it wants delivered."""

    message_types: ClassVar[tuple[type, ...]] = ()

    def consume(self, message: Any) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Flush and release what the subscriber holds; called once, by the broker."""


class MessageBroker:
    """Hands each published message to the subscribers of its type, in the order they were added."""

    def __init__(self, subscribers: Iterable[Subscriber] = ()) -> None:
        self._subscribers: list[Subscriber] = []
        # Looked up once per message: publish runs every optimizer step.
        self._by_type: dict[type, list[Subscriber]] = {}
        for subscriber in subscribers:
            self.add_subscriber(subscriber)

    def add_subscriber(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)
        for message_type in subscriber.message_types:
            self._by_type.setdefault(message_type, []).append(subscriber)

    def publish(self, message: Any) -> None:
        for subscriber in self._by_type.get(type(message), ()):
            subscriber.consume(message)

    def close(self) -> None:
        """Close every subscriber, even if one fails; the first failure is raised afterwards."""
        subscribers, self._subscribers, self._by_type = self._subscribers, [], {}
        first_error: BaseException | None = None
        for subscriber in subscribers:
            try:
                subscriber.close()
            except Exception as error:
                first_error = first_error or error
        if first_error is not None:
            raise first_error

    def __enter__(self) -> "MessageBroker":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
