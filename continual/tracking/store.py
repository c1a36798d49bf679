"""The MLflow store: where runs live, checks that a store can be used, finding runs, run metadata.

Light to import (MLflow's client only; no Avalanche): the commands that read runs without
training (``continual report``, ``sweep``'s bookkeeping) need nothing more.

Store conventions: a local store is ``sqlite:///<abs output_dir>/mlflow.db`` with artifacts in
``<abs output_dir>/mlartifacts`` (MLflow refuses the old ``file:`` store unless
``MLFLOW_ALLOW_FILE_STORE=true``). A remote store is an ``http(s)://`` tracking server.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Sequence

from continual.errors import UserError

# Error messages and tags are shown in the runs table: keep them short enough to read there.
MAX_ERROR_LENGTH = 1000

_PACKAGES = {  # run_metadata key -> distribution name on PyPI
    "torch": "torch",
    "open_clip": "open_clip_torch",
    "avalanche": "avalanche-lib",
    "mlflow": "mlflow",
    "numpy": "numpy",
}


# MLflow announces creating and migrating its sqlite tables at INFO level on every new store.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
logging.getLogger("alembic").setLevel(logging.WARNING)
# urllib3 warns at every retry of a request to a tracking server that stopped answering; the run
# ends with one line that says so (continual.run.faults).
logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)

# A tracking server that stops answering: MLflow's client retries 7 times with a backoff factor
# of 2 and waits up to 120 s per request (minutes of stalled training). Bounded to seconds
# here: a request fails after about 10 s of refused connections, or about 50 s of a server
# that hangs; the run then stops in one line, and the same command resumes it once the
# server is back. A value the user set is kept.
HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
for _name, _value in HTTP_RETRY_DEFAULTS.items():
    os.environ.setdefault(_name, _value)

# Schemes MLflow's tracking client can use (plugins add theirs through an entry-point group).
_DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
_OTHER_SCHEMES = ("http", "https", "databricks", "databricks-uc", "uc")


class TrackingError(UserError, ValueError):
    """The tracking store cannot be used; the one-line message names the URI and the fix."""


# --------------------------------------------------------------------------- #
# Store locations and checks
# --------------------------------------------------------------------------- #
def abspath(path: str | os.PathLike) -> str:
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def default_tracking_uri(output_dir: str) -> str:
    """The local sqlite store of an output directory: ``sqlite:///<abs output_dir>/mlflow.db``."""
    return "sqlite:///" + os.path.join(abspath(output_dir), "mlflow.db")


