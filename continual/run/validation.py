"""Validation data carved from each session's training data, and the session window.

``stream.val_fraction`` (0 = off) holds out a seeded share of every session's training
examples: per class on classification streams (CIL, FSCIL, MTIL, Avalanche benchmarks), per
image on image-text streams (all captions of an image go to the same side). The split depends
only on the run's seed, the session and the data, so it is the same in every run of that seed.
The run trains on the rest.

``stream.evaluate_on``:

- ``test`` (default): the session matrices score the test data, as always (a run with
  ``val_fraction > 0`` then simply trains on less data);
- ``validation`` (tuning trials): every session's validation split takes the place of its test
  data. The test data is *sealed*: the stream builder's image encodings are deferred
  (:class:`Deferred`), and after the build the stream keeps no reference to its test data, so a
  test example is never encoded, scored or handed to the model; image-text streams encode only
  their training images (a test row asked for raises :class:`SealedError`). The run's control
  evaluation is off too (:func:`continual.run.loop.run`).

``stream.first_session`` / ``stream.last_session`` (1-based, 0 = the last) run a window of the
sessions: the first k for a first-k tuning trial, the sessions after k for a holdout-k
evaluation (Chaudhry et al. 2019). Sessions are renumbered from 1 inside the window.
"""

from __future__ import annotations

import copy
import hashlib
from types import SimpleNamespace
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from continual.errors import ConfigError

EVALUATE_ON = ("test", "validation")


class SealedError(RuntimeError):
    """A test example was asked for while the test data is sealed (a tuning trial)."""


def active(cfg: Any) -> bool:
    """Whether ``cfg`` (a StreamConfig) asks for anything of this module."""
    return (float(cfg.get("val_fraction", 0.0)) > 0 or cfg.get("evaluate_on", "test") != "test"
            or int(cfg.get("first_session", 1)) != 1 or int(cfg.get("last_session", 0)) != 0)


def sealed(cfg: Any) -> bool:
    return cfg.get("evaluate_on", "test") == "validation"


def check(cfg: Any) -> None:
    """The keys' own ranges (the session window is checked against the stream's sessions later)."""
    fraction = float(cfg.val_fraction)
    if not 0 <= fraction < 1:
        raise ConfigError(f"stream.val_fraction must be in [0, 1) (0 = no validation data), got {fraction}")
    if cfg.evaluate_on not in EVALUATE_ON:
        raise ConfigError(f"stream.evaluate_on: '{cfg.evaluate_on}' is not allowed; choose one of: {', '.join(EVALUATE_ON)}")
    if sealed(cfg) and fraction == 0:
        raise ConfigError("stream.evaluate_on=validation needs validation data: set stream.val_fraction > 0 (e.g. 0.2)")
    if cfg.first_session < 1 or cfg.last_session < 0:
        raise ConfigError(f"stream.first_session must be >= 1 and stream.last_session >= 0 (0 = the last), got "
                          f"{cfg.first_session}, {cfg.last_session}")


# -- deferred encoding -------------------------------------------------------------------------
class Deferred(Dataset):
    """``encode(dataset, key)`` computed on first use, not when the stream is built. ``allow``
    (set after the build, or None = every row) restricts what is ever encoded: only those rows
    of ``dataset`` are, and asking for another raises :class:`SealedError`."""

    def __init__(self, encode: Callable, dataset: Dataset, key: str, train: bool) -> None:
        self.encode, self.dataset, self.key, self.train = encode, dataset, key, train
        self.allow: Optional[list[int]] = None
        self._inputs: Any = None
        self._row: Optional[dict[int, int]] = None

    def __len__(self) -> int:
        return len(self.dataset)

    def materialize(self) -> Any:
        if self._inputs is None:
            from continual.stream import encode_images

            if self.allow is None:
                self._inputs = encode_images(self.encode, self.dataset, self.key, train=self.train)
            else:
                digest = hashlib.blake2b(np.asarray(self.allow, dtype=np.int64).tobytes(), digest_size=8).hexdigest()
                subset = torch.utils.data.Subset(self.dataset, self.allow)
                self._inputs = encode_images(self.encode, subset, f"{self.key}-rows-{digest}", train=self.train)
                self._row = {r: i for i, r in enumerate(self.allow)}
        return self._inputs

    def __getitem__(self, i: int) -> Any:
        inputs = self.materialize()
        if self._row is not None:
            if int(i) not in self._row:
                raise SealedError(f"row {i} of {self.key} is not training data: the test data is sealed")
            i = self._row[int(i)]
        return inputs[i]


