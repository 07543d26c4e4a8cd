"""``coverage --plot`` and ``demo --plot`` as a user runs them (``main([...])`` on a real
DuckDB file filled through the storage API, the demo with its in-process simulator), and
:func:`~qmtl.cli.coverage_plot.plot_coverage` on reports built by hand.

The PNG is checked as a reader would see it: decoded, and searched for the three segment
colours in areas far larger than a legend swatch (so the segments themselves were drawn)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from matplotlib.image import imread

from qmtl.cli.coverage_plot import COLOURS, MISSING_MATPLOTLIB, plot_coverage, write_coverage_plot
from qmtl.cli.main import main
from qmtl.runtime.io.storage import LedgerUpdate, open_storage
from qmtl.runtime.sdk.coverage_report import build_coverage_report
from qmtl.runtime.sdk.history_coverage import CoverageSegment, Range, SegmentKind
from tests.cli_rig import one_error_line
from tests.test_storage import bars

NODE = "ohlcv:binance:BTC/USDT:1m"
T0 = 1_704_067_200  # 2024-01-01T00:00:00Z
DAY = 86_400
#: The stored days, the known-empty halt after the first, and the gap between them.
FIRST, HALT = Range(T0, T0 + DAY), Range(T0 + DAY, T0 + DAY + 6 * 3600)
THIRD = Range(T0 + 2 * DAY, T0 + 3 * DAY)
GAPPY = ["--start", "2024-01-01", "--end", "2024-01-04"]  # 18 h of it missing: exit 1
WHOLE = ["--start", "2024-01-01", "--end", "2024-01-02"]  # the first day: exit 0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: More pixels than any legend swatch has: a colour seen this often was drawn as a segment.
SEGMENT_PIXELS = 1_000

Image = npt.NDArray[np.int64]


async def fill(path: Path) -> None:
    """Day 1 stored, then 6 h known-empty (a halt), 18 h never fetched, day 3 stored."""
    async with open_storage(f"duckdb:///{path}") as store:
        for stored, empty in ((FIRST, (HALT,)), (THIRD, ())):
            update = LedgerUpdate(interval=60, data=(stored,), empty=empty, fetched_at=T0 + 9 * DAY)
            frame = bars(range(stored.start, stored.end, 60))
            await store.write_bars(NODE, frame, ledger_update=update)


@pytest.fixture
def dsn(tmp_path: Path) -> str:
    path = tmp_path / "bars.duckdb"
    asyncio.run(fill(path))
    return f"duckdb:///{path}"


def decode(path: Path) -> Image:
    """The PNG's RGB pixels as 0..255 integers (after checking it is a PNG at all)."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    rgba = imread(path)
    assert rgba.ndim == 3 and rgba.shape[2] in (3, 4)
    return np.rint(rgba[..., :3] * 255).astype(np.int64)


def mask(image: Image, name: str) -> npt.NDArray[np.bool_]:
    """Pixels of the segment colour ``name`` (the fills are not antialiased: exact)."""
    hex_rgb = COLOURS[name].lstrip("#")
    rgb = np.array([int(hex_rgb[i : i + 2], 16) for i in (0, 2, 4)])
    return np.abs(image - rgb).max(axis=-1) <= 2


def colour_counts(image: Image) -> dict[str, int]:
    return {name: int(mask(image, name).sum()) for name in COLOURS}


def stored_rows(image: Image) -> int:
    """Bands of pixel rows a fifth or more of whose width is the "stored" colour: the
    timeline rows (a legend swatch is far narrower)."""
    wide = mask(image, "stored").mean(axis=1) > 0.2
    return int(wide[0]) + int(np.sum(wide[1:] & ~wide[:-1]))


# -- coverage --plot ----------------------------------------------------------------------------


@pytest.mark.parametrize(("window", "code"), [(GAPPY, 1), (WHOLE, 0)])
def test_coverage_plot_draws_the_report_and_changes_nothing_else(
    dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], window: list[str], code: int
) -> None:
    args = ["coverage", NODE, *window, "--dsn", dsn]
    assert main(args) == code
    plain_out, plain_err = capsys.readouterr()
    png = tmp_path / "out.png"
    assert main([*args, "--plot", str(png)]) == code
    out, err = capsys.readouterr()
    assert out == f"{plain_out}plot written to {png}\n"
    assert err == plain_err  # the store line only
    assert png.stat().st_size > 10_000
    counts = colour_counts(decode(png))
    assert counts["stored"] > SEGMENT_PIXELS
    if code == 1:
        assert counts["known-empty"] > SEGMENT_PIXELS and counts["missing"] > SEGMENT_PIXELS
    else:  # the first day alone: all of it stored
        assert counts["known-empty"] < SEGMENT_PIXELS and counts["missing"] < SEGMENT_PIXELS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bars.duckdb", "out.png"]  # no temp


