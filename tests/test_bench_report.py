"""The benchmark's table: a peer that could not run is shown missing with its reason, and no
target that needs its figures is called met."""

from __future__ import annotations

from dataclasses import dataclass

from bench.report import Results, notes, table


@dataclass
class Column:
    key: str
    title: str
    is_mount: bool
    missing: str | None = None
    command: str = ""


COLUMNS = [
    Column("casfs", "casfs", True),
    Column("bbfuse", "buildbox-fuse", True, "buildbox not installed: pip failed"),
    Column("direct", "direct client", False),
]


def cells(text: str, title: str) -> list[str]:
    """The cells of the row whose first cell is ``title``."""
    for line in text.splitlines():
        parts = [part.strip() for part in line.strip("|").split("|")]
        if parts[0] == title:
            return parts
    raise AssertionError(f"no row {title!r} in\n{text}")


def test_missing_peer_is_shown_with_its_reason_and_its_targets_are_not_met() -> None:
    results = Results()
    for first, cold in ((10.0, 300.0), (12.0, 340.0), (11.0, 320.0)):
        results.add("casfs", {"first": first, "cold": cold})
    results.add("direct", {"first": 5.0, "cold": 350.0})

    text = table(results, COLUMNS)

    assert cells(text, "status")[1:4] == ["ok", "missing: buildbox not installed: pip failed", "ok"]
    first = cells(text, "first byte, ms")
    assert first[1:4] == ["11.0 (10.0-12.0)", "missing", "5.00"]
    assert first[-1] == "<= 0.1x buildbox-fuse: n/a"
    cold = cells(text, "cold sequential read, MB/s")
    assert cold[-1] == ">= 1.2x buildbox-fuse: n/a; >= 1.5x rclone off: n/a; >= 0.8x direct: met"
    assert "- buildbox-fuse is missing: buildbox not installed: pip failed" in notes(
        results, COLUMNS
    )


def test_not_applicable_and_failed_figures_say_why() -> None:
    results = Results()
    results.add("direct", {"cp": 200.0})
    results.add("casfs", {"cp": 100.0})
    results.fail("bbfuse", ["cp"], "n/a: keeps writes local")
    results.fail("casfs", ["small"], "failed: mount exited")
    columns = [Column("casfs", "casfs", True), Column("bbfuse", "buildbox-fuse", True)]
    columns.append(Column("direct", "direct client", False))

    text = table(results, columns)

    assert cells(text, "cp in, MB/s")[1:4] == ["100", "n/a", "200"]
    assert cells(text, "cp in, MB/s")[-1] == ">= 0.8x direct: MISSED"
    assert cells(text, "small blobs read cold, s")[1] == "failed"
    assert cells(text, "small blobs read cold, s")[-1] == "<= 1x buildbox-fuse: n/a"
    assert notes(results, columns) == [
        "- buildbox-fuse, cp in, MB/s: n/a: keeps writes local",
        "- casfs, small blobs read cold, s: failed: mount exited",
    ]


def test_issue_18_targets_compare_against_the_right_figures() -> None:
    """The re-read after a remount is judged against the null file system's cold read (a
    figure of another row), the server's cold read against buildbox-casd's (the
    buildbox-fuse column), the mount's CPU against rclone off's."""
    results = Results()
    results.add("casfs", {"remount": 400.0, "server_cold": 300.0, "cpu": 2.0, "warm": 4000.0})
    results.add("rclone-full", {"remount": 150.0})
    results.add("nullfs", {"cold": 450.0, "warm": 4100.0})
    results.add("bbfuse", {"server_cold": 250.0})
    results.add("rclone-off", {"cpu": 2.5})
    columns = [
        Column("casfs", "casfs", True),
        Column("bbfuse", "buildbox-fuse", True),
        Column("rclone-off", "rclone off", True),
        Column("rclone-full", "rclone full", True),
        Column("nullfs", "null FUSE", True),
    ]

    text = table(results, columns)

    remount = cells(text, "re-read after remount with the disk cache, MB/s")
    assert remount[-1] == ">= 2x rclone full: met; >= 0.8x null FUSE cold read: met"
    server = cells(text, "server cold read (buildbox-fuse: its casd), MB/s")
    assert server[-1] == ">= 1.5x buildbox-casd: MISSED"
    assert cells(text, "mount CPU s in the cold read")[-1] == "<= 0.6x rclone off: MISSED"
    warm = cells(text, "warm re-read, MB/s")
    assert warm[-1] == ">= 0.9x local: n/a; >= 0.95x null FUSE: met"
