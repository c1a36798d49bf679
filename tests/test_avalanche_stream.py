"""An existing Avalanche benchmark object runs as a stream: same sessions, classes and examples."""

from __future__ import annotations

import numpy as np
import torch

from continual.registry import STREAMS
from streams.avalanche_benchmark import avalanche_stream
from streams.datasets import DIGIT_CLASSES


def digits_benchmark():
    """A real Avalanche class-incremental benchmark (nc_benchmark) over scikit-learn's digits as
    float image tensors in [0, 1], as torchvision's ToTensor gives them."""
    from avalanche.benchmarks import nc_benchmark
    from sklearn.datasets import load_digits

    class Digits(torch.utils.data.Dataset):
        def __init__(self, x, y):
            self.x, self.targets = x, y.tolist()

        def __len__(self):
            return len(self.targets)

        def __getitem__(self, i):
            return self.x[i], self.targets[i]

    bunch = load_digits()
    x = torch.tensor(bunch.images / 16.0, dtype=torch.float32)[:, None].repeat(1, 3, 1, 1)
    y = torch.tensor(bunch.target)
    train, test = Digits(x[::2][:300], y[::2][:300]), Digits(x[1::2][:200], y[1::2][:200])
    return nc_benchmark(train, test, n_experiences=2, task_labels=False, seed=3)


def test_benchmark_keeps_its_sessions_and_runs(tmp_path, make_config):
    from continual.run.loop import run

    bench = digits_benchmark()
    STREAMS.add("avalanche-digits", avalanche_stream(bench, DIGIT_CLASSES, "avalanche-digits"), "test benchmark")
    cfg = make_config(tmp_path, "stream.name=avalanche-digits", "control.name=null", "train.epochs=2")
    result = run(cfg, echo=lambda s: None, progress=False)
    expected = [sorted(int(c) for c in e.classes_in_this_experience) for e in bench.train_stream]
    assert [s["session"] for s in result.sessions] == [0, 1, 2]
    plan = STREAMS.get("avalanche-digits")(cfg.stream, cfg.seed)
    assert [s.classes for s in plan.sessions] == expected
    assert [s.n_train for s in plan.sessions] == [len(e.dataset) for e in bench.train_stream]
    assert result.accuracy.shape == (3, 2) and np.isfinite(result.accuracy).all()
    assert result.accuracy[1, 0] > result.accuracy[0, 0]  # it learnt the first session's classes
