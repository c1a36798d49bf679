"""Spatial-disorder diagnostics: known answers for each quantity, then a real run that logs them
to a real MLflow store and resumes to the same values.

Tolerances: the known-answer tests work in float64 (features ~1, d <= 64). A computed angle
that should equal alpha goes through atan2 of norms of O(1) vectors: its error is a few ulps of
the angle, so 1e-9 relative is loose by five orders of magnitude and still fails on any wrong
formula. An angle that should be 0 after an SVD (the Procrustes residual) carries the SVD's
backward error, ~d * eps ~ 1e-14 in the unit vectors, i.e. ~1e-12 degrees: bound 1e-8 degrees.
Quantities computed by the same kernels on identical inputs are compared exactly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from continual.measure import disorder as D
from numerics import sum_rounding
from continual.run.probes import Probe, ProbeDiagnostics, pair_probe, subsample

REL = 1e-9  # relative, for angles that should equal a known non-zero value (see above)
ZERO_DEG = 1e-8  # absolute degrees, for angles that should be 0 after an SVD
# A change of a mean cosine that should be 0: cosines are of magnitude <= 1 and each is a float64
# dot product of d terms, then a mean over n pairs; two such means differ by rounding only.
def cos_zero(n: int, d: int) -> float:
    return sum_rounding(d + n, 1.0, torch.float64) * 4  # two dot products and two means


def random_unit(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return D.unit(torch.randn(n, d, generator=g, dtype=torch.float64))


def random_orthogonal(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def isoclinic(d: int, degrees: float, seed: int) -> torch.Tensor:
    """An orthogonal d x d matrix (d even) that turns every vector by exactly ``degrees``: a
    rotation by that angle in each of d/2 orthogonal planes, in a random basis."""
    a = math.radians(degrees)
    block = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64)
    q = random_orthogonal(d, seed)
    return q @ torch.block_diag(*[block] * (d // 2)) @ q.T


def features(images: torch.Tensor, texts: torch.Tensor) -> D.ProbeFeatures:
    n = min(len(images), len(texts))
    return D.ProbeFeatures(images, texts, torch.arange(n), torch.arange(n))


# -- intra-modal rotation ------------------------------------------------------------------------
@pytest.mark.parametrize("n, d", [(300, 16), (20, 64)])  # more items than dimensions, and fewer
def test_a_known_rotation_gives_its_angle_and_no_residual(n, d):
    alpha = 25.0
    old = random_unit(n, d, seed=1)
    new = old @ isoclinic(d, alpha, seed=2)
    angles = D.rotation_angles_deg(old, new)
    assert angles.numpy() == pytest.approx(np.full(n, alpha), rel=REL)
    fit, residual, rotation = D.procrustes_fit(old, new)
    assert fit["procrustes_angle_deg"] == pytest.approx(alpha, rel=REL)
    assert residual.abs().max() < ZERO_DEG and fit["procrustes_residual_deg"] < ZERO_DEG
    assert fit["rigid_fraction"] == pytest.approx(1.0, abs=1e-12)
    # a rigid rotation keeps the topology: angles between items and every neighbour's rank
    assert D.sam_change_deg(old, new) < ZERO_DEG
    assert D.neighbour_spearman(old, new) == 1.0 and D.knn_overlap(old, new, 10) == 1.0


def test_duplicate_items_are_not_a_change_of_rank():
    """The control pairs hold identical images and captions: their tie must be broken the same
    way in both models, or a rigid rotation would show as disagreement."""
    old = random_unit(120, 16, seed=12)
    old[60:] = old[:60]  # every item twice
    new = old @ isoclinic(16, 35.0, seed=13)
    assert D.neighbour_spearman(old, new) == 1.0 and D.knn_overlap(old, new, 7) == 1.0
    moved = D.unit(old + 0.3 * random_unit(120, 16, seed=14))
    moved[60:] = moved[:60]  # another topology, the same twins
    for space in (D.Space(old), D.Space(moved)):  # twins: adjacent ranks, the lower index first, in every row
        ranks = space.ranks
        others = torch.ones(120, 60, dtype=torch.bool)
        others[torch.arange(60), torch.arange(60)] = others[torch.arange(60, 120), torch.arange(60)] = False
        assert (ranks[:, :60] + 1 == ranks[:, 60:])[others].all()


def test_a_rotation_in_one_plane_turns_each_item_by_its_share_of_that_plane():
    """Rotating by alpha in the plane of e_0, e_1: cos theta_k = 1 - r_k^2 (1 - cos alpha), r_k the
    length of x_k's projection on the plane."""
    alpha, d = 40.0, 8
    old = random_unit(50, d, seed=3)
    givens = torch.eye(d, dtype=torch.float64)
    c, s = math.cos(math.radians(alpha)), math.sin(math.radians(alpha))
    givens[:2, :2] = torch.tensor([[c, -s], [s, c]])
    r2 = (old[:, :2] ** 2).sum(dim=1)
    expected = np.degrees(np.arccos(1 - r2.numpy() * (1 - c)))
    assert D.rotation_angles_deg(old, old @ givens).numpy() == pytest.approx(expected, rel=1e-7)  # arccos: ~1e-8


