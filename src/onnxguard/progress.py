"""Progress reporting, injected by the caller.

The library never touches the terminal: long operations take a ``progress`` callback and call it with
:class:`Event` values. The CLI fills the callback with a rich display; library users pass their own or
nothing (:func:`silent`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    """One step of progress within a named stage.

    ``completed``/``total`` are counts when the work is countable, else ``None``.
    ``done`` marks the end of the stage.
    """

    stage: str
    message: str = ""
    completed: int | None = None
    total: int | None = None
    done: bool = False


Progress = Callable[[Event], None]


def silent(event: Event) -> None:
    """A progress callback that ignores every event."""