def default_artifact_root(output_dir: str) -> str:
    """Where runs of the local store keep their artifacts: ``<abs output_dir>/mlartifacts``."""
    return os.path.join(abspath(output_dir), "mlartifacts")


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (SQLAlchemy form), None for in-memory."""
    # sqlite:///rel.db is relative to the cwd, sqlite:////abs.db is absolute.
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    if path in ("", ":memory:"):
        return None
    return Path(abspath(path))


def is_local_path(location: str) -> bool:
    """True for a plain path (no URI scheme; a one-letter scheme is a Windows drive)."""
    return len(urllib.parse.urlparse(location).scheme) <= 1


def one_line(text: str, limit: int) -> str:
    """Collapse whitespace (newlines included) and truncate to `limit` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any training, when the tracking store cannot be used.

    - ``http(s)://``: GET ``<uri>/health`` must answer 200 within `timeout` seconds.
    - ``sqlite:///``: files must be writable in the database's folder (or its nearest existing
      parent), which a probe file shows (see :func:`writable_problem`).
    - ``file:`` / plain paths: refused (MLflow 3 refuses them too) unless
      ``MLFLOW_ALLOW_FILE_STORE=true``.
    - other database URIs (postgresql://, mysql://, mssql://, with a ``+driver``), databricks
      and schemes of MLflow plugins pass unchecked; any other scheme (ftp://, s3://) is refused.

    Nothing is created. Raises TrackingError with a one-line message naming the URI and the fix.
    """
    scheme = urllib.parse.urlparse(uri).scheme.lower()
    if not is_local_path(uri) and scheme != "file" and not _known_scheme(scheme):
        raise TrackingError(
            f"tracking.uri {uri}: MLflow cannot track to a '{scheme}://' URI; give sqlite:///PATH/mlflow.db, "
            f"the http(s):// address of a tracking server, or a database URI (postgresql://, mysql://)"
        )
    if scheme in ("http", "https"):
        health = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(health, timeout=timeout) as response:
                status = response.status
            reason = None if status == 200 else f"HTTP {status}"
        except urllib.error.HTTPError as e:
            reason = f"HTTP {e.code}"
        except (urllib.error.URLError, OSError) as e:
            reason = str(getattr(e, "reason", e))
        if reason is not None:
            raise TrackingError(
                one_line(
                    f"MLflow tracking server {uri} is unreachable ({reason}): start it with "
                    f"`continual ui` / `mlflow server --backend-store-uri sqlite:///PATH "
                    f"--host 127.0.0.1 --port PORT`, or set tracking.uri to a reachable "
                    f"server or a sqlite:/// path",
                    2 * MAX_ERROR_LENGTH,
                )
            )
    elif scheme == "sqlite":
        db = sqlite_path(uri)
        if db is None:
            return
        problem = writable_problem(db.parent)
        if problem is None and db.exists() and not os.access(db, os.W_OK):
            problem = f"{db} is read-only"
        if problem is not None:
            raise TrackingError(
                one_line(f"tracking store {uri}: {problem}; set tracking.uri to a sqlite:/// path "
                         f"in a writable directory with free space", 2 * MAX_ERROR_LENGTH)
            )
    elif scheme == "file" or is_local_path(uri):
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() != "true":
            raise TrackingError(
                f"tracking store {uri}: MLflow refuses file stores; "
                f"set tracking.uri to sqlite:///PATH/mlflow.db or an http:// server"
            )


def _known_scheme(scheme: str) -> bool:
    if scheme in _OTHER_SCHEMES or scheme.split("+", 1)[0] in _DATABASE_SCHEMES:
        return True
    return scheme in {e.name for e in metadata.entry_points(group="mlflow.tracking_store")}


def ensure_store(uri: str) -> None:
    """Make the store at ``uri`` ready for runs: safe whatever number of processes call it at once.

    For a ``sqlite:///`` store, under an exclusive lock on ``<db>.lock`` beside the database: a
    missing database is created (MLflow's tables and migrations) in a temporary file that is
    renamed into place once complete, so that a store is whole or absent, never half made; an
    existing one is opened once, which checks its schema. Other stores (a tracking server, a
    database server) set themselves up: nothing to do. Raises TrackingError (one line) for a
    store that cannot be created or opened.
    """
    db = sqlite_path(uri) if uri.startswith("sqlite:///") else None
    if db is None:
        return
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from continual.system.locks import FileLock

    try:
        with FileLock(db.parent / f"{db.name}.lock"):
            if not db.exists():
                _create_sqlite_store(db)
            MlflowClient(uri).search_experiments(max_results=1)  # opens the store: checks its schema
    except (MlflowException, OSError) as exc:
        message = getattr(exc, "message", None) or str(exc)
        raise TrackingError(one_line(
            f"tracking store {uri} cannot be created or opened ({message.splitlines()[0] if message else type(exc).__name__}); "
            f"if it is from an older MLflow, back it up and run `mlflow db upgrade {uri}`; "
            f"otherwise move it away and run again", 2 * MAX_ERROR_LENGTH)) from None


def _create_sqlite_store(db: Path) -> None:
    """MLflow's tables in a temporary database beside ``db``, renamed onto ``db`` when complete."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    tmp = db.parent / f".{db.name}.creating"  # one creator at a time (the caller holds the lock)
    tmp.unlink(missing_ok=True)  # left by a creator that was killed
    try:
        store = SqlAlchemyStore(f"sqlite:///{tmp}", default_artifact_root(str(db.parent)))
        store.engine.dispose()
        os.replace(tmp, db)
    finally:
        tmp.unlink(missing_ok=True)


def writable_problem(directory: str | os.PathLike) -> str | None:
    """Why files cannot be written in ``directory`` (None if they can), found by writing one.

    A directory that does not exist yet is judged by its nearest existing parent (nothing is
    created). The probe file is written, flushed to disk and removed: a read-only file system,
    missing permissions and a full disk all show (permission bits alone say nothing to root).
    """
    path = Path(abspath(directory))
    while not path.exists():
        path = path.parent
    if not path.is_dir():
        return f"{path} is not a directory"
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-probe-")
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        return f"cannot write in {path} ({exc.strerror or exc})"
    return None


# --------------------------------------------------------------------------- #
# Run metadata and params
# --------------------------------------------------------------------------- #
def _git(args: Sequence[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def find_runs(tracking_uri: str, experiment: str, tag: str, value: str) -> list:
    """Runs of ``experiment`` whose tag ``tag`` equals ``value``, newest first ([] if none).

    Looking does not create a store: a sqlite file that does not exist yet holds no runs.
    """
    if tracking_uri.startswith("sqlite:///"):
        db = sqlite_path(tracking_uri)
        if db is not None and not db.exists():
            return []
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return client.search_runs([found.experiment_id], filter_string=f"tags.{tag} = '{value}'",
                              order_by=["attributes.start_time DESC"])


def source_tags(git_commit: str) -> dict[str, str]:
    """MLflow's standard source tags, which its UI shows in a run's overview: the command that
    made the run, the project's commit (without the ``-dirty`` mark), the user."""
    import getpass
    import sys

    program = Path(sys.argv[0]).name if sys.argv else ""
    ours = program in ("continual", "__main__.py") and len(sys.argv) > 1
    tags = {"mlflow.source.name": f"continual {sys.argv[1]}" if ours else (program or "python"),
            "mlflow.source.type": "LOCAL"}
    if git_commit != "unknown":
        tags["mlflow.source.git.commit"] = git_commit.removesuffix("-dirty")
    try:
        tags["mlflow.user"] = getpass.getuser()
    except (KeyError, OSError):
        pass
    return tags


def run_metadata() -> dict[str, str]:
    """Versions of the packages that shape results, plus the project's git commit.

    Keys: torch, open_clip, avalanche, mlflow, numpy, python, git_commit. Versions come from
    the installed distributions' metadata (no imports); a missing one is "not installed".
    git_commit is the checkout's HEAD, with "-dirty" when ``git status --porcelain`` reports
    changes, or "unknown" when this package is not in a git checkout with a commit.
    """
    info: dict[str, str] = {}
    for key, dist in _PACKAGES.items():
        try:
            info[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[key] = "not installed"
    info["python"] = platform.python_version()

    package_dir = Path(__file__).resolve().parent
    commit = _git(["rev-parse", "HEAD"], package_dir)
    if not commit:
        info["git_commit"] = "unknown"
    else:
        dirty = _git(["status", "--porcelain"], package_dir)
        info["git_commit"] = commit + ("-dirty" if dirty else "")
    return info

