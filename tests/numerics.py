"""Tolerances derived from the arithmetic, for tests that compare floats.

Two computations of one quantity by different kernels (a teacher in eval mode under no_grad and a
student in training mode, one process and two, one CPU's BLAS and another's) agree up to rounding,
not bit for bit. So every bound here is built from the precision (machine epsilon), the number of
operations whose errors add up, and the magnitude of the values involved; an exact comparison is
kept only where the same kernels run on the same inputs (a replayed run, a copied tensor).

References: Higham, "Accuracy and Stability of Numerical Algorithms" (2002): a sum of n terms
carries at most about n * eps of their magnitude (gamma_n), a pairwise sum log2(n) * eps.
"""

from __future__ import annotations

import math

import torch


def eps(dtype: torch.dtype = torch.float32) -> float:
    """Machine epsilon: the relative spacing of floats of ``dtype`` (2^-23 for float32)."""
    return torch.finfo(dtype).eps


def sum_rounding(n_terms: int, magnitude: float, dtype: torch.dtype = torch.float32) -> float:
    """Error bound of a sum (or dot product) of ``n_terms`` terms of size <= ``magnitude``,
    whatever the order of summation: n * eps * magnitude (Higham's gamma_n)."""
    return n_terms * eps(dtype) * magnitude


def softmax_rounding(n: int, dtype: torch.dtype = torch.float32) -> float:
    """Error of one probability of a softmax over ``n`` logits: an exp, a sum of n terms (at
    most log2(n) roundings along a pairwise sum, as torch reduces) and a division, each within
    eps of the result: (log2(n) + 2) * eps."""
    return (math.log2(max(n, 2)) + 2) * eps(dtype)


def kl_rounding(rows: int, n: int, logit_bound: float, dtype: torch.dtype = torch.float32) -> float:
    """What a computed sum over ``rows`` of KL(p || q) = sum_j p_j (log p_j - log q_j) can read
    instead of 0 when p and q come from logits that are equal up to rounding.

    A rounding of the logits themselves cancels to first order (the KL's gradient at q = p is
    zero), so what remains is the rounding of the two log-softmaxes x - lse(x): the sum inside
    the log-sum-exp carries log2(n) + 1 roundings, the log and the subtraction one each of
    |lse| <= logit_bound + ln n and of |log p|, whose p-weighted mean is the entropy <= ln n.
    Per row: 2 * (log2(n) + 1 + logit_bound + 2 ln n) * eps."""
    per_row = 2 * (math.log2(max(n, 2)) + 1 + logit_bound + 2 * math.log(max(n, 2))) * eps(dtype)
    return rows * per_row


def kd_gradient_rounding(n: int, rows: int, temperature: float, dtype: torch.dtype = torch.float32) -> float:
    """Largest entry of d KD / d student-logits when student and teacher logits are equal up to
    rounding: KD = T^2 * mean_rows CE(softmax(a / T), softmax(b / T)) has the gradient
    T * (softmax(b / T) - softmax(a / T)) / rows, and the two softmaxes (the teacher's forward and
    the student's log-softmax backward) each carry :func:`softmax_rounding`."""
    return temperature * 2 * softmax_rounding(n, dtype) / rows


def gradient_at_rounding(grad_moved: float, moved_by: float, rounding: float) -> float:
    """The gradient that a student-teacher displacement of ``rounding`` produces, from one
    measured point: near student = teacher a distillation gradient is linear in the displacement
    between their distributions, so g(rounding) = g(moved_by) * rounding / moved_by."""
    return grad_moved * rounding / moved_by


def probability_displacement(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                             both_directions: bool = False) -> float:
    """max |softmax(b / T) - softmax(a / T)| over rows (and columns with ``both_directions``):
    how far the student's distributions are from the teacher's."""
    def gap(b: torch.Tensor, a: torch.Tensor) -> float:
        return float((torch.softmax(b / temperature, -1) - torch.softmax(a / temperature, -1)).abs().max())

    moved = gap(student_logits, teacher_logits)
    return max(moved, gap(student_logits.t(), teacher_logits.t())) if both_directions else moved
