"""Session checkpoints, so that a crash loses no finished session.

After every evaluated row i the runner stores, in ``OUTPUT_DIR/checkpoints/RUN_ID/``:

- ``session_{i:03d}.safetensors``: the parameters that train (the rest is the base, rebuilt from
  its recipe), the torch RNG state and any ``extra`` tensors (e.g. the diagnostics' probe
  features); loaded without executing code;
- ``state.json``: the runner's state (matrix rows so far, control rows, per-session records),
  the strategy's own state, the numpy and Python RNG states, and the SHA-256 of the weights file.

Both are written to a temporary file and renamed, state last: a checkpoint is complete or absent.
A truncated or altered weights file fails its checksum and is reported, never loaded.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from continual.system.atomic import atomic_write
from continual.errors import UserError

STATE_FILE = "state.json"
_RNG_KEY = "__rng__.torch"
_EXTRA = "__extra__."


class CheckpointError(UserError):
    """A checkpoint that cannot be trusted (unreadable, truncated, altered)."""


def save(folder: Path, session: int, model: torch.nn.Module, state: dict,
         extra: Optional[dict[str, torch.Tensor]] = None) -> Path:
    """Write session ``session``'s checkpoint; returns the weights file. ``extra`` tensors are
    stored beside the weights (same file, same checksum) and come back as ``load(...)["extra"]``."""
    from safetensors.torch import save_file

    tensors = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    tensors[_RNG_KEY] = torch.get_rng_state()
    tensors.update({_EXTRA + k: v.detach().cpu().clone() for k, v in (extra or {}).items()})  # own memory each
    path = Path(folder) / f"session_{session:03d}.safetensors"
    atomic_write(path, lambda tmp: save_file(tensors, tmp))
    state = dict(state, session=session, weights_file=path.name, weights_sha256=_sha256(path),
                 rng={"numpy": _numpy_state(), "python": _python_state()})
    atomic_write(Path(folder) / STATE_FILE, lambda tmp: Path(tmp).write_text(json.dumps(state, default=float)))
    _remove_older(Path(folder), keep=path.name)
    return path


def load(folder: Path) -> Optional[dict]:
    """The last complete checkpoint in ``folder`` (state plus ``tensors`` and ``extra``), or None."""
    from safetensors.torch import load_file

    state_path = Path(folder) / STATE_FILE
    if not state_path.exists():
        return None
    try:
        state = json.loads(state_path.read_text())
        path = Path(folder) / state["weights_file"]
        digest = _sha256(path)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {state_path} is unreadable ({type(exc).__name__}: {exc}); "
                              "start afresh with --fresh") from None
    if digest != state["weights_sha256"]:
        raise CheckpointError(f"checkpoint {path} is corrupted (checksum mismatch: truncated or altered); "
                              "start afresh with --fresh")
    try:  # safetensors only: a pickle or anything else is refused, never executed
        tensors = load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is not a safetensors file ({str(exc).splitlines()[0]}); "
                              "start afresh with --fresh") from None
    state["extra"] = {k[len(_EXTRA):]: tensors.pop(k) for k in list(tensors) if k.startswith(_EXTRA)}
    state["tensors"] = tensors
    return state


def restore(model: torch.nn.Module, checkpoint: dict) -> None:
    """Load the trained parameters into ``model`` and put every RNG back where it was."""
    tensors = dict(checkpoint["tensors"])
    torch.set_rng_state(tensors.pop(_RNG_KEY))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(tensors) != trainable:
        raise CheckpointError(f"checkpoint {checkpoint['weights_file']} does not match this model's trainable "
                              f"parameters ({len(tensors)} stored, {len(trainable)} expected); was the config changed?")
    shapes = {n: p.shape for n, p in model.named_parameters()}
    wrong = [n for n, t in tensors.items() if t.shape != shapes[n]]
    if wrong:
        raise CheckpointError(f"checkpoint {checkpoint['weights_file']} holds tensors of other shapes than this "
                              f"model's ({len(wrong)}, e.g. {wrong[0]}: {list(tensors[wrong[0]].shape)} stored, "
                              f"{list(shapes[wrong[0]])} expected); was the config changed? start afresh with --fresh")
    model.load_state_dict(tensors, strict=False)
    rng = checkpoint["rng"]
    state = rng["numpy"]
    np.random.set_state((state[0], np.array(state[1], dtype=np.uint32), *state[2:]))
    random.setstate((rng["python"][0], tuple(rng["python"][1]), rng["python"][2]))


def _numpy_state() -> list:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _python_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _remove_older(folder: Path, keep: str) -> None:
    """Keep only the newest weights: the state refers to it, and older ones are not needed."""
    for old in folder.glob("session_*.safetensors"):
        if old.name != keep:
            old.unlink(missing_ok=True)


def saved_session(folder: Path) -> Optional[int]:
    """The session of the last complete checkpoint in ``folder`` (None if none), without loading it."""
    try:
        return int(json.loads((Path(folder) / STATE_FILE).read_text())["session"])
    except (OSError, ValueError, KeyError):
        return None
