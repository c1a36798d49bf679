"""Few-shot class-incremental (FSCIL) streams and image-folder streams: exact plans, seeds, the
official split files, and bad input caught before training in one line (real images: scikit-learn
digits written as image files)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from continual.cli import main
from continual.config.load import load_config
from continual.errors import ConfigError
from streams.classification import digits_stream, image_folder_stream
from streams.datasets import DataNotFoundError, LabelledImages, digits, per_class_subset, sample_per_class
from streams.files import CorruptImageError
from streams.fscil import CIFAR100_CLASSES, _mini_imagenet_wnids, cifar100_stream, cub200_stream, mini_imagenet_stream

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def one_line(excinfo: pytest.ExceptionInfo, *needles: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


def stream_cfg(*overrides: str):
    return load_config(None, list(overrides)).stream


class Recorder:
    """A trivial encoder (16 pixel values per image) that remembers what it was given."""

    def __init__(self) -> None:
        self.seen: dict[str, list] = {}

    def __call__(self, ds, key: str) -> torch.Tensor:
        self.seen[key.split("-")[-3]] = list(getattr(ds, "ids", None) or range(len(ds)))
        return torch.stack([torch.as_tensor(np.asarray(ds[i][0]), dtype=torch.float32).flatten()[:16]
                            for i in range(len(ds))])


def digit_images(per_class: int) -> dict[int, list[np.ndarray]]:
    """Real handwritten digits (8x8, grey 0-255), ``per_class`` of each class."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return {label: list(images[np.flatnonzero(bunch.target == label)[:per_class]]) for label in range(10)}


def write(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).convert("RGB").save(path)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """ROOT/train/<digit>/*.png (8 each) and ROOT/test/<digit>/*.png (4 each)."""
    root = tmp_path_factory.mktemp("digits-folder")
    for label, images in digit_images(12).items():
        for i, image in enumerate(images):
            split = "train" if i < 8 else "test"
            write(root / split / DIGIT_NAMES[label] / f"{DIGIT_NAMES[label]}_{i:02d}.png", image)
    return root


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory) -> Path:
    """The CUB-200-2011 layout (images.txt, classes.txt, ...) over 10 digit classes, 9 images each."""
    root = tmp_path_factory.mktemp("cub")
    base = root / "CUB_200_2011"
    images, labels, split, classes = [], [], [], []
    for label, imgs in digit_images(9).items():
        folder = f"{label + 1:03d}.Digit_{DIGIT_NAMES[label]}"
        classes.append(f"{label + 1} {folder}")
        for i, image in enumerate(imgs):
            n = len(images) + 1
            rel = f"{folder}/Digit_{DIGIT_NAMES[label]}_{i:04d}_{n}.jpg"
            write(base / "images" / rel, image)
            images.append(f"{n} {rel}")
            labels.append(f"{n} {label + 1}")
            split.append(f"{n} {int(i < 6)}")  # 6 train, 3 test per class
    for name, lines in [("images.txt", images), ("image_class_labels.txt", labels),
                        ("train_test_split.txt", split), ("classes.txt", classes)]:
        (base / name).write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def mini_root(tmp_path_factory) -> Path:
    """The CEC miniImageNet layout (images/ + split/{train,test}.csv) with real WordNet ids."""
    root = tmp_path_factory.mktemp("mini")
    wnids = _mini_imagenet_wnids()[:10] or [f"n0000000{i}" for i in range(10)]
    rows = {"train": [], "test": []}
    for label, imgs in digit_images(10).items():
        for i, image in enumerate(imgs):
            name = f"{wnids[label]}{i + 1:08d}.jpg"
            write(root / "miniimagenet" / "images" / name, image)
            rows["train" if i < 7 else "test"].append(f"{name},{wnids[label]}")
    (root / "miniimagenet" / "split").mkdir()
    for split, lines in rows.items():
        (root / "miniimagenet" / "split" / f"{split}.csv").write_text("filename,label\n" + "\n".join(lines) + "\n")
    return root


