"""Timing helper shared by the Python comparison scripts in bench/ (run as scripts: bench/ is on sys.path)."""

from __future__ import annotations

import time


def best_of(fn, repeats):
    """(best wall time of `repeats` calls of fn(), the last call's result), no warm-up call: for callers
    that need the result or time the first call on purpose."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def best_time(fn, repeats):
    """The best wall time of `repeats` calls of fn(), after one untimed warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best
