"""The README's first command: the embedded default experiment, end to end.

On a fresh machine this builds the default base first (about 2 minutes; then cached).
"""

from __future__ import annotations

import numpy as np
import pytest

from continual.config.load import load_config
from continual.run.loop import run


@pytest.mark.slow
def test_default_experiment_learns_each_session_and_forgets(tmp_path):
    cfg = load_config("configs/default.yaml", [f"output_dir={tmp_path}"])
    result = run(cfg, echo=lambda s: None, progress=False)
    R, T = result.accuracy, cfg.stream.n_sessions
    assert R.shape == (T + 1, T)
    # the base is a real zero-shot classifier: above the 10% chance of 10-way Fashion-MNIST
    # (every session has 400 test images, so the plain mean is the sample-weighted one)
    assert R[0].mean() > 15
    # every session is learnt, far beyond zero-shot on it (the first least: label smoothing 0.2
    # over its 2 classes asks for logits only ln 9 apart, and it is scored among all 10)...
    assert (np.diag(R[1:]) > R[0] + 20).all() and (np.diag(R[1:])[1:] > 95).all()
    # ...and naive fine-tuning forgets earlier sessions
    assert result.summary["cl/forgetting"] > 30
    # zero-shot ability on the held-out control pairs drops: that is what retention measures
    assert result.control[0]["i2t_r1"] > 20 and result.summary["retention/relative"] < 0.5
