"""The tail diff that follows logs of runtimes without a file (docker): pure."""

from __future__ import annotations

from reconciler.runtimes.log_follow import new_lines


def test_new_lines_after_the_overlap() -> None:
    assert new_lines(["a", "b", "c"], ["b", "c", "d", "e"]) == ["d", "e"]
    assert new_lines(["a", "b"], ["a", "b"]) == []
    assert new_lines([], ["x"]) == ["x"]
    # repeated lines: the longest overlap wins, so nothing is printed twice
    assert new_lines(["x", "x"], ["x", "x", "y"]) == ["y"]
    # no overlap at all (more than the window was written, or a restart): all of it is new
    assert new_lines(["a", "b"], ["c", "d"]) == ["c", "d"]
