"""Long calls answer Ctrl-C: the library asks Python's signal handlers between its steps (the GIL is
released during the call), so SIGINT stops a call within a fraction of a second instead of after it."""

import os
import signal
import threading
import time

import numpy as np
import pytest

from labelwise import acquisition as A
from labelwise import propagation as P


class Stop(Exception):
    pass


def interrupted_after(call, delay=0.3):
    """Runs call() with a SIGINT sent after `delay` s, handled by raising Stop; returns the seconds
    until Stop came out of the call (the handler is restored afterwards)."""
    old = signal.signal(signal.SIGINT, lambda signum, frame: (_ for _ in ()).throw(Stop()))
    timer = threading.Timer(delay, lambda: os.kill(os.getpid(), signal.SIGINT))
    t0 = time.perf_counter()
    try:
        timer.start()
        with pytest.raises(Stop):
            call()
        return time.perf_counter() - t0
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, old)


@pytest.mark.skipif(os.name != "posix", reason="sends SIGINT to itself")
def test_long_calls_stop_on_sigint(rng):
    X = rng.normal(size=(60000, 64))
    t = time.perf_counter()
    A.coreset(X, None, 200, prune=False)
    per_pick = (time.perf_counter() - t) / 200
    b = int(4.0 / per_pick)  # about 4 s of picks uninterrupted
    assert interrupted_after(lambda: A.coreset(X, None, b, prune=False)) < 1.5
    # a parallel stage: the kNN search's block pairs on every thread (~5 s uninterrupted on 2 cores)
    F = rng.normal(size=(150000, 48)).astype(np.float32)
    assert interrupted_after(lambda: P.knn_graph(F, 10), delay=0.3) < 1.5
    # nothing is left behind: the next call is complete and equal to a fresh one
    small = X[:3000]
    assert np.array_equal(A.coreset(small, None, 20)[0], A.coreset(small.copy(), None, 20)[0])
