"""The spatial-disorder diagnostics of a run: a fixed probe set, encoded after every session and
compared with the model before training (row 0) and with the previous session's.

The runner calls :meth:`ProbeDiagnostics.submit` once per evaluated row: the probe is encoded
then, and compared on a worker thread while the next session trains; :meth:`finished` hands back
the rows compared meanwhile (metrics ``diag/...``, logged with step = session), and the figures go
to the logger, drawn in the drawing process. The row-0 and last-row features and the per-item
angles so far travel in the run's checkpoint (:meth:`tensors` / :meth:`restore`; a row whose
comparison had not ended is compared again on resume), so a resumed run computes what an
uninterrupted one does.
The quantities and their definitions: :mod:`continual.measure.disorder`.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import ConcatDataset, Dataset, Subset

from continual.measure import disorder as D
from continual.system import distributed
from continual.errors import UserError
from continual.tracking import names as N

_MODALITIES = ("image", "text")
_ANGLES = ("rotation", "residual")  # per-item angles kept for the figure, against row 0


@dataclass
class Probe:
    """Probe items as model inputs: images, texts, and the matched pairs (``pair_image[p]`` with
    ``pair_text[p]``); ``labels`` name the images in figures."""

    name: str
    image_inputs: Any
    text_inputs: Any
    pair_image: torch.Tensor
    pair_text: torch.Tensor
    labels: list[str]


class _FirstElement(Dataset):
    """The inputs of a dataset of ``(input, label, ...)`` items."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[i][0]


def _take(inputs: Any, index: list[int]) -> Any:
    if torch.is_tensor(inputs):
        return inputs[torch.as_tensor(index, dtype=torch.long)]
    return Subset(inputs, index)


def _concat(parts: list[Any]) -> Any:
    if all(torch.is_tensor(p) for p in parts):
        return torch.cat(parts)
    return ConcatDataset([p if not torch.is_tensor(p) else list(p) for p in parts])


def pair_probe(name: str, pair_sets: list[Any]) -> Probe:
    """A probe of image-caption pairs (:class:`continual.stream.PairSet`), several sets joined."""
    images, captions, pair_image, labels, offset = [], [], [], [], 0
    for ps in pair_sets:
        images.append(ps.image_inputs)
        captions.append(ps.text_inputs)
        pair_image.append(ps.caption_image + offset)
        # concepts read "emoji:winking face", "tux:tux/a bull.": the part after the source
        labels += [c.split(":", 1)[-1] for c in ps.concepts] if len(ps.concepts) == len(ps.keys) else list(ps.keys)
        offset += len(ps.keys)
    pair_image = torch.cat(pair_image).long()
    return Probe(name, _concat(images), torch.cat(captions), pair_image, torch.arange(len(pair_image)), labels)


def class_probe(stream: Any, classifier: Any) -> Probe:
    """A probe of a classification stream's test images; each image's text is its class's first
    prompt."""
    tests = [e.dataset for e in stream.benchmark.test_stream]
    labels = torch.tensor([int(t) for ds in tests for t in ds.targets])
    texts = classifier.text_inputs[classifier.starts]  # the first prompt of every class
    return Probe(f"{stream.name} test images", ConcatDataset([_FirstElement(ds) for ds in tests]), texts.cpu(),
                 torch.arange(len(labels)), labels, [stream.class_names[int(c)] for c in labels])


def subsample(probe: Probe, max_items: int, seed: int) -> Probe:
    """At most ``max_items`` images (a sample seeded by ``seed``, in their order) with their
    pairs, and the texts those pairs use."""
    n = len(probe.labels)
    if not max_items or n <= max_items:
        return probe
    keep = np.sort(np.random.default_rng(seed).choice(n, max_items, replace=False)).tolist()
    new_image = torch.full((n,), -1, dtype=torch.long)
    new_image[keep] = torch.arange(len(keep))
    kept_pairs = new_image[probe.pair_image] >= 0
    texts = torch.unique(probe.pair_text[kept_pairs])
    new_text = torch.full((len(probe.text_inputs),), -1, dtype=torch.long)
    new_text[texts] = torch.arange(len(texts))
    return Probe(probe.name, _take(probe.image_inputs, keep), probe.text_inputs[texts],
                 new_image[probe.pair_image[kept_pairs]], new_text[probe.pair_text[kept_pairs]],
                 [probe.labels[i] for i in keep])