def deferring(encode: Callable, made: list) -> Callable:
    def deferred(dataset: Dataset, key: str, train: bool = False) -> Deferred:
        made.append(Deferred(encode, dataset, key, train))
        return made[-1]

    return deferred


# -- the split ---------------------------------------------------------------------------------
def split_per_group(groups: Sequence[Any], fraction: float, seed: int, session: int) -> tuple[list[int], list[int]]:
    """(training, validation) positions: ``round(fraction * n)`` of each group's n positions
    (at least one, and never all: a group of one stays in training), drawn with a generator
    seeded by (seed, session, group)."""
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(str(g), []).append(i)
    val: list[int] = []
    for g in sorted(by_group):
        members = by_group[g]
        n = min(max(1, round(fraction * len(members))), len(members) - 1)
        if n <= 0:
            continue
        tag = int.from_bytes(hashlib.blake2b(g.encode(), digest_size=4).digest(), "little")
        rng = np.random.default_rng([seed, 7919, session, tag])
        val += [members[k] for k in rng.choice(len(members), size=n, replace=False)]
    val_set = set(val)
    return [i for i in range(len(groups)) if i not in val_set], sorted(val)


def _with_dataset(experience: Any, dataset: Any, index: int) -> Any:
    new = copy.copy(experience)
    new._dataset = dataset
    new._current_experience = index
    return new


def _targets(dataset: Any) -> list[int]:
    return [int(t) for t in dataset.targets]


def wrap(stream_fn: Callable, cfg: Any) -> Callable:
    """The stream builder ``stream_fn`` with the validation split and session window of ``cfg``
    (the StreamConfig the builder is called with)."""

    def build(scfg: Any, seed: int, encode: Optional[Callable] = None, encode_texts: Optional[Callable] = None) -> Any:
        made: list[Deferred] = []
        inner_encode = deferring(encode, made) if encode is not None and sealed(scfg) else encode
        stream = stream_fn(scfg, seed, inner_encode, encode_texts) if encode is not None else stream_fn(scfg, seed)
        return carve(stream, scfg, seed, encode_texts, made)

    build.__doc__ = stream_fn.__doc__
    return build


def window(n_sessions: int, cfg: Any) -> tuple[int, int]:
    """0-based [start, stop) of the sessions run."""
    last = cfg.last_session or n_sessions
    if not 1 <= cfg.first_session <= last <= n_sessions:
        raise ConfigError(f"stream.first_session={cfg.first_session}, stream.last_session={cfg.last_session}: the "
                          f"stream has sessions 1..{n_sessions}; choose 1 <= first_session <= last_session <= {n_sessions} "
                          "(last_session 0 = the last)")
    return cfg.first_session - 1, last


