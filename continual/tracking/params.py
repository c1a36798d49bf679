"""A config as MLflow params: flattened to dotted keys, keys made valid, values cut to MLflow's
limits. Light (no MLflow import): the report groups runs by these same params."""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

# MLflow's own limits (mlflow.utils.validation); exceeding them makes the whole call fail.
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
MAX_KEY_LENGTH = 250


def truncate(value: str, limit: int) -> str:
    """Cut `value` to at most `limit` characters, marking the cut so it is not mistaken."""
    if len(value) <= limit:
        return value
    marker = f"...[truncated {len(value)} chars]"
    return value[: limit - len(marker)] + marker


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, bytes)) or not isinstance(value, (Mapping, Sequence))


def flatten(d: Mapping, prefix: str = "") -> dict[str, str]:
    """Flatten a nested config into MLflow params: ``{"train": {"lr": 0.1}}`` -> ``{"train.lr": "0.1"}``.

    Lists of scalars stay one value (``"[1, 2, 3]"``: a list of 100 class names should not
    become 100 params); lists that contain mappings or lists are expanded by index
    (``"layers.0.width"``). Empty mappings/lists are kept as ``"{}"`` / ``"[]"``.
    Values are strings, cut to MLflow's 6000-character limit with a visible marker.
    Works on OmegaConf containers too (DictConfig is a Mapping, ListConfig a Sequence).
    """
    out: dict[str, str] = {}

    def visit(value: Any, key: str) -> None:
        if isinstance(value, Mapping):
            if not value and key:
                out[key] = "{}"
            for k, v in value.items():
                visit(v, f"{key}.{k}" if key else str(k))
        elif not _is_scalar(value):
            items = list(value)
            if all(_is_scalar(v) for v in items):
                out[key] = truncate(str(items), MAX_PARAM_VALUE_LENGTH)
            else:
                for i, v in enumerate(items):
                    visit(v, f"{key}.{i}")
        else:
            out[key] = truncate(str(value), MAX_PARAM_VALUE_LENGTH)

    visit(d, prefix)
    return out


_BAD_KEY_CHARS = re.compile(r"[^/\w.\- :]")


def safe_key(name: str) -> str:
    """Make `name` a valid MLflow metric/param/tag key (Avalanche names keep their '/')."""
    key = _BAD_KEY_CHARS.sub("_", str(name))
    key = re.sub(r"/+", "/", key).strip("/")  # MLflow rejects non-normalized paths
    return key[:MAX_KEY_LENGTH] or "_"


def as_params(config: Mapping) -> dict[str, str]:
    """The params a run of ``config`` carries in MLflow: flattened, keys made valid."""
    return {safe_key(k): v for k, v in flatten(config).items()}