def build_probe(cfg: DictConfig, stream: Any, control: Any, classifier: Any) -> Probe:
    """The probe that ``diagnostics.probe`` names (auto: the control pairs when there are some)."""
    which = cfg.diagnostics.probe
    if which == "auto":
        which = "control" if control is not None else "stream"
    if which == "control":
        if control is None:
            raise UserError("diagnostics.probe=control needs control data; set control.name, or diagnostics.probe=stream")
        probe = pair_probe(f"control {control.name}", [control])
    elif stream.kind == "pairs":
        probe = pair_probe(f"{stream.name} test pairs", list(stream.tests))
    else:
        probe = class_probe(stream, classifier)
    return subsample(probe, cfg.diagnostics.max_items, cfg.seed)


def plan_line(cfg: DictConfig) -> str:
    d = cfg.diagnostics
    if not d.enabled:
        return "diagnostics: off"
    which = {"auto": "the control pairs (else the stream's test data)", "control": "the control pairs",
             "stream": "every session's test data"}[d.probe]
    return (f"diagnostics: spatial disorder on {which}, at most {d.max_items or 'all'} images, after every session"
            + (" (with figures)" if d.figures else ""))


class ProbeDiagnostics:
    """Encodes the probe after every evaluated row, on the training thread (the next session
    changes the model), and compares it with row 0 and the row before on a worker thread while
    the next session trains."""

    def __init__(self, probe: Probe, neighbours: int = 10, batch_size: int = 256, figures: bool = True,
                 view_items: int = 6, title: str = "") -> None:
        self.probe, self.neighbours, self.batch_size = probe, neighbours, batch_size
        self.figures, self.view_items, self.title = figures, view_items, title
        # the comparisons' state, of rows 0..done (written by the worker, read by tensors())
        self.start: Optional[D.ProbeFeatures] = None
        self.previous: Optional[D.ProbeFeatures] = None
        # per-item angles against row 0 after each session: history[modality/kind] = [tensor(n)]
        self.history: dict[str, list[torch.Tensor]] = {f"{m}/{a}": [] for m in _MODALITIES for a in _ANGLES}
        self.done = -1
        self._lock = threading.Lock()
        # one thread, so rows are compared in order; one torch thread (a per-thread setting), so
        # that it takes one core from training at most
        self._worker = ThreadPoolExecutor(1, "continual-diagnostics", initializer=torch.set_num_threads, initargs=(1,))
        self._pending: list[tuple[int, Future]] = []

    @classmethod
    def from_config(cls, cfg: DictConfig, stream: Any, control: Any, classifier: Any) -> Optional["ProbeDiagnostics"]:
        """The run's diagnostics, or None when ``diagnostics.enabled`` is false."""
        d = cfg.diagnostics
        if not d.enabled:
            return None
        return cls(build_probe(cfg, stream, control, classifier), d.neighbours, cfg.eval.batch_size, d.figures,
                   d.view_items, f"{cfg.strategy.name} on {cfg.stream.name}")

    def encode(self, model: torch.nn.Module) -> D.ProbeFeatures:
        from continual.run.evaluation import pair_features  # imports the model code: not at CLI start-up

        images, texts = pair_features(model, self.probe.image_inputs, self.probe.text_inputs, self.batch_size)
        return D.ProbeFeatures(images.cpu(), texts.cpu(), self.probe.pair_image, self.probe.pair_text)

    def submit(self, i: int, model: torch.nn.Module, logger: Any) -> float:
        """Encode row i's probe features now and compare them on the worker; figures go to
        ``logger``. Waits first for the row before's comparison, so that a checkpoint written
        after this call lacks at most row i's (:meth:`tensors`). Returns the seconds the calling
        thread spent."""
        start = time.perf_counter()
        wait([future for _, future in self._pending])
        now = self.encode(model)
        self._pending.append((i, self._worker.submit(self._compare, i, now, logger)))
        return time.perf_counter() - start

    def finished(self, wait_all: bool = False) -> list[tuple[int, dict[str, Any]]]:
        """The rows compared since the last call, in order, each with ``{"diagnostics": {metric:
        value}, "diagnostics_compute_seconds": s}``; with ``wait_all``, every row submitted.
        Raises what a comparison raised."""
        out = []
        while self._pending and (wait_all or self._pending[0][1].done()):
            i, future = self._pending.pop(0)
            out.append((i, future.result()))
        return out

    def close(self) -> None:
        """Let a comparison under way end; drop those not started."""
        self._worker.shutdown(wait=True, cancel_futures=True)

    def _compare(self, i: int, now: D.ProbeFeatures, logger: Any) -> dict[str, Any]:
        """Row i against row 0 and the row before (on the worker thread, rows in order)."""
        start = time.perf_counter()
        metrics = {N.diag(k): v for k, v in D.snapshot(now).items()}
        if i > 0:
            since_start, angles = D.compare(self.start, now, self.neighbours)
            step = since_start if self.previous is self.start else D.compare(self.previous, now, self.neighbours)[0]
            metrics.update({N.diag(k): v for k, v in since_start.items()})
            metrics.update({N.diag_step(k): v for k, v in step.items()})
        with self._lock:
            if i == 0:
                self.start = now
            else:
                for key, values in self.history.items():
                    values.append(angles[key].float())
            self.previous, self.done = now, i
        if self.figures and i > 0 and distributed.is_main():
            self.log_figures(i, now, logger)
        return {"diagnostics": metrics, "diagnostics_compute_seconds": time.perf_counter() - start}

    def log_figures(self, i: int, now: D.ProbeFeatures, logger: Any) -> None:
        """Hand the logger row i's two figures, drawn in the drawing process (plain arrays)."""
        from continual.figures.disorder import angle_distributions, probe_view

        where = f"{self.probe.name}; {self.title}" if self.title else self.probe.name
        history = {k: torch.stack(v).numpy() for k, v in self.history.items()}  # a copy: the next rows append
        n_pairs = len(self.probe.pair_image)
        items = sorted(set(np.linspace(0, n_pairs - 1, min(self.view_items, n_pairs)).round().astype(int).tolist()))
        pairs = [(int(self.probe.pair_image[p]), int(self.probe.pair_text[p])) for p in items]
        labels = [self.probe.labels[a] for a, _ in pairs]
        logger.draw_figure("diagnostics/rotation_angles.png", angle_distributions, history, where)
        # one file, redrawn for the newest session (a newer one supersedes a drawing not started):
        # a file per session drew once per session, which made a run of many short sessions slow
        before, after = (self.start.images.numpy(), self.start.texts.numpy()), (now.images.numpy(), now.texts.numpy())
        logger.draw_figure("diagnostics/probe_view.png", probe_view, before, after, pairs, labels,
                           f"before training and after session {i}: {where}")

    # -- resume ----------------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        """What a resumed run needs: the last row compared (``done``), row 0's and that row's
        features, the angles so far."""
        with self._lock:
            out = {"done": torch.tensor(self.done)}
            if self.done < 0:
                return out
            for name, f in (("start", self.start), ("previous", self.previous)):
                out[f"{name}/image"], out[f"{name}/text"] = f.images, f.texts
            for key, values in self.history.items():
                n = len(self.start.images if key.startswith("image") else self.start.texts)
                out[f"history/{key}"] = torch.stack(values) if values else torch.zeros(0, n)
        return out

    def restore(self, tensors: dict[str, torch.Tensor], row: int) -> None:
        """The state of the checkpoint of ``row``. Its own row may not have been compared when
        it was written: :meth:`resume` submits it again."""
        if "done" not in tensors and "start/image" not in tensors:
            raise UserError("the checkpoint holds no diagnostics features (written with diagnostics off?); "
                            "resume with the same config, or start afresh with --fresh")
        self.done = int(tensors["done"]) if "done" in tensors else row  # no "done": written complete
        if self.done < 0:
            return
        pairs = self.probe.pair_image, self.probe.pair_text
        self.start = D.ProbeFeatures(tensors["start/image"], tensors["start/text"], *pairs)
        self.previous = D.ProbeFeatures(tensors["previous/image"], tensors["previous/text"], *pairs)
        self.history = {key: list(tensors[f"history/{key}"]) for key in self.history}

    def resume(self, row: int, model: torch.nn.Module, logger: Any) -> None:
        """After :meth:`restore`: compare ``row`` again if the checkpoint was written before its
        comparison ended (``model`` is the checkpoint's, so its features are those of then). The
        encoding draws nothing from torch's generator: the checkpoint's state already follows the
        draws the first encoding made (a probe read by a DataLoader draws its base seed)."""
        if self.done < row:
            with torch.random.fork_rng():
                self.submit(row, model, logger)
