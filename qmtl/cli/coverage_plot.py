"""``--plot FILE.png`` of ``coverage`` and ``demo``: coverage reports drawn as timelines.

One horizontal row per :class:`~qmtl.runtime.sdk.coverage_report.CoverageReport`, spanning
its window (half-open ``[start, end)`` epoch seconds, drawn on a UTC date axis): stored
(``DATA``) segments, known-empty (``EMPTY``) segments and missing ranges in three colours of
the Okabe-Ito palette, which stay apart under the common colour-vision deficiencies (and in
greyscale: the three differ in lightness too). The report is the only input: nothing here
reads a store.

matplotlib is optional (``pip install 'qmtl-seamless[plot]'``) and imported only when a plot
is asked for. Only the object-oriented API is used (``Figure`` + the Agg canvas, never
``pyplot``), so rendering touches no global state and may run in a worker thread: async
callers use :func:`write_coverage_plot`, which renders in ``asyncio.to_thread``. A figure is
not thread-safe; each call builds its own.

Errors are user mistakes (``ValueError``, exit 2 in the CLI) when the path is wrong or
matplotlib is missing; a failed render or write leaves no file behind (the PNG is written to
a hidden temporary file beside the target and renamed over it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

from qmtl.runtime.sdk.coverage_report import CoverageReport
from qmtl.runtime.sdk.history_coverage import Range, SegmentKind
from qmtl.runtime.sdk.timestamps import format_iso

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "COLOURS",
    "MISSING_MATPLOTLIB",
    "check_plot_path",
    "coverage_figure",
    "plot_coverage",
    "write_coverage_plot",
]

#: Fill colour of each part of a row, by legend name (Okabe-Ito: blue, vermillion; grey for
#: the part that needs nothing done). Tests look for these exact RGB values in the PNG.
COLOURS: Final[Mapping[str, str]] = {
    "stored": "#0072B2",
    "known-empty": "#BBBBBB",
    "missing": "#D55E00",
}
MISSING_MATPLOTLIB: Final = "--plot needs matplotlib: pip install 'qmtl-seamless[plot]'"

_DPI: Final = 120
_WIDTH_IN: Final = 11.0
#: Figure height: title, legend and date axis, plus one band per row (inches). Capped so
#: that hundreds of nodes still fit Agg's pixel limit; rows then get thinner.
_BASE_HEIGHT_IN: Final = 1.9
_ROW_HEIGHT_IN: Final = 0.45
_MAX_HEIGHT_IN: Final = 200.0
_BAR_HEIGHT: Final = 0.7  # of a row's band (1.0), leaving a gap between rows
_DAY_S: Final = 86_400
#: Up to this many missing ranges in a row, each is drawn at least a hairline wide, so an
#: isolated one-bar gap in a year shows. Beyond it (a row of thousands of small gaps) every
#: range is drawn to scale: widened, they would paint the whole row "missing".
_HAIRLINE_MAX: Final = 250


def _require_matplotlib() -> None:
    """Import matplotlib (the lazy, optional dependency) or say how to install it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ValueError(MISSING_MATPLOTLIB) from exc


