"""Work that need not hold up training, done on one background thread, latest request only.

A run redraws its matrix figures after every session, for whoever watches it in MLflow; only the
newest drawing matters. :class:`LatestWins` runs jobs by key on one worker thread: a job
submitted under a key whose earlier job has not started yet replaces it, and a key's jobs start
at least ``min_interval`` seconds apart, so that a run of many short sessions draws a few times,
not once per session (the drawing itself happens in another process, :mod:`continual.figures.drawing`,
which still takes a core). :meth:`flush` runs what is pending at once and waits for it,
re-raising the first error a job raised. The worker is not a daemon, so an interpreter that
exits without a flush still finishes the jobs it holds.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional


class LatestWins:
    """Jobs by key on one worker thread; a newer job replaces a key's job not started yet, and a
    key's jobs start at least ``min_interval`` seconds after its previous one ended. A key's jobs
    never run two at once (the newer would be overwritten by the older)."""

    def __init__(self, name: str = "continual-background", min_interval: float = 0.0) -> None:
        self.name = name
        self.min_interval = min_interval
        self._pending: dict[str, Callable[[], None]] = {}
        self._ended: dict[str, float] = {}  # key -> when its last job ended
        self._running: set[str] = set()
        self._hurry = 0  # flushes waiting: pending jobs start without waiting their interval
        self._error: Optional[BaseException] = None
        self._cond = threading.Condition()
        self._thread: Optional[threading.Thread] = None

    def submit(self, key: str, job: Callable[[], None]) -> None:
        """Run ``job`` on the worker; replaces ``key``'s job if that one has not started."""
        with self._cond:
            self._pending.pop(key, None)  # re-inserted last: older keys go first
            self._pending[key] = job
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self.name, daemon=False)
                self._thread.start()
            self._cond.notify_all()

    def flush(self) -> None:
        """Run every pending job now and wait for it; raise the first error one of them raised.
        The caller, which waits anyway, runs pending jobs too, beside the worker's."""
        with self._cond:
            self._hurry += 1
            self._cond.notify_all()
            try:
                while self._pending or self._running:
                    key = next((k for k in self._pending if k not in self._running), None)
                    if key is None:
                        self._cond.wait()
                    else:
                        self._run(key, self._pending.pop(key))
            finally:
                self._hurry -= 1
            error, self._error = self._error, None
        if error is not None:
            raise error

    def _next(self) -> Optional[tuple[str, Callable[[], None]]]:
        """Under the lock: the first pending job allowed to start now; waits until one is.
        None when nothing is pending (the worker then ends)."""
        while self._pending:
            now = time.monotonic()
            ready = {k: self._ended.get(k, -float("inf")) + self.min_interval
                     for k in self._pending if k not in self._running}
            key = next((k for k, t in ready.items() if self._hurry or t <= now), None)
            if key is not None:
                return key, self._pending.pop(key)
            self._cond.wait(timeout=min(ready.values()) - now if ready else None)
        return None

    def _run(self, key: str, job: Callable[[], None]) -> None:
        """Under the lock: run ``job`` without it, and record its end (or its error, for flush)."""
        self._running.add(key)
        self._cond.release()
        try:
            job()
        except BaseException as exc:  # kept for flush(), which the caller checks
            with self._cond:
                self._error = self._error or exc
        finally:
            self._cond.acquire()
            self._running.discard(key)
            self._ended[key] = time.monotonic()
            self._cond.notify_all()

    def _work(self) -> None:
        with self._cond:
            while True:
                picked = self._next()
                if picked is None:  # idle: this thread ends; the next submit starts another
                    self._thread = None
                    self._cond.notify_all()
                    return
                self._run(*picked)
