"""Offline datasets: Fashion-MNIST, digits, emoji and Tux Paint caption pairs (real files, fast)."""

from __future__ import annotations

import multiprocessing
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from streams.captions import (
    EMOJI_FONT_FILE,
    EMOJI_TEST_FILE,
    TUX_STAMPS_DIR,
    PairDataset,
    emoji_concept,
    emoji_pairs,
    load_pairs,
    load_stamp,
    split_by_concept,
    tux_pairs,
)
from streams.datasets import (
    FASHION_MNIST_SYSTEM_DIR,
    DataNotFoundError,
    LabelledImages,
    digits,
    fashion_mnist,
    per_class_subset,
)

needs_fashion = pytest.mark.skipif(
    not FASHION_MNIST_SYSTEM_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist"
)
needs_emoji = pytest.mark.skipif(
    not (EMOJI_TEST_FILE.is_file() and EMOJI_FONT_FILE.is_file()),
    reason="apt-get install fonts-noto-color-emoji unicode-data",
)
needs_tux = pytest.mark.skipif(not TUX_STAMPS_DIR.is_dir(), reason="apt-get install tuxpaint-stamps-default")


def assert_one_line_error(excinfo: pytest.ExceptionInfo, *needles: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message


# --- Fashion-MNIST ---------------------------------------------------------------------------


@needs_fashion
def test_fashion_mnist_sizes_labels_and_classes() -> None:
    train, test = fashion_mnist(train=True), fashion_mnist(train=False)
    assert (len(train), len(test)) == (60000, 10000)
    assert train.images.shape == (60000, 28, 28)
    assert set(train.targets) == set(range(10)) == set(test.targets)
    assert all(isinstance(t, int) for t in train.targets[:10])
    assert train.classes[0] == "T-shirt/top" and train.classes[9] == "Ankle boot"
    assert len(train.classes) == 10
    image, label = train[0]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (28, 28)
    assert label == train.targets[0]


@needs_fashion
def test_fashion_mnist_reads_torchvision_layout(tmp_path) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (raw / name).symlink_to(FASHION_MNIST_SYSTEM_DIR / name)
    test = fashion_mnist(train=False, root=tmp_path)
    assert len(test) == 10000
    assert test.targets == fashion_mnist(train=False).targets


def test_fashion_mnist_missing_root_raises_one_line(tmp_path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError) as excinfo:
        fashion_mnist(train=True, root=missing)
    assert_one_line_error(excinfo, str(missing), "apt-get install dataset-fashion-mnist")
    assert isinstance(excinfo.value, FileNotFoundError)


# --- digits and subsets ----------------------------------------------------------------------


def test_digits_split_is_stratified_and_seeded() -> None:
    train, test = digits(train=True, seed=0), digits(train=False, seed=0)
    assert len(train) + len(test) == 1797
    assert len(test) == pytest.approx(0.3 * 1797, abs=1)
    assert train.classes[:3] == ["zero", "one", "two"]
    assert train.images.dtype == np.uint8 and train.images.max() == 255
    whole = Counter(train.targets) + Counter(test.targets)
    for label, count in Counter(test.targets).items():
        assert abs(count - 0.3 * whole[label]) <= 1  # stratified: every class split 70/30
    image, _ = train[0]
    assert image.mode == "RGB" and image.size == (8, 8)

    again = digits(train=False, seed=0)
    assert np.array_equal(again.images, test.images) and again.targets == test.targets
    other = digits(train=False, seed=1)
    assert not np.array_equal(other.images, test.images)


def test_per_class_subset_counts_and_determinism() -> None:
    ds = digits(train=True)
    sub = per_class_subset(ds, n_per_class=5, seed=0)
    assert Counter(sub.targets) == {label: 5 for label in range(10)}
    assert isinstance(sub, LabelledImages) and sub.classes == ds.classes

    again = per_class_subset(ds, n_per_class=5, seed=0)
    assert np.array_equal(sub.images, again.images) and sub.targets == again.targets
    other = per_class_subset(ds, n_per_class=5, seed=1)
    assert not np.array_equal(sub.images, other.images)

    assert len(per_class_subset(ds, n_per_class=0, seed=0)) == len(ds)
    assert len(per_class_subset(ds, n_per_class=10_000, seed=0)) == len(ds)


def test_labelled_images_subset_and_transform() -> None:
    images = np.arange(4 * 2 * 2 * 3, dtype=np.uint8).reshape(4, 2, 2, 3)
    ds = LabelledImages(images, [0, 1, 0, 1], ["a", "b"], transform=lambda im: np.asarray(im))
    sub = ds.subset([3, 1])
    assert sub.targets == [1, 1] and sub.classes == ["a", "b"]
    array, label = sub[0]
    assert np.array_equal(array, images[3]) and label == 1


# --- emoji -----------------------------------------------------------------------------------


@needs_emoji
def test_emoji_pairs_counts_groups_and_concepts() -> None:
    pairs = emoji_pairs()
    assert 3000 < len(pairs) < 5000
    assert len({p.key for p in pairs}) == len(pairs)
    groups = {p.group for p in pairs}
    assert len(groups) <= 9 and "Component" not in groups and "Animals & Nature" in groups
    turtle = [p for p in pairs if p.concept == "turtle"]
    assert len(turtle) == 1 and turtle[0].caption == "an emoji of a turtle"

    # all skin-tone variants share the base concept
    waving = [p for p in pairs if p.concept == "waving hand"]
    assert len(waving) == 6
    assert any("dark skin tone" in p.caption for p in waving)
    assert emoji_concept("man: medium skin tone, red hair") == "man: red hair"
    assert emoji_concept("flag: Japan") == "flag: Japan"


@needs_emoji
def test_emoji_image_renders_rgb_not_blank() -> None:
    pair = next(p for p in emoji_pairs() if p.concept == "turtle")
    image = pair.image()
    assert image.mode == "RGB" and image.size == (136, 128)
    assert np.asarray(image).var() > 0
    assert np.array_equal(np.asarray(image), np.asarray(pair.image()))  # deterministic


def test_emoji_missing_files_raise_one_line(tmp_path) -> None:
    with pytest.raises(DataNotFoundError) as excinfo:
        emoji_pairs(test_file=tmp_path / "emoji-test.txt")
    assert_one_line_error(excinfo, "emoji-test.txt", "apt-get install fonts-noto-color-emoji unicode-data")
    with pytest.raises(DataNotFoundError) as excinfo:
        emoji_pairs(font_path=tmp_path / "NotoColorEmoji.ttf")
    assert_one_line_error(excinfo, "NotoColorEmoji.ttf", "apt-get install fonts-noto-color-emoji")


# --- Tux Paint stamps ------------------------------------------------------------------------


@needs_tux
def test_tux_pairs_counts_and_captions() -> None:
    pairs = tux_pairs()
    assert len(pairs) > 900  # a sixth of the stamps are SVG only: they count
    assert sum(p.ref.endswith(".svg") for p in pairs) > 100
    assert all(p.caption.strip() for p in pairs)
    assert len({p.key for p in pairs}) == len(pairs)
    assert {p.group for p in pairs} <= {d.name for d in TUX_STAMPS_DIR.iterdir() if d.is_dir()}
    assert "animals" in {p.group for p in pairs}
    assert tux_pairs() == pairs  # sorted walk: same order every time


@needs_tux
def test_tux_images_are_rgb() -> None:
    pairs = tux_pairs()
    samples = [next(p for p in pairs if p.ref.endswith(".png")), next(p for p in pairs if p.ref.endswith(".svg"))]
    for pair in samples:
        image = pair.image()
        assert image.mode == "RGB" and min(image.size) > 1
        assert np.asarray(image).var() > 0


def _load_stamps(refs: list[str], out: str) -> None:
    images = [load_stamp(ref) for ref in refs]
    images[-1].save(out)


@needs_tux
@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_svg_stamps_load_in_forked_workers(tmp_path) -> None:
    # DataLoader workers are forked after the parent has rendered SVGs: rendering must still
    # work there (a renderer with background threads would hang).
    svg_pairs = [p for p in tux_pairs() if p.ref.endswith(".svg")][:8]
    for pair in svg_pairs:
        pair.image()
    out = tmp_path / "stamp.png"
    worker = multiprocessing.get_context("fork").Process(
        target=_load_stamps, args=([p.ref for p in svg_pairs], str(out))
    )
    worker.start()
    worker.join(30)
    if worker.is_alive():
        worker.kill()
        pytest.fail("loading SVG stamps in a forked process hung")
    assert worker.exitcode == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(svg_pairs[-1].image()))


