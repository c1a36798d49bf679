"""Data streams. Importing this package registers its streams, control sets and reference sets by name
(it is the ``streams`` provider of the ``continual.providers`` entry-point group)."""

from continual.registry import CONTROLS, REFERENCES, STREAMS

STREAMS.add("fashion-mnist", "streams.classification:fashion_mnist_stream",
            "Fashion-MNIST, class-incremental (10 clothing classes; Debian dataset-fashion-mnist)")
STREAMS.add("digits", "streams.classification:digits_stream",
            "scikit-learn 8x8 digits, class-incremental (10 classes; small, for tests)")
STREAMS.add("cifar100", "streams.fscil:cifar100_stream",
            "CIFAR-100 (100 classes; stream.download), class-incremental or FSCIL (stream.base_classes/ways/shots/split_dir)")
STREAMS.add("mini-imagenet", "streams.fscil:mini_imagenet_stream",
            "miniImageNet in the CEC layout (100 classes), class-incremental or FSCIL")
STREAMS.add("cub200", "streams.fscil:cub200_stream",
            "CUB-200-2011 birds (200 species), class-incremental or FSCIL")
STREAMS.add("image-folder", "streams.classification:image_folder_stream",
            "your own images: a folder per class under stream.root, class-incremental or FSCIL")
STREAMS.add("caption-pairs", "streams.pairs:caption_pairs_stream",
            "image-text pairs in sessions (emoji / Tux Paint held out of the bases, or CSV/JSONL/Karpathy manifests)")
STREAMS.add("mtil", "streams.mtil:mtil_stream",
            "multi-domain task-incremental (ZSCL's MTIL): one session per dataset of stream.datasets")
CONTROLS.add("heldout-captions", "streams.control:heldout_captions",
             "held-out emoji / Tux Paint image-caption pairs, scored by retrieval R@K")
CONTROLS.add("manifest-test", "streams.control:manifest_test",
             "the test split of image-caption manifests (control.sources, e.g. COCO's 5K Karpathy test), R@K")
REFERENCES.add("files", "streams.reference",
               "reference images (a folder, a manifest or torchvision:NAME) and sentences (a text or CSV/TSV file) "
               "that a method names in strategy.ref_* (ZSCL)")
