"""Class-incremental streams from any labelled dataset, on Avalanche benchmark objects.

How the classes are cut into sessions:

- class-incremental (CIL): the class order, a seeded permutation (or stream.class_order), in
  stream.n_sessions sessions of nearly equal size (the first sessions take one more class when
  the split is uneven);
- few-shot class-incremental (FSCIL): a base session of stream.base_classes classes, then
  sessions of stream.ways new classes each (0 = the remaining classes split evenly);
- official split lists (stream.split_dir: session_1.txt .. session_T.txt, the index_list of FSCIL
  papers): each file lists a session's training images, which fix its classes (in label order).

A seeded per-class sample bounds the training examples (stream.train_per_class; stream.shots in
the sessions after the first) and the test examples (stream.test_per_class). Labels keep their
original ids, so ``class_names[label]`` always holds; only a layout that leaves classes out
renumbers the classes it uses 0..K-1 (in label order), since Avalanche's generator needs them all.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from pathlib import Path, PurePosixPath
from typing import Any, Optional, Sequence

import numpy as np

from continual.config.schema import StreamConfig
from continual.errors import ConfigError, UserError
from continual.stream import ClassificationStream, ImageEncoder, InputsDataset, Session, TextEncoder, encode_images
from streams.datasets import DataNotFoundError, digits, fashion_mnist, per_class_subset, sample_per_class
from streams.files import ImageFiles, image_folder


def class_order(n_classes: int, given: list[int], seed: int) -> list[int]:
    """``given`` if non-empty (must be a permutation of the labels), else a seeded permutation."""
    if given:
        if sorted(given) != list(range(n_classes)):
            raise ConfigError(f"stream.class_order must be a permutation of 0..{n_classes - 1}, got {list(given)}")
        return [int(c) for c in given]
    return np.random.default_rng(seed).permutation(n_classes).tolist()


def session_sizes(n_classes: int, n_sessions: int, base_classes: int = 0, ways: int = 0) -> list[int]:
    """Classes per session: even (base_classes = ways = 0), or a base session then ``ways`` each."""
    if base_classes == 0 and ways == 0:
        if not 1 <= n_sessions <= n_classes:
            raise ConfigError(f"stream.n_sessions must be between 1 and the number of classes ({n_classes}), got {n_sessions}")
        base, extra = divmod(n_classes, n_sessions)
        return [base + (i < extra) for i in range(n_sessions)]
    later = n_sessions - 1
    if base_classes == 0:  # every session the same size
        sizes, what = [ways] * n_sessions, f"stream.ways={ways} x {n_sessions} sessions"
    elif ways > 0:
        sizes, what = [base_classes] + [ways] * later, f"stream.base_classes={base_classes} + stream.ways={ways} x {later} later sessions"
    else:  # the classes after the base session split evenly
        rest = n_classes - base_classes
        if later > max(rest, 0):
            raise ConfigError(f"stream.n_sessions={n_sessions}: {later} sessions after the base session but only {max(rest, 0)} "
                              f"of the {n_classes} classes remain after stream.base_classes={base_classes}; "
                              "lower stream.n_sessions or stream.base_classes")
        sizes = [base_classes] + (session_sizes(rest, later) if later else [])
        what = f"stream.base_classes={base_classes}"
    if sum(sizes) > n_classes:
        raise ConfigError(f"{what} = {sum(sizes)} classes, more than the {n_classes} classes of the data; "
                          "lower stream.n_sessions, stream.ways or stream.base_classes")
    return sizes


def content_key(name: str, ds: Any) -> str:
    """Identifies a dataset's content (images and labels) for the feature cache."""
    if isinstance(ds, ImageFiles):  # files: ids, sizes and times, without reading the images
        return f"{name}-{len(ds)}-{ds.fingerprint()}"
    h = hashlib.blake2b(digest_size=12)
    h.update(np.ascontiguousarray(ds.images).tobytes())
    h.update(np.asarray(ds.targets, dtype=np.int64).tobytes())
    return f"{name}-{len(ds)}-{h.hexdigest()}"


