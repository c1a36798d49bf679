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


def adamw_rounding(steps: int, grad_low: float, grad_high: float, lr: float, param_magnitude: float,
                   dtype: torch.dtype = torch.float32) -> float:
    """How far ``steps`` AdamW steps computed in ``dtype`` can land from the exact ones, per
    parameter, when every gradient entry has grad_low <= |g| <= grad_high and parameters stay
    below ``param_magnitude`` (gradients given, not computed from the parameters).

    m_hat and v_hat are weighted means of the gradients (of their squares), built by a recurrence
    of t steps: each term passes through at most 2 roundings per step, and the lerp form
    m + w (g - m) rounds a difference up to twice the gradient's size, so their errors stay within
    2 (2t + 3) eps of grad_high (of grad_high^2). The update u = m_hat / (sqrt(v_hat) + eps_adam)
    has its denominator >= grad_low (v_hat is a mean of squares >= grad_low^2), so an error dm in
    m_hat moves u by dm / grad_low, an error dv in v_hat moves sqrt by dv / (2 grad_low) and u by
    |u| / grad_low times that; sqrt, the bias corrections, the division and the scaling by lr each
    round once more (relative to |u| <= grad_high / grad_low). The parameter itself is rounded by
    the weight decay's factor (itself rounded to ``dtype``), its product and the update's
    subtraction: 3 eps of its size. Errors of earlier steps carry over
    unchanged (the decay factor is <= 1), so the steps' bounds add up."""
    e = eps(dtype)
    u_max = grad_high / grad_low
    total = 0.0
    for t in range(1, steps + 1):
        dm = 2 * (2 * t + 3) * e * grad_high
        dv = 2 * (2 * t + 4) * e * grad_high ** 2
        du = dm / grad_low + u_max * (dv / (2 * grad_low)) / grad_low + 5 * e * u_max
        total += lr * du + 3 * e * (param_magnitude + lr * u_max)
    return total


def sgd_momentum_rounding(steps: int, grad_high: float, lr: float, momentum: float, weight_decay: float,
                          param_magnitude: float, dtype: torch.dtype = torch.float32) -> float:
    """How far ``steps`` SGD steps with momentum (buf = momentum buf + g + weight_decay p;
    p -= lr buf) computed in ``dtype`` can land from the exact ones, per parameter, when
    |g| <= grad_high and parameters stay below ``param_magnitude``.

    The buffer after t steps is a momentum-weighted sum of t gradients, each term through at most
    2 roundings per step: its error is within 2t eps of its size, at most G / (1 - momentum) with
    G = grad_high + weight_decay * param_magnitude. The update lr buf rounds once more, and the
    parameter's subtraction once. A parameter's error feeds back through the weight decay's term:
    lr * weight_decay / (1 - momentum) of it per later step, a factor (1 + that * steps) in all."""
    e = eps(dtype)
    buf_max = (grad_high + weight_decay * param_magnitude) / (1 - momentum)
    total = sum(lr * (2 * t + 1) * e * buf_max + 2 * e * (param_magnitude + lr * buf_max) for t in range(1, steps + 1))
    return total * (1 + lr * weight_decay / (1 - momentum) * steps)
