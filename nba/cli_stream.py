"""``nba consume``: events from a Redis stream, stored as ``/events`` stores them.

Registered on ``nba.cli.app`` by ``register`` (as ``nba.cli_monitoring`` is: ``nba.cli`` passes
its error type and helpers, since ``python -m nba.cli`` runs that module as ``__main__``).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from nba import output
from nba.settings import load_settings

console = output.err
#: ``nba.cli``'s error type and workspace preparation (``register``).
_CLI: dict[str, Any] = {}


def register(app: typer.Typer, quiet: Any, error: type[Exception], prepare: Any) -> None:
    """Add ``consume`` to ``app`` (``nba.cli`` calls it)."""
    _CLI.update(error=error, prepare=prepare)
    app.command()(quiet(consume))


def CliError(message: str) -> Exception:
    """``nba.cli.CliError(message)``: one message, exit code 2."""
    error: type[Exception] = _CLI["error"]
    return error(message)


def _prepare(settings: Any) -> Any:
    return _CLI["prepare"](settings)


def consume(
    stream: Annotated[
        str | None,
        typer.Option(
            help="Redis stream of events [NBA_CONSUME_STREAM; default "
            "nba:<NBA_ENVIRONMENT>:events]."
        ),
    ] = None,
    group: Annotated[
        str | None, typer.Option(help="Consumer group [NBA_CONSUME_GROUP; default nba].")
    ] = None,
    consumer: Annotated[
        str | None,
        typer.Option(help="This consumer's name; keep it across restarts (default: host name)."),
    ] = None,
    once: Annotated[bool, typer.Option(help="One round, then exit (cron, tests).")] = False,
) -> None:
    """Store events from a Redis stream as /events does (serving.consumer): a consumer group,
    XACK once stored, pending entries of a crashed consumer taken over."""
    import signal
    import socket
    import threading

    from serving.config import ServiceSettings
    from serving.consumer import EventConsumer, events_stream
    from serving.history import redis_client
    from serving.outbox import handle_flight
    from serving.runtime import Runtime

    settings = _prepare(load_settings())
    if settings.model_path is None:  # triggered decisions need the served model
        from nba.champion import NoChampionError, export_champion

        try:
            settings = settings.model_copy(update={"model_path": export_champion(settings).folder})
        except NoChampionError as error:
            raise CliError(str(error)) from None
    runtime = Runtime.start(ServiceSettings.of(settings))
    if runtime.problems:
        runtime.close()
        raise CliError("; ".join(runtime.problems))
    block_ms = 1000
    # The blocking read waits block_ms: the socket deadline is that plus the store deadline.
    client = redis_client(settings.redis_url, block_ms / 1000 + settings.store_timeout_seconds)
    name = consumer or socket.gethostname()
    reader = EventConsumer(
        client,
        stream or settings.consume_stream or events_stream(settings.environment),
        group or settings.consume_group,
        name,
        runtime.handle_event,
        lambda body: handle_flight(runtime, body),
        block_ms=block_ms,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    console.print(f"consuming {reader.stream} as {reader.group}/{name}")
    try:
        reader.ensure_group()
        if once:
            tally = reader.run_once()
            if runtime.triggered is not None:
                runtime.triggered.settle()  # the triggers of what was read are decided
        else:
            try:
                tally = reader.run(stop)
            except KeyboardInterrupt:
                stop.set()
                tally = None
    finally:
        runtime.close()
        client.close()
    if tally is not None:
        output.out.print(f"stored {tally.stored}, dead-lettered {tally.dead}, "
                         f"left pending {tally.failed}")  # fmt: skip
        if tally.failed:
            raise CliError(f"{tally.failed} event(s) not stored (left pending): {tally.errors[:5]}")