def carve(stream: Any, cfg: Any, seed: int, encode_texts: Optional[Callable] = None,
          made: Sequence[Deferred] = ()) -> Any:
    """``stream`` with its session window, validation split and (evaluate_on=validation) its
    validation data in place of its test data."""
    start, stop = window(len(stream.sessions), cfg)
    fraction, seal = float(cfg.val_fraction), sealed(cfg)
    pairs = stream.kind == "pairs"
    keys = list(getattr(stream, "caption_keys", []) or [])
    if pairs and seal:  # image-text streams encode train and test images together: only training rows, ever
        trained = set(keys)
        for d in made:
            if hasattr(d.dataset, "pairs"):
                d.allow = [i for i, p in enumerate(d.dataset.pairs) if p.key in trained]
    sessions = [copy.copy(s) for s in stream.sessions[start:stop]]
    for new_index, s in enumerate(sessions, 1):
        s.index = new_index
    notes = list(stream.notes)
    if (start, stop) != (0, len(stream.sessions)):
        notes.append(f"sessions {start + 1}..{stop} of {len(stream.sessions)} only (stream.first_session/last_session)")
    if fraction > 0:
        unit = "image" if pairs else "class"
        notes.append(f"validation: {fraction:.0%} of each session's training data per {unit} (seed {seed}), "
                     "not trained on" + ("; it replaces the test data, which is sealed (tuning)" if seal else ""))
    out = copy.copy(stream)
    out.sessions, out.notes = sessions, notes
    if stream.benchmark is None:  # a plan: counts only
        if fraction > 0:
            for s in sessions:
                n_val = round(fraction * s.n_train)
                s.n_train -= n_val
                if seal:
                    s.n_test = n_val
        if seal and pairs:
            out.tests = None
        return out

    train_exps, val_sets, evals = [], [], []
    for new_index, (j, s) in enumerate(zip(range(start, stop), sessions)):
        experience = stream.benchmark.train_stream[j]
        data = experience.dataset
        targets = _targets(data)
        if fraction > 0:
            if pairs:  # by image: every caption of a held-out image is held out with it
                groups = [keys[t] for t in targets]
                images = sorted(set(groups))
                _, held = split_per_group(["images"] * len(images), fraction, seed, j + 1)
                held_keys = {images[k] for k in held}
                keep = [i for i, g in enumerate(groups) if g not in held_keys]
                val = [i for i, g in enumerate(groups) if g in held_keys]
            else:  # per class
                groups = targets
                keep, val = split_per_group(groups, fraction, seed, j + 1)
            train_data, val_data = data.subset(keep), data.subset(val)
            s.n_train = len({groups[i] for i in keep}) if pairs and stream.train_unit == "images" else len(keep)
        else:
            train_data, val_data, val = data, None, []
        train_exps.append(_with_dataset(experience, train_data, new_index))
        val_sets.append(val_data)
        if seal:
            if pairs:
                evals.append(_pair_validation(s.name or f"session {s.index}", data, val, targets, keys,
                                              stream.class_names, encode_texts))
                s.n_test = len(evals[-1].caption_image)
            else:
                evals.append(SimpleNamespace(dataset=val_data))
                s.n_test = len(val)
        elif not pairs:
            evals.append(stream.benchmark.test_stream[j])
    origin = _Stream(train_exps, getattr(stream.benchmark.train_stream, "name", "train"))
    for e in train_exps:
        e._origin_stream = origin  # e.g. joint training reads the earlier sessions from it: the rest only
    out.benchmark = SimpleNamespace(train_stream=train_exps, test_stream=evals if not pairs else [],
                                    validation=val_sets)
    if pairs:
        out.tests = evals if seal else list(stream.tests[start:stop])
    return out


def _pair_validation(name: str, data: Any, val: list[int], targets: list[int], keys: list[str],
                     class_names: list[str], encode_texts: Optional[Callable]) -> Any:
    """Validation pairs of an image-text session: its held-out training images with all of their
    training captions, scored by retrieval like test pairs."""
    from continual.stream import PairSet

    if encode_texts is None:
        raise ValueError("image-text validation pairs need encode_texts")
    caption_ids, image_of, images, first = [], [], [], {}
    for i in val:
        key = keys[targets[i]]
        if key not in first:
            first[key] = len(images)
            images.append(data[i][0])
    for c, key in enumerate(keys):
        if key in first:
            caption_ids.append(c)
            image_of.append(first[key])
    inputs = torch.stack(images) if images and all(torch.is_tensor(x) for x in images) else _Items(images)
    return PairSet(name, inputs, encode_texts([class_names[c] for c in caption_ids]), torch.tensor(image_of),
                   list(first))


class _Items(Dataset):
    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.items[i]


class _Stream(list):
    """The carved training experiences as their ``origin_stream`` (Avalanche's metrics read its name)."""

    def __init__(self, experiences: list, name: str) -> None:
        super().__init__(experiences)
        self.name = name
