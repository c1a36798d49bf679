"""Spatial-disorder diagnostics: how a model's representation of fixed probe data changed.

Pure functions of feature tensors (one row per item; rows are L2-normalised here, and every
computation is in float64). ``old`` and ``new`` hold the same items, in the same order, encoded
by two models (before training and after session i, or after sessions i-1 and i).

The Mod-X paper (Ni et al., "Continual Vision-Language Representation Learning with
Off-Diagonal Information", ICML 2023, arXiv 2305.07437) calls "spatial disorder" what continual
CLIP training does to the representation of old data: each modality's space rotates around the
centre of the unit sphere while its topology changes little (intra-modal rotation), and the two
modalities do not rotate in step (inter-modal deviation). It measures the first with two tables
of angles, which we compute as the paper defines them:

- RAM, the rotation angle of each sample between two models: :func:`rotation_angles_deg`;
- SAM, the angles between the samples within one model; the change of SAM between two models is
  the change of topology: :func:`angle_matrix_deg`, :func:`sam_change_deg`.

Ours (the paper has no such statistic; names and definitions are ours):

- the best rotation of the old space onto the new (orthogonal Procrustes), how far it moves the
  items and the angle left after it, and the share of the change it explains
  (:func:`procrustes_fit`): a rigid rotation leaves nothing, a change of topology leaves much;
- the rank agreement of each item's neighbours (:func:`neighbour_spearman`,
  :func:`knn_overlap`);
- inter-modal deviation as the mean gap between a matched pair's image and text rotation angles
  (:func:`deviation_deg`: our statistic for the paper's "unsynchronised rotations"), the change
  of the matched pairs' cosine, and the part of that change each modality's best rotation alone
  explains (:func:`rigid_pair_cos_change`);
- the modality gap of Liang et al. (NeurIPS 2022, "Mind the Gap"): the distance between the two
  modalities' centroids (:func:`modality_gap`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor


def unit(x: Tensor) -> Tensor:
    """Rows L2-normalised, in float64."""
    return F.normalize(x.to(torch.float64), dim=-1)


class Space:
    """One model's features of one modality, with the n x n quantities the comparisons need
    computed once (a run compares each row's features with two others)."""

    def __init__(self, features: Tensor) -> None:
        self.x = unit(features)

    def __len__(self) -> int:
        return self.x.shape[0]

    @cached_property
    def gram(self) -> Tensor:
        """Cosine similarities between the items (n x n)."""
        return self.x @ self.x.T

    @cached_property
    def pair_angles(self) -> Tensor:
        """The upper triangle (j < k, row-major) of :func:`angle_matrix_deg`."""
        j, k = torch.triu_indices(len(self), len(self), offset=1)
        return torch.rad2deg(torch.arccos(self.gram[j, k].clamp(-1.0, 1.0)))

    @cached_property
    def order(self) -> Tensor:
        """Row k: the items by decreasing cosine similarity to item k, item k itself first. Ties
        (exact duplicates: the control pairs hold a few identical images and captions) keep index
        order in every model, so they never count as a change of rank."""
        s = self.gram.clone().fill_diagonal_(math.inf)
        return torch.argsort(s, dim=1, descending=True, stable=True)

    @cached_property
    def ranks(self) -> Tensor:
        """ranks[k, l]: the rank of item l among item k's neighbours (item k itself: 0)."""
        n = len(self)
        return torch.empty_like(self.order).scatter_(1, self.order, torch.arange(n).expand(n, n))


Features = Union[Tensor, Space]


def _space(x: Features) -> Space:
    return x if isinstance(x, Space) else Space(x)


@dataclass
class ProbeFeatures:
    """One model's features of the probe items: ``images`` (n_I x d), ``texts`` (n_T x d), and
    the matched image-text pairs (``pair_image[p]`` goes with ``pair_text[p]``)."""

    images: Tensor
    texts: Tensor
    pair_image: Tensor
    pair_text: Tensor

    @cached_property
    def image_space(self) -> Space:
        return Space(self.images)

    @cached_property
    def text_space(self) -> Space:
        return Space(self.texts)


# -- intra-modal rotation (the paper's RAM) ------------------------------------------------------
def angles_deg(a: Tensor, b: Tensor) -> Tensor:
    """The angle between ``a[k]`` and ``b[k]`` for every row k, in degrees:

        theta_k = 2 atan2(|a_k - b_k|, |a_k + b_k|)      (a_k, b_k unit vectors)

    equal to arccos(<a_k, b_k>) but exact near 0 (arccos of a rounded 1 - eps is not)."""
    return _angles(unit(a), unit(b))


def _angles(a: Tensor, b: Tensor) -> Tensor:  # rows already unit, float64
    return torch.rad2deg(2 * torch.atan2((a - b).norm(dim=-1), (a + b).norm(dim=-1)))


def rotation_angles_deg(old: Tensor, new: Tensor) -> Tensor:
    """The paper's RAM (rotation angle matrix) of one modality: each item's rotation
    theta_k = angle(old_k, new_k) in degrees (a vector over the items)."""
    return angles_deg(old, new)


def distribution(angles: Tensor, prefix: str = "rotation") -> dict[str, float]:
    """Mean, median and 90th percentile of per-item angles (degrees)."""
    if angles.numel() == 0:
        return {}
    q = torch.quantile(angles, torch.tensor([0.5, 0.9], dtype=angles.dtype))
    return {f"{prefix}_mean_deg": float(angles.mean()), f"{prefix}_median_deg": float(q[0]),
            f"{prefix}_p90_deg": float(q[1])}


# -- the best rotation (ours) --------------------------------------------------------------------
def _procrustes(x: Tensor, y: Tensor) -> Tensor:  # rows already unit, float64
    """R = argmin_{R^T R = I} |X R - Y|_F = U V^T, where X^T Y = U S V^T (Schoenemann's
    orthogonal Procrustes); with fewer items than dimensions R is fixed only on their span."""
    u, _, vh = torch.linalg.svd(x.T @ y)
    return u @ vh


def procrustes_fit(old: Tensor, new: Tensor) -> tuple[dict[str, float], Tensor, Tensor]:
    """How much of the change from ``old`` to ``new`` is a rigid rotation (ours):

    - ``procrustes_angle_deg``: mean_k angle(x_k, x_k R), how far the best rotation R alone moves
      the items (equals the rotation angle when the change is a rotation);
    - ``procrustes_residual_deg``: mean_k angle(x_k R, y_k), what is left after it (0 for a
      rigid rotation: the topology did not change);
    - ``rigid_fraction``: 1 - |X R - Y|_F^2 / |X - Y|_F^2, the share of the squared displacement
      the rotation explains (1: rigid; 0: no better than not rotating; NaN when nothing moved).

    Returns these, the per-item residual angles and R."""
    return _procrustes_fit(unit(old), unit(new))


def _procrustes_fit(x: Tensor, y: Tensor) -> tuple[dict[str, float], Tensor, Tensor]:  # rows already unit
    rotation = _procrustes(x, y)
    xr = x @ rotation  # unit rows: R is orthogonal
    residual = _angles(xr, y)
    total, left = float(((x - y) ** 2).sum()), float(((xr - y) ** 2).sum())
    return ({"procrustes_angle_deg": float(_angles(x, xr).mean()), "procrustes_residual_deg": float(residual.mean()),
             "rigid_fraction": 1.0 - left / total if total > 0 else math.nan}, residual, rotation)


# -- topology: the paper's SAM, and neighbour ranks (ours) ---------------------------------------
def angle_matrix_deg(x: Tensor) -> Tensor:
    """The paper's SAM (self-angle relationship matrix) of one model and modality:
    A_jk = arccos(<x_j, x_k>) in degrees, the angles between the items (0 on the diagonal)."""
    x = unit(x)
    a = torch.rad2deg(torch.arccos((x @ x.T).clamp(-1.0, 1.0)))
    return a.fill_diagonal_(0.0)


def sam_change_deg(old: Features, new: Features) -> float:
    """Mean over item pairs j < k of |A^new_jk - A^old_jk| (degrees): how much the angles between
    items changed, i.e. the change of topology (the paper compares two models' SAMs). 0 when the
    new space is the old one rotated."""
    old, new = _space(old), _space(new)
    if len(old) < 2:
        return math.nan
    return float((new.pair_angles - old.pair_angles).abs().mean())


def neighbour_spearman(old: Features, new: Features) -> float:
    """Rank agreement of each item's neighbours (ours): Spearman's correlation between the ranks
    r_kl of the other items l by similarity to item k in the old space and in the new, averaged
    over the items:

        rho_k = 1 - 6 sum_l (r_kl - r'_kl)^2 / (m (m^2 - 1)),   m = n - 1 neighbours.

    1 when every item keeps the order of its neighbours (e.g. the space only rotated)."""
    old, new = _space(old), _space(new)
    m = len(old) - 1
    if m < 2:
        return math.nan
    d2 = ((old.ranks - new.ranks).to(torch.float64) ** 2).sum(dim=1)  # item k itself: rank 0 in both
    return float((1.0 - 6.0 * d2 / (m * (m * m - 1))).mean())


def knn_overlap(old: Features, new: Features, k: int) -> float:
    """The share of each item's k nearest neighbours in the old space that are still among its
    k nearest in the new, averaged over the items (ours; k is capped at n - 1)."""
    old, new = _space(old), _space(new)
    n = len(old)
    k = min(k, n - 1)
    if k < 1:
        return math.nan
    kept = [torch.zeros(n, n, dtype=torch.bool).scatter_(1, s.order[:, 1 : k + 1], True) for s in (old, new)]
    return float(((kept[0] & kept[1]).sum(dim=1).to(torch.float64) / k).mean())


# -- between the modalities ----------------------------------------------------------------------
def pair_cosines(f: ProbeFeatures) -> Tensor:
    """cos(image, text) of every matched pair."""
    return (f.image_space.x[f.pair_image] * f.text_space.x[f.pair_text]).sum(dim=-1)


def modality_gap(f: ProbeFeatures) -> float:
    """Liang et al.'s modality gap: |mean_k x_k - mean_l t_l|, the distance between the centroids
    of the (unit) image and text features."""
    return float((f.image_space.x.mean(dim=0) - f.text_space.x.mean(dim=0)).norm())


def deviation_deg(image_angles: Tensor, text_angles: Tensor, pair_image: Tensor, pair_text: Tensor) -> float:
    """Inter-modal deviation (our statistic for the paper's notion): the mean over matched pairs
    p of |theta^I_p - theta^T_p|, the gap between how far the pair's image and its text rotated.
    0 when both rotate alike; theta when only one side rotates, by theta."""
    if pair_image.numel() == 0:
        return math.nan
    return float((image_angles[pair_image] - text_angles[pair_text]).abs().mean())


def rigid_pair_cos_change(old: ProbeFeatures, new: ProbeFeatures, image_rotation: Optional[Tensor] = None,
                          text_rotation: Optional[Tensor] = None) -> float:
    """The change of the matched pairs' mean cosine that each modality's best rotation alone
    would cause (ours): mean_p cos(x_p R_I, t_p R_T) - mean_p cos(x_p, t_p), with R_I, R_T the
    Procrustes rotations of the image and text spaces (computed unless given). 0 when the
    modalities rotate together (R_I = R_T); the whole change of the pairs' cosine when each
    modality only rotated."""
    if old.pair_image.numel() == 0:
        return math.nan
    x, t = old.image_space.x, old.text_space.x
    r_i = _procrustes(x, new.image_space.x) if image_rotation is None else image_rotation
    r_t = _procrustes(t, new.text_space.x) if text_rotation is None else text_rotation
    rotated = ProbeFeatures(x @ r_i, t @ r_t, old.pair_image, old.pair_text)
    return float(pair_cosines(rotated).mean() - pair_cosines(old).mean())


# -- all of it, as the runner logs it ------------------------------------------------------------
def snapshot(f: ProbeFeatures) -> dict[str, float]:
    """What one model's features show without a reference: the modality gap and the matched
    pairs' mean cosine."""
    out = {"gap/centroid_distance": modality_gap(f)}
    if f.pair_image.numel():
        out["pairs/cos_mean"] = float(pair_cosines(f).mean())
    return out


def compare(old: ProbeFeatures, new: ProbeFeatures, neighbours: int = 10) -> tuple[dict[str, float], dict[str, Tensor]]:
    """Every diagnostic of the change from ``old`` to ``new``: metrics named ``image/...``,
    ``text/...`` and ``pairs/...``, and the per-item angles (``image/rotation``,
    ``image/residual``, ``text/...``) for the figures."""
    metrics: dict[str, float] = {}
    angles: dict[str, Tensor] = {}
    rotations: dict[str, Tensor] = {}
    for name, a, b in (("image", old.image_space, new.image_space), ("text", old.text_space, new.text_space)):
        rotation = _angles(a.x, b.x)  # the paper's RAM
        fit, residual, rotations[name] = _procrustes_fit(a.x, b.x)
        angles[f"{name}/rotation"], angles[f"{name}/residual"] = rotation, residual
        metrics.update({f"{name}/{k}": v for k, v in distribution(rotation).items()})
        metrics.update({f"{name}/{k}": v for k, v in fit.items()})
        metrics[f"{name}/sam_change_deg"] = sam_change_deg(a, b)
        metrics[f"{name}/neighbour_spearman"] = neighbour_spearman(a, b)
        metrics[f"{name}/knn_overlap"] = knn_overlap(a, b, neighbours)
    if old.pair_image.numel():
        metrics["pairs/deviation_deg"] = deviation_deg(angles["image/rotation"], angles["text/rotation"],
                                                       old.pair_image, old.pair_text)
        metrics["pairs/cos_change"] = float(pair_cosines(new).mean() - pair_cosines(old).mean())
        metrics["pairs/rigid_cos_change"] = rigid_pair_cos_change(old, new, rotations["image"], rotations["text"])
    return metrics, angles