def test_coverage_plot_with_json_keeps_stdout_one_json_document(
    dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["coverage", NODE, "--dsn", dsn, "--json"]  # no range: the ledger's extent
    assert main(args) == 1
    plain = json.loads(capsys.readouterr().out)
    png = tmp_path / "cov.PNG"  # any case
    assert main([*args, "--plot", str(png)]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out) == plain
    assert err.splitlines()[-1] == f"plot written to {png}"
    assert stored_rows(decode(png)) == 1


def test_coverage_plot_of_a_node_with_nothing_stored(
    dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "none.png"
    eth = "ohlcv:binance:ETH/USDT:1m"
    assert main(["coverage", eth, "--dsn", dsn, "--plot", str(png)]) == 1
    assert capsys.readouterr().out == f"{eth}: nothing stored yet\nplot written to {png}\n"
    assert decode(png).shape[1] == 1320  # 11 in at 120 dpi


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("nowhere/out.png", "directory"),
        ("out.svg", "ending in .png"),
        ("out", "ending in .png"),
        ("a_dir.png", "is a directory"),
    ],
)
def test_a_bad_plot_path_is_one_line_and_exit_2_before_the_store_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str, message: str
) -> None:
    (tmp_path / "a_dir.png").mkdir()
    missing_store = f"duckdb:///{tmp_path}/no-such.duckdb"  # never reached
    path = str(tmp_path / target)
    assert main(["coverage", NODE, "--dsn", missing_store, "--plot", path]) == 2
    captured = capsys.readouterr()
    line = one_error_line(captured.err, "coverage")
    assert f"--plot {path}" in line and message in line
    assert captured.out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_dir.png"]


def test_without_matplotlib_plot_says_how_to_install_it(
    dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import` sees when absent
    assert main(["coverage", NODE, "--dsn", dsn, "--plot", str(tmp_path / "x.png")]) == 2
    line = one_error_line(capsys.readouterr().err, "coverage")
    assert line == f"qmtl-seamless coverage: error: {MISSING_MATPLOTLIB}"
    assert MISSING_MATPLOTLIB == "--plot needs matplotlib: pip install 'qmtl-seamless[plot]'"
    assert not (tmp_path / "x.png").exists()


# -- demo --plot --------------------------------------------------------------------------------


def test_demo_plot_draws_one_row_per_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "demo.png"
    assert main(["demo", "--days", "1", "--dir", str(tmp_path), "--json", "--plot", str(png)]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)  # stdout: the JSON document alone
    assert f"plot written to {png}" in err.splitlines()
    image = decode(png)
    assert stored_rows(image) == len(report["nodes"]) == 3
    counts = colour_counts(image)
    assert counts["known-empty"] > SEGMENT_PIXELS  # SOL before its listing, BTC's halt
    assert counts["missing"] < SEGMENT_PIXELS  # the demo fills everything


@pytest.mark.parametrize("argv", [["--cluster"], ["--plot", "nowhere/x.png"]])
def test_demo_plot_mistakes_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    args = ["demo", "--dir", str(tmp_path), *argv]
    if "--plot" not in argv:
        args += ["--plot", str(tmp_path / "x.png")]
    assert main(args) == 2
    one_error_line(capsys.readouterr().err, "demo")
    assert list(tmp_path.iterdir()) == []  # refused before the demo made its store


# -- plot_coverage on reports -------------------------------------------------------------------


def test_one_row_per_report_in_order(tmp_path: Path) -> None:
    window = Range(T0, T0 + 3 * DAY)
    nodes = [f"ohlcv:binance:{s}/USDT:1m" for s in ("BTC", "ETH", "SOL", "XRP")]
    ledger = [CoverageSegment(FIRST.start, FIRST.end, SegmentKind.DATA)]
    reports = [build_coverage_report(n, ledger, window) for n in nodes]
    figure = plot_coverage(reports, tmp_path / "four.png")
    (ax,) = figure.axes[:1]
    assert [t.get_text() for t in ax.get_yticklabels()] == nodes
    assert stored_rows(decode(tmp_path / "four.png")) == 4
    assert "33.33% covered" in ax.get_title(loc="left")


def test_thousands_of_segments_render_with_one_collection_per_kind(tmp_path: Path) -> None:
    """5,000 alternating segments (stored, known-empty, each followed by a gap)."""
    kinds = (SegmentKind.DATA, SegmentKind.EMPTY)
    segments = [
        CoverageSegment(T0 + i * 120, T0 + i * 120 + 60, kinds[i % 2]) for i in range(5_000)
    ]
    report = build_coverage_report(NODE, segments, Range(T0, T0 + 5_000 * 120))
    assert len(report.segments) == len(report.missing) == 5_000
    figure = plot_coverage([report], tmp_path / "dense.png")
    assert len(figure.axes[0].collections) == 4  # stored, known-empty, missing, the outline
    counts = colour_counts(decode(tmp_path / "dense.png"))
    assert all(n > SEGMENT_PIXELS for n in counts.values()), counts  # drawn to scale


async def test_async_callers_render_off_the_event_loop(tmp_path: Path) -> None:
    """``write_coverage_plot`` renders and writes in a thread (blockbuster would fail a
    blocking call on the loop)."""
    report = build_coverage_report(NODE, [CoverageSegment(T0, T0 + DAY, SegmentKind.DATA)])
    figure = await write_coverage_plot([report], tmp_path / "a.png")
    assert len(figure.axes[0].get_yticks()) == 1
    assert (tmp_path / "a.png").read_bytes()[:8] == PNG_SIGNATURE


def test_nothing_to_plot_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_coverage([], tmp_path / "empty.png")
    assert list(tmp_path.iterdir()) == []
