"""Triggers as data: named rules that decide for a customer when an event happens.

A trigger file (``serving/triggers.yaml`` by default; a workspace has its own ``triggers.yaml``)
holds ``triggers:``, a list of::

    - name: disruption                 # unique; names the trigger in the outbox
      event: flight_disrupted          # an /events type, or milestone_crossed
      when: {severe: true}             # optional: every key must equal the event's value
      candidates: [apology_credit, none]
      channel: email                   # web | app | email
      delay: 0s                        # wait before deciding: 0s, 90s, 15m, 2h, 1d
      service_action: false            # true: sent whenever eligible (a service message)

The file is validated when it is loaded (``load_triggers``), like the guardrails: unknown keys,
events, actions or channels, duplicate names and malformed delays raise ``TriggerError`` naming
the file and the trigger, so a broken file stops the service's start-up.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from features.contract import ACTIONS
from memory.fold import EVENT_TYPES

#: The triggers shipped with the service.
DEFAULT_TRIGGERS_PATH: Final = Path(__file__).with_name("triggers.yaml")
#: Events a trigger may fire on: the /events types, and the crossing of a loyalty milestone.
TRIGGER_EVENTS: Final = (*EVENT_TYPES, "milestone_crossed")
_DELAY = re.compile(r"^(\d+)([smhd])$")
_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class TriggerError(ValueError):
    """A trigger file that cannot be used, with the file and the trigger named."""


class Trigger(BaseModel):
    """One validated trigger."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)
    # Not ``on``: YAML 1.1 reads an unquoted ``on`` key as the boolean true.
    event: str
    when: dict[str, str | int | float | bool] = Field(default_factory=dict)
    candidates: tuple[str, ...]
    channel: Literal["web", "app", "email"]
    delay: timedelta = timedelta(0)
    service_action: bool = False

    @field_validator("event")
    @classmethod
    def _known_event(cls, value: str) -> str:
        if value not in TRIGGER_EVENTS:
            raise ValueError(f"unknown event {value!r}: one of {', '.join(TRIGGER_EVENTS)}")
        return value

    @field_validator("candidates")
    @classmethod
    def _known_actions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [a for a in value if a not in ACTIONS]
        if unknown:
            raise ValueError(f"unknown action(s) {unknown}: one of {', '.join(ACTIONS)}")
        if not [a for a in value if a != "none"]:
            raise ValueError("a trigger needs at least one action besides none")
        return value if "none" in value else (*value, "none")

    @field_validator("delay", mode="before")
    @classmethod
    def _parse_delay(cls, value: Any) -> Any:
        if isinstance(value, str):
            match = _DELAY.match(value.strip())
            if match is None:
                raise ValueError(f"delay {value!r}: a number and a unit s, m, h or d (e.g. 15m)")
            return timedelta(**{_UNITS[match[2]]: int(match[1])})
        return value


def parse_triggers(data: Any, source: str = "<triggers>") -> tuple[Trigger, ...]:
    """Validate the parsed YAML of a trigger file."""
    if not isinstance(data, dict) or data.get("version") != 1:
        raise TriggerError(f"{source}: expected a mapping with version: 1 and triggers: [...]")
    unknown = set(data) - {"version", "triggers"}
    if unknown:
        raise TriggerError(f"{source}: unknown top-level key(s) {sorted(unknown)}")
    raw = data.get("triggers") or []
    if not isinstance(raw, list):
        raise TriggerError(f"{source}: triggers must be a list")
    triggers: list[Trigger] = []
    for index, item in enumerate(raw):
        name = item.get("name", f"#{index + 1}") if isinstance(item, dict) else f"#{index + 1}"
        try:
            trigger = Trigger.model_validate(item)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "trigger"
            raise TriggerError(f"{source}: trigger {name}: {where}: {first['msg']}") from None
        if any(t.name == trigger.name for t in triggers):
            raise TriggerError(f"{source}: trigger {trigger.name}: duplicate name")
        triggers.append(trigger)
    return tuple(triggers)


def load_triggers(path: str | Path = DEFAULT_TRIGGERS_PATH) -> tuple[Trigger, ...]:
    """Read and validate a trigger file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise TriggerError(f"{path}: trigger file not found") from None
    except yaml.YAMLError as error:
        raise TriggerError(f"{path}: not valid YAML: {error}") from None
    return parse_triggers(data, str(path))
