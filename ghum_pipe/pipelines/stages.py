"""The per-scan stages the runner knows, in pipeline order, and what each depends on.

A stage is a function ``entry(scan_path, scan_dir, config) -> dict metrics`` (see DEVELOPERS.md,
"Per-scan stage entries") plus a frozen config dataclass with ``to_dict()``. The runner imports
both by name on the worker, so a stage module that is not installed only fails when it is used.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class StageSpec:
    """name: CLI/manifest name; entry/config: ``module:attr``; depends: upstream stage names;
    outputs: files under ``W/scans/<id>/`` whose presence (with a matching manifest key) means done."""

    name: str
    entry: str
    config: str
    depends: tuple[str, ...]
    outputs: tuple[str, ...]

    def load_entry(self) -> Callable[..., dict]:
        return _import(self.entry)

    def default_config(self, **overrides: Any):
        """The stage's config class with ``overrides`` applied to the fields it has
        (e.g. ``units``/``up`` only reach stages whose config declares them)."""
        cls = _import(self.config)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in overrides.items() if k in names and v is not None})


STAGES: dict[str, StageSpec] = {
    s.name: s
    for s in (
        StageSpec("ingest", "ghum_pipe.pipelines.ingest:run_ingest", "ghum_pipe.pipelines.ingest:IngestConfig",
                  (), ("scan.json",)),
        StageSpec("landmark", "ghum_pipe.landmarks.stage:run_landmarks", "ghum_pipe.landmarks.stage:LandmarkConfig",
                  ("ingest",), ("landmarks.json",)),
        StageSpec("register", "ghum_pipe.register.stage:run_registration",
                  "ghum_pipe.register.config:RegisterConfig", ("landmark",), ("registration.ply", "metrics.json")),
    )
}
ORDER = tuple(STAGES)

# Config fields that name a scan but do not change any result (a subject is a label for training):
# left out of the hashed and recorded config, so setting one never re-runs a scan.
LABEL_FIELDS = ("subject",)


def config_record(config) -> dict:
    """``config.to_dict()`` without its label fields: what the runner hashes and records."""
    return {k: v for k, v in config.to_dict().items() if k not in LABEL_FIELDS}


def closure(requested: tuple[str, ...]) -> tuple[str, ...]:
    """The requested stages and everything they depend on, in pipeline order."""
    need: set[str] = set()
    stack = list(requested)
    while stack:
        name = stack.pop()
        if name not in STAGES:
            raise KeyError(f"unknown stage {name!r}; stages: {', '.join(ORDER)}")
        if name not in need:
            need.add(name)
            stack.extend(STAGES[name].depends)
    return tuple(n for n in ORDER if n in need)


def _import(spec: str):
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)
