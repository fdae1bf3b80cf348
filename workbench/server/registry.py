"""The engines a server serves, by served model name, and their lifecycle.

Contract:
- `ServedModels(engines)`: one engine (served as `engine.model.name`) or a dict
  {served name: engine}. The same engine object may appear under several names.
- `resolve(model)`: the (name, engine) a request's `model` field selects. With exactly one served
  model, a missing `model` selects it; otherwise a missing model is a 400 and an unknown one a 404
  (code "model_not_found").
- `start()` calls `engine.start()` on each distinct engine that has one and is not already running
  (an engine exposing `running`/`is_running` as True counts as running); `stop()` stops the engines
  `start()` started, or every engine when `stop_engines=True`, or none when `stop_engines=False`.
- `collectors()`: one metrics collector per distinct label set (model_name, engine); a second engine
  with the same labels would make `render_many` fail, so it is left out of /metrics with a warning.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from workbench.server.errors import APIError, bad_request

logger = logging.getLogger("workbench.server")


def _is_running(engine: Any) -> bool:
    for attr in ("running", "is_running"):
        value = getattr(engine, attr, None)
        if callable(value):
            value = value()
        if isinstance(value, bool):
            return value
    return False


class ServedModels:
    """Served model name -> engine; see the module docstring."""

    def __init__(self, engines: Any, *, stop_engines: bool | None = None):
        if isinstance(engines, Mapping):
            if not engines:
                raise ValueError("engines must not be empty")
            for name in engines:
                if not isinstance(name, str) or not name:
                    raise ValueError(f"served model names must be non-empty strings, got {name!r}")
            self.engines: dict[str, Any] = dict(engines)
        else:
            self.engines = {engines.model.name: engines}
        for name, engine in self.engines.items():
            missing = [a for a in ("astream", "tokenizer", "max_model_len", "make_request")
                       if not hasattr(engine, a)]
            if missing:
                raise TypeError(f"engine for {name!r} lacks {', '.join(missing)}: "
                                "pass workbench engines")
        self.stop_engines = stop_engines
        self._started: list[Any] = []

    @property
    def names(self) -> list[str]:
        return list(self.engines)

    def distinct(self) -> list[Any]:
        """Each engine object once, in serving order."""
        return list({id(e): e for e in self.engines.values()}.values())

    def resolve(self, model: str | None) -> tuple[str, Any]:
        if model is None:
            if len(self.engines) == 1:
                return next(iter(self.engines.items()))
            raise bad_request(f"'model' is required: this server serves {', '.join(self.names)}",
                              "model", "missing_required_parameter")
        engine = self.engines.get(model)
        if engine is None:
            raise APIError(404, f"The model '{model}' does not exist; served models: "
                           f"{', '.join(self.names)}", param="model", code="model_not_found")
        return model, engine

    def collectors(self) -> list[Any]:
        seen: dict[tuple[str, str], Any] = {}
        for engine in self.distinct():
            c = getattr(engine, "collector", None)
            if c is None:
                continue
            key = (c.model_name, c.engine)
            if key in seen and seen[key] is not c:
                continue
            seen[key] = c
        return list(seen.values())

    def warn_metric_clashes(self) -> None:
        keys: dict[tuple[str, str], int] = {}
        for engine in self.distinct():
            c = getattr(engine, "collector", None)
            if c is not None:
                keys[(c.model_name, c.engine)] = keys.get((c.model_name, c.engine), 0) + 1
        for (model_name, engine_name), count in keys.items():
            if count > 1:
                logger.warning("%d served engines share metric labels model_name=%r engine=%r; "
                               "/metrics shows the first only (subclass with another engine_name "
                               "to tell them apart)", count, model_name, engine_name)

    # ---- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        for engine in self.distinct():
            start = getattr(engine, "start", None)
            if callable(start) and not _is_running(engine):
                start()
                self._started.append(engine)

    def stop(self) -> None:
        if self.stop_engines is False:
            targets: list[Any] = []
        elif self.stop_engines:
            targets = self.distinct()
        else:
            targets = self._started
        for engine in targets:
            stop = getattr(engine, "stop", None)
            if callable(stop):
                try:
                    stop()
                except Exception:  # noqa: BLE001 - shutdown must go on
                    logger.exception("stopping engine %s failed",
                                     getattr(engine, "engine_name", "?"))
        self._started = []
