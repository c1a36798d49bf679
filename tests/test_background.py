"""continual.tracking.background.LatestWins: a flush draws beside the worker, never one key twice at once."""

from __future__ import annotations

import threading
import time

import pytest

from continual.tracking.background import LatestWins


def test_a_flush_runs_pending_jobs_on_its_own_thread_beside_the_worker() -> None:
    work, b_ran, seen = LatestWins(), threading.Event(), {}

    def a() -> None:  # holds the worker until b has run elsewhere
        seen["a saw b"] = b_ran.wait(10)

    def b() -> None:
        seen["b's thread"] = threading.current_thread().name
        b_ran.set()

    work.submit("a", a)
    time.sleep(0.2)  # the worker has taken a
    work.submit("b", b)
    work.flush()
    assert seen == {"a saw b": True, "b's thread": threading.main_thread().name}


def test_a_key_never_runs_twice_at_once_even_in_a_flush() -> None:
    work, release, order = LatestWins(), threading.Event(), []

    def older() -> None:
        release.wait(10)
        order.append("older ended")

    work.submit("figure", older)
    time.sleep(0.2)  # the worker has taken the older drawing
    work.submit("figure", lambda: order.append("newer started"))
    threading.Timer(0.5, release.set).start()
    work.flush()  # must not start the newer while the older runs: the older would overwrite it
    assert order == ["older ended", "newer started"]


def test_a_flush_raises_the_error_of_a_job_it_ran() -> None:
    work = LatestWins(min_interval=60)

    def broken() -> None:
        raise OSError("disk full")

    work.submit("x", lambda: None)
    work.flush()
    work.submit("x", broken)  # within its interval: waits for the flush, which runs it
    with pytest.raises(OSError, match="disk full"):
        work.flush()
