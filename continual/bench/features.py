"""``continual bench``'s first-run measurements: frozen-trunk features against a bare loop, and
the time a first run on an empty cache takes to reach its first training step.

Features: the default model's two frozen trunks (ImageNet EfficientNet-Lite0 at 128 px, MiniLM-L6)
over real images (Fashion-MNIST test images; emoji and Tux Paint stamps, decoded as the base
build decodes them) and real captions, by :mod:`continual.clip.extract` against the loop a researcher
writes: a ``torch.no_grad()`` loop over a ``DataLoader`` of the preprocessed images (same batch
size as ours), the text trunk over the tokenizer's padded ids. Variants alternate within each
round; medians of the rounds' throughputs. Both see the same torch thread setting (the bench's).

First run: ``continual run --no-progress`` (the README's first command, less the setup) in a
fresh process with ``CONTINUAL_CACHE`` an empty folder: the seconds until it prints the row
before training, after which the first session's first step starts. An absolute time, so it
depends on the machine and on what else runs on it; run it on a quiet machine.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch.utils.data import DataLoader

Echo = Callable[[str], None]
FIRST_RUN_GOAL = 90.0  # seconds to the first training step, empty cache, 2 cores
FEATURE_GOAL = 0.95  # our images/s over the bare loop's, at least


@dataclass
class FeatureResult:
    rounds: int
    images: dict[str, int] = field(default_factory=dict)  # data -> number of images
    per_s: dict[str, list[float]] = field(default_factory=dict)  # "data/variant" -> items per second

    def median(self, key: str) -> float:
        return statistics.median(self.per_s[key])


def bare_image_features(trunk: torch.nn.Module, images: torch.utils.data.Dataset, batch_size: int) -> torch.Tensor:
    """The loop as usually written: no_grad, a DataLoader of preprocessed images, the trunk."""
    with torch.no_grad():
        return torch.cat([trunk(x) for x in DataLoader(images, batch_size=batch_size)])


def bare_text_features(trunk: torch.nn.Module, tokens: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([trunk(t) for t in tokens.split(batch_size)])


def feature_data(per_class: int, pairs_every: int) -> tuple[dict[str, torch.utils.data.Dataset], list[str]]:
    """Real images by source (PIL items), and the captions of the caption pairs."""
    from streams.captions import PairDataset, emoji_pairs, tux_pairs
    from streams.datasets import fashion_mnist, per_class_subset

    pairs = emoji_pairs()[::pairs_every] + tux_pairs()[::pairs_every]
    data = {"Fashion-MNIST": per_class_subset(fashion_mnist(False), per_class, 0), "emoji + Tux Paint": PairDataset(pairs)}
    return data, [p.caption for p in pairs]


def bench_features(echo: Echo, rounds: int = 3, per_class: int = 50, pairs_every: int = 8) -> FeatureResult:
    """Images (texts) per second of :mod:`continual.clip.extract` and of the bare loops, interleaved."""
    from continual.clip.backbone import LIT_MODEL, load_backbone
    from continual.clip.extract import BATCH_SIZE, image_features, text_features
    from continual.clip.features import Transformed

    backbone = load_backbone(LIT_MODEL, "", "projections")
    data, captions = feature_data(per_class, pairs_every)
    tokens = backbone.tokenizer(captions)
    result = FeatureResult(rounds)
    for r in range(rounds):
        echo(f"  trunk features: round {r + 1}/{rounds} ...")
        for name, items in data.items():
            images = Transformed(items, backbone.preprocess)
            result.images[name] = len(images)
            for variant, extract in (("bare", lambda: bare_image_features(backbone.image_trunk, images, BATCH_SIZE)),
                                     ("ours", lambda: image_features(backbone.image_trunk, images))):
                start = time.perf_counter()
                extract()
                result.per_s.setdefault(f"{name}/{variant}", []).append(len(images) / (time.perf_counter() - start))
        result.images["captions"] = len(captions)
        for variant, extract in (("bare", lambda: bare_text_features(backbone.text_trunk, tokens)),
                                 ("ours", lambda: text_features(backbone.text_trunk, tokens,
                                                                backbone.text_trunk.pad_token_id))):
            start = time.perf_counter()
            extract()
            result.per_s.setdefault(f"captions/{variant}", []).append(len(captions) / (time.perf_counter() - start))
    return result


def first_run_seconds(echo: Echo, timeout: float = 1800.0) -> dict[str, float]:
    """Seconds from start until a fresh ``continual run`` on an empty cache reaches training
    (and, on the way, until its base is built and its data is ready); the run is then stopped."""
    marks: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="continual-first-run-") as tmp:
        env = {**os.environ, "CONTINUAL_CACHE": os.path.join(tmp, "cache"), "PYTHONUNBUFFERED": "1"}
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "continual", "run", "--no-progress", f"output_dir={tmp}/out"],
                                cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            for line in proc.stdout:
                now = time.perf_counter() - start
                if line.startswith("base '") and " ready:" in line:
                    marks["base built"] = now
                elif line.startswith("data ready"):
                    marks["data ready"] = now
                elif line.startswith("before training"):
                    marks["first training step"] = now
                    break
                if now > timeout:
                    break
        finally:
            proc.kill()
            proc.wait()
    if "first training step" not in marks:
        raise RuntimeError("the first run stopped before training started; run `continual run` to see why")
    echo(f"  first run: training starts after {marks['first training step']:.0f} s")
    return marks


def report_lines(features: Optional[FeatureResult], first_run: Optional[dict[str, float]]) -> list[str]:
    lines: list[str] = []
    if features is not None:
        lines += ["", f"frozen-trunk features (the default model's trunks, real data; ours: continual.clip.extract; "
                      f"bare: a no_grad loop; median of {features.rounds} rounds):"]
        for name, n in features.images.items():
            ours, bare = features.median(f"{name}/ours"), features.median(f"{name}/bare")
            unit = "texts" if name == "captions" else "images"
            goal = f"  [goal >= {FEATURE_GOAL}: {'met' if ours / bare >= FEATURE_GOAL else 'NOT met'}]" if unit == "images" else ""
            lines.append(f"  {name} ({n} {unit}): ours {ours:,.0f} {unit}/s, bare {bare:,.0f} {unit}/s: "
                         f"{ours / bare:.2f}x the bare loop's{goal}")
    if first_run is not None:
        t = first_run["first training step"]
        parts = [f"{k} at {v:.0f} s" for k, v in first_run.items() if k != "first training step"]
        lines += ["", f"first run on an empty cache (continual run, CPU threads {os.cpu_count()}): " + ", ".join(parts)
                  + f", first training step at {t:.0f} s  [goal <= {FIRST_RUN_GOAL:.0f} s on 2 cores: "
                  + ("met" if t <= FIRST_RUN_GOAL else "NOT met") + "]"]
    return lines
