"""Figures drawn and saved in a child process, so that drawing never holds up training.

Drawing a matplotlib figure is Python code. On a thread of the training process it holds the
interpreter, and training, which gives the interpreter up at every torch call and must take it
back after, waits each time: a loop of small torch operations ran 5x slower while a thread drew
figures (2-core build machine). So one child process per training process draws instead: started
on the first figure and reused by every figure after, it imports only what the drawing functions
need (numpy, matplotlib, our figure modules). A drawing function and its arguments travel to it
by pickle: a module-level function and plain data (numpy arrays, numbers, strings).

The child is a fresh interpreter (``python -m continual.drawing``), not a multiprocessing spawn,
which would first re-run the parent's main script: a researcher's script that calls
``continual.runner.run`` at top level would start its own run again. It talks over a socket pair;
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
        self.process = subprocess.Popen([sys.executable, "-m", "continual.drawing", str(theirs.fileno())],
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


_lock = threading.Lock()  # one figure at a time: the child draws them in turn
_child: Optional[_Child] = None


def save_figure(path: str | Path, draw: Callable[..., Any], *args: Any, dpi: int = 120, **kwargs: Any) -> None:
    """``draw(*args, **kwargs).savefig(path)`` (PNG) in the drawing process; returns once the
    file is written, and raises what drawing raised. Blocks the calling thread (without holding
    the interpreter): call it from a background thread (:class:`continual.background.LatestWins`).
    A drawing process that died (killed, out of memory) is replaced, once per figure."""
    global _child
    job = pickle.dumps((str(path), dpi, draw, args, kwargs))  # what cannot travel fails here, in the caller
    with _lock:
        for attempt in (1, 2):
            if _child is None:
                _child = _Child()
            try:
                reply = _child.draw(job)
                break
            except (EOFError, OSError) as exc:  # the child is gone
                _child.close()
                _child = None
                if attempt == 2:
                    raise DrawingError(f"the drawing process died drawing {Path(path).name}") from exc
    if reply is not None:
        error, where = reply
        raise error from _ChildTraceback(where)


@atexit.register
def _stop() -> None:
    global _child
    with _lock:
        if _child is not None:
            _child.close()
            _child = None


# -- the child ---------------------------------------------------------------------------------
def _serve(fd: int) -> None:
    """Draw and save each figure received on ``fd``; reply None, or (error, traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
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
