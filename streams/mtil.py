"""Multi-domain task-incremental learning (MTIL, ZSCL's benchmark): one session per dataset.

``stream.datasets`` lists the domains in order. Each domain keeps its own class names and
prompt templates; labels are concatenated (domain k's shifted by the classes before it), and
with ``eval.label_space=session`` each test image is classified among its own domain's classes.

Domains (``DOMAINS``):
- The 11 MTIL datasets, read (or downloaded, ``stream.download``) by torchvision under
  ``stream.root/NAME``. Class names and templates are ZSCL's (Thunderbeee/ZSCL ``mtil/src``,
  which took them from CLIP / WiSE-FT): names come from the data where torchvision supplies them
  (underscores as spaces, as ZSCL does), else from ZSCL's lists (Caltech101, EuroSAT, Flowers).
  Datasets without an official test split (Caltech101, EuroSAT, SUN397) are split here
  (``stream.holdout``): ``per_class``, a seeded ``test_fraction`` of each class, or ``random``,
  ZSCL's one random split of all images (torch's ``random_split`` with ``1 - test_fraction`` for
  training, generator seeded with ``stream.split_seed``, 42 in ZSCL) over the items in path order.
- Offline domains on the data installed here: Fashion-MNIST, scikit-learn digits, emoji
  classified into their Unicode group, Tux Paint stamps into their top-level category.

Without an image encoder only the plan is built: where a dataset is absent it says so and uses
the dataset's nominal sizes, so ``--dry-run`` works anywhere. With an encoder, absent data stops
the build with one line naming the path and how to get the data.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from continual.config.schema import ControlConfig, StreamConfig

from continual.config.load import check_choice
from continual.errors import ConfigError, first_line
from continual.stream import ClassificationStream, ImageEncoder, InputsDataset, Session, TextEncoder, encode_images
from streams.captions import EMOJI_INSTALL, TUX_INSTALL, Pair, PairDataset, emoji_pairs, split_by_concept, tux_pairs
from streams.classification import content_key
from streams.fscil import CIFAR100_CLASSES  # the same names for both protocols
from streams.datasets import (DEFAULT_DOWNLOAD_ROOT, DIGIT_CLASSES, FASHION_MNIST_CLASSES, DataNotFoundError,
                              LabelledImages, digits, fashion_mnist, per_class_subset)

# METHODS.md section 6 (ZSCL, Table 1 and its appendix).
ORDER_I = ["aircraft", "caltech101", "cifar100", "dtd", "eurosat", "flowers", "food", "mnist", "oxford-pet",
           "stanford-cars", "sun397"]
ORDER_II = ["stanford-cars", "food", "mnist", "oxford-pet", "flowers", "sun397", "aircraft", "caltech101", "dtd",
            "eurosat", "cifar100"]

TORCHVISION_HINT = "set stream.download=true to let torchvision download it there (needs internet)"
Images = Union[LabelledImages, "DomainImages"]
Loader = Callable[["Domain", StreamConfig, int, bool], tuple[Any, Any]]


@dataclass(frozen=True)
class Domain:
    """One MTIL domain: what it is, how to read it, and its nominal plan when it is absent."""

    name: str  # as in stream.datasets and Session.name
    title: str
    n_classes: int
    templates: tuple[str, ...]
    # Nominal sizes: (train, test) of the official split, or the number of images when there is
    # none (then stream.test_fraction of each class is held out here).
    sizes: Union[tuple[int, int], int]
    load: Loader  # (domain, stream config, seed, download) -> (train, test); raises DataNotFoundError
    classes: tuple[str, ...] = ()  # names in label order; () = only the data knows them
    names_from_data: bool = False  # use the data's own class names (as ZSCL) when present
    torchvision: str = ""  # torchvision.datasets class
    split_args: Optional[tuple[dict, dict]] = None  # its (train, test) keyword arguments; None = no split
    hint: str = TORCHVISION_HINT  # how to get the data, for the one-line error

    def class_names(self) -> list[str]:
        return list(self.classes) if self.classes else [f"{self.name} class {k + 1}" for k in range(self.n_classes)]


class DomainImages(Dataset):
    """Items of a source dataset (torchvision's, or caption pairs) picked by position, with
    labels; items are ``(PIL RGB image, label)``. ``ids`` name the items stably (file paths or
    pair keys) for the feature cache; ``targets`` is what Avalanche reads."""

    def __init__(self, source: Dataset, positions: Sequence[int], targets: Sequence[int], classes: Sequence[str],
                 ids: Sequence[str]) -> None:
        self.source, self.positions = source, list(positions)
        self.targets: list[int] = [int(t) for t in targets]
        self.classes: list[str] = list(classes)
        self.ids: list[str] = list(ids)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.source[self.positions[i]][0].convert("RGB"), self.targets[i]

    def subset(self, indices: Sequence[int]) -> DomainImages:
        """The given items, in the given order (``per_class_subset`` calls this)."""
        indices = [int(i) for i in indices]
        return DomainImages(self.source, [self.positions[i] for i in indices], [self.targets[i] for i in indices],
                            self.classes, [self.ids[i] for i in indices])


def stratified_split(targets: Sequence[int], test_fraction: float, seed: int,
                     units: Optional[Sequence[str]] = None) -> tuple[list[int], list[int]]:
    """Seeded (train, test) positions: ``test_fraction`` of each class's units go to test.

    A unit is a set of items that must stay on one side (an emoji's skin-tone variants); by
    default each item is its own. Every class with two units or more gets at least one on each side.
    """
    units = [str(i) for i in range(len(targets))] if units is None else [str(u) for u in units]
    rng = np.random.default_rng(seed)
    targets_arr = np.asarray(targets)
    test_units: set[tuple[int, str]] = set()
    for label in np.unique(targets_arr):  # sorted: the same draws on every run
        members = sorted({units[i] for i in np.flatnonzero(targets_arr == label)})
        n_test = round(len(members) * test_fraction)
        if len(members) >= 2:
            n_test = min(max(n_test, 1), len(members) - 1)
        test_units.update((int(label), members[p]) for p in rng.permutation(len(members))[:n_test])
    test = [i for i in range(len(targets)) if (int(targets_arr[i]), units[i]) in test_units]
    held = set(test)
    return [i for i in range(len(targets)) if i not in held], test


# ---------------------------------------------------------------------------------------------
# Loaders: (domain, cfg, seed, download) -> (train, test), nothing decoded.


def data_root(cfg: StreamConfig, domain: Domain) -> Path:
    """Where a torchvision domain lives: stream.root/NAME (default ~/.cache/continual/data/mtil/NAME)."""
    return (Path(cfg.root) if cfg.root else DEFAULT_DOWNLOAD_ROOT / "mtil") / domain.name


def _torchvision(domain: Domain, cfg: StreamConfig, seed: int, download: bool) -> tuple[DomainImages, DomainImages]:
    root = data_root(cfg, domain)
    if not download and not root.is_dir():  # checked first: some torchvision classes create the folder
        raise DataNotFoundError(f"{domain.title} not found: {root} does not exist; {domain.hint}")
    import torchvision.datasets

    make = getattr(torchvision.datasets, domain.torchvision)
    try:
        raw = [make(str(root), download=download, **kwargs) for kwargs in domain.split_args or [{}]]
    except (RuntimeError, OSError, ValueError) as exc:  # torchvision: "Dataset not found ...", failed downloads
        if download and domain.hint == TORCHVISION_HINT:
            raise DataNotFoundError(f"{domain.title} could not be downloaded to {root} ({first_line(exc)}); check "
                                    "the internet connection, or put torchvision's files there by hand") from None
        raise DataNotFoundError(f"{domain.title} not found or incomplete in {root} ({first_line(exc)}); {domain.hint}") from None
    parts = [_wrap(domain, ds, root) for ds in raw]
    if len(parts) == 2:
        return parts[0], parts[1]
    whole = parts[0]
    split_seed = seed if cfg.split_seed is None else cfg.split_seed
    if cfg.holdout == "random":
        train_idx, test_idx = random_split_indices(len(whole), cfg.test_fraction, split_seed)
    else:
        train_idx, test_idx = stratified_split(whole.targets, cfg.test_fraction, split_seed)
    return whole.subset(train_idx), whole.subset(test_idx)


def random_split_indices(n: int, test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, test) positions of torch's ``random_split(range(n), [int((1 - f) n), rest],
    generator=torch.Generator().manual_seed(seed))``, each side in position order."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_train = int((1 - test_fraction) * n)
    return sorted(order[:n_train]), sorted(order[n_train:])


def _wrap(domain: Domain, ds: Dataset, root: Path) -> DomainImages:
    """A torchvision dataset as DomainImages, items sorted by id (file listing order varies)."""
    if hasattr(ds, "targets"):
        targets = [int(t) for t in ds.targets]
    elif hasattr(ds, "_labels"):
        targets = [int(t) for t in ds._labels]
    elif hasattr(ds, "y"):  # Caltech101
        targets = [int(t) for t in ds.y]
    else:  # StanfordCars
        targets = [int(t) for _, t in ds._samples]
    files = getattr(ds, "_image_files", None) or [p for p, _ in getattr(ds, "_samples", None) or getattr(ds, "samples", [])]
    ids = [os.path.relpath(f, root) for f in files] if files else [f"{i:08d}" for i in range(len(targets))]
    data_names = list(getattr(ds, "classes", None) or getattr(ds, "categories", None) or [])
    n_found = len(data_names) or max(targets) + 1
    if n_found != domain.n_classes:
        raise DataNotFoundError(f"{domain.title} in {root} has {n_found} classes, expected {domain.n_classes}: "
                                f"remove that folder and get the data again ({domain.hint})")
    names = [n.replace("_", " ") for n in data_names] if domain.names_from_data else domain.class_names()
    order = sorted(range(len(targets)), key=ids.__getitem__)
    return DomainImages(ds, order, [targets[i] for i in order], names, [ids[i] for i in order])


def _fashion_mnist(domain: Domain, cfg: StreamConfig, seed: int, download: bool) -> tuple[LabelledImages, LabelledImages]:
    return fashion_mnist(True), fashion_mnist(False)  # the Debian package's files


def _digits(domain: Domain, cfg: StreamConfig, seed: int, download: bool) -> tuple[LabelledImages, LabelledImages]:
    return digits(True, seed, cfg.test_fraction), digits(False, seed, cfg.test_fraction)


def _unseen_by_control(pairs: list[Pair]) -> list[Pair]:
    """The pairs outside the control's held-out concepts (default split), so that the control
    data (heldout-captions) stays never trained on."""
    control = ControlConfig()
    return split_by_concept(pairs, control.heldout_fraction, control.split_seed)[0]


def _pairs_by_group(domain: Domain, pairs: list[Pair], groups: Sequence[str], cfg: StreamConfig,
                    seed: int) -> tuple[DomainImages, DomainImages]:
    """Pairs labelled by their group (``groups[k]`` is class k), split by concept per class."""
    pairs = [p for p in _unseen_by_control(pairs) if p.group in groups]
    targets = [groups.index(p.group) for p in pairs]
    whole = DomainImages(PairDataset(pairs), range(len(pairs)), targets, domain.classes, [p.key for p in pairs])
    train_idx, test_idx = stratified_split(targets, cfg.test_fraction, seed, units=[p.concept for p in pairs])
    return whole.subset(train_idx), whole.subset(test_idx)


EMOJI_GROUPS = ("Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink", "Travel & Places",
                "Activities", "Objects", "Symbols", "Flags")  # emoji-test.txt's groups, Component aside
# Tux Paint's top-level stamp folders with at least 20 stamps outside the control's held-out
# concepts (sports, hobbies, military, medical and naturalforces have 3-12), as readable names.
TUX_CATEGORIES = {"animals": "animals", "clothes": "clothes", "food": "food", "household": "household objects",
                  "people": "people", "plants": "plants", "seasonal": "holidays and seasons",
                  "space": "outer space", "symbols": "symbols and letters", "town": "buildings and landmarks",
                  "vehicles": "vehicles"}


def _emoji_groups(domain: Domain, cfg: StreamConfig, seed: int, download: bool) -> tuple[DomainImages, DomainImages]:
    return _pairs_by_group(domain, emoji_pairs(), EMOJI_GROUPS, cfg, seed)


def _tux_categories(domain: Domain, cfg: StreamConfig, seed: int, download: bool) -> tuple[DomainImages, DomainImages]:
    return _pairs_by_group(domain, tux_pairs(), list(TUX_CATEGORIES), cfg, seed)


# ---------------------------------------------------------------------------------------------
# The domain table. Templates: ZSCL's per dataset (a subset where theirs are long, keeping their
# first, the one they train with); the offline domains' in the same style.

AIRCRAFT_CLASSES = (
    "707-320", "727-200", "737-200", "737-300", "737-400", "737-500", "737-600", "737-700", "737-800", "737-900",
    "747-100", "747-200", "747-300", "747-400", "757-200", "757-300", "767-200", "767-300", "767-400", "777-200",
    "777-300", "A300B4", "A310", "A318", "A319", "A320", "A321", "A330-200", "A330-300", "A340-200", "A340-300",
    "A340-500", "A340-600", "A380", "ATR-42", "ATR-72", "An-12", "BAE 146-200", "BAE 146-300", "BAE-125",
    "Beechcraft 1900", "Boeing 717", "C-130", "C-47", "CRJ-200", "CRJ-700", "CRJ-900", "Cessna 172", "Cessna 208",
    "Cessna 525", "Cessna 560", "Challenger 600", "DC-10", "DC-3", "DC-6", "DC-8", "DC-9-30", "DH-82", "DHC-1",
    "DHC-6", "DHC-8-100", "DHC-8-300", "DR-400", "Dornier 328", "E-170", "E-190", "E-195", "EMB-120", "ERJ 135",
    "ERJ 145", "Embraer Legacy 600", "Eurofighter Typhoon", "F-16A/B", "F/A-18", "Falcon 2000", "Falcon 900",
    "Fokker 100", "Fokker 50", "Fokker 70", "Global Express", "Gulfstream IV", "Gulfstream V", "Hawk T1", "Il-76",
    "L-1011", "MD-11", "MD-80", "MD-87", "MD-90", "Metroliner", "Model B200", "PA-28", "SR-20", "Saab 2000",
    "Saab 340", "Spitfire", "Tornado", "Tu-134", "Tu-154", "Yak-42")
CALTECH101_CLASSES = (  # ZSCL's (CLIP's) readable names, in torchvision's category order
    "off-center face", "centered face", "leopard", "motorbike", "accordion", "airplane", "anchor", "ant", "barrel",
    "bass", "beaver", "binocular", "bonsai", "brain", "brontosaurus", "buddha", "butterfly", "camera", "cannon",
    "side of a car", "ceiling fan", "cellphone", "chair", "chandelier", "body of a cougar cat", "face of a cougar cat",
    "crab", "crayfish", "crocodile", "head of a crocodile", "cup", "dalmatian", "dollar bill", "dolphin", "dragonfly",
    "electric guitar", "elephant", "emu", "euphonium", "ewer", "ferry", "flamingo", "head of a flamingo", "garfield",
    "gerenuk", "gramophone", "grand piano", "hawksbill", "headphone", "hedgehog", "helicopter", "ibis",
    "inline skate", "joshua tree", "kangaroo", "ketch", "lamp", "laptop", "llama", "lobster", "lotus", "mandolin",
    "mayfly", "menorah", "metronome", "minaret", "nautilus", "octopus", "okapi", "pagoda", "panda", "pigeon", "pizza",
    "platypus", "pyramid", "revolver", "rhino", "rooster", "saxophone", "schooner", "scissors", "scorpion",
    "sea horse", "snoopy (cartoon beagle)", "soccer ball", "stapler", "starfish", "stegosaurus", "stop sign",
    "strawberry", "sunflower", "tick", "trilobite", "umbrella", "watch", "water lilly", "wheelchair", "wild cat",
    "windsor chair", "wrench", "yin and yang symbol")
DTD_CLASSES = (
    "banded", "blotchy", "braided", "bubbly", "bumpy", "chequered", "cobwebbed", "cracked", "crosshatched",
    "crystalline", "dotted", "fibrous", "flecked", "freckled", "frilly", "gauzy", "grid", "grooved", "honeycombed",
    "interlaced", "knitted", "lacelike", "lined", "marbled", "matted", "meshed", "paisley", "perforated", "pitted",
    "pleated", "polka-dotted", "porous", "potholed", "scaly", "smeared", "spiralled", "sprinkled", "stained",
    "stratified", "striped", "studded", "swirly", "veined", "waffled", "woven", "wrinkled", "zigzagged")
EUROSAT_CLASSES = (  # ZSCL's names for torchvision's AnnualCrop, Forest, HerbaceousVegetation, ...
    "annual crop land", "forest", "brushland or shrubland", "highway or road",
    "industrial buildings or commercial buildings", "pasture land", "permanent crop land",
    "residential buildings or homes or apartments", "river", "lake or sea")
FLOWERS_CLASSES = (  # ZSCL's (CLIP's) names of the 102 Oxford flowers, in label order
    "pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea", "english marigold", "tiger lily",
    "moon orchid", "bird of paradise", "monkshood", "globe thistle", "snapdragon", "colt's foot", "king protea",
    "spear thistle", "yellow iris", "globe-flower", "purple coneflower", "peruvian lily", "balloon flower",
    "giant white arum lily", "fire lily", "pincushion flower", "fritillary", "red ginger", "grape hyacinth",
    "corn poppy", "prince of wales feathers", "stemless gentian", "artichoke", "sweet william", "carnation",
    "garden phlox", "love in the mist", "mexican aster", "alpine sea holly", "ruby-lipped cattleya", "cape flower",
    "great masterwort", "siam tulip", "lenten rose", "barbeton daisy", "daffodil", "sword lily", "poinsettia",
    "bolero deep blue", "wallflower", "marigold", "buttercup", "oxeye daisy", "common dandelion", "petunia",
    "wild pansy", "primula", "sunflower", "pelargonium", "bishop of llandaff", "gaura", "geranium", "orange dahlia",
    "pink-yellow dahlia", "cautleya spicata", "japanese anemone", "black-eyed susan", "silverbush",
    "californian poppy", "osteospermum", "spring crocus", "bearded iris", "windflower", "tree poppy", "gazania",
    "azalea", "water lily", "rose", "thorn apple", "morning glory", "passion flower", "lotus", "toad lily",
    "anthurium", "frangipani", "clematis", "hibiscus", "columbine", "desert-rose", "tree mallow", "magnolia",
    "cyclamen", "watercress", "canna lily", "hippeastrum", "bee balm", "ball moss", "foxglove", "bougainvillea",
    "camellia", "mallow", "mexican petunia", "bromelia", "blanket flower", "trumpet creeper", "blackberry lily")
FOOD_CLASSES = (
    "apple pie", "baby back ribs", "baklava", "beef carpaccio", "beef tartare", "beet salad", "beignets", "bibimbap",
    "bread pudding", "breakfast burrito", "bruschetta", "caesar salad", "cannoli", "caprese salad", "carrot cake",
    "ceviche", "cheese plate", "cheesecake", "chicken curry", "chicken quesadilla", "chicken wings",
    "chocolate cake", "chocolate mousse", "churros", "clam chowder", "club sandwich", "crab cakes", "creme brulee",
    "croque madame", "cup cakes", "deviled eggs", "donuts", "dumplings", "edamame", "eggs benedict", "escargots",
    "falafel", "filet mignon", "fish and chips", "foie gras", "french fries", "french onion soup", "french toast",
    "fried calamari", "fried rice", "frozen yogurt", "garlic bread", "gnocchi", "greek salad",
    "grilled cheese sandwich", "grilled salmon", "guacamole", "gyoza", "hamburger", "hot and sour soup", "hot dog",
    "huevos rancheros", "hummus", "ice cream", "lasagna", "lobster bisque", "lobster roll sandwich",
    "macaroni and cheese", "macarons", "miso soup", "mussels", "nachos", "omelette", "onion rings", "oysters",
    "pad thai", "paella", "pancakes", "panna cotta", "peking duck", "pho", "pizza", "pork chop", "poutine",
    "prime rib", "pulled pork sandwich", "ramen", "ravioli", "red velvet cake", "risotto", "samosa", "sashimi",
    "scallops", "seaweed salad", "shrimp and grits", "spaghetti bolognese", "spaghetti carbonara", "spring rolls",
    "steak", "strawberry shortcake", "sushi", "tacos", "takoyaki", "tiramisu", "tuna tartare", "waffles")
MNIST_CLASSES = ("0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five", "6 - six", "7 - seven",
                 "8 - eight", "9 - nine")  # torchvision's, which ZSCL's template reads
OXFORD_PET_CLASSES = (
    "Abyssinian", "American Bulldog", "American Pit Bull Terrier", "Basset Hound", "Beagle", "Bengal", "Birman",
    "Bombay", "Boxer", "British Shorthair", "Chihuahua", "Egyptian Mau", "English Cocker Spaniel", "English Setter",
    "German Shorthaired", "Great Pyrenees", "Havanese", "Japanese Chin", "Keeshond", "Leonberger", "Maine Coon",
    "Miniature Pinscher", "Newfoundland", "Persian", "Pomeranian", "Pug", "Ragdoll", "Russian Blue", "Saint Bernard",
    "Samoyed", "Scottish Terrier", "Shiba Inu", "Siamese", "Sphynx", "Staffordshire Bull Terrier",
    "Wheaten Terrier", "Yorkshire Terrier")
STANFORD_CARS_CLASSES = (
    "AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012", "Acura TL Type-S 2008",
    "Acura TSX Sedan 2012", "Acura Integra Type R 2001", "Acura ZDX Hatchback 2012",
    "Aston Martin V8 Vantage Convertible 2012", "Aston Martin V8 Vantage Coupe 2012",
    "Aston Martin Virage Convertible 2012", "Aston Martin Virage Coupe 2012", "Audi RS 4 Convertible 2008",
    "Audi A5 Coupe 2012", "Audi TTS Coupe 2012", "Audi R8 Coupe 2012", "Audi V8 Sedan 1994", "Audi 100 Sedan 1994",
    "Audi 100 Wagon 1994", "Audi TT Hatchback 2011", "Audi S6 Sedan 2011", "Audi S5 Convertible 2012",
    "Audi S5 Coupe 2012", "Audi S4 Sedan 2012", "Audi S4 Sedan 2007", "Audi TT RS Coupe 2012",
    "BMW ActiveHybrid 5 Sedan 2012", "BMW 1 Series Convertible 2012", "BMW 1 Series Coupe 2012",
    "BMW 3 Series Sedan 2012", "BMW 3 Series Wagon 2012", "BMW 6 Series Convertible 2007", "BMW X5 SUV 2007",
    "BMW X6 SUV 2012", "BMW M3 Coupe 2012", "BMW M5 Sedan 2010", "BMW M6 Convertible 2010", "BMW X3 SUV 2012",
    "BMW Z4 Convertible 2012", "Bentley Continental Supersports Conv. Convertible 2012", "Bentley Arnage Sedan 2009",
    "Bentley Mulsanne Sedan 2011", "Bentley Continental GT Coupe 2012", "Bentley Continental GT Coupe 2007",
    "Bentley Continental Flying Spur Sedan 2007", "Bugatti Veyron 16.4 Convertible 2009",
    "Bugatti Veyron 16.4 Coupe 2009", "Buick Regal GS 2012", "Buick Rainier SUV 2007", "Buick Verano Sedan 2012",
    "Buick Enclave SUV 2012", "Cadillac CTS-V Sedan 2012", "Cadillac SRX SUV 2012",
    "Cadillac Escalade EXT Crew Cab 2007", "Chevrolet Silverado 1500 Hybrid Crew Cab 2012",
    "Chevrolet Corvette Convertible 2012", "Chevrolet Corvette ZR1 2012",
    "Chevrolet Corvette Ron Fellows Edition Z06 2007", "Chevrolet Traverse SUV 2012",
    "Chevrolet Camaro Convertible 2012", "Chevrolet HHR SS 2010", "Chevrolet Impala Sedan 2007",
    "Chevrolet Tahoe Hybrid SUV 2012", "Chevrolet Sonic Sedan 2012", "Chevrolet Express Cargo Van 2007",
    "Chevrolet Avalanche Crew Cab 2012", "Chevrolet Cobalt SS 2010", "Chevrolet Malibu Hybrid Sedan 2010",
    "Chevrolet TrailBlazer SS 2009", "Chevrolet Silverado 2500HD Regular Cab 2012",
    "Chevrolet Silverado 1500 Classic Extended Cab 2007", "Chevrolet Express Van 2007",
    "Chevrolet Monte Carlo Coupe 2007", "Chevrolet Malibu Sedan 2007", "Chevrolet Silverado 1500 Extended Cab 2012",
    "Chevrolet Silverado 1500 Regular Cab 2012", "Chrysler Aspen SUV 2009", "Chrysler Sebring Convertible 2010",
    "Chrysler Town and Country Minivan 2012", "Chrysler 300 SRT-8 2010", "Chrysler Crossfire Convertible 2008",
    "Chrysler PT Cruiser Convertible 2008", "Daewoo Nubira Wagon 2002", "Dodge Caliber Wagon 2012",
    "Dodge Caliber Wagon 2007", "Dodge Caravan Minivan 1997", "Dodge Ram Pickup 3500 Crew Cab 2010",
    "Dodge Ram Pickup 3500 Quad Cab 2009", "Dodge Sprinter Cargo Van 2009", "Dodge Journey SUV 2012",
    "Dodge Dakota Crew Cab 2010", "Dodge Dakota Club Cab 2007", "Dodge Magnum Wagon 2008",
    "Dodge Challenger SRT8 2011", "Dodge Durango SUV 2012", "Dodge Durango SUV 2007", "Dodge Charger Sedan 2012",
    "Dodge Charger SRT-8 2009", "Eagle Talon Hatchback 1998", "FIAT 500 Abarth 2012", "FIAT 500 Convertible 2012",
    "Ferrari FF Coupe 2012", "Ferrari California Convertible 2012", "Ferrari 458 Italia Convertible 2012",
    "Ferrari 458 Italia Coupe 2012", "Fisker Karma Sedan 2012", "Ford F-450 Super Duty Crew Cab 2012",
    "Ford Mustang Convertible 2007", "Ford Freestar Minivan 2007", "Ford Expedition EL SUV 2009",
    "Ford Edge SUV 2012", "Ford Ranger SuperCab 2011", "Ford GT Coupe 2006", "Ford F-150 Regular Cab 2012",
    "Ford F-150 Regular Cab 2007", "Ford Focus Sedan 2007", "Ford E-Series Wagon Van 2012", "Ford Fiesta Sedan 2012",
    "GMC Terrain SUV 2012", "GMC Savana Van 2012", "GMC Yukon Hybrid SUV 2012", "GMC Acadia SUV 2012",
    "GMC Canyon Extended Cab 2012", "Geo Metro Convertible 1993", "HUMMER H3T Crew Cab 2010",
    "HUMMER H2 SUT Crew Cab 2009", "Honda Odyssey Minivan 2012", "Honda Odyssey Minivan 2007",
    "Honda Accord Coupe 2012", "Honda Accord Sedan 2012", "Hyundai Veloster Hatchback 2012",
    "Hyundai Santa Fe SUV 2012", "Hyundai Tucson SUV 2012", "Hyundai Veracruz SUV 2012",
    "Hyundai Sonata Hybrid Sedan 2012", "Hyundai Elantra Sedan 2007", "Hyundai Accent Sedan 2012",
    "Hyundai Genesis Sedan 2012", "Hyundai Sonata Sedan 2012", "Hyundai Elantra Touring Hatchback 2012",
    "Hyundai Azera Sedan 2012", "Infiniti G Coupe IPL 2012", "Infiniti QX56 SUV 2011", "Isuzu Ascender SUV 2008",
    "Jaguar XK XKR 2012", "Jeep Patriot SUV 2012", "Jeep Wrangler SUV 2012", "Jeep Liberty SUV 2012",
    "Jeep Grand Cherokee SUV 2012", "Jeep Compass SUV 2012", "Lamborghini Reventon Coupe 2008",
    "Lamborghini Aventador Coupe 2012", "Lamborghini Gallardo LP 570-4 Superleggera 2012",
    "Lamborghini Diablo Coupe 2001", "Land Rover Range Rover SUV 2012", "Land Rover LR2 SUV 2012",
    "Lincoln Town Car Sedan 2011", "MINI Cooper Roadster Convertible 2012", "Maybach Landaulet Convertible 2012",
    "Mazda Tribute SUV 2011", "McLaren MP4-12C Coupe 2012", "Mercedes-Benz 300-Class Convertible 1993",
    "Mercedes-Benz C-Class Sedan 2012", "Mercedes-Benz SL-Class Coupe 2009", "Mercedes-Benz E-Class Sedan 2012",
    "Mercedes-Benz S-Class Sedan 2012", "Mercedes-Benz Sprinter Van 2012", "Mitsubishi Lancer Sedan 2012",
    "Nissan Leaf Hatchback 2012", "Nissan NV Passenger Van 2012", "Nissan Juke Hatchback 2012",
    "Nissan 240SX Coupe 1998", "Plymouth Neon Coupe 1999", "Porsche Panamera Sedan 2012",
    "Ram C/V Cargo Van Minivan 2012", "Rolls-Royce Phantom Drophead Coupe Convertible 2012",
    "Rolls-Royce Ghost Sedan 2012", "Rolls-Royce Phantom Sedan 2012", "Scion xD Hatchback 2012",
    "Spyker C8 Convertible 2009", "Spyker C8 Coupe 2009", "Suzuki Aerio Sedan 2007", "Suzuki Kizashi Sedan 2012",
    "Suzuki SX4 Hatchback 2012", "Suzuki SX4 Sedan 2012", "Tesla Model S Sedan 2012", "Toyota Sequoia SUV 2012",
    "Toyota Camry Sedan 2012", "Toyota Corolla Sedan 2012", "Toyota 4Runner SUV 2012",
    "Volkswagen Golf Hatchback 2012", "Volkswagen Golf Hatchback 1991", "Volkswagen Beetle Hatchback 2012",
    "Volvo C30 Hatchback 2012", "Volvo 240 Sedan 1993", "Volvo XC90 SUV 2007", "smart fortwo Convertible 2012")

def _tv(name: str, title: str, n_classes: int, templates: tuple[str, ...], sizes: Union[tuple[int, int], int],
        torchvision: str, split_args: Optional[tuple[dict, dict]], classes: tuple[str, ...] = (),
        names_from_data: bool = True, hint: str = TORCHVISION_HINT) -> Domain:
    return Domain(name, title, n_classes, templates, sizes, _torchvision, classes, names_from_data, torchvision,
                  split_args, hint)


_SPLIT = ({"split": "train"}, {"split": "test"})
_TRAIN_FLAG = ({"train": True}, {"train": False})

DOMAINS: dict[str, Domain] = {d.name: d for d in [
    _tv("aircraft", "FGVC Aircraft", 100,
        ("a photo of a {}, a type of aircraft.", "a photo of the {}, a type of aircraft."),
        (3334, 3333), "FGVCAircraft", _SPLIT, AIRCRAFT_CLASSES),
    _tv("caltech101", "Caltech101", 101,
        ("a photo of a {}.", "a painting of a {}.", "a plastic {}.", "a sculpture of a {}.", "a sketch of a {}.",
         "a photo of the {}."),
        8677, "Caltech101", None, CALTECH101_CLASSES, names_from_data=False),
    _tv("cifar100", "CIFAR-100", 100,
        ("a photo of a {}.", "a blurry photo of a {}.", "a black and white photo of a {}.",
         "a low contrast photo of a {}.", "a high contrast photo of a {}.", "a bad photo of a {}.",
         "a good photo of a {}.", "a photo of a small {}.", "a photo of a big {}."),
        (50000, 10000), "CIFAR100", _TRAIN_FLAG, CIFAR100_CLASSES),
    _tv("dtd", "DTD (Describable Textures)", 47,
        ("a photo of a {} texture.", "a photo of a {} pattern.", "a photo of a {} thing.", "a photo of a {} object.",
         "a photo of the {} texture.", "a photo of the {} pattern.", "a photo of the {} thing.",
         "a photo of the {} object."),
        (1880, 1880), "DTD", _SPLIT, DTD_CLASSES),
    _tv("eurosat", "EuroSAT", 10,
        ("a centered satellite photo of {}.", "a centered satellite photo of a {}.",
         "a centered satellite photo of the {}."),
        27000, "EuroSAT", None, EUROSAT_CLASSES, names_from_data=False),
    _tv("flowers", "Oxford Flowers-102", 102, ("a photo of a {}, a type of flower.",),
        (1020, 6149), "Flowers102", _SPLIT, FLOWERS_CLASSES, names_from_data=False),
    _tv("food", "Food-101", 101, ("a photo of a {}, a type of food.",),
        (75750, 25250), "Food101", _SPLIT, FOOD_CLASSES),
    _tv("mnist", "MNIST", 10, ('a photo of the number: "{}".',),
        (60000, 10000), "MNIST", _TRAIN_FLAG, MNIST_CLASSES),
    _tv("oxford-pet", "Oxford-IIIT Pet", 37, ("a photo of a {}, a type of pet.",),
        (3680, 3669), "OxfordIIITPet", ({"split": "trainval"}, {"split": "test"}), OXFORD_PET_CLASSES),
    _tv("stanford-cars", "Stanford Cars", 196,
        ("a photo of a {}, a type of car.", "a photo of a {}.", "a photo of the {}.", "a photo of my {}.",
         "i love my {}!", "a photo of my dirty {}.", "a photo of my clean {}.", "a photo of my new {}.",
         "a photo of my old {}."),
        (8144, 8041), "StanfordCars", _SPLIT, STANFORD_CARS_CLASSES,
        hint="torchvision cannot download Stanford Cars (its original URL is gone): get a copy elsewhere and unpack "
             "it there as stanford_cars/ with devkit/, cars_train/, cars_test/ and cars_test_annos_withlabels.mat"),
    _tv("sun397", "SUN397", 397, ("a photo of a {}.", "a photo of the {}."),
        108754, "SUN397", None),  # its 397 names come with the data (ClassName.txt)
    Domain("fashion-mnist", "Fashion-MNIST", 10,
           ("a photo of a {}, a type of clothing.", "a photo of the {}, a type of clothing."),
           (60000, 10000), _fashion_mnist, tuple(FASHION_MNIST_CLASSES),
           hint="apt-get install dataset-fashion-mnist"),
    Domain("digits", "scikit-learn digits", 10, ('a photo of the number: "{}".', "a photo of the digit {}."),
           1797, _digits, tuple(DIGIT_CLASSES), hint="pip install scikit-learn"),
    Domain("emoji-groups", "emoji by Unicode group", len(EMOJI_GROUPS),
           ("an emoji of {}.", "an emoji in the category {}."),
           3179, _emoji_groups, tuple(g.lower() for g in EMOJI_GROUPS), hint=EMOJI_INSTALL),
    Domain("tux-categories", "Tux Paint stamps by category", len(TUX_CATEGORIES),
           ("a picture of {}.", "a picture in the category {}."),
           777, _tux_categories, tuple(TUX_CATEGORIES.values()), hint=TUX_INSTALL),
]}
OFFLINE = ["fashion-mnist", "digits", "emoji-groups", "tux-categories"]


# ---------------------------------------------------------------------------------------------
# The stream.


@dataclass
class _Part:
    domain: Domain
    offset: int  # label of its first class in the concatenated stream
    classes: list[str]
    n_train: int
    n_test: int
    train: Optional[Images] = None
    test: Optional[Images] = None
    missing: Optional[str] = None  # why the data is absent (plans only)


def mtil_stream(cfg: StreamConfig, seed: int, encode: Optional[ImageEncoder] = None,
                encode_texts: Optional[TextEncoder] = None) -> ClassificationStream:
    """One session per domain of ``cfg.datasets``, in order; labels offset by the classes before.

    Without ``encode`` only the plan is built (absent data: nominal sizes, noted); with it, the
    Avalanche benchmark over the model inputs (absent data: DataNotFoundError). Class names and
    templates stay per domain; ``encode_texts`` is not needed (the runner builds the prompts).
    """
    domains = check_domains(list(cfg.datasets))
    if cfg.class_order:
        raise ConfigError("stream.class_order does not apply to the mtil stream: each dataset of stream.datasets is "
                          "one session, in that order; remove stream.class_order")
    parts, notes, offset = [], [], 0
    for domain in domains:
        part = _part(domain, offset, cfg, seed, build=encode is not None, notes=notes)
        parts.append(part)
        offset += domain.n_classes
    if cfg.augment:
        notes.append("training images: random-resized crop (scale 0.9-1.0) at every visit (stream.augment)")
    if any(isinstance(d.sizes, int) and d.load is _torchvision for d in domains):
        notes.append("datasets without a test split: " + (
            f"one random split, {1 - cfg.test_fraction:.0%} / {cfg.test_fraction:.0%}" if cfg.holdout == "random"
            else f"{cfg.test_fraction:.0%} of each class held out")
            + f", seed {cfg.split_seed if cfg.split_seed is not None else seed} (stream.holdout)")
    if any(d.name in ("emoji-groups", "tux-categories") for d in domains):
        control = ControlConfig()
        notes.append(f"emoji/tux images of the control's held-out concepts ({control.heldout_fraction:.0%}, split "
                     f"seed {control.split_seed}) are left out, so heldout-captions stays never trained on")
    sessions = [Session(i + 1, list(range(p.offset, p.offset + p.domain.n_classes)), p.n_train, p.n_test,
                        name=p.domain.name) for i, p in enumerate(parts)]
    stream = ClassificationStream(
        "mtil", [name for p in parts for name in p.classes], sessions, notes=notes,
        templates=[list(p.domain.templates) for p in parts for _ in range(p.domain.n_classes)])
    missing = [p.missing for p in parts if p.missing]
    if missing and not cfg.download:  # a real run stops on this line before building anything
        stream.data_missing = missing[0]
    if encode is not None:
        stream.benchmark = _benchmark(parts, encode, cfg.augment)
    return stream


def check_domains(names: list[str]) -> list[Domain]:
    """The domains named in stream.datasets; a one-line ConfigError for an empty list, an unknown
    name (with the closest match) or a repeated one."""
    if not names:
        raise ConfigError("stream.datasets is empty: list the MTIL domains in order, e.g. "
                          f"[{', '.join(ORDER_I[:3])}, ...] (configs/mtil-order1.yaml) or [{', '.join(OFFLINE)}]")
    for i, name in enumerate(names):
        check_choice(f"stream.datasets[{i}]", name, list(DOMAINS))
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"stream.datasets lists {', '.join(repeated)} more than once; each domain is one session")
    return [DOMAINS[n] for n in names]


def _part(domain: Domain, offset: int, cfg: StreamConfig, seed: int, build: bool, notes: list[str]) -> _Part:
    """A domain's data (per-class samples taken) and sizes; for a plan, nominal sizes if absent."""
    k = len(domain.templates)
    note = f"{domain.name} ({domain.title}): {k} template{'s' if k > 1 else ''}, e.g. '{domain.templates[0]}'"
    try:
        train, test = domain.load(domain, cfg, seed, cfg.download and build)  # a plan never downloads
    except DataNotFoundError as exc:
        if build:
            raise
        notes.append(f"{note}; data absent, nominal sizes: {exc}")
        n_train, n_test = _nominal(domain, cfg)
        return _Part(domain, offset, domain.class_names(), n_train, n_test, missing=str(exc))
    notes.append(note)
    train = per_class_subset(train, cfg.train_per_class, seed)
    test = per_class_subset(test, cfg.test_per_class, seed)
    return _Part(domain, offset, list(train.classes), len(train), len(test), train, test)


def _nominal(domain: Domain, cfg: StreamConfig) -> tuple[int, int]:
    """Sizes without the data: the official split (or test_fraction of the images), capped by
    the per-class samples as if classes were balanced."""
    if isinstance(domain.sizes, int):
        n_test = (domain.sizes - int((1 - cfg.test_fraction) * domain.sizes) if cfg.holdout == "random"
                  else round(domain.sizes * cfg.test_fraction))
        sizes = (domain.sizes - n_test, n_test)
    else:
        sizes = domain.sizes
    caps = (cfg.train_per_class, cfg.test_per_class)
    return tuple(min(n, cap * domain.n_classes) if cap else n for n, cap in zip(sizes, caps))


def _benchmark(parts: list[_Part], encode: ImageEncoder, augment: bool = False) -> Any:
    """One Avalanche experience per domain over the concatenated model inputs (training images
    through the training transform when ``augment``)."""
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark

    datasets = {}
    for split in ("train", "test"):
        inputs, targets = [], []
        for part in parts:
            ds = getattr(part, split)
            inputs.append(encode_images(encode, ds, cache_key(f"mtil-{part.domain.name}-{split}", ds),
                                        train=augment and split == "train"))
            targets += [t + part.offset for t in ds.targets]
        joined = torch.cat(inputs) if all(isinstance(x, torch.Tensor) for x in inputs) else ConcatDataset(inputs)
        datasets[split] = InputsDataset(joined, targets)
    total = sum(p.domain.n_classes for p in parts)
    return class_incremental_benchmark(datasets, class_order=list(range(total)),
                                       num_classes_per_exp=[p.domain.n_classes for p in parts])


def cache_key(name: str, ds: Images) -> str:
    """Identifies a domain split's content for the feature cache: pixels and labels for images
    in memory, item ids (file paths, pair keys) and labels for the others."""
    if isinstance(ds, LabelledImages):
        return content_key(name, ds)
    h = hashlib.blake2b(digest_size=12)
    h.update("\n".join(ds.ids).encode())
    h.update(np.asarray(ds.targets, dtype=np.int64).tobytes())
    return f"{name}-{len(ds)}-{h.hexdigest()}"
