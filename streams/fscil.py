"""The few-shot class-incremental (FSCIL) benchmark datasets: CIFAR-100, miniImageNet, CUB-200.

Each is a stream whose protocol comes from the config alone (streams/classification.py):
class-incremental by default; FSCIL with stream.base_classes / ways / shots; the official split
lists with stream.split_dir (configs/fscil-*.yaml hold CPE-CLIP's protocols). Where the files are
absent, the plan (``--dry-run``) is made from the dataset's nominal counts and says so, and the
stream carries ``data_missing``, the one line a real run stops with (naming the path and how
to get the data).

Layouts under stream.root (null: ~/.cache/continual/data/<stream name>):

- cifar100: torchvision's CIFAR100, ROOT/cifar-100-python/{train,test,meta}; stream.download
  lets torchvision fetch it (needs internet). Split files list indices into its training set.
- mini-imagenet: the layout of CEC and CPE-CLIP, ROOT/miniimagenet/images/*.jpg and
  ROOT/miniimagenet/split/{train,test}.csv (``filename,label``, label a WordNet id); classes in
  order of first appearance in train.csv (= sorted ids, as the FSCIL split lists assume), named
  with timm's ImageNet lemmas.
- cub200: ROOT/CUB_200_2011 of the official archive (images.txt, image_class_labels.txt,
  train_test_split.txt, classes.txt, images/).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from continual.config.schema import StreamConfig
from continual.errors import first_line
from continual.stream import ClassificationStream, ImageEncoder, TextEncoder
from streams.classification import class_incremental, nominal_stream
from streams.datasets import DEFAULT_DOWNLOAD_ROOT, DataNotFoundError, LabelledImages
from streams.files import ImageFiles

# torchvision's CIFAR100.classes (the archive's fine label names), underscores read as spaces
CIFAR100_CLASSES = [name.replace("_", " ") for name in """
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup
dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower
leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid
otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray
road rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar
sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle
wardrobe whale willow_tree wolf woman worm
""".split()]


@dataclass(frozen=True)
class Spec:
    """What a plan needs when the files are absent: nominal sizes and how to get the data."""

    name: str
    train_per_class: int
    test_per_class: int
    counts: str  # the nominal counts in words, for the plan's note
    class_names: Callable[[], list[str]]
    downloadable: bool = False


def _mini_imagenet_names() -> list[str]:
    return _wordnet_names(_mini_imagenet_wnids()) or [f"class {i + 1}" for i in range(100)]


CIFAR100 = Spec("cifar100", 500, 100, "100 classes x 500 train / 100 test images, exact",
                lambda: list(CIFAR100_CLASSES), downloadable=True)
MINI_IMAGENET = Spec("mini-imagenet", 500, 100, "100 classes x 500 train / 100 test images, exact",
                     _mini_imagenet_names)
# 5,994 train / 5,794 test images in all; per class they vary (about 30 / 29); the species'
# names come with classes.txt
CUB200 = Spec("cub200", 30, 29, "200 classes x about 30 train / 29 test images (5,994 / 5,794 in all)",
              lambda: [f"class {i + 1:03d}" for i in range(200)])


# --- loaders -----------------------------------------------------------------------------------
def cifar100(root: Path, download: bool = False) -> tuple[LabelledImages, LabelledImages]:
    """CIFAR-100 (50,000 train / 10,000 test, 32x32, 100 classes) from ROOT/cifar-100-python."""
    folder = root / "cifar-100-python"
    present = all((folder / f).is_file() for f in ("train", "test", "meta"))
    if not present and not download:
        raise DataNotFoundError(f"CIFAR-100 not found in {folder}: set stream.download=true (needs internet) or unpack "
                                f"cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html into {root}")
    from torchvision.datasets import CIFAR100 as TorchCIFAR100  # imported late: only this dataset needs it

    try:
        sets = [TorchCIFAR100(str(root), train=t, download=not present) for t in (True, False)]
    except Exception as exc:  # network errors, a broken archive: one line, whatever the cause
        raise DataNotFoundError(f"CIFAR-100 could not be {'read' if present else 'downloaded'} into {root} ({first_line(exc)}); "
                                f"check the internet connection, or unpack cifar-100-python.tar.gz there") from None
    names = [c.replace("_", " ") for c in sets[0].classes]
    return tuple(LabelledImages(ds.data, ds.targets, names) for ds in sets)  # type: ignore[return-value]


def mini_imagenet(root: Path) -> tuple[ImageFiles, ImageFiles]:
    """miniImageNet as CEC / CPE-CLIP distribute it (60,000 84x84 images, 100 classes)."""
    base = root if (root / "split").is_dir() else root / "miniimagenet"  # ROOT may be miniimagenet/ itself
    images, split = base / "images", base / "split"
    for needed in (split / "train.csv", split / "test.csv", images):
        if not needed.exists():
            raise DataNotFoundError(f"miniImageNet not found: {needed} is missing (get miniimagenet/ with images/ and "
                                    f"split/train.csv, test.csv as CEC and CPE-CLIP distribute it, and set stream.root "
                                    "to the folder holding it)")
    train_rows, test_rows = _csv_rows(split / "train.csv"), _csv_rows(split / "test.csv")
    wnids = list(dict.fromkeys(wnid for _, wnid in train_rows))
    label = {wnid: i for i, wnid in enumerate(wnids)}
    unknown = next((wnid for _, wnid in test_rows if wnid not in label), None)
    if unknown is not None:
        raise DataNotFoundError(f"{split / 'test.csv'} has class {unknown}, which train.csv lacks; use the split "
                                "files of one release")
    names = _wordnet_names(wnids) or wnids

    def files(rows: list[tuple[str, str]]) -> ImageFiles:
        return ImageFiles([images / f for f, _ in rows], [label[w] for _, w in rows], names, ids=[f for f, _ in rows])

    return files(train_rows), files(test_rows)


def cub200(root: Path) -> tuple[ImageFiles, ImageFiles]:
    """Caltech-UCSD Birds-200-2011 (11,788 images, 200 species) with its official train/test split."""
    base = root if (root / "images.txt").is_file() else root / "CUB_200_2011"  # ROOT may be CUB_200_2011/ itself
    tables = {}
    for name in ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt"):
        if not (base / name).is_file():
            raise DataNotFoundError(f"CUB-200-2011 not found: {base / name} is missing (unpack CUB_200_2011.tgz from "
                                    "https://www.vision.caltech.edu/datasets/cub_200_2011/ and set stream.root to the "
                                    "folder holding CUB_200_2011)")
        tables[name] = dict(line.split(" ", 1) for line in (base / name).read_text().splitlines() if line.strip())
    # "001.Black_footed_Albatross" -> "Black footed Albatross"
    names = [tables["classes.txt"][k].split(".", 1)[-1].replace("_", " ") for k in sorted(tables["classes.txt"], key=int)]
    ids = sorted(tables["images.txt"], key=int)

    def files(train: bool) -> ImageFiles:
        chosen = [i for i in ids if (tables["train_test_split.txt"][i].strip() == "1") == train]
        rel = [tables["images.txt"][i].strip() for i in chosen]
        return ImageFiles([base / "images" / r for r in rel], [int(tables["image_class_labels.txt"][i]) - 1 for i in chosen],
                          names, ids=rel)

    return files(True), files(False)


def _csv_rows(path: Path) -> list[tuple[str, str]]:
    """The (filename, label) rows of a CEC split csv, header skipped."""
    rows = [line.strip().split(",") for line in path.read_text().splitlines()[1:] if line.strip()]
    return [(r[0], r[1]) for r in rows]


def _mini_imagenet_wnids() -> list[str]:
    """The 100 miniImageNet WordNet ids in label order (sorted), from the list timm ships."""
    from importlib.resources import files

    try:
        return (files("timm.data") / "_info" / "mini_imagenet_synsets.txt").read_text().split()
    except (ModuleNotFoundError, FileNotFoundError):
        return []


def _wordnet_names(wnids: list[str]) -> list[str]:
    """The first ImageNet lemma of each WordNet id ("house finch"), from timm; [] if unknown."""
    try:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return [info.label_name_to_description(w).split(",")[0].strip() for w in wnids]
    except Exception:  # an older timm, or an id outside ImageNet-1k: fall back to the ids
        return []


# --- streams -----------------------------------------------------------------------------------
def _dataset_stream(spec: Spec, load: Callable[..., tuple], cfg: StreamConfig, seed: int,
                    encode: Optional[ImageEncoder]) -> ClassificationStream:
    """The dataset's stream; its plan from nominal counts where the files are absent."""
    root = Path(cfg.root).expanduser() if cfg.root else DEFAULT_DOWNLOAD_ROOT / spec.name
    fetch = spec.downloadable and cfg.download
    try:
        # downloads only for a real run (encode given), never for a plan
        train, test = load(root, download=fetch and encode is not None) if spec.downloadable else load(root)
    except DataNotFoundError as missing:
        if encode is not None:
            raise
        how = f"stream.download=true fetches it into {root} when the run starts" if fetch else str(missing)
        stream = nominal_stream(spec.name, spec.class_names(), spec.train_per_class, spec.test_per_class, cfg, seed,
                                [f"(data absent: nominal counts: {spec.counts}) {how}"])
        stream.data_missing = None if fetch else str(missing)  # the line a real run stops with
        return stream
    notes = []
    if encode is None and isinstance(train, ImageFiles):
        notes.append(f"image files in {root} not decoded for the plan (unreadable ones: stream.on_corrupt="
                     f"{cfg.on_corrupt} when the run starts)")
    return class_incremental(spec.name, train, test, cfg, seed, encode, notes)


def cifar100_stream(cfg: StreamConfig, seed: int, encode: Optional[ImageEncoder] = None,
                    encode_texts: Optional[TextEncoder] = None) -> ClassificationStream:
    """CIFAR-100 (100 classes) from stream.root, or downloaded with stream.download=true."""
    return _dataset_stream(CIFAR100, cifar100, cfg, seed, encode)


def mini_imagenet_stream(cfg: StreamConfig, seed: int, encode: Optional[ImageEncoder] = None,
                         encode_texts: Optional[TextEncoder] = None) -> ClassificationStream:
    """miniImageNet (100 classes) in the CEC / CPE-CLIP layout under stream.root."""
    return _dataset_stream(MINI_IMAGENET, mini_imagenet, cfg, seed, encode)


def cub200_stream(cfg: StreamConfig, seed: int, encode: Optional[ImageEncoder] = None,
                  encode_texts: Optional[TextEncoder] = None) -> ClassificationStream:
    """CUB-200-2011 (200 bird species) under stream.root, with its official train/test split."""
    return _dataset_stream(CUB200, cub200, cfg, seed, encode)
