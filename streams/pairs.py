"""Image-text streams: sessions of (image, caption) pairs, scored by retrieval.

Sources (``stream.sources``): ``emoji`` and ``tux`` (offline, real), or manifest files (CSV,
JSONL, Karpathy JSON: see :mod:`streams.manifests`). Several captions per image are allowed.
Sessions (``stream.session_by``):
- ``group``: the groups (emoji Unicode group, stamp category, the manifest's ``group``) in a
  seeded order, cut into ``n_sessions`` sessions of nearly equal numbers of groups;
- ``source``: one session per source, in the given order;
- ``slices``: each source's images, in file order, cut into equal consecutive slices
  (``stream.slices[k]`` for source k; default ``n_sessions`` for one source; slice i of K over
  n images holds images [i n / K, (i + 1) n / K), Mod-X's boundaries): Mod-X's phases.
Test pairs (``stream.test_by``): ``session``: the session's own test images, i.e. the data's
own split where it has one (manifests' ``split``, Karpathy's) within the session, else a seeded
``stream.test_fraction`` of the session's images (all captions of an image go together);
``source``: every session is scored on the whole test split of its source (own split, else a
seeded ``test_fraction`` of the source's images), and only the training images are cut into
sessions (Mod-X: the full Flickr30K 1K test after every phase).
Training examples (``stream.sampling``): one per (image, caption) pair, or one per image with
one of its captions drawn at random at every visit (:class:`continual.stream.CaptionedImages`;
Mod-X's loaders): an epoch then visits each image once.

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

from continual.config.schema import StreamConfig
from continual.errors import ConfigError
from continual.stream import CaptionedImages, ImageEncoder, InputsDataset, PairSet, PairStream, Session, TextEncoder, take
from streams.captions import Pair, PairDataset, concept_key, load_pairs, split_by_concept
from streams.classification import session_sizes
from streams.files import check_images
from streams.manifests import NOMINAL, is_manifest, missing_manifest, nominal_images, read_manifest

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
    if cfg.augment:
        raise ConfigError("stream.augment applies to classification streams; image-text streams train on "
                          "resized, centre-cropped images (as Mod-X); set stream.augment=false")
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
            pairs += read_manifest(source, cfg.root, cfg.train_splits)
    notes: list[str] = []
    if encode is not None:  # decode every image file once: unreadable ones stop the run or are skipped
        pairs, notes = _readable(pairs, cfg.on_corrupt)
    sessions = split_sessions(pairs, cfg, seed, [Path(s).name if is_manifest(s) else s for s in sources])
    stream = _plan(cfg, sessions, notes)
    if encode is not None:
        stream.benchmark, stream.tests = _build(sessions, encode, encode_texts, cfg.sampling)
    return stream


def split_sessions(pairs: list[Pair], cfg: StreamConfig, seed: int, sources: list[str]) -> list[SessionPairs]:
    """Cut the pairs into sessions (``cfg.session_by``) and train / test pairs (``cfg.test_by``)."""
    if cfg.test_by == "session":
        return [_train_test(name, part, cfg.test_fraction, seed, i)
                for i, (name, part) in enumerate(_cut(pairs, cfg, seed, sources))]
    train, tests = [], {}
    for i, source in enumerate(sources):  # each source's test split first; its training images are cut
        whole = _train_test(source, [p for p in pairs if p.source == source], cfg.test_fraction, seed, i)
        train += whole.train
        tests[source] = whole.test
    return [SessionPairs(name, part, [p for source in dict.fromkeys(p.source for p in part) for p in tests[source]])
            for name, part in _cut(train, cfg, seed, sources)]


def slice_bounds(n: int, k: int) -> list[int]:
    """Boundaries of k consecutive slices of n items: slice i is [bounds[i], bounds[i + 1])."""
    return [n * i // k for i in range(k + 1)]


def _cut(pairs: list[Pair], cfg: StreamConfig, seed: int, sources: list[str]) -> list[tuple[str, list[Pair]]]:
    """The pairs of each session, named: by group, by source or in slices (``cfg.session_by``)."""
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
            bounds = slice_bounds(len(keys), k)
            for i in range(k):
                chosen = set(keys[bounds[i]:bounds[i + 1]])
                parts.append((f"{source} {i + 1}/{k}" if k > 1 else source, [p for p in mine if p.key in chosen]))
    return parts


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
        n_train = len({p.key for p in s.train}) if cfg.sampling == "image" else len(s.train)
        plan.append(Session(i + 1, list(range(start, start + len(s.train))), n_train, len(s.test), s.name))
        start += len(s.train)
    images = {p.key for s in sessions for p in s.train + s.test}
    notes = [f"sources {', '.join(cfg.sources) or ', '.join(BUILTIN)}; sessions by {cfg.session_by}; "
             f"{len(images)} images"] + _option_notes(cfg) + notes
    concepts = sorted({concept_key(p) for s in sessions for p in s.train + s.test})
    return PairStream("caption-pairs", class_names, plan, notes=notes, concepts=concepts, train_unit=_unit(cfg),
                      caption_keys=[p.key for s in sessions for p in s.train])


def _unit(cfg: StreamConfig) -> str:
    return "images" if cfg.sampling == "image" else "pairs"


def _option_notes(cfg: StreamConfig) -> list[str]:
    """The plan's lines for the sampling and test options."""
    notes = []
    if cfg.sampling == "image":
        notes.append("sampling: one example per image, one of its captions drawn at random at every visit")
    if cfg.test_by == "source":
        notes.append("test pairs: the whole test split of each session's source, whatever slice trained")
    if any(is_manifest(s) and s.lower().endswith(".json") for s in cfg.sources):
        notes.append(f"Karpathy splits trained on: {', '.join(cfg.train_splits)}")
    return notes