# --- the protocols' plans, data absent --------------------------------------------------------


def plan_of(config: str, tmp_path: Path, *overrides: str):
    from continual.registry import STREAMS

    cfg = load_config(config, [f"stream.root={tmp_path / 'absent'}", *overrides])
    return STREAMS.get(cfg.stream.name)(cfg.stream, cfg.seed)


def test_cifar100_fscil_plan_is_exact_without_data(tmp_path) -> None:
    stream = plan_of("configs/fscil-cifar100.yaml", tmp_path)
    assert len(stream.sessions) == 9
    assert [len(s.classes) for s in stream.sessions] == [60] + [5] * 8
    assert [s.shots for s in stream.sessions] == [0] + [5] * 8
    assert [s.n_train for s in stream.sessions] == [30000] + [25] * 8  # 5 training images per new class
    assert [s.n_test for s in stream.sessions] == [6000] + [500] * 8
    assert stream.sessions[0].classes == list(range(60))  # the standard split: label order
    assert stream.sessions[1].classes == [60, 61, 62, 63, 64]
    assert stream.class_names == CIFAR100_CLASSES and stream.class_names[1] == "aquarium fish"
    assert any("(data absent: nominal counts" in note for note in stream.notes)
    assert stream.data_missing is None  # the config lets torchvision download it

    offline = plan_of("configs/fscil-cifar100.yaml", tmp_path, "stream.download=false")
    assert str(tmp_path / "absent") in offline.data_missing and "stream.download=true" in offline.data_missing


def test_cub200_and_mini_imagenet_fscil_plans(tmp_path) -> None:
    cub = plan_of("configs/fscil-cub200.yaml", tmp_path)
    assert len(cub.sessions) == 11
    assert [len(s.classes) for s in cub.sessions] == [100] + [10] * 10
    assert [s.n_train for s in cub.sessions[1:]] == [50] * 10 and cub.sessions[1].shots == 5
    assert "CUB_200_2011" in cub.data_missing

    mini = plan_of("configs/fscil-miniimagenet.yaml", tmp_path)
    assert [len(s.classes) for s in mini.sessions] == [60] + [5] * 8
    assert [s.n_train for s in mini.sessions] == [30000] + [25] * 8
    assert "miniimagenet" in mini.data_missing


