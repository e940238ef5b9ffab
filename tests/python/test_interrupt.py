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
from labelwise import uncertainty as U


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
    # the metrics' block loop: 2^26 items of a broadcast view (~6 s uninterrupted on 2 cores)
    p = rng.dirichlet(np.ones(10), size=20).astype(np.float32)
    assert interrupted_after(lambda: U.bald(np.broadcast_to(p, (2**26, 20, 10))), delay=0.3) < 1.5
    # nothing is left behind: the next call is complete and equal to a fresh one
    small = X[:3000]
    assert np.array_equal(A.coreset(small, None, 20)[0], A.coreset(small.copy(), None, 20)[0])


SHUTDOWN_SCRIPT = r"""
import sys, threading, time
import numpy as np
from labelwise import acquisition as A, propagation as P, uncertainty as U

x = np.random.default_rng(0).dirichlet(np.ones(4), (20000, 8))
s = np.random.default_rng(1).random(3_000_000)
f = np.random.default_rng(2).random((20000, 16))
g = np.random.default_rng(3).random((300000, 2))
calls = [lambda: U.score(x), lambda: A.top_k(s, 1000), lambda: P.knn_graph(f, 5), lambda: A.coreset(g, None, 3000)]

def work(i):
    while True:
        calls[i % len(calls)]()

for i in range(8):
    threading.Thread(target=work, args=(i,), daemon=True).start()
time.sleep(float(sys.argv[1]))
print("main thread done")
"""


@pytest.mark.skipif(os.name != "posix", reason="process exit codes and signals")
def test_interpreter_exit_with_daemon_threads_inside_labelwise_calls(tmp_path):
    """The interpreter exits while daemon threads are inside labelwise calls. Python < 3.14 ends a
    thread that asks for the GIL during shutdown with pthread_exit (a forced unwind): taken inside a
    noexcept destructor (pybind11's gil_scoped_release) or swallowed by parallel_for's catch (...),
    that aborted the process (SIGABRT, "terminate called without an active exception" / "FATAL:
    exception not rethrown") in every run of the metrics / top-k mix and about half the kNN /
    core-set ones. The exit must be clean."""
    import subprocess
    import sys

    script = tmp_path / "shutdown.py"
    script.write_text(SHUTDOWN_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    for delay in ("0.5", "0.9", "1.3"):
        r = subprocess.run([sys.executable, str(script), delay], capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 0, (delay, r.returncode, r.stderr[-2000:])
        assert "main thread done" in r.stdout
