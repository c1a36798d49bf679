"""SIGTERM ends a run the way Ctrl-C does, and neither cuts a write to MLflow in half.

``timeout``, docker, Kubernetes and SLURM stop (or pre-empt) a job with SIGTERM, whose default
action kills the process on the spot: no message, the MLflow run left RUNNING. While a function
wrapped by :func:`sigterm_as_interrupt` runs, SIGTERM instead raises :class:`Terminated`, a
``KeyboardInterrupt``: the runner ends the run KILLED, keeps the last finished session's
checkpoint, and the CLI prints one line (the same command then resumes the run).

An interrupt raised inside a database call leaves its connection broken (SQLAlchemy logs a
traceback, and the run could not then be marked KILLED). Code that writes to MLflow runs
:func:`uninterrupted`: a SIGTERM or Ctrl-C that arrives there is raised when the write is done.
Ctrl-C gets the same treatment while the wrapped function runs, unless the program has its own
SIGINT handler (which is then left alone).

Python delivers signals to the main thread only, so the handlers are installed only when the
wrapped call runs there (in a worker thread nothing changes), and the previous handlers are put
back when the call returns: runs that follow each other in one process (a sweep's worker) each
get them afresh, and the host program's own handlers are not lost.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
from typing import Any, Callable, Iterator, Optional, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM."""

    signum = signal.SIGTERM


class _State:
    depth = 0  # nesting of uninterrupted blocks in the main thread
    pending: Optional[int] = None  # a signal that arrived inside one
    delivered = False  # an interrupt was raised: the run is ending, later signals are ignored


def signal_name(exc: BaseException) -> str:
    """"SIGTERM" for :class:`Terminated`, "SIGINT" for any other KeyboardInterrupt."""
    return signal.Signals(getattr(exc, "signum", signal.SIGINT)).name


def exit_status(exc: BaseException) -> int:
    """The shell's status for a process ended by the signal: 128 + its number (130, 143)."""
    return 128 + int(getattr(exc, "signum", signal.SIGINT))


def _interrupt(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _handler(signum: int, frame: Any) -> None:
    if _State.delivered:
        return
    if _State.depth:
        _State.pending = signum
        return
    _State.delivered = True
    raise _interrupt(signum)


def sigterm_as_interrupt(fn: F) -> F:
    """Run ``fn`` with SIGTERM raising :class:`Terminated` (in the main thread only)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return fn(*args, **kwargs)
        _State.pending, _State.delivered = None, False
        previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _handler)}
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            previous[signal.SIGINT] = signal.signal(signal.SIGINT, _handler)
        try:
            return fn(*args, **kwargs)
        finally:  # a handler installed outside Python reads as None: the default action, then
            for signum, handler in previous.items():
                signal.signal(signum, signal.SIG_DFL if handler is None else handler)

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Inside the block, an interrupt waits for the block's end (in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _State.depth += 1
    try:
        yield
    finally:
        _State.depth -= 1
    if _State.depth == 0 and _State.pending is not None and not _State.delivered:
        signum, _State.pending = _State.pending, None
        _State.delivered = True
        raise _interrupt(signum)


def uninterrupted(fn: F) -> F:
    """Decorate a function that must not be cut in half by an interrupt (see the module's doc)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with deferred_interrupts():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
