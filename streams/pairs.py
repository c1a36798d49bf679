"""Image-text streams: sessions of (image, caption) pairs, scored by retrieval.

Sources (``stream.sources``): ``emoji`` and ``tux`` (offline, real), or manifest files (CSV,
JSONL, Karpathy JSON: see :mod:`streams.manifests`). Several captions per image are allowed.
Sessions (``stream.session_by``):
- ``group``: the groups (emoji Unicode group, stamp category, the manifest's ``group``) in a
  seeded order, cut into ``n_sessions`` sessions of nearly equal numbers of groups;
- ``source``: one session per source, in the given order;
- ``slices``: each source's images, in file order, cut into equal consecutive slices
  (``stream.slices[k]`` for source k; default ``n_sessions`` for one source): Mod-X's phases.
Test pairs: the data's own split where it has one (manifests' ``split``, Karpathy's), else a
seeded ``stream.test_fraction`` of each session's images (all captions of an image go together).

The built-in sources give the pairs no base was trained on: the bases built here hold out 15 %
of the concepts (seed 0, as ``control.heldout_fraction``/``split_seed`` default); half of those
concepts (seeded) are this stream's, and the runner keeps the other half as control data.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from continual.config import StreamConfig
from continual.errors import ConfigError
from continual.stream import ImageEncoder, InputsDataset, PairSet, PairStream, Session, TextEncoder
from streams.captions import Pair, PairDataset, concept_key, load_pairs, split_by_concept
from streams.classification import session_sizes
from streams.files import check_images
from streams.manifests import NOMINAL, is_manifest, missing_manifest, read_manifest

BASE_HELDOUT_FRACTION = 0.15  # the bases' recipe (configs/pretrain-*.yaml) and the control's default
BASE_SPLIT_SEED = 0
BUILTIN = ("emoji", "tux")


@dataclass
class SessionPairs:
    name: str
    train: list[Pair]
    test: list[Pair]


def unseen_pairs(sources: list[str]) -> list[Pair]:
    """The stream's share of the built-in pairs: half (by concept, seeded) of those held out of
    the bases; the other half is left to the control set."""
    _, heldout = split_by_concept(load_pairs(sources), BASE_HELDOUT_FRACTION, BASE_SPLIT_SEED)
    _, stream_half = split_by_concept(heldout, 0.5, BASE_SPLIT_SEED)
    return stream_half


def caption_pairs_stream(cfg: StreamConfig, seed: int, encode: Optional[ImageEncoder] = None,
                         encode_texts: Optional[TextEncoder] = None) -> PairStream:
    """The image-text stream of ``cfg.sources``; with encoders, also its training benchmark
    (Avalanche) and every session's test pairs as model inputs."""
    sources = list(cfg.sources) or list(BUILTIN)
    unknown = [s for s in sources if s not in BUILTIN and not is_manifest(s)]
    if unknown:
        raise ConfigError(f"stream.sources: '{unknown[0]}' is neither a built-in source ({', '.join(BUILTIN)}) "
                          "nor a manifest file (.csv, .jsonl, Karpathy .json)")
    absent = [Path(s) for s in sources if is_manifest(s) and not Path(s).is_file()]
    if absent:
        if encode is None and all(p.name in NOMINAL for p in absent) and len(absent) == len(sources):
            stream = nominal_plan(cfg, sources)
            stream.data_missing = str(missing_manifest(absent[0]))  # the line a real run stops with
            return stream
        raise missing_manifest(absent[0])
    pairs: list[Pair] = []
    builtin = [s for s in sources if s in BUILTIN]
    if builtin:
        pairs += unseen_pairs(builtin)
    for source in sources:
        if is_manifest(source):
            pairs += read_manifest(source, cfg.root)
    notes: list[str] = []
    if encode is not None:  # decode every image file once: unreadable ones stop the run or are skipped
        pairs, notes = _readable(pairs, cfg.on_corrupt)
    sessions = split_sessions(pairs, cfg, seed, [Path(s).name if is_manifest(s) else s for s in sources])
    stream = _plan(cfg, sessions, notes)
    if encode is not None:
        stream.benchmark, stream.tests = _build(sessions, encode, encode_texts)
    return stream


def split_sessions(pairs: list[Pair], cfg: StreamConfig, seed: int, sources: list[str]) -> list[SessionPairs]:
    """Cut the pairs into sessions (``cfg.session_by``), then each into train and test pairs."""
    n = cfg.n_sessions
    if cfg.session_by == "group":
        groups = sorted({p.group for p in pairs})
        if not 1 <= n <= len(groups):
            raise ConfigError(f"stream.n_sessions must be between 1 and the number of groups ({len(groups)}), got {n}; "
                              "or use stream.session_by=slices")
        order = [groups[i] for i in np.random.default_rng(seed).permutation(len(groups))]
        parts, start = [], 0
        for size in session_sizes(len(order), n):
            chosen = order[start:start + size]
            start += size
            parts.append((_short(", ".join(chosen)), [p for p in pairs if p.group in set(chosen)]))
    elif cfg.session_by == "source":
        if n != len(sources):
            raise ConfigError(f"stream.session_by=source gives one session per source ({len(sources)}), "
                              f"but stream.n_sessions is {n}; set n_sessions={len(sources)}")
        parts = [(s, [p for p in pairs if p.source == s]) for s in sources]
    else:
        parts = []
        for source, k in zip(sources, slices_per_source(cfg, sources)):
            mine = [p for p in pairs if p.source == source]
            keys = list(OrderedDict.fromkeys(p.key for p in mine))
            if len(keys) < k:
                raise ConfigError(f"source {source} has {len(keys)} images, fewer than its {k} slices")
            for i, chunk in enumerate(np.array_split(np.arange(len(keys)), k)):
                chosen = {keys[j] for j in chunk}
                parts.append((f"{source} {i + 1}/{k}" if k > 1 else source, [p for p in mine if p.key in chosen]))
    return [_train_test(name, part, cfg.test_fraction, seed, i) for i, (name, part) in enumerate(parts)]


