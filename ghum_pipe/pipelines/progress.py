"""A rich progress bar per stage: done / failed counts and an ETA, on stderr."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class StageProgress:
    """``with StageProgress({"landmark": 40, ...}) as bars: bars.advance("landmark", "done")``.

    status: "done", "failed" or "blocked" (not run because an upstream stage failed).
    ``enabled=False`` (``--quiet``) shows nothing.
    """

    def __init__(self, totals: dict[str, int], enabled: bool = True, console: Console | None = None):
        self.totals = {s: n for s, n in totals.items() if n}
        self.enabled = enabled
        self._progress = Progress(
            TextColumn("{task.description:<9}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[red]{task.fields[failed]} failed[/red]"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
            disable=not enabled,
        )
        self._tasks: dict[str, int] = {}
        self._failed: dict[str, int] = {}

    def __enter__(self) -> "StageProgress":
        self._progress.__enter__()
        for stage, total in self.totals.items():
            self._tasks[stage] = self._progress.add_task(stage, total=total, failed=0)
        return self

    def advance(self, stage: str, status: str) -> None:
        self._failed[stage] = self._failed.get(stage, 0) + (status != "done")
        self._progress.update(self._tasks[stage], advance=1, failed=self._failed[stage])

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)
