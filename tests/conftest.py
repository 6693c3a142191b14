"""Shared fixtures: every test fails if it logged an unhandled error
(magic-wormhole's ``observe_errors``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from twisted.logger import globalLogPublisher


@pytest.fixture(autouse=True)
def observe_errors() -> Iterator[None]:
    failures: list[dict] = []

    def observer(event: dict) -> None:
        if event.get("isError") or event.get("log_failure") is not None:
            failures.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        yield
    finally:
        globalLogPublisher.removeObserver(observer)
    if failures:
        from twisted.logger import formatEvent

        pytest.fail("errors were logged:\n" + "\n".join(formatEvent(e) for e in failures))
