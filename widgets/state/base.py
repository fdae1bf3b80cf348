"""`TabState`: what every tab's state shares: the facade, the two callbacks to its view, and the
background tasks its actions run in."""

from __future__ import annotations

from collections.abc import Callable

from widgets.tasks import Tasks

StatusFn = Callable[[str, bool], None]


class TabState:
    name = "tab"

    def __init__(self, wb, status: StatusFn | None = None,
                 changed: Callable[[], None] | None = None):
        self.wb = wb
        self._status = status or (lambda text, error: None)
        self._changed = changed or (lambda: None)
        self.last_error: str | None = None
        self.tasks = Tasks(self.error, self.name, on_done=self.changed)

    def ok(self, text: str) -> None:
        self._status(text, False)

    def error(self, text: str) -> None:
        self.last_error = text
        self._status(text, True)

    def changed(self) -> None:
        self._changed()

    @property
    def busy(self) -> bool:
        return self.tasks.busy

    def wait(self, timeout: float | None = None) -> bool:
        return self.tasks.wait(timeout)
