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
    - ``sqlite:///``: the database's directory must be creatable and writable.
    - ``file:`` / plain paths: refused (MLflow 3 refuses them too) unless
      ``MLFLOW_ALLOW_FILE_STORE=true``.
    Other schemes (postgresql://, databricks, ...) are passed through unchecked.

    Raises TrackingError with a one-line message naming the URI and the fix.
    """
    scheme = urllib.parse.urlparse(uri).scheme.lower()
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
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrackingError(
                one_line(
                    f"tracking store {uri}: cannot create directory {db.parent} ({e.strerror or e}); "
                    f"set tracking.uri to a sqlite:/// path in a writable directory",
                    2 * MAX_ERROR_LENGTH,
                )
            ) from None
        target = db if db.exists() else db.parent
        if not os.access(target, os.W_OK):
            raise TrackingError(
                f"tracking store {uri}: {target} is not writable; "
                f"set tracking.uri to a sqlite:/// path in a writable directory"
            )
    elif scheme == "file" or is_local_path(uri):
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() != "true":
            raise TrackingError(
                f"tracking store {uri}: MLflow refuses file stores; "
                f"set tracking.uri to sqlite:///PATH/mlflow.db or an http:// server"
            )


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


def metric_steps(tracking_uri: str, run_id: str, key: str) -> list[int]:
    """The steps at which ``key`` was logged in ``run_id``."""
    from mlflow import MlflowClient

    return [m.step for m in MlflowClient(tracking_uri=tracking_uri).get_metric_history(run_id, key)]


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