def test_a_change_of_topology_is_left_after_the_best_rotation():
    old = random_unit(200, 16, seed=4)
    moved = D.unit(old + 0.5 * random_unit(200, 16, seed=5))  # each item moved its own way
    fit, _, _ = D.procrustes_fit(old, moved)
    assert fit["procrustes_residual_deg"] > 10 and 0 < fit["rigid_fraction"] < 0.5
    assert D.sam_change_deg(old, moved) > 1 and D.neighbour_spearman(old, moved) < 0.9


def test_sam_change_by_hand():
    """Three items on a circle at 0, 30 and 90 degrees; the middle one moves to 40: the pairwise
    angles (30, 90, 60) become (40, 90, 50), a mean change of 20/3 degrees."""
    def at(*degrees):
        return torch.tensor([[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in degrees], dtype=torch.float64)

    assert D.sam_change_deg(at(0, 30, 90), at(0, 40, 90)) == pytest.approx(20 / 3, rel=1e-9)
    assert D.angle_matrix_deg(at(0, 30, 90))[0].numpy() == pytest.approx([0, 30, 90], abs=1e-9)


# -- the same model twice ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tux_control():
    from continual.clip.backbone import load_backbone
    from continual.config.schema import ControlConfig
    from continual.clip.features import image_inputs, text_inputs
    from streams.control import heldout_captions

    backbone = load_backbone("lit-effnet-minilm", "", "projections")
    control = heldout_captions(
        ControlConfig(sources=["tux"]),
        lambda ds, key: image_inputs(ds, key, backbone.preprocess, backbone.image_trunk, backbone.fingerprint("image")),
        lambda texts: text_inputs(texts, backbone.tokenizer, backbone.text_trunk, backbone.fingerprint("text")))
    return backbone.model, control


def test_the_same_model_twice_shows_no_rotation_and_no_deviation(tux_control):
    model, control = tux_control
    diagnostics = ProbeDiagnostics(pair_probe("control", [control]), figures=False)
    first, second = diagnostics.encode(model), diagnostics.encode(model)  # real open_clip model, real pairs
    metrics, angles = D.compare(first, second)
    for modality in ("image", "text"):
        assert angles[f"{modality}/rotation"].abs().max() == 0.0  # identical features: atan2(0, 2) is exactly 0
        assert metrics[f"{modality}/rotation_mean_deg"] == 0.0 and metrics[f"{modality}/sam_change_deg"] == 0.0
        assert metrics[f"{modality}/neighbour_spearman"] == 1.0 and metrics[f"{modality}/knn_overlap"] == 1.0
        assert metrics[f"{modality}/procrustes_residual_deg"] < ZERO_DEG
        assert math.isnan(metrics[f"{modality}/rigid_fraction"])  # nothing moved: nothing to explain
    assert metrics["pairs/deviation_deg"] == 0.0 and metrics["pairs/cos_change"] == 0.0  # same numbers twice
    # the best rotations of identical spaces are I up to the SVD's rounding
    assert abs(metrics["pairs/rigid_cos_change"]) < cos_zero(len(first.images), first.images.shape[1]) * 100


class Rows(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


def test_a_row_compared_after_its_checkpoint_is_compared_again_on_resume(tux_control, monkeypatch):
    import copy
    import threading

    model, control = tux_control
    moved = copy.deepcopy(model)  # a model "after session 1"
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(1e-2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    tensors = pair_probe("control", [control])
    # images read through a DataLoader, as a probe of a stream's test images is: each read draws
    # its base seed from torch's generator
    probe = Probe(tensors.name, Rows(tensors.image_inputs), tensors.text_inputs, tensors.pair_image,
                  tensors.pair_text, tensors.labels)
    whole = ProbeDiagnostics(probe, figures=False)
    whole.submit(0, model, None)
    whole.submit(1, moved, None)
    expected = dict(whole.finished(wait_all=True))
    assert expected[1]["diagnostics"]["diag/image/rotation_mean_deg"] > 0

    gate, compare = threading.Event(), D.compare
    monkeypatch.setattr(D, "compare", lambda *a, **k: (gate.wait(30), compare(*a, **k))[1])
    crashed = ProbeDiagnostics(probe, figures=False)
    crashed.submit(0, model, None)
    crashed.submit(1, moved, None)
    saved = crashed.tensors()  # the checkpoint of row 1, written while row 1 is being compared
    assert int(saved["done"]) == 0 and torch.equal(saved["start/image"], whole.start.images)
    gate.set()
    crashed.close()  # the run crashed; row 1's comparison never reached the checkpoint

    resumed = ProbeDiagnostics(probe, figures=False)
    resumed.restore(saved, 1)
    generator = torch.get_rng_state()  # as the checkpoint restored it
    resumed.resume(1, moved, None)  # the checkpoint's model: row 1's features again
    assert torch.equal(torch.get_rng_state(), generator)  # training goes on with the same draws
    again = dict(resumed.finished(wait_all=True))
    assert again[1]["diagnostics"] == expected[1]["diagnostics"]  # same kernels, same inputs: equal
    for key, values in whole.tensors().items():
        assert torch.equal(resumed.tensors()[key], values), key


# -- inter-modal deviation -----------------------------------------------------------------------
def test_rotating_only_the_images_gives_a_deviation_equal_to_that_rotation():
    alpha, n, d = 30.0, 120, 16
    images, texts = random_unit(n, d, seed=6), random_unit(n, d, seed=7)
    old = features(images, texts)
    metrics, _ = D.compare(old, features(images @ isoclinic(d, alpha, seed=8), texts))
    assert metrics["pairs/deviation_deg"] == pytest.approx(alpha, rel=REL)
    assert metrics["image/rotation_mean_deg"] == pytest.approx(alpha, rel=REL)
    assert metrics["text/rotation_mean_deg"] == 0.0
    # each modality only rotated: its best rotations explain the whole change of the pairs' cosine
    assert metrics["pairs/rigid_cos_change"] == pytest.approx(metrics["pairs/cos_change"], abs=cos_zero(n, d) * 100)


def test_rotating_both_modalities_together_gives_no_deviation():
    alpha, n, d = 30.0, 120, 16
    images, texts = random_unit(n, d, seed=6), random_unit(n, d, seed=7)
    q = isoclinic(d, alpha, seed=8)
    metrics, _ = D.compare(features(images, texts), features(images @ q, texts @ q))
    assert metrics["image/rotation_mean_deg"] == pytest.approx(alpha, rel=REL)
    assert metrics["text/rotation_mean_deg"] == pytest.approx(alpha, rel=REL)
    assert metrics["pairs/deviation_deg"] < alpha * REL  # |alpha - alpha|, each alpha within REL
    bound = cos_zero(n, d) * 100  # x100: the rotations pass through an SVD (its rounding: see REL)
    assert abs(metrics["pairs/cos_change"]) < bound and abs(metrics["pairs/rigid_cos_change"]) < bound


def test_modality_gap_and_pair_cosine_by_hand():
    e = torch.eye(4, dtype=torch.float64)
    f = D.ProbeFeatures(e[[0, 0, 1]], e[[2, 2]], torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]))
    # centroids (2/3, 1/3, 0, 0) and (0, 0, 1, 0)
    assert D.modality_gap(f) == pytest.approx(math.sqrt(4 / 9 + 1 / 9 + 1), rel=1e-12)
    assert D.pair_cosines(f).tolist() == [0.0, 0.0, 0.0]


# -- neighbour ranks -----------------------------------------------------------------------------
def embed(points: torch.Tensor, d: int, seed: int) -> torch.Tensor:
    """2-D unit vectors placed in d dimensions by a random rotation (angles unchanged)."""
    return torch.cat([points, torch.zeros(len(points), d - 2, dtype=torch.float64)], dim=1) @ random_orthogonal(d, seed)


def test_swapping_two_adjacent_neighbours_lowers_spearman_by_the_known_amount():
    """Items on an arc at distinct distances from each other, plus item j a hair from item i.
    Swapping i and j swaps two adjacent ranks in every other item's list (sum of squared rank
    differences 2) and leaves i's and j's own lists alone, so the mean Spearman is
    1 - (n - 2)/n * 12 / (m (m^2 - 1)), m = n - 1."""
    base = 39
    delta = math.radians(2.0)
    # phi_l = delta (l + l^2 / 4 base): every item's distances to the others differ by >= delta / 2 base
    phi = [delta * (l + l * l / (4 * base)) for l in range(base)]
    i = 17
    phi.append(phi[i] + math.radians(0.001))  # item j = base, far closer to i than any gap above
    points = torch.tensor([[math.cos(p), math.sin(p)] for p in phi], dtype=torch.float64)
    old = embed(points, 8, seed=9)
    swapped = old.clone()
    swapped[[i, base]] = old[[base, i]]
    n, m = base + 1, base
    expected = 1 - (n - 2) / n * 12 / (m * (m * m - 1))
    assert D.neighbour_spearman(old, swapped) == pytest.approx(expected, rel=1e-12)  # ranks are integers


def test_moving_an_item_to_another_cluster_lowers_knn_overlap_by_the_known_amount():
    """Clusters of k + 1 tight items, far apart: each item's k nearest are its cluster mates.
    Swapping item a (cluster A) and item b (cluster B): a's and b's neighbours are all new (0),
    their former mates keep k - 1 of k, every other item keeps all."""
    k, clusters, d = 5, 6, 32
    centres = random_unit(clusters, d, seed=10)
    jitter = 0.01 * random_unit(clusters * (k + 1), d, seed=11)
    old = D.unit(centres.repeat_interleave(k + 1, dim=0) + jitter)
    a, b = 0, k + 1  # the first items of clusters 0 and 1
    new = old.clone()
    new[[a, b]] = old[[b, a]]
    n = len(old)
    expected = (n - 2 * (k + 1) + 2 * k * (k - 1) / k) / n
    assert D.knn_overlap(old, new, k) == pytest.approx(expected, rel=1e-12)  # a ratio of small integers
    assert D.knn_overlap(old, old, k) == 1.0


# -- the probe -----------------------------------------------------------------------------------
def test_subsample_keeps_pairs_matched_and_is_seeded():
    n = 50
    images = torch.arange(n, dtype=torch.float64)[:, None].repeat(1, 3)  # row value = image id
    texts = torch.arange(2 * n, dtype=torch.float64)[:, None].repeat(1, 3)  # captions 2i, 2i+1 of image i
    probe = Probe("toy", images, texts, torch.arange(n).repeat_interleave(2), torch.arange(2 * n), [str(i) for i in range(n)])
    small = subsample(probe, 10, seed=3)
    assert len(small.labels) == 10 and len(small.text_inputs) == 20
    for p in range(len(small.pair_image)):  # every kept pair still joins image i and one of its captions
        image = int(small.image_inputs[small.pair_image[p], 0])
        assert int(small.text_inputs[small.pair_text[p], 0]) // 2 == image
        assert small.labels[small.pair_image[p]] == str(image)
    assert subsample(probe, 10, seed=3).labels == small.labels != subsample(probe, 10, seed=4).labels
    assert subsample(probe, 0, seed=3) is probe


def test_pair_probe_joins_sets_with_their_offsets():
    from continual.stream import PairSet

    a = PairSet("a", torch.zeros(2, 4), torch.zeros(3, 4), torch.tensor([0, 1, 1]), ["x", "y"], ["emoji:x", "emoji:y"])
    b = PairSet("b", torch.ones(1, 4), torch.ones(2, 4), torch.tensor([0, 0]), ["z"], ["tux:tux/z"])
    probe = pair_probe("both", [a, b])
    assert probe.pair_image.tolist() == [0, 1, 1, 2, 2] and probe.pair_text.tolist() == [0, 1, 2, 3, 4]
    assert probe.labels == ["x", "y", "tux/z"] and probe.image_inputs.shape == (3, 4)


def test_probe_control_without_control_data_is_a_config_error():
    from continual.config.load import load_config
    from continual.errors import ConfigError

    with pytest.raises(ConfigError, match="diagnostics.probe=control needs control data"):
        load_config("configs/default.yaml", ["control.name=null", "diagnostics.probe=control"])
    load_config("configs/default.yaml", ["control.name=null"])  # auto: the stream's test data instead


# -- a real run ----------------------------------------------------------------------------------
def diag_history(uri: str, run_id: str) -> dict[str, list[tuple[int, float]]]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    keys = [k for k in client.get_run(run_id).data.metrics if k.startswith("diag/")]
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys}


