"""The backfill progress line of ``fetch`` and ``backfill`` (stderr, terminals only).

``backfill ━━━━━━━━━━ 1440/4320 bars 12 requests ETA 0:00:04`` — bars the exchange
vouched for out of the bars missing when the command started, the exchange requests made so
far (market loading included) and, with archives, the bars read from archive files
(``+ 43,200 bars from 1 archive file``), failed batches beside it in red, and the time
left. It is drawn only when stderr is a terminal and the command was not asked for
``--json``, so pipes, logs and machine-readable output stay clean.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Column

from qmtl.cli._common import err_console
from qmtl.cli.batch_log import BatchLog

if TYPE_CHECKING:
    from qmtl.runtime.io.seamless_provider import EnhancedQuestDBProvider
    from qmtl.runtime.sdk.backfill_types import BatchOutcome

__all__ = ["BackfillProgress", "backfill_progress", "requests_made"]

#: Narrower terminals get no bar: the numbers, the failures and the ETA fit 80 columns.
_BAR_MIN_WIDTH = 100


def requests_made(provider: EnhancedQuestDBProvider) -> int:
    """Exchange requests the provider's fetchers have made (each counts its own)."""
    fetcher = provider.fetcher
    fetchers = getattr(fetcher, "fetchers", None)  # an ExchangeRouter: one per exchange
    members = fetchers.values() if isinstance(fetchers, dict) else [fetcher]
    return sum(int(getattr(f, "requests", 0)) for f in members)


class BackfillProgress:
    """Records batch outcomes in ``log`` and redraws the line (``on_batch`` callback)."""

    def __init__(self, progress: Progress, provider: EnhancedQuestDBProvider, log: BatchLog):
        self._progress = progress
        self._provider = provider
        self.log = log
        self._task = progress.add_task("bars", total=None, failed="", requests="")
        provider.auto_backfiller.on_batch = self.on_batch

    def start(self, total_bars: int) -> None:
        """Set the total once the missing bars are known (before the work starts)."""
        self._progress.update(self._task, total=total_bars)

    def on_batch(self, node_id: str, outcome: BatchOutcome) -> None:
        self.log.record(node_id, outcome)
        self._progress.update(
            self._task,
            completed=self.log.done_bars,
            failed=_failed_text(self.log),
            requests=_sources_text(self.log, requests_made(self._provider)),
        )


def _sources_text(log: BatchLog, requests: int) -> str:
    """``12 requests`` — and, once archive files gave bars, how many and from how many
    files, so the archive's and the REST API's shares show apart."""
    if not log.archive_bars:
        return f"{requests:,} requests"
    files = f"{log.archive_files:,} archive file{'s' if log.archive_files != 1 else ''}"
    return f"{requests:,} requests + {log.archive_bars:,} bars from {files}"


def _failed_text(log: BatchLog) -> str:
    if not log.failed_batches:
        return ""
    plural = "es" if log.failed_batches != 1 else ""
    return f"[red]failed {log.failed_batches} batch{plural} ({log.failed_bars:,} bars)"


@contextmanager
def backfill_progress(
    provider: EnhancedQuestDBProvider, log: BatchLog, *, label: str, quiet: bool
) -> Iterator[BackfillProgress]:
    """The progress line for the provider's backfill, drawn on a terminal unless ``quiet``."""
    numbers = Column(no_wrap=True)  # numbers are never cut: the failure text folds instead
    bar = [BarColumn(bar_width=10)] if err_console.width >= _BAR_MIN_WIDTH else []
    with Progress(
        TextColumn(f"[bold]{label}", table_column=numbers),
        *bar,
        MofNCompleteColumn(table_column=numbers),
        TextColumn("bars", table_column=numbers),
        TextColumn("{task.fields[requests]}", table_column=numbers),
        TextColumn("{task.fields[failed]}", table_column=Column(overflow="fold")),
        TextColumn("ETA", table_column=numbers),
        TimeRemainingColumn(table_column=numbers),
        console=err_console,
        disable=quiet or not err_console.is_terminal,
    ) as progress:
        yield BackfillProgress(progress, provider, log)