# --- official split lists ----------------------------------------------------------------------
def read_split_files(split_dir: str, n_sessions: int) -> list[list[str]]:
    """The non-empty lines of ``split_dir``/session_1.txt .. session_T.txt (T = n_sessions)."""
    folder = Path(split_dir).expanduser()
    if not folder.is_dir():
        raise DataNotFoundError(f"stream.split_dir not found: {folder} (point it at the folder of session_1.txt .. "
                                "session_T.txt, e.g. CEC's data/index_list/cifar100)")
    numbers = [int(m.group(1)) for p in folder.iterdir() if (m := re.fullmatch(r"session_(\d+)\.txt", p.name))]
    for k in range(1, n_sessions + 1):
        if not (folder / f"session_{k}.txt").is_file():
            raise DataNotFoundError(f"split file not found: {folder / f'session_{k}.txt'}; stream.n_sessions={n_sessions} "
                                    f"needs session_1.txt .. session_{n_sessions}.txt in stream.split_dir")
    if max(numbers) > n_sessions:
        raise ConfigError(f"stream.split_dir {folder} has session files up to session_{max(numbers)}.txt but "
                          f"stream.n_sessions={n_sessions}; set stream.n_sessions={max(numbers)}")
    lists = []
    for k in range(1, n_sessions + 1):
        lines = [line.strip() for line in (folder / f"session_{k}.txt").read_text().splitlines() if line.strip()]
        if not lines:
            raise ConfigError(f"split file {folder / f'session_{k}.txt'} lists no images")
        lists.append(list(dict.fromkeys(lines)))  # an image listed twice is trained on once
    return lists


def resolve_split_lines(lines: Sequence[str], train: Any, where: str) -> list[int]:
    """Positions in ``train`` of the images a split file lists.

    Datasets held in memory (CIFAR-100) are listed by index into their training set; datasets of
    files by path: a line matches the image whose id (its path relative to the data root) ends
    the same way, so "MINI-ImageNet/train/n01532829/n0153282900000005.jpg" finds the id
    "n0153282900000005.jpg" and "CUB_200_2011/images/001.Black_footed_Albatross/x.jpg" the id
    "001.Black_footed_Albatross/x.jpg".
    """
    ids = getattr(train, "ids", None)
    if ids is None:
        for n, line in enumerate(lines, 1):
            if not line.isdigit() or int(line) >= len(train):
                raise ConfigError(f"{where} line {n}: '{line}' is not an index of the {len(train)} training images; "
                                  "is stream.split_dir the split of this dataset?")
        return [int(line) for line in lines]
    by_name: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(ids):
        by_name[PurePosixPath(item).name].append(i)
    found = []
    for n, line in enumerate(lines, 1):
        parts = PurePosixPath(line.replace("\\", "/")).parts
        matches = [i for i in by_name.get(parts[-1], []) if _same_tail(parts, PurePosixPath(ids[i]).parts)]
        if len(matches) != 1:
            problem = "names no training image" if not matches else f"matches {len(matches)} training images"
            raise ConfigError(f"{where} line {n}: '{line}' {problem} of the data under stream.root; "
                              "is stream.split_dir the split of this dataset?")
        found.append(matches[0])
    return found