@needs_tux
def test_stamps_with_the_same_caption_share_a_concept() -> None:
    train, heldout = split_by_concept(tux_pairs(), 0.15, 0)
    assert not {p.caption.lower() for p in train} & {p.caption.lower() for p in heldout}


def test_tux_missing_root_raises_one_line(tmp_path) -> None:
    with pytest.raises(DataNotFoundError) as excinfo:
        tux_pairs(root=tmp_path / "stamps")
    assert_one_line_error(excinfo, "stamps", "apt-get install tuxpaint-stamps-default")


# --- splits and the dataset ------------------------------------------------------------------


@needs_emoji
@needs_tux
def test_split_by_concept_disjoint_fraction_seeded() -> None:
    pairs = load_pairs(["emoji", "tux"])
    train, heldout = split_by_concept(pairs, heldout_fraction=0.15, seed=0)
    assert len(train) + len(heldout) == len(pairs)
    train_concepts = {(p.source, p.concept) for p in train}
    heldout_concepts = {(p.source, p.concept) for p in heldout}
    assert not train_concepts & heldout_concepts
    for source in ("emoji", "tux"):
        held = sum(1 for s, _ in heldout_concepts if s == source)
        total = held + sum(1 for s, _ in train_concepts if s == source)
        assert held / total == pytest.approx(0.15, abs=0.01)

    assert split_by_concept(pairs, 0.15, seed=0) == (train, heldout)
    assert split_by_concept(list(reversed(pairs)), 0.15, seed=0)[1] == list(reversed(heldout))
    assert split_by_concept(pairs, 0.15, seed=1)[1] != heldout


@needs_tux
def test_pair_dataset_items() -> None:
    pairs = tux_pairs()[:3]
    ds = PairDataset(pairs, transform=lambda im: im.resize((32, 32)))
    image, caption, index = ds[2]
    assert len(ds) == 3 and index == 2 and caption == pairs[2].caption
    assert image.size == (32, 32) and image.mode == "RGB"


def test_load_pairs_rejects_unknown_source() -> None:
    with pytest.raises(ValueError, match="unknown caption source"):
        load_pairs(["wikipedia"])
