"""Data streams. Importing this package registers its streams and control sets by name
(it is the ``streams`` provider of the ``continual.providers`` entry-point group)."""

from continual.registry import CONTROLS, STREAMS

STREAMS.add("fashion-mnist", "streams.classification:fashion_mnist_stream",
            "Fashion-MNIST, class-incremental (10 clothing classes; Debian dataset-fashion-mnist)")
STREAMS.add("digits", "streams.classification:digits_stream",
            "scikit-learn 8x8 digits, class-incremental (10 classes; small, for tests)")
STREAMS.add("caption-pairs", "streams.pairs:caption_pairs_stream",
            "image-text pairs in sessions (emoji / Tux Paint held out of the bases, or CSV/JSONL/Karpathy manifests)")
CONTROLS.add("heldout-captions", "streams.control:heldout_captions",
             "held-out emoji / Tux Paint image-caption pairs, scored by retrieval R@K")
