"""The configs shipped with the package: find one by name, list them.

``continual run vrlwf`` and ``continual run configs/vrlwf.yaml`` are the same run in a checkout;
after ``pip install`` only the name works, since the YAML files live inside the installed
``configs`` package. A path that exists always wins over a name.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from continual.errors import ConfigError


def folder() -> Path:
    """Where the shipped YAML files are (the ``configs`` package)."""
    return Path(str(resources.files("configs")))


def names() -> list[str]:
    """Every shipped config's name (file name without ``.yaml``), sorted."""
    return sorted(p.stem for p in folder().glob("*.yaml"))


def summary(name: str, width: int = 76) -> str:
    """The start of a shipped config's header comment, cut at a word to ``width`` characters."""
    words: list[str] = []
    for line in (folder() / f"{name}.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        words += line.lstrip("#").split()
    text = " ".join(words)
    return text if len(text) <= width else text[: text.rfind(" ", 0, width - 3)] + "..."


def resolve(name_or_path: str | Path) -> Path:
    """The YAML file of ``name_or_path``: an existing file, else a shipped config of that name
    (``vrlwf`` or ``vrlwf.yaml``); otherwise a one-line ConfigError listing the shipped names."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    stem = path.name[: -len(".yaml")] if path.name.endswith(".yaml") else path.name
    shipped = folder() / f"{stem}.yaml"
    if shipped.is_file() and (len(path.parts) == 1 or path.parent.name == "configs"):
        return shipped
    raise ConfigError(f"config not found: '{name_or_path}' is neither a YAML file nor a shipped config; "
                      f"give a path or one of: {', '.join(names())}")