def slices_per_source(cfg: StreamConfig, sources: list[str]) -> list[int]:
    """``stream.slices`` (default: n_sessions slices of a single source), checked to give one
    number per source summing to ``stream.n_sessions``."""
    slices = list(cfg.slices) or ([cfg.n_sessions] if len(sources) == 1 else [])
    if len(slices) != len(sources) or sum(slices) != cfg.n_sessions:
        raise ConfigError(f"stream.slices must give the number of slices of each of the {len(sources)} sources, "
                          f"summing to stream.n_sessions ({cfg.n_sessions}); got {list(cfg.slices)}")
    return slices


def _train_test(name: str, pairs: list[Pair], test_fraction: float, seed: int, index: int) -> SessionPairs:
    """The data's own split if every pair has one, else a seeded share of the images."""
    if pairs and all(p.split for p in pairs):
        train = [p for p in pairs if p.split == "train"]
        test = [p for p in pairs if p.split == "test"]
    else:
        keys = sorted({p.key for p in pairs})
        rng = np.random.default_rng([seed, index])
        n_test = max(1, round(test_fraction * len(keys))) if len(keys) > 1 else 0
        test_keys = {keys[i] for i in rng.choice(len(keys), size=n_test, replace=False)}
        train = [p for p in pairs if p.key not in test_keys]
        test = [p for p in pairs if p.key in test_keys]
    if not train or not test:
        raise ConfigError(f"session '{name}' has {len(train)} training and {len(test)} test pairs: each session "
                          "needs both (fewer sessions, or more data per group/slice)")
    return SessionPairs(name, train, test)


def _plan(cfg: StreamConfig, sessions: list[SessionPairs], notes: list[str]) -> PairStream:
    class_names, plan, start = [], [], 0
    for i, s in enumerate(sessions):
        class_names += [p.caption for p in s.train]
        plan.append(Session(i + 1, list(range(start, start + len(s.train))), len(s.train), len(s.test), s.name))
        start += len(s.train)
    images = {p.key for s in sessions for p in s.train + s.test}
    notes = [f"sources {', '.join(cfg.sources) or ', '.join(BUILTIN)}; sessions by {cfg.session_by}; "
             f"{len(images)} images"] + notes
    concepts = sorted({concept_key(p) for s in sessions for p in s.train + s.test})
    return PairStream("caption-pairs", class_names, plan, notes=notes, concepts=concepts)


def nominal_plan(cfg: StreamConfig, sources: list[str]) -> PairStream:
    """The plan of standard manifests that are absent, from their published sizes."""
    sessions = []
    for source, k in zip(sources, slices_per_source(cfg, sources)):
        train, test, per_image = NOMINAL[Path(source).name]
        for i, (a, b) in enumerate(zip(np.array_split(np.arange(train), k), np.array_split(np.arange(test), k))):
            name = Path(source).name + (f" {i + 1}/{k}" if k > 1 else "")
            sessions.append(Session(len(sessions) + 1, [], len(a) * per_image, len(b) * per_image, name))
    return PairStream("caption-pairs", [], sessions, notes=[
        f"data absent: nominal counts of the published splits ({', '.join(sorted({Path(s).name for s in sources}))}); "
        "sessions by slices"])


# -- model inputs ---------------------------------------------------------------------------------
def _readable(pairs: list[Pair], on_corrupt: str) -> tuple[list[Pair], list[str]]:
    files = list(OrderedDict.fromkeys(p.ref for p in pairs if p.source not in BUILTIN))
    if not files:
        return pairs, []
    checked = check_images(files, on_corrupt)
    bad = set(checked.skipped)
    return [p for p in pairs if p.ref not in bad], checked.note()


def _take(inputs: Any, index: list[int]) -> Any:
    if torch.is_tensor(inputs):
        return inputs[torch.as_tensor(index, dtype=torch.long)]
    return torch.utils.data.Subset(inputs, index)


def _build(sessions: list[SessionPairs], encode: ImageEncoder, encode_texts: Optional[TextEncoder]) -> tuple[Any, list[PairSet]]:
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark

    if encode_texts is None:
        raise ValueError("an image-text stream needs encode_texts for its test captions")
    images = list(OrderedDict((p.key, p) for s in sessions for p in s.train + s.test).values())
    position = {p.key: i for i, p in enumerate(images)}
    digest = hashlib.blake2b("\n".join(position).encode(), digest_size=12).hexdigest()
    inputs = encode(PairDataset(images), f"pairs-{len(images)}-{digest}")
    train = [p for s in sessions for p in s.train]
    dataset = InputsDataset(_take(inputs, [position[p.key] for p in train]), list(range(len(train))))
    benchmark = class_incremental_benchmark({"train": dataset}, class_order=list(range(len(train))),
                                            num_classes_per_exp=[len(s.train) for s in sessions])
    tests = []
    for s in sessions:
        keys = list(OrderedDict.fromkeys(p.key for p in s.test))
        local = {k: i for i, k in enumerate(keys)}
        first = {p.key: p for p in reversed(s.test)}
        tests.append(PairSet(s.name, _take(inputs, [position[k] for k in keys]), encode_texts([p.caption for p in s.test]),
                             torch.tensor([local[p.key] for p in s.test]), keys, [concept_key(first[k]) for k in keys]))
    return benchmark, tests


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
