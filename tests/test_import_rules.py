"""The layering of the project, as rules on what each module may import.

Every ``import`` and ``from ... import`` statement is read with ``ast`` (those inside functions
too, since lazy imports cross layers just as much), so nothing is imported to check. The rules:

- ``continual/`` (the framework) knows strategies and streams only by name, through the
  registries: no module of it imports ``strategies`` or ``streams``, except ``continual/bench/``
  (benchmarks of concrete strategies and data);
- ``continual/measure/`` is pure arithmetic over arrays: it imports nothing of the project;
- ``continual/figures/`` and ``continual/config/`` run without the deep-learning stack (plots
  of logged runs, config validation in ``--dry-run``): no torch, torchvision, open_clip or
  avalanche;
- ``strategies/`` never import a stream, nor the runner, the comparison or the tracking layers
  (what they need comes through ``continual.context.StrategyContext`` and the registries);
- ``streams/`` never import ``strategies/``;
- what ``--dry-run`` reads of a strategy and a model (its declaration, the registry, open_clip's
  configs as JSON) imports no torch, torchvision, open_clip or avalanche.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEEP_LEARNING = ("torch", "torchvision", "open_clip", "avalanche")
PROJECT = ("continual", "strategies", "streams")

# (the files a rule covers, the modules they must not import, why), paths relative to ROOT
RULES: list[tuple[str, tuple[str, ...], str]] = [
    ("continual/", ("strategies", "streams"), "the framework reaches strategies and streams through the registries"),
    ("continual/measure/", PROJECT, "measure/ is pure arithmetic, independent of the project"),
    ("continual/figures/", DEEP_LEARNING, "figures/ draw logged results without the deep-learning stack"),
    ("continual/config/", DEEP_LEARNING, "config/ validates without the deep-learning stack (--dry-run)"),
    ("strategies/", ("streams", "continual.run", "continual.compare", "continual.tracking"),
     "a strategy gets its data and helpers through StrategyContext and the registries"),
    ("streams/", ("strategies",), "a stream knows no strategy"),
    # what --dry-run reads of a strategy and a model (tests/test_startup.py checks it at run time)
    *((light, DEEP_LEARNING, "read by --dry-run without the deep-learning stack")
      for light in ("strategies/declarations.py", "continual/strategy.py", "continual/registry.py",
                    "continual/clip/configs.py")),
]
EXEMPT = {"continual/": ("continual/bench/",)}  # benchmarks measure concrete strategies and streams


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``; ``from a import b`` counts as
    ``a.b`` too, since b may be a module (``from continual import run``)."""
    module = module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing package
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names if alias.name != "*"]
    return found


def matches(name: str, forbidden: str) -> bool:
    return name == forbidden or name.startswith(forbidden + ".")


def violations(root: Path = ROOT) -> list[str]:
    """Every forbidden import, as 'file:line: imports X (rule)'."""
    problems = []
    for prefix, forbidden, why in RULES:
        files = [root / prefix] if prefix.endswith(".py") else sorted((root / prefix).rglob("*.py"))
        for path in (f for f in files if f.is_file()):
            rel = path.relative_to(root).as_posix()
            if any(rel.startswith(e) for e in EXEMPT.get(prefix, ())):
                continue
            reported = set()  # one line per import statement and rule
            for line, name in imports(path, root):
                if line not in reported and any(matches(name, f) for f in forbidden):
                    reported.add(line)
                    problems.append(f"{rel}:{line}: imports {name} ({why})")
    return problems


def test_import_rules_hold() -> None:
    problems = violations()
    assert not problems, "layering broken:\n" + "\n".join(problems)


def test_the_walk_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The checker itself: an import inside a function, and a relative one, are both found."""
    package = tmp_path / "continual" / "measure"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "bad.py").write_text("def f():\n    import torch\n    from ..run import loop\n")
    problems = violations(tmp_path)
    assert "continual/measure/bad.py:3: imports continual.run (measure/ is pure arithmetic, " \
           "independent of the project)" in problems, problems
    assert imports(package / "bad.py", tmp_path)[0] == (2, "torch")