def check_plot_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as a PNG file to write, checked before any work is done (so a typo costs no
    backfill): it ends in ``.png`` (any case), is not a directory, and its directory
    exists; matplotlib must be importable. ``ValueError`` with one line otherwise. Blocking
    (``stat``, an import): call it before the event loop starts, or in a thread."""
    target = Path(path)
    shown = os.fspath(path)
    if target.suffix.lower() != ".png":
        raise ValueError(f"--plot {shown}: only PNG is written; give a file name ending in .png")
    if target.is_dir():
        raise ValueError(f"--plot {shown}: is a directory; give a file name ending in .png")
    parent = target.parent
    if not parent.is_dir():
        raise ValueError(f"--plot {shown}: directory {os.fspath(parent)} does not exist")
    _require_matplotlib()
    return target


def _parts(report: CoverageReport) -> dict[str, list[Range]]:
    """The ranges of each legend entry, in the order they are drawn (missing last, on top)."""
    return {
        "stored": [s.range for s in report.segments if s.kind is SegmentKind.DATA],
        "known-empty": [s.range for s in report.segments if s.kind is SegmentKind.EMPTY],
        "missing": list(report.missing),
    }


def _blank(report: CoverageReport) -> bool:
    """The ledger says nothing about the window (or there is no window): no ratio to show
    (``CoverageReport.ratio`` is 1.0 for an empty window, which would read as complete)."""
    return report.window.empty or not (report.segments or report.missing)


def _ratio_label(report: CoverageReport) -> str:
    return "-" if _blank(report) else f"{report.ratio:.1%}"


def _title(reports: Sequence[CoverageReport], lo: int, hi: int) -> str:
    span = f"[{format_iso(lo)}, {format_iso(hi)})" if hi > lo else "no range"
    if len(reports) == 1:
        rep = reports[0]
        if _blank(rep):
            return f"{rep.node_id}: nothing stored, {span}"
        return f"{rep.node_id}: {rep.ratio:.2%} covered (stored or known-empty), {span}"
    total = sum(r.window.bars(r.interval) for r in reports)
    missing = sum(r.missing_bars for r in reports)
    ratio = 1.0 if total == 0 else (total - missing) / total
    lowest = min((r.ratio for r in reports if not _blank(r)), default=ratio)
    return f"{len(reports)} nodes: {ratio:.2%} covered (lowest {lowest:.2%}), {span}"


def coverage_figure(reports: Sequence[CoverageReport]) -> Figure:
    """The figure of ``reports``, one row each, top to bottom in the given order (no I/O).

    The x axis spans the union of the windows; each row's own window is outlined, and its
    coverage ratio is written at the right. A kind is drawn with one ``broken_barh`` call
    per row (one collection, however many segments), so ledgers with thousands of segments
    render in well under a second. Fills are not antialiased: every pixel is one of the
    three colours (a part narrower than a pixel shows where it covers the pixel's centre).
    A row's missing ranges, when there are few, get a hairline edge in their own colour:
    a one-bar gap in a year-long row stays visible (at least a pixel wide)."""
    if not reports:
        raise ValueError("nothing to plot: no coverage reports")
    _require_matplotlib()
    from matplotlib import dates as mdates
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    rows = len(reports)
    height = min(_MAX_HEIGHT_IN, _BASE_HEIGHT_IN + _ROW_HEIGHT_IN * rows)
    figure = Figure(figsize=(_WIDTH_IN, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)  # attaches itself: savefig renders with Agg, no GUI
    ax = figure.add_subplot()
    spans = [r.window for r in reports if not r.window.empty]
    lo = min((w.start for w in spans), default=0)
    hi = max((w.end for w in spans), default=0)
    # matplotlib's date numbers are days since its epoch (1970 unless configured otherwise).
    # matplotlib.dates ships unannotated: the three calls into it are ignored for mypy.
    origin = float(mdates.date2num(datetime(1970, 1, 1, tzinfo=UTC)))  # type: ignore[no-untyped-call]

    blended = ax.get_yaxis_transform()

    def x(seconds: int) -> float:
        return origin + seconds / _DAY_S

    for row, report in enumerate(reports):
        top = row - _BAR_HEIGHT / 2
        for name, ranges in _parts(report).items():
            if not ranges:
                continue
            hairline = name == "missing" and len(ranges) <= _HAIRLINE_MAX
            ax.broken_barh(
                [(x(r.start), (r.end - r.start) / _DAY_S) for r in ranges],
                (top, _BAR_HEIGHT),
                facecolors=COLOURS[name],
                edgecolors=COLOURS[name] if hairline else "none",
                linewidth=0.6 if hairline else 0.0,
                antialiased=False,  # crisp, seamless fills in exact colours
                zorder=2,
            )
        if _blank(report):  # x in axes fractions: mid-row, whatever the dates
            ax.text(0.5, row, "nothing stored", ha="center", va="center", transform=blended)
        else:
            ax.broken_barh(
                [(x(report.window.start), (report.window.end - report.window.start) / _DAY_S)],
                (top, _BAR_HEIGHT),
                facecolors="none",
                edgecolors="#333333",
                linewidth=0.6,
                zorder=1.5,  # under the fills: a hairline gap at a window's edge shows
            )
    _axes(ax, reports, x(lo), x(hi) if hi > lo else x(lo) + 1.0, dated=hi > lo)
    ax.set_title(_title(reports, lo, hi), loc="left", fontsize="medium")
    handles = [Patch(facecolor=colour, label=name) for name, colour in COLOURS.items()]
    figure.legend(handles=handles, loc="outside upper right", ncols=3, frameon=False)
    return figure


def _axes(
    ax: Axes, reports: Sequence[CoverageReport], left: float, right: float, *, dated: bool
) -> None:
    """Rows top to bottom, labelled with node ids (left) and ratios (right); a UTC date
    axis whose concise labels drop what the offset label (bottom right) already says, or
    none when not ``dated`` (no report has a range: nothing stored, nothing asked for)."""
    from matplotlib import dates as mdates

    rows = len(reports)
    ax.set_xlim(left, right)
    ax.set_ylim(rows - 0.5, -0.5)  # first report on top
    ax.set_yticks(range(rows), labels=[r.node_id for r in reports])
    ratios = ax.secondary_yaxis("right")
    ratios.set_yticks(range(rows), labels=[_ratio_label(r) for r in reports])
    ratios.tick_params(length=0)
    ax.tick_params(axis="y", length=0)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    if not dated:
        ax.set_xticks([])
        return
    locator = mdates.AutoDateLocator(tz=UTC, minticks=4, maxticks=12)  # type: ignore[no-untyped-call]
    concise = mdates.ConciseDateFormatter(locator, tz=UTC)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(concise)
    ax.set_xlabel("UTC")
    ax.grid(axis="x", color="#E5E5E5", linewidth=0.8, zorder=0)
    ax.set_axisbelow(True)


def plot_coverage(reports: Sequence[CoverageReport], path: str | os.PathLike[str]) -> Figure:
    """Draw ``reports`` (:func:`coverage_figure`) into the PNG file ``path`` (checked by
    :func:`check_plot_path`) at 120 dpi, replacing it atomically; returns the figure (what
    tests count rows on). Blocking: async callers use :func:`write_coverage_plot`."""
    target = check_plot_path(path)
    figure = coverage_figure(reports)
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    # O_EXCL: never follow or reuse someone else's file; 0o666 lets the umask decide, as
    # for any file the user creates.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            figure.savefig(handle, format="png", dpi=_DPI)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return figure


async def write_coverage_plot(
    reports: Sequence[CoverageReport], path: str | os.PathLike[str]
) -> Figure:
    """:func:`plot_coverage` in a worker thread: rendering takes tenths of a second of CPU
    and the write is file I/O, neither belongs on the event loop."""
    return await asyncio.to_thread(plot_coverage, list(reports), path)