def test_dry_run_prints_the_plan_without_data(capsys, tmp_path) -> None:
    assert main(["run", "configs/fscil-cifar100.yaml", "--dry-run", f"stream.root={tmp_path / 'absent'}",
                 f"output_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "stream cifar100: 9 sessions, 100 classes" in out
    assert "session 1: 60 classes [apple, aquarium fish" in out and "30000 train / 6000 test examples" in out
    assert "session 9: 5 classes, 5 shots each [whale, willow tree, wolf, woman, worm]: 25 train / 500 test" in out
    assert "(data absent: nominal counts" in out


def test_real_run_without_data_stops_naming_the_path(tmp_path) -> None:
    cfg = load_config("configs/fscil-cifar100.yaml", [f"stream.root={tmp_path / 'absent'}", "stream.download=false"])
    with pytest.raises(DataNotFoundError) as excinfo:
        cifar100_stream(cfg.stream, cfg.seed, Recorder())
    one_line(excinfo, str(tmp_path / "absent" / "cifar-100-python"), "stream.download=true")
    for fn in (mini_imagenet_stream, cub200_stream):
        with pytest.raises(DataNotFoundError) as excinfo:
            fn(stream_cfg(f"stream.root={tmp_path / 'absent'}"), 0, Recorder())
        one_line(excinfo, str(tmp_path / "absent"))


# --- the session layout -------------------------------------------------------------------


FEW_SHOT = ["stream.n_sessions=4", "stream.base_classes=4", "stream.ways=2", "stream.shots=3", "stream.train_per_class=0",
            "stream.test_per_class=0"]


def test_image_folder_fscil_sessions_and_shots(folder) -> None:
    record = Recorder()
    stream = image_folder_stream(stream_cfg(f"stream.root={folder}", *FEW_SHOT), 0, record)
    assert [len(s.classes) for s in stream.sessions] == [4, 2, 2, 2]
    assert [s.n_train for s in stream.sessions] == [32, 6, 6, 6]  # 8 each in the base, then 3 shots
    assert [s.n_test for s in stream.sessions] == [16, 8, 8, 8]
    assert [s.shots for s in stream.sessions] == [0, 3, 3, 3]
    assert stream.class_names == sorted(DIGIT_NAMES)  # folder names in sorted order
    train = stream.benchmark.train_stream
    assert [len(train[i].dataset) for i in range(4)] == [32, 6, 6, 6]
    for session, experience in zip(stream.sessions, train):
        assert sorted(set(experience.classes_in_this_experience)) == sorted(session.classes)
    shots = Counter(Path(i).parent.name for i in record.seen["train"])
    assert all(shots[stream.class_names[c]] == 3 for s in stream.sessions[1:] for c in s.classes)


def test_same_seed_same_split_other_seed_other_split(folder) -> None:
    def split(seed: int, *extra: str):
        record = Recorder()
        stream = image_folder_stream(stream_cfg(f"stream.root={folder}", *FEW_SHOT, *extra), seed, record)
        return [s.classes for s in stream.sessions], record.seen["train"]

    assert split(0) == split(0)
    (classes0, images0), (classes1, images1) = split(0), split(1)
    assert classes0 != classes1 and images0 != images1
    # a given class order (the standard protocols): the seed still draws other shots
    order = "stream.class_order=[0,1,2,3,4,5,6,7,8,9]"
    (classes0, images0), (classes1, images1) = split(0, order), split(1, order)
    assert classes0 == classes1 == [[0, 1, 2, 3], [4, 5], [6, 7], [8, 9]]
    assert images0 != images1


def test_default_layout_is_unchanged() -> None:
    """base_classes = ways = shots = 0: today's even split and per-class sample."""
    stream = digits_stream(stream_cfg("stream.n_sessions=3", "stream.train_per_class=20", "stream.test_per_class=10"), 0)
    assert [len(s.classes) for s in stream.sessions] == [4, 3, 3]
    assert [s.shots for s in stream.sessions] == [0, 0, 0]
    ds = digits(True, 0)
    assert sample_per_class(ds, {c: 20 for c in range(10)}, 5).targets == per_class_subset(ds, 20, 5).targets
    other = sample_per_class(ds, {c: 20 for c in range(10)}, 5)
    assert np.array_equal(other.images, per_class_subset(ds, 20, 5).images)


def test_sessions_that_leave_classes_out_are_renumbered(folder) -> None:
    stream = image_folder_stream(stream_cfg(f"stream.root={folder}", "stream.n_sessions=3", "stream.base_classes=4",
                                            "stream.ways=2", "stream.class_order=[9,8,7,6,5,4,3,2,1,0]"), 0, Recorder())
    # labels follow the sorted folder names (eight, five, four, ...): 1 and 0 are left out
    assert stream.class_names == ["four", "nine", "one", "seven", "six", "three", "two", "zero"]
    assert [[stream.class_names[c] for c in s.classes] for s in stream.sessions] == [
        ["zero", "two", "three", "six"], ["seven", "one"], ["nine", "four"]]
    assert any("2 of the 10 classes are in no session" in note for note in stream.notes)
    assert len(stream.benchmark.train_stream) == 3


# --- official split files ------------------------------------------------------------------


def write_splits(folder: Path, sessions: list[list[str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k, lines in enumerate(sessions, 1):
        (folder / f"session_{k}.txt").write_text("\n".join(lines) + "\n")
    return folder


def test_split_files_fix_classes_and_images_image_folder(folder, tmp_path) -> None:
    def files(name: str, n: int) -> list[str]:  # listed with a prefix, as FSCIL papers' files are
        return [f"digits/train/{name}/{name}_{i:02d}.png" for i in range(n)]

    sessions = [files("seven", 8) + files("two", 8) + files("zero", 8),
                files("nine", 2) + files("four", 2), files("one", 2) + files("five", 2)]
    split_dir = write_splits(tmp_path / "index_list", sessions)
    record = Recorder()
    stream = image_folder_stream(stream_cfg(f"stream.root={folder}", "stream.n_sessions=3", f"stream.split_dir={split_dir}",
                                            "stream.test_per_class=0"), 0, record)
    named = [[stream.class_names[c] for c in s.classes] for s in stream.sessions]
    assert named == [["seven", "two", "zero"], ["four", "nine"], ["five", "one"]]  # label order within a session
    assert stream.class_names == ["five", "four", "nine", "one", "seven", "two", "zero"]  # 3 classes in no session
    assert [s.n_train for s in stream.sessions] == [24, 4, 4]
    assert [s.shots for s in stream.sessions] == [0, 2, 2]
    assert [s.n_test for s in stream.sessions] == [12, 8, 8]  # all test images of the session's classes
    expected = sorted(line.removeprefix("digits/") for lines in sessions for line in lines)
    assert sorted(record.seen["train"]) == expected


def test_split_files_cub_layout(cub_root, tmp_path) -> None:
    """CEC's CUB lines: CUB_200_2011/images/<class folder>/<file>, matched by their path."""
    def lines(label: int, n: int) -> list[str]:
        folder = f"{label + 1:03d}.Digit_{DIGIT_NAMES[label]}"
        return [f"CUB_200_2011/images/{folder}/Digit_{DIGIT_NAMES[label]}_{i:04d}_{label * 9 + i + 1}.jpg" for i in range(n)]

    sessions = [lines(0, 6) + lines(1, 6) + lines(2, 6) + lines(3, 6), lines(4, 5) + lines(5, 5), lines(6, 5) + lines(7, 5)]
    record = Recorder()
    stream = cub200_stream(stream_cfg(f"stream.root={cub_root}", "stream.n_sessions=3", "stream.test_per_class=0",
                                      f"stream.split_dir={write_splits(tmp_path / 'cub200', sessions)}"), 0, record)
    assert stream.class_names == ["Digit zero", "Digit one", "Digit two", "Digit three", "Digit four", "Digit five",
                                  "Digit six", "Digit seven"]  # classes.txt, classes 9-10 in no session
    assert [s.classes for s in stream.sessions] == [[0, 1, 2, 3], [4, 5], [6, 7]]
    assert [s.n_train for s in stream.sessions] == [24, 10, 10] and [s.shots for s in stream.sessions] == [0, 5, 5]
    assert [s.n_test for s in stream.sessions] == [12, 6, 6]
    assert sorted(record.seen["train"]) == sorted(line.split("images/", 1)[1] for s in sessions for line in s)


def test_mini_imagenet_layout_and_split_files(mini_root, tmp_path) -> None:
    wnids = _mini_imagenet_wnids()[:10]
    plan = mini_imagenet_stream(stream_cfg(f"stream.root={mini_root}", "stream.n_sessions=2", "stream.train_per_class=0",
                                           "stream.test_per_class=0", "stream.class_order=[0,1,2,3,4,5,6,7,8,9]"), 0)
    assert [s.n_train for s in plan.sessions] == [35, 35] and [s.n_test for s in plan.sessions] == [15, 15]
    if wnids:  # names from timm's WordNet lemmas
        assert plan.class_names[:3] == ["house finch", "robin", "triceratops"]

    def lines(label: int, shots: range) -> list[str]:
        return [f"MINI-ImageNet/train/{wnids[label]}/{wnids[label]}{i:08d}.jpg" for i in shots]

    sessions = [[line for c in range(6) for line in lines(c, range(1, 8))], lines(6, range(2, 4)) + lines(7, range(3, 5))]
    record = Recorder()
    stream = mini_imagenet_stream(stream_cfg(f"stream.root={mini_root}", "stream.n_sessions=2",
                                             f"stream.split_dir={write_splits(tmp_path / 'mini', sessions)}"), 0, record)
    assert [s.classes for s in stream.sessions] == [[0, 1, 2, 3, 4, 5], [6, 7]]
    assert sorted(record.seen["train"]) == sorted(line.rsplit("/", 1)[1] for s in sessions for line in s)


def test_split_files_of_an_in_memory_dataset_are_indices(tmp_path) -> None:
    """CIFAR-100's split lines are indices into its training set (here: digits, held in memory)."""
    train = digits(True, 0)
    first = [i for i, t in enumerate(train.targets) if t in (1, 3)]
    second = [i for i, t in enumerate(train.targets) if t == 8][:5]
    split_dir = write_splits(tmp_path / "idx", [[str(i) for i in first], [str(i) for i in second]])
    record = Recorder()
    stream = digits_stream(stream_cfg("stream.n_sessions=2", f"stream.split_dir={split_dir}"), 0, record)
    assert [s.classes for s in stream.sessions] == [[0, 1], [2]]  # 1, 3, 8 renumbered
    assert stream.class_names == ["one", "three", "eight"]
    assert [s.n_train for s in stream.sessions] == [len(first), 5] and stream.sessions[1].shots == 5


def test_bad_split_files(folder, tmp_path) -> None:
    good = [f"train/one/one_{i:02d}.png" for i in range(8)]
    split_dir = write_splits(tmp_path / "s", [good, ["train/two/two_00.png"]])
    cfg = lambda *o: stream_cfg(f"stream.root={folder}", f"stream.split_dir={split_dir}", *o)  # noqa: E731
    with pytest.raises(ConfigError) as excinfo:
        image_folder_stream(cfg("stream.n_sessions=1"), 0)
    one_line(excinfo, "session_2.txt", "set stream.n_sessions=2")
    with pytest.raises(DataNotFoundError) as excinfo:
        image_folder_stream(cfg("stream.n_sessions=3"), 0)
    one_line(excinfo, str(split_dir / "session_3.txt"))
    with pytest.raises(DataNotFoundError) as excinfo:
        image_folder_stream(stream_cfg(f"stream.root={folder}", f"stream.split_dir={tmp_path / 'nowhere'}"), 0)
    one_line(excinfo, str(tmp_path / "nowhere"))
    bad = write_splits(tmp_path / "bad", [good, ["train/two/two_99.png"]])
    with pytest.raises(ConfigError) as excinfo:
        image_folder_stream(stream_cfg(f"stream.root={folder}", f"stream.split_dir={bad}", "stream.n_sessions=2"), 0)
    one_line(excinfo, "session_2.txt line 1", "two_99.png", "names no training image")
    twice = write_splits(tmp_path / "twice", [good, ["train/one/one_00.png"]])
    with pytest.raises(ConfigError) as excinfo:
        image_folder_stream(stream_cfg(f"stream.root={folder}", f"stream.split_dir={twice}", "stream.n_sessions=2"), 0)
    one_line(excinfo, "class 'one'", "session_1.txt and session_2.txt")
    with pytest.raises(ConfigError) as excinfo:
        image_folder_stream(cfg("stream.n_sessions=2", "stream.base_classes=5"), 0)
    one_line(excinfo, "set stream.base_classes=1")


# --- values out of range -----------------------------------------------------------------------


@pytest.mark.parametrize("overrides, needle", [
    (["stream.n_sessions=5", "stream.base_classes=8", "stream.ways=1"], "= 12 classes, more than the 10 classes"),
    (["stream.n_sessions=5", "stream.base_classes=8"], "4 sessions after the base session but only 2"),
    (["stream.n_sessions=4", "stream.ways=3"], "stream.ways=3 x 4 sessions = 12 classes"),
    (["stream.n_sessions=11"], "between 1 and the number of classes (10)"),
])
def test_more_sessions_than_classes(folder, overrides, needle) -> None:
    with pytest.raises(ConfigError) as excinfo:
        image_folder_stream(stream_cfg(f"stream.root={folder}", *overrides), 0)
    one_line(excinfo, needle)


def test_more_shots_than_images(folder, tmp_path) -> None:
    with pytest.raises(ConfigError) as excinfo:
        image_folder_stream(stream_cfg(f"stream.root={folder}", *FEW_SHOT, "stream.shots=10"), 0)
    one_line(excinfo, "stream.shots=10 but class", "has only 8 training images; lower stream.shots")
    with pytest.raises(ConfigError) as excinfo:  # data absent: the nominal counts
        plan_of("configs/fscil-cub200.yaml", tmp_path, "stream.shots=40")
    one_line(excinfo, "stream.shots=40", "only 30 training images (nominal count)")


# --- image folders: layouts, corrupt files, missing data ----------------------------------------


def test_flat_image_folder_is_split_stratified_and_seeded(tmp_path) -> None:
    for label, images in digit_images(10).items():
        for i, image in enumerate(images):
            write(tmp_path / "own" / f"digit_{DIGIT_NAMES[label]}" / f"{i}.jpg", image)
    cfg = stream_cfg(f"stream.root={tmp_path / 'own'}", "stream.n_sessions=2", "stream.test_fraction=0.3")
    stream = image_folder_stream(cfg, 0)
    assert stream.class_names[0] == "digit eight"  # folder names, sorted, underscores as spaces
    assert sum(s.n_train for s in stream.sessions) == 70 and sum(s.n_test for s in stream.sessions) == 30
    a, b, c = Recorder(), Recorder(), Recorder()
    image_folder_stream(cfg, 0, a), image_folder_stream(cfg, 0, b), image_folder_stream(cfg, 1, c)
    assert a.seen["test"] == b.seen["test"] != c.seen["test"]
    assert len(set(a.seen["test"]) & set(a.seen["train"])) == 0


def test_corrupt_images_error_or_skip(tmp_path) -> None:
    for label, images in digit_images(4).items():
        for i, image in enumerate(images):
            write(tmp_path / "own" / DIGIT_NAMES[label] / f"{i}.png", image)
    bad = tmp_path / "own" / "three" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    base = [f"stream.root={tmp_path / 'own'}", "stream.n_sessions=2", "stream.test_fraction=0.25", "stream.class_order=[0,1,2,3,4,5,6,7,8,9]"]
    plan = image_folder_stream(stream_cfg(*base), 0)  # the plan decodes nothing
    assert sum(s.n_train + s.n_test for s in plan.sessions) == 41
    with pytest.raises(CorruptImageError) as excinfo:
        image_folder_stream(stream_cfg(*base), 0, Recorder())
    one_line(excinfo, str(bad), "stream.on_corrupt=skip")
    stream = image_folder_stream(stream_cfg(*base, "stream.on_corrupt=skip"), 0, Recorder())
    assert sum(s.n_train + s.n_test for s in stream.sessions) == 40
    assert any("skipped 1 unreadable images" in note and "broken.jpg" in note for note in stream.notes)


def test_missing_image_folder_names_the_path(tmp_path) -> None:
    with pytest.raises(DataNotFoundError) as excinfo:
        image_folder_stream(stream_cfg(f"stream.root={tmp_path / 'mine'}"), 0)
    one_line(excinfo, str(tmp_path / "mine"), "a folder with one sub-folder of images per class")
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(DataNotFoundError) as excinfo:
        image_folder_stream(stream_cfg(f"stream.root={tmp_path / 'empty'}"), 0)
    one_line(excinfo, str(tmp_path / "empty" / "cat"), "has no images")
    with pytest.raises(ConfigError) as excinfo:
        image_folder_stream(stream_cfg("stream.name=image-folder"), 0)
    one_line(excinfo, "stream.root")


def test_file_datasets_have_a_content_key(folder) -> None:
    from streams.classification import content_key
    from streams.files import image_folder

    train, _ = image_folder(folder, 0.2, 0)
    assert content_key("x", train) == content_key("x", image_folder(folder, 0.2, 0)[0])
    assert content_key("x", train) != content_key("x", train.subset(range(len(train) - 1)))
    assert isinstance(digits(True), LabelledImages)
