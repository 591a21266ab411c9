"""The figures of a run and the one markdown table they make, with the issue's targets.

Every cell is the median over the runs and, with more than one run, the spread (min-max).
A contender that could not run says ``missing`` (the reason is in the status row and the
notes under the table); a scenario without an equivalent says ``n/a``, one that failed says
``failed``, each with its reason in the notes. A target that needs a figure that is not
there is ``n/a``, never ``met``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bench.common import Summary, digits_for, markdown_table
from bench.peers import CASFS_CACHE_BYTES
from bench.scenarios import SCENARIOS, rss_metric

CASFS = "casfs"
RSS_LIMIT_MIB = CASFS_CACHE_BYTES / (1 << 20) + 100


class Column(Protocol):
    """What the table needs to know of a contender (``bench.peers.Contender`` is one)."""

    key: str
    title: str
    is_mount: bool
    missing: str | None
    command: str  # how it was started, for the report's header ("" to leave it out)


@dataclass
class Results:
    """Figures by metric and contender key, and why some are not there."""

    values: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    notes: dict[str, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))

    def add(self, contender: str, figures: dict[str, float]) -> None:
        for metric, value in figures.items():
            self.values[metric][contender].append(value)

    def fail(self, contender: str, metrics: Sequence[str], why: str) -> None:
        """No figure for these metrics: ``why`` starts with "n/a" or "failed"."""
        for metric in metrics:
            self.notes[metric].setdefault(contender, why)

    def summary(self, metric: str, contender: str) -> Summary | None:
        values = self.values.get(metric, {}).get(contender)
        return Summary.of(values) if values else None


@dataclass(frozen=True)
class Target:
    """casfs's median against a peer's: ``casfs / peer >= bound`` (``at_least``) or ``<=``.
    With no peer, a bound on casfs's own worst run (``high``)."""

    peer: str | None
    bound: float
    at_least: bool
    label: str
    peer_metric: str | None = None  # the peer's figure of another row (None: this row's)

    def verdict(self, results: Results, metric: str) -> str:
        ours = results.summary(metric, CASFS)
        if ours is None:
            return "n/a"
        if self.peer is None:
            return "met" if ours.high <= self.bound else "MISSED"
        theirs = results.summary(self.peer_metric or metric, self.peer)
        if theirs is None or theirs.median == 0:
            return "n/a"
        ratio = ours.median / theirs.median
        met = ratio >= self.bound if self.at_least else ratio <= self.bound
        return "met" if met else "MISSED"


@dataclass(frozen=True)
class Row:
    metric: str
    title: str
    targets: tuple[Target, ...] = ()
    mounts_only: bool = False  # a figure of the mount process: none for direct and local


def _at_least(peer: str, bound: float, name: str) -> Target:
    return Target(peer, bound, True, f">= {bound:g}x {name}")


def _at_most(peer: str, bound: float, name: str) -> Target:
    return Target(peer, bound, False, f"<= {bound:g}x {name}")


