"""Where the outbox relay publishes items: the Redis stream and the webhook.

Both are at-least-once: the relay (``serving.triggered.Triggered.relay_once``) marks an item
delivered only after the sink took it, so a crash between the two publishes it again; a
consumer deduplicates with ``outbox_id`` (the webhook sends it as ``Idempotency-Key``). Items
are delivered in outbox order: a sink that refuses one stops there, and the relay tries again
from that item in its next round.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

logger = logging.getLogger(__name__)

#: HTTP statuses worth retrying (the receiver may take the item later).
RETRYABLE: Final = frozenset({408, 425, 429, 500, 502, 503, 504})


def stream_key(environment: str) -> str:
    """The outbox stream of a deployment: ``nba:<NBA_ENVIRONMENT>:outbox`` (contract)."""
    return f"nba:{environment}:outbox"


class StreamSink:
    """XADD each item to a Redis stream (fields ``outbox_id`` and ``item``, the JSON).

    Args:
        client: a ``redis.Redis`` with socket timeouts (``serving.history.redis_client``).
        key: the stream (``stream_key``).
        maxlen: approximate bound of the stream's length (None: unbounded); the outbox table
            stays the durable record.
    """

    column = "streamed"

    def __init__(self, client: Any, key: str, maxlen: int | None = 1_000_000) -> None:
        self.client = client
        self.key = key
        self.maxlen = maxlen

    def send(self, items: Sequence[Mapping[str, Any]]) -> list[int]:
        try:
            pipe = self.client.pipeline(transaction=False)
            for item in items:
                fields = {"outbox_id": item["outbox_id"], "item": json.dumps(dict(item))}
                pipe.xadd(self.key, fields, maxlen=self.maxlen, approximate=True)
            pipe.execute()
        except Exception as error:  # Redis down: nothing marked, published again later
            logger.warning("outbox stream %s unreachable (%s): will retry", self.key,
                           type(error).__name__)  # fmt: skip
            return []
        return [int(item["seq"]) for item in items]


def post_json(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int:
    """POST ``body``; the HTTP status (raises ``OSError`` when the receiver is unreachable)."""
    request = urllib.request.Request(url, data=body, method="POST", headers=dict(headers))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


class WebhookSink:
    """One POST per item to ``url`` with ``Idempotency-Key: <outbox_id>``.

    A failed POST (unreachable, timeout, 408/425/429/5xx) is retried with exponential backoff,
    ``backoff`` seconds doubling up to ``max_backoff``, at most ``attempts`` times in one round;
    then the round stops there (order kept) and the next one starts again from that item. Any
    other 4xx is the receiver refusing the item for good: logged as an error and not retried
    (retrying would block every later item behind it forever).
    """

    column = "posted"

    def __init__(
        self,
        url: str,
        timeout: float = 5.0,
        attempts: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        post: Callable[[str, bytes, Mapping[str, str], float], int] = post_json,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._post = post
        self._sleep = sleep

    def send(self, items: Sequence[Mapping[str, Any]]) -> list[int]:
        done: list[int] = []
        for item in items:
            if not self._deliver(item):
                break
            done.append(int(item["seq"]))
        return done

    def _deliver(self, item: Mapping[str, Any]) -> bool:
        body = json.dumps(dict(item)).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": str(item["outbox_id"])}
        for attempt in range(self.attempts):
            try:
                status = self._post(self.url, body, headers, self.timeout)
            except OSError as error:
                status, why = 0, type(error).__name__
            else:
                why = f"HTTP {status}"
            if 200 <= status < 300:
                return True
            if status and status not in RETRYABLE:
                logger.error("webhook refused outbox item %s for good (%s): not retried",
                             item["outbox_id"], why)  # fmt: skip
                return True
            if attempt + 1 < self.attempts:
                self._sleep(min(self.backoff * 2**attempt, self.max_backoff))
        logger.warning("webhook did not take outbox item %s after %d attempts (%s): will retry",
                       item["outbox_id"], self.attempts, why)  # fmt: skip
        return False