@pytest.mark.slow
def test_a_run_logs_the_diagnostics_and_a_resumed_run_logs_the_same(tmp_path, make_config, monkeypatch):
    from mlflow import MlflowClient

    from continual.run.loop import run
    from strategies.base import ClipStrategy

    whole = run(make_config(tmp_path / "whole"), echo=lambda s: None, progress=False)
    history = diag_history(whole.tracking_uri, whole.run_id)
    # row 0: the state only; rows 1, 2: since before training and since the row before
    assert [s for s, _ in history["diag/gap/centroid_distance"]] == [0, 1, 2]
    assert [s for s, _ in history["diag/image/rotation_mean_deg"]] == [1, 2]
    assert [s for s, _ in history["diag/step/pairs/deviation_deg"]] == [1, 2]
    # after session 1 the row before is row 0
    assert history["diag/step/text/sam_change_deg"][0] == history["diag/text/sam_change_deg"][0]
    assert all(v > 0 for _, v in history["diag/image/rotation_mean_deg"])  # training moved the features
    client = MlflowClient(whole.tracking_uri)
    artifacts = {a.path for a in client.list_artifacts(whole.run_id, "diagnostics")}
    assert artifacts == {"diagnostics/rotation_angles.png", "diagnostics/probe_view.png"}
    metrics = client.get_run(whole.run_id).data.metrics
    assert metrics["session/diagnostics_seconds"] > 0 and "session/eval_seconds" in metrics

    # the same experiment, crashed in session 2, then run again: it resumes after session 1
    out = tmp_path / "crashed"
    criterion = ClipStrategy.criterion

    def crash(self):
        if self.experience.current_experience == 1:
            raise RuntimeError("simulated crash in session 2")
        return criterion(self)

    monkeypatch.setattr(ClipStrategy, "criterion", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(make_config(out), echo=lambda s: None, progress=False)
    monkeypatch.setattr(ClipStrategy, "criterion", criterion)
    said = []
    resumed = run(make_config(out), echo=said.append, progress=False)
    assert any("resuming after session 1 of 2" in line for line in said)
    # same kernels, same inputs, same order: the values are equal, not merely close
    assert diag_history(resumed.tracking_uri, resumed.run_id) == history
    state = json.loads((out / "checkpoints" / resumed.run_id / "state.json").read_text())
    assert state["sessions"][2]["diagnostics"]["diag/pairs/deviation_deg"] == history["diag/pairs/deviation_deg"][1][1]
    figure = Path(client.download_artifacts(whole.run_id, "diagnostics/rotation_angles.png", str(tmp_path)))
    again = Path(MlflowClient(resumed.tracking_uri).download_artifacts(
        resumed.run_id, "diagnostics/rotation_angles.png", str(tmp_path / "again")))
    assert figure.read_bytes() == again.read_bytes()  # the angle history came back from the checkpoint


def test_the_stream_probe_of_a_classification_stream(tmp_path, make_config):
    from continual.run.loop import run

    result = run(make_config(tmp_path, "diagnostics.probe=stream", "diagnostics.figures=false", "control.name=null"),
                 echo=lambda s: None, progress=False)
    history = diag_history(result.tracking_uri, result.run_id)
    # digits test images (2 sessions x 5 classes x 20) against their class's prompt (10 texts)
    assert [s for s, _ in history["diag/pairs/deviation_deg"]] == [1, 2]
    assert 0 < history["diag/text/knn_overlap"][0][1] <= 1  # 10 texts: k capped at 9
    assert "diag/step/image/rigid_fraction" in history
