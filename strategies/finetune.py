"""Fine-tuning (naive): cross-entropy on each session's data, nothing against forgetting.

    L = CE(s * f_I(x) f_T(prompt(c))^T restricted to the label space, y; label smoothing)

The lower bound on retention that every continual method is compared with.
"""

from strategies import declarations as declared
from strategies.base import ClipStrategy


class FineTune(declared.FineTune, ClipStrategy):
    """Naive fine-tuning: the task loss alone, session after session."""