def _same_tail(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    n = min(len(a), len(b))
    return a[-n:] == b[-n:]


def _split_layout(cfg: StreamConfig, train: Any, names: list[str]) -> tuple[list[list[int]], list[int]]:
    """Session classes (label order within a session) and the training images, from the split files."""
    groups, chosen, session_of = [], [], {}
    for k, lines in enumerate(read_split_files(cfg.split_dir, cfg.n_sessions), 1):
        where = str(Path(cfg.split_dir).expanduser() / f"session_{k}.txt")
        idx = resolve_split_lines(lines, train, where)
        labels = sorted({train.targets[i] for i in idx})
        for c in labels:
            if c in session_of:
                raise ConfigError(f"class '{names[c]}' is in both session_{session_of[c]}.txt and session_{k}.txt "
                                  f"of {cfg.split_dir}; every class belongs to one session")
            session_of[c] = k
        groups.append(labels)
        chosen += idx
    sizes = [len(g) for g in groups]
    if cfg.base_classes and sizes[0] != cfg.base_classes:
        raise ConfigError(f"session_1.txt of stream.split_dir has {sizes[0]} classes but stream.base_classes="
                          f"{cfg.base_classes}; set stream.base_classes={sizes[0]}")
    if cfg.ways and any(s != cfg.ways for s in sizes[1:]):
        raise ConfigError(f"the later split files of stream.split_dir have {sorted(set(sizes[1:]))} classes each but "
                          f"stream.ways={cfg.ways}; set stream.ways to match or to 0")
    return groups, chosen


# --- sessions --------------------------------------------------------------------------------
def _seeded_layout(n_classes: int, cfg: StreamConfig, seed: int) -> tuple[list[int], list[list[int]], dict[int, int]]:
    """Class order, the classes of each session and the training examples kept per class."""
    order = class_order(n_classes, list(cfg.class_order), seed)
    groups, start = [], 0
    for size in session_sizes(n_classes, cfg.n_sessions, cfg.base_classes, cfg.ways):
        groups.append(order[start:start + size])
        start += size
    limits = {c: cfg.train_per_class for c in groups[0]}
    limits.update({c: cfg.shots or cfg.train_per_class for g in groups[1:] for c in g})
    return order, groups, limits


def _check_counts(groups: list[list[int]], names: list[str], train: np.ndarray, test: np.ndarray, shots: int,
                  nominal: bool = False) -> None:
    """Every class has training and test examples, and enough training images for the shots."""
    for c in (c for g in groups for c in g):
        if train[c] == 0 or test[c] == 0:
            raise UserError(f"class '{names[c]}' has no {'training' if train[c] == 0 else 'test'} images; add some, "
                            "or leave the class out of the data")
    for c in (c for g in groups[1:] for c in g):
        if shots > train[c]:
            raise ConfigError(f"stream.shots={shots} but class '{names[c]}' has only {train[c]} training images"
                              f"{' (nominal count)' if nominal else ''}; lower stream.shots")


def _shots_of(groups: list[list[int]], train_counts: np.ndarray) -> list[int]:
    """Training examples per class of each session after the first, where all its classes have the same."""
    return [0] + [int(train_counts[g[0]]) if len({int(train_counts[c]) for c in g}) == 1 else 0 for g in groups[1:]]


def _compact(groups: list[list[int]], names: list[str]) -> tuple[list[list[int]], list[str], Optional[dict[int, int]]]:
    """Renumber the classes used 0..K-1 (label order) when the sessions leave some out."""
    used = sorted(c for g in groups for c in g)
    if len(used) == len(names):
        return groups, names, None
    new = {c: i for i, c in enumerate(used)}
    return [[new[c] for c in g] for g in groups], [names[c] for c in used], new


def _keep_classes(ds: Any, mapping: dict[int, int], names: list[str]) -> Any:
    """The items of the classes in ``mapping``, relabelled by it."""
    out = ds.subset([i for i, t in enumerate(ds.targets) if t in mapping])
    out.targets = [mapping[t] for t in out.targets]
    out.classes = list(names)
    return out


def _stream(name: str, names: list[str], groups: list[list[int]], train_counts: np.ndarray, test_counts: np.ndarray,
            shots: list[int], notes: list[str]) -> tuple[ClassificationStream, Optional[dict[int, int]]]:
    """The stream's plan (counts indexed by the original labels) and the renumbering, if any."""
    new_groups, new_names, mapping = _compact(groups, names)
    if mapping is not None:
        notes.append(f"{len(names) - len(new_names)} of the {len(names)} classes are in no session and left out")
    sessions = [Session(i + 1, new, int(train_counts[g].sum()), int(test_counts[g].sum()), shots=shots[i])
                for i, (g, new) in enumerate(zip(groups, new_groups))]
    return ClassificationStream(name, new_names, sessions, notes=notes), mapping


def class_incremental(name: str, train: Any, test: Any, cfg: StreamConfig, seed: int,
                      encode: Optional[ImageEncoder] = None, notes: Sequence[str] = ()) -> ClassificationStream:
    """Split ``train``/``test`` (:class:`LabelledImages` or :class:`ImageFiles`) into sessions.

    With ``encode`` (dataset, key -> model inputs) the Avalanche benchmark is built over the
    model inputs, after unreadable image files are handled by ``cfg.on_corrupt``; without it
    only the plan is made (nothing is decoded).
    """
    names, notes = list(train.classes), list(notes)
    n = len(names)
    if cfg.split_dir:
        groups, chosen = _split_layout(cfg, train, names)
        train, limits = train.subset(chosen), None
        notes.append(f"sessions, classes and training images from the split files in {cfg.split_dir}")
    else:
        order, groups, limits = _seeded_layout(n, cfg, seed)
        notes.append(f"class order (seed {seed}): {order}")
    used = {c: c for g in groups for c in g}
    if len(used) < n:  # leave the other classes out before any image is read
        train, test = _keep_classes(train, used, names), _keep_classes(test, used, names)
    if encode is not None and isinstance(train, ImageFiles):
        train, skipped_train = train.checked(cfg.on_corrupt)
        test, skipped_test = test.checked(cfg.on_corrupt)
        notes += skipped_train + skipped_test
    _check_counts(groups, names, np.bincount(train.targets, minlength=n), np.bincount(test.targets, minlength=n),
                  cfg.shots if limits is not None else 0)
    if limits is not None:
        train = sample_per_class(train, limits, seed)
    test = per_class_subset(test, cfg.test_per_class, seed)
    train_counts, test_counts = np.bincount(train.targets, minlength=n), np.bincount(test.targets, minlength=n)
    shots = _shots_of(groups, train_counts) if limits is None else [0] + [cfg.shots] * (len(groups) - 1)
    stream, mapping = _stream(name, names, groups, train_counts, test_counts, shots, notes)
    if encode is not None:
        from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark

        if mapping is not None:
            train, test = (_keep_classes(d, mapping, stream.class_names) for d in (train, test))
        datasets = {
            "train": InputsDataset(encode_images(encode, train, content_key(f"{name}-train", train), train=cfg.augment),
                                   train.targets),
            "test": InputsDataset(encode(test, content_key(f"{name}-test", test)), test.targets),
        }
        stream.benchmark = class_incremental_benchmark(datasets, class_order=[c for s in stream.sessions for c in s.classes],
                                                       num_classes_per_exp=[len(s.classes) for s in stream.sessions])
    return stream


def nominal_stream(name: str, names: list[str], train_per_class: int, test_per_class: int, cfg: StreamConfig,
                   seed: int, notes: Sequence[str] = ()) -> ClassificationStream:
    """The plan of a dataset whose files are absent, from its nominal per-class counts.

    The sessions follow the config's layout; with split files, their number is checked and each
    session's training images are counted from its file (its classes are known with the data).
    """
    n = len(names)
    order, groups, limits = _seeded_layout(n, cfg, seed)
    train_avail, test_avail = np.full(n, train_per_class), np.full(n, test_per_class)
    _check_counts(groups, names, train_avail, test_avail, cfg.shots, nominal=True)
    train_counts = np.array([min(train_per_class, limits.get(c, 0) or train_per_class) for c in range(n)])
    test_counts = np.full(n, min(test_per_class, cfg.test_per_class or test_per_class))
    notes = list(notes) + [f"class order (seed {seed}): {order}"]
    stream, _ = _stream(name, names, groups, train_counts, test_counts, [0] + [cfg.shots] * (len(groups) - 1), notes)
    if cfg.split_dir:
        for session, lines in zip(stream.sessions, read_split_files(cfg.split_dir, cfg.n_sessions)):
            session.n_train = len(lines)
        stream.notes.append(f"the split files in {cfg.split_dir} fix each session's classes when the data is there; "
                            "training images counted from them")
    return stream


# --- the streams of this module ---------------------------------------------------------------
def fashion_mnist_stream(cfg: StreamConfig, seed: int, encode: Optional[ImageEncoder] = None,
                         encode_texts: Optional[TextEncoder] = None) -> ClassificationStream:
    """Fashion-MNIST (10 clothing classes), from the Debian package or stream.root."""
    return class_incremental("fashion-mnist", fashion_mnist(True, cfg.root), fashion_mnist(False, cfg.root), cfg, seed, encode)


def digits_stream(cfg: StreamConfig, seed: int, encode: Optional[ImageEncoder] = None,
                  encode_texts: Optional[TextEncoder] = None) -> ClassificationStream:
    """scikit-learn's 8x8 digits (10 classes, "zero".."nine"): small and fast, for tests."""
    return class_incremental("digits", digits(True, seed), digits(False, seed), cfg, seed, encode)


def image_folder_stream(cfg: StreamConfig, seed: int, encode: Optional[ImageEncoder] = None,
                        encode_texts: Optional[TextEncoder] = None) -> ClassificationStream:
    """Your own images: stream.root with a folder per class (ROOT/<class>/*.jpg, a seeded
    stream.test_fraction of each held out for testing) or ROOT/train/<class> + ROOT/test/<class>."""
    if not cfg.root:
        raise ConfigError("stream.root: give the folder of your images (a sub-folder per class) for stream.name=image-folder")
    train, test = image_folder(cfg.root, cfg.test_fraction, seed)
    notes = [] if encode is not None else [f"{len(train) + len(test)} image files in {cfg.root}, not decoded for the "
                                           f"plan (unreadable ones: stream.on_corrupt={cfg.on_corrupt} when the run starts)"]
    return class_incremental("image-folder", train, test, cfg, seed, encode, notes)