ROWS = (
    Row("first", "first byte, ms", (_at_most("bbfuse", 0.1, "buildbox-fuse"),)),
    Row(
        "cold",
        "cold sequential read, MB/s",
        (
            _at_least("bbfuse", 1.2, "buildbox-fuse"),
            _at_least("rclone-off", 1.5, "rclone off"),
            _at_least("direct", 0.8, "direct"),
        ),
    ),
    Row(
        "warm",
        "warm re-read, MB/s",
        (_at_least("local", 0.9, "local"), _at_least("nullfs", 0.95, "null FUSE")),
    ),
    Row("r4k_p50", "random 4 KiB p50, ms"),
    Row("r4k_p99", "random 4 KiB p99, ms"),
    Row("r4k_max", "random 4 KiB worst, ms"),
    Row(
        "r128k_p50",
        "random 128 KiB p50, ms",
        (_at_most("rclone-full", 1.0, "rclone full"), _at_most("direct", 1.5, "direct")),
    ),
    Row("r128k_p99", "random 128 KiB p99, ms"),
    Row("r128k_max", "random 128 KiB worst, ms"),
    Row("small", "small blobs read cold, s", (_at_most("bbfuse", 1.0, "buildbox-fuse"),)),
    Row("small_cpu", "mount CPU ms per small blob", mounts_only=True),
    Row("cp", "cp in, MB/s", (_at_least("direct", 0.8, "direct"),)),
    Row(
        "cpu",
        "mount CPU s in the cold read",
        (_at_most("rclone-off", 0.6, "rclone off"),),
        mounts_only=True,
    ),
    Row(
        "remount",
        "re-read after remount with the disk cache, MB/s",
        (
            _at_least("rclone-full", 2.0, "rclone full"),
            Target("nullfs", 0.8, True, ">= 0.8x null FUSE cold read", "cold"),
        ),
    ),
    Row(
        "server_cold",
        "server cold read (buildbox-fuse: its casd), MB/s",
        (_at_least("bbfuse", 1.5, "buildbox-casd"),),
    ),
    *(
        Row(
            rss_metric(scenario),
            f"peak RSS, {scenario.name}, MiB",
            (Target(None, RSS_LIMIT_MIB, False, f"<= {RSS_LIMIT_MIB:g} MiB (cache + 100)"),),
            mounts_only=True,
        )
        for scenario in SCENARIOS
    ),
)


def _short(text: str, limit: int = 48) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _cell(results: Results, row: Row, column: Column) -> str:
    if column.missing is not None:
        return "missing"
    if row.mounts_only and not column.is_mount:
        return "-"
    summary = results.summary(row.metric, column.key)
    if summary is not None:
        return summary.show(digits_for(summary.median))
    note = results.notes.get(row.metric, {}).get(column.key)
    return note.split(":", 1)[0] if note else "-"


def _ratio(results: Results, metric: str, peer: str) -> str:
    ours, theirs = results.summary(metric, CASFS), results.summary(metric, peer)
    if ours is None or theirs is None or theirs.median == 0:
        return "-"
    ratio = ours.median / theirs.median
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.2g}x"  # 0.0022x, not 0.00x


def table(results: Results, columns: Sequence[Column]) -> str:
    """The table: one row per figure, a column per contender, a casfs/peer ratio per peer,
    then the targets of that row with met / MISSED / n/a."""
    peers = [column for column in columns if column.key != CASFS]
    header = [
        "scenario",
        *(column.title for column in columns),
        *(f"casfs/{peer.title}" for peer in peers),
        "targets",
    ]
    status = ["status"]
    status += [f"missing: {_short(c.missing)}" if c.missing else "ok" for c in columns]
    status += ["" for _ in peers] + [""]
    rows = [status]
    for row in ROWS:
        cells = [row.title, *(_cell(results, row, column) for column in columns)]
        cells += [
            "-" if row.mounts_only and not peer.is_mount else _ratio(results, row.metric, peer.key)
            for peer in peers
        ]
        verdicts = (f"{t.label}: {t.verdict(results, row.metric)}" for t in row.targets)
        cells.append("; ".join(verdicts) or "-")
        rows.append(cells)
    return markdown_table(header, rows)


def notes(results: Results, columns: Sequence[Column]) -> list[str]:
    """One line per missing contender and per figure that is n/a or failed, with why."""
    lines = [f"- {c.title} is missing: {c.missing}" for c in columns if c.missing]
    titles = {row.metric: row.title for row in ROWS}
    names = {column.key: column.title for column in columns}
    grouped: dict[tuple[str, str], list[str]] = {}
    for metric, reasons in results.notes.items():
        for key, why in reasons.items():
            grouped.setdefault((key, why), []).append(titles.get(metric, metric))
    for (key, why), metrics in grouped.items():
        lines.append(f"- {names.get(key, key)}, {'; '.join(metrics)}: {why}")
    return lines