def nominal_plan(cfg: StreamConfig, sources: list[str]) -> PairStream:
    """The plan of standard manifests that are absent, from their published sizes."""
    sessions = []
    for source, k in zip(sources, slices_per_source(cfg, sources)):
        name = Path(source).name
        per_image = NOMINAL[name][1]
        n_train, n_test = nominal_images(name, cfg.train_splits), nominal_images(name, ["test"])
        train, test = slice_bounds(n_train, k), slice_bounds(n_test, k)
        for i in range(k):
            images = train[i + 1] - train[i]
            tests = n_test if cfg.test_by == "source" else test[i + 1] - test[i]
            sessions.append(Session(len(sessions) + 1, [], images * (1 if cfg.sampling == "image" else per_image),
                                    tests * per_image, name + (f" {i + 1}/{k}" if k > 1 else "")))
    return PairStream("caption-pairs", [], sessions, train_unit=_unit(cfg), notes=[
        f"data absent: nominal counts of the published splits ({', '.join(sorted({Path(s).name for s in sources}))}); "
        "sessions by slices"] + _option_notes(cfg))


# -- model inputs ---------------------------------------------------------------------------------
def _readable(pairs: list[Pair], on_corrupt: str) -> tuple[list[Pair], list[str]]:
    files = list(OrderedDict.fromkeys(p.ref for p in pairs if p.source not in BUILTIN))
    if not files:
        return pairs, []
    checked = check_images(files, on_corrupt)
    bad = set(checked.skipped)
    return [p for p in pairs if p.ref not in bad], checked.note()


def _build(sessions: list[SessionPairs], encode: ImageEncoder, encode_texts: Optional[TextEncoder],
           sampling: str = "pair") -> tuple[Any, list[PairSet]]:
    if encode_texts is None:
        raise ValueError("an image-text stream needs encode_texts for its test captions")
    images = list(OrderedDict((p.key, p) for s in sessions for p in s.train + s.test).values())
    position = {p.key: i for i, p in enumerate(images)}
    digest = hashlib.blake2b("\n".join(position).encode(), digest_size=12).hexdigest()
    inputs = encode(PairDataset(images), f"pairs-{len(images)}-{digest}")
    benchmark = (_image_benchmark if sampling == "image" else _pair_benchmark)(sessions, inputs, position)
    tests: dict[tuple[str, ...], PairSet] = {}  # sessions scored on one source's test split share it
    for s in sessions:
        captions = tuple(p.key + "\n" + p.caption for p in s.test)
        if captions not in tests:
            keys = list(OrderedDict.fromkeys(p.key for p in s.test))
            local = {k: i for i, k in enumerate(keys)}
            first = {p.key: p for p in reversed(s.test)}
            tests[captions] = PairSet(s.name, take(inputs, [position[k] for k in keys]),
                                      encode_texts([p.caption for p in s.test]),
                                      torch.tensor([local[p.key] for p in s.test]), keys, [concept_key(first[k]) for k in keys])
    return benchmark, [tests[tuple(p.key + "\n" + p.caption for p in s.test)] for s in sessions]


def _pair_benchmark(sessions: list[SessionPairs], inputs: Any, position: dict[str, int]) -> Any:
    """One example per training pair; its label is its caption id (the sessions' classes)."""
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark

    train = [p for s in sessions for p in s.train]
    dataset = InputsDataset(take(inputs, [position[p.key] for p in train]), list(range(len(train))))
    return class_incremental_benchmark({"train": dataset}, class_order=list(range(len(train))),
                                       num_classes_per_exp=[len(s.train) for s in sessions])


def _image_benchmark(sessions: list[SessionPairs], inputs: Any, position: dict[str, int]) -> Any:
    """One example per training image, labelled with a caption id drawn at each visit; an
    experience per session (Avalanche's dataset scenario, with its classes timeline)."""
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
    from avalanche.benchmarks.utils.classification_dataset import _as_taskaware_supervised_classification_dataset

    experiences, start = [], 0
    for s in sessions:
        captions: dict[str, list[int]] = OrderedDict()
        for c, p in enumerate(s.train, start):
            captions.setdefault(p.key, []).append(c)
        start += len(s.train)
        images = CaptionedImages(take(inputs, [position[k] for k in captions]), list(captions.values()))
        experiences.append(_as_taskaware_supervised_classification_dataset(images))
    return with_classes_timeline(benchmark_from_datasets(train=experiences))


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
