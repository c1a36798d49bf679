"""Figures drawn and saved in a child process, so that drawing never holds up training.

Drawing a matplotlib figure is Python code. On a thread of the training process it holds the
interpreter, and training, which gives the interpreter up at every torch call and must take it
back after, waits each time: a loop of small torch operations ran 5x slower while a thread drew
figures (2-core build machine). So child processes draw instead: two per training process (the
background thread draws in one while training goes on; at the end of a run, the thread waiting
for the last figures draws in the other beside it), started on the first figure and reused by
every figure after; they import only what the drawing functions need (numpy, matplotlib, our
figure modules). A drawing function and its arguments travel to them by pickle: a module-level
function and plain data (numpy arrays, numbers, strings).

A child is a fresh interpreter (``python -m continual.figures.drawing``), not a multiprocessing spawn,
which would first re-run the parent's main script: a researcher's script that calls
``continual.run.loop.run`` at top level would start its own run again. It runs at a lower priority
(nice 10: where training needs every core, training goes first); it talks over a socket pair;
it ignores Ctrl-C and SIGTERM (the parent decides when a run ends, and waits for the figure being
drawn), and it exits when the parent is gone, however the parent ended: its end of the socket
then reads end-of-file.
"""

from __future__ import annotations

import atexit
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable, Optional


class DrawingError(RuntimeError):
    """The drawing process died twice on one figure."""


class _ChildTraceback(Exception):
    """Where the drawing process raised (the error itself is re-raised with this as its cause)."""


class _Child:
    """The drawing process and our end of its socket."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        # the child imports what the parent can (a test module's drawing function included)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.process = subprocess.Popen([sys.executable, "-m", "continual.figures.drawing", str(theirs.fileno())],
                                        pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=env)
        theirs.close()
        self.connection = Connection(ours.detach())

    def draw(self, job: bytes) -> Optional[tuple[BaseException, str]]:
        self.connection.send_bytes(job)
        return self.connection.recv()

    def close(self) -> None:
        self.connection.close()  # the child reads end-of-file and exits
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# Two children: the background thread draws in one while training goes on; when the run ends,
# the thread that waits for the last figures draws in the other beside it (LatestWins.flush).
CHILDREN = 2
_pool = threading.Condition()
_idle: list[_Child] = []
_started = 0


def _take() -> _Child:
    """An idle child; the first call starts them all, so that a second is warm when needed."""
    global _started
    with _pool:
        while not _idle and _started >= CHILDREN:
            _pool.wait()
        if not _idle:
            _idle.extend(_Child() for _ in range(CHILDREN - _started))
            _started = CHILDREN
        return _idle.pop()


def _give_back(child: _Child, alive: bool) -> None:
    global _started
    with _pool:
        if alive:
            _idle.append(child)
        else:
            _started -= 1
        _pool.notify()


def save_figure(path: str | Path, draw: Callable[..., Any], *args: Any, dpi: int = 120, **kwargs: Any) -> None:
    """``draw(*args, **kwargs).savefig(path)`` (PNG) in a drawing process; returns once the file
    is written, and raises what drawing raised. Blocks the calling thread (without holding the
    interpreter): call it from a background thread (:class:`continual.tracking.background.LatestWins`).
    A drawing process that died (killed, out of memory) is replaced, once per figure."""
    job = pickle.dumps((str(path), dpi, draw, args, kwargs))  # what cannot travel fails here, in the caller
    for attempt in (1, 2):
        child = _take()
        try:
            reply = child.draw(job)
        except (EOFError, OSError) as exc:  # the child is gone
            child.close()
            _give_back(child, alive=False)
            if attempt == 2:
                raise DrawingError(f"the drawing process died drawing {Path(path).name}") from exc
            continue
        _give_back(child, alive=True)
        if reply is not None:
            error, where = reply
            raise error from _ChildTraceback(where)
        return


@atexit.register
def _stop() -> None:
    with _pool:
        while _idle:
            _idle.pop().close()


# -- the child ---------------------------------------------------------------------------------
def _serve(fd: int) -> None:
    """Draw and save each figure received on ``fd``; reply None, or (error, traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.nice(10)  # where training needs every core, it goes first
    import matplotlib.backends.backend_agg  # noqa: F401  (warm before the first figure)
    connection = Connection(fd)
    while True:
        try:
            job = connection.recv_bytes()
        except (EOFError, OSError):  # the parent closed its end, or is gone
            return
        try:
            path, dpi, draw, args, kwargs = pickle.loads(job)
            draw(*args, **kwargs).savefig(path, dpi=dpi, format="png")
            reply = None
        except Exception as exc:
            reply = (exc, traceback.format_exc())
        try:
            connection.send(reply)
        except (pickle.PicklingError, TypeError, AttributeError):  # an error that does not pickle
            connection.send((RuntimeError(f"{type(reply[0]).__name__}: {reply[0]}"), reply[1]))


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
