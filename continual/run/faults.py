"""How a run that does not finish ends: the status of its MLflow run, and the one line its user
reads instead of a traceback.

- Ctrl-C or SIGTERM (:mod:`continual.system.signals`): the run is marked KILLED; :class:`Interrupted`
  (a ``KeyboardInterrupt``) says which sessions are checkpointed and that the same command
  resumes the run.
- The tracking server stopped answering (MLflow's bounded retries, see
  :data:`continual.tracking.store.HTTP_RETRY_DEFAULTS`, ran out): the run cannot be marked (it stays
  RUNNING on the server, which is what lets the same command find and resume it); a
  :class:`~continual.tracking.store.TrackingError` names the server and says so.
- The disk under the outputs filled up or went read-only: marked FAILED where the store can
  still take it; a :class:`StorageError` names the cause.
- Anything else: FAILED, with the error as the run's ``error`` tag; the exception propagates
  unchanged.

The checkpoint of every finished session is on disk before the session's row is logged, so
none of these loses a finished session.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import Any, Optional

from continual.run import checkpoint
from continual.errors import UserError
from continual.system.signals import signal_name
from continual.tracking.store import TrackingError

# How a write that the disk refused reads, from Python (errno), sqlite and safetensors (text).
_STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
_STORAGE_TEXTS = ("No space left on device", "Disk quota exceeded", "database or disk is full",
                  "Read-only file system", "readonly database", "StorageFull")


class Interrupted(KeyboardInterrupt):
    """A run stopped by SIGINT or SIGTERM; the message is the line to show."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class StorageError(UserError):
    """The disk refused a write (full, over quota, read-only)."""


def end_run(logger: Any, exc: BaseException, checkpoints: Path) -> None:
    """End ``logger``'s MLflow run after ``exc``; raise the one-line error to show instead, if any.

    ``checkpoints`` is the run's checkpoint folder (to say which sessions are kept). When this
    returns, the caller re-raises ``exc``.
    """
    kept = checkpoint.saved_session(checkpoints)
    resume = (f"sessions up to {kept} are checkpointed in {checkpoints}; the same command resumes after session {kept}"
              if kept is not None else "no session had finished; the same command starts a new run")
    server = lost_server(exc)
    if server is not None:  # marking the run would only wait on the dead server again
        raise TrackingError(f"MLflow tracking server {server} stopped answering during run {logger.run_id}; "
                            f"training stopped: {resume} once the server is back") from exc
    if isinstance(exc, SystemExit):  # a scheduler's hook ending the process (submitit requeues a pre-empted job)
        _finish(logger, "KILLED", f"stopped: the process exited with status {exc.code}")
        return
    if isinstance(exc, KeyboardInterrupt):
        marked = _finish(logger, "KILLED", f"interrupted by {signal_name(exc)}")
        raise Interrupted(f"interrupted by {signal_name(exc)}: MLflow run {logger.run_id} {marked}; {resume}",
                          getattr(exc, "signum", 2)) from exc
    marked = _finish(logger, "FAILED", f"{type(exc).__name__}: {exc}")
    if storage_problem(exc):
        raise StorageError(f"{storage_problem(exc)}: run {logger.run_id} stopped, {marked}; {resume} "
                           "once space is freed (or the disk is writable again)") from exc


def explain(exc: BaseException) -> Optional[str]:
    """A one-line message for a fault met outside a run's loop (None: not one of ours)."""
    server = lost_server(exc)
    if server is not None:
        return f"MLflow tracking server {server} is not answering; run the same command again once it is back"
    problem = storage_problem(exc)
    if problem is not None:
        return f"{problem}; free space (or make the disk writable) and run the same command again"
    return None


def lost_server(exc: BaseException) -> Optional[str]:
    """"ADDRESS (why)" if ``exc`` comes from a request the tracking server did not answer."""
    import requests

    for cause in _chain(exc):
        if isinstance(cause, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            found = re.search(r"(https?://[^/\s]+)", " ".join(str(c) for c in _chain(exc)))
            retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "?")
            return f"{found.group(1) if found else '(address unknown)'} ({type(cause).__name__} after {retries} retries)"
    return None


def storage_problem(exc: BaseException) -> Optional[str]:
    """"the disk is full (...)" or similar if ``exc`` comes from a write the disk refused."""
    for cause in _chain(exc):
        if isinstance(cause, OSError) and cause.errno in _STORAGE_ERRNOS:
            where = f" writing {cause.filename}" if cause.filename else ""
            return f"the disk refused a write ({cause.strerror}{where})"
        text = next((t for t in _STORAGE_TEXTS if t in str(cause)), None)
        if text is not None:
            return f"the disk refused a write ({text})"
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and all(exc is not seen for seen in out):
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def _finish(logger: Any, status: str, error: str) -> str:
    """End the run with ``status``; say whether that worked (the store itself may be what failed)."""
    try:
        logger.finish(status, error=error)
    except Exception as exc:
        return f"not marked {status} ({type(exc).__name__})"
    return f"marked {status}"
