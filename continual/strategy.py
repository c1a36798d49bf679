"""What the runner asks of a strategy, declared in one place (as Avalanche declares its template's
members in ``avalanche/training/templates/strategy_mixin_protocol.py``).

A strategy is known to the runner in two parts:

- its *declaration* (:class:`StrategyDeclaration`): its hyper-parameters (``Params``) and the
  light class members that preflight and the plan read before anything is built. A declaration
  imports neither torch nor avalanche, so that ``continual run --dry-run`` validates a config
  without them;
- its *class* (:class:`StrategyClass`), which does import them: built only when a run trains.
  The class inherits its declaration, so each member is written once.

:class:`Declared` joins the two for the registry: it answers the declaration's members and
imports the class when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ClassVar, Optional, Protocol, Sequence

if TYPE_CHECKING:  # for the type hints only: a declaration must stay importable without torch
    from continual.context import StrategyContext


class Strategy(Protocol):
    """A built strategy, as the session loop (``continual.run.loop``) uses it."""

    model: Any  # the classifier it trains (a continual.clip.heads.ClipClassifier), or a module around it
    examples_seen: int  # training examples processed so far, over all sessions (throughput)

    def train(self, experience: Any, **kwargs: Any) -> Any:
        """Train on one session (an Avalanche experience); the loop passes ``eval_streams=[]``."""

    def resume_state(self) -> dict:
        """What must survive a crash besides the weights (JSON-able), saved with each checkpoint."""

    def load_resume_state(self, state: dict) -> None:
        """Restore :meth:`resume_state` when a run resumes."""


class StrategyClass(Protocol):
    """A strategy class (or its :class:`Declared` stand-in), as preflight and the runner use it.

    Members and their defaults (those of :class:`StrategyDeclaration`; preflight applies the same
    defaults to a class registered by a user that lacks a member):

    - ``Params``: the dataclass of the method's hyper-parameters, built from the config's
      ``strategy`` section (its ``__post_init__`` raises ConfigError for bad values; a
      ``PRESETS`` class attribute may name sets of values); None: the method has none.
    - ``trains``: False for a method that never trains (zero-shot): then train.epochs and the
      batch size are not checked. Default True.
    - ``stream_kinds``: the kinds of stream the method is defined on ("classification",
      "pairs"); preflight refuses others. Default both.
    - ``backbone_trainable``: which backbone parameters train, overriding model.trainable
      ("none" for prompt methods and zero-shot). Default None (the config's).
    - ``plan_notes(params)``: extra lines for the ``--dry-run`` plan. Default none.
    - ``data_missing(params)``: the one line a run stops with when data the method itself reads
      is absent (None if present). Default None.
    - ``check_model(model_name, params)``: raise a UserError when the model (known from its
      open_clip config alone, nothing built) does not fit the method. Default: every model fits.
    - calling it with the keywords below builds the :class:`Strategy`.
    - ``__doc__``: its first line describes the method in the plan.
    """

    Params: Optional[type]
    trains: bool
    stream_kinds: tuple[str, ...]
    backbone_trainable: Optional[str]

    def plan_notes(self, params: Any) -> list[str]: ...

    def data_missing(self, params: Any) -> Optional[str]: ...

    def check_model(self, model_name: str, params: Any) -> None: ...

    def __call__(self, *, classifier: Any, train: Any, params: Any = None, context: Optional[StrategyContext] = None,
                 plugins: Sequence[Any] = (), device: str = "cpu", eval_batch_size: int = 256,
                 evaluator: Any = None, task_loss: str = "ce",
                 session_lr: Optional[dict[int, float]] = None) -> Strategy: ...


class StrategyDeclaration:
    """The light part of a strategy class, with the defaults of :class:`StrategyClass`; a
    strategy's declaration subclasses it, and its class inherits the declaration."""

    Params: ClassVar[Optional[type]] = None
    trains: ClassVar[bool] = True
    stream_kinds: ClassVar[tuple[str, ...]] = ("classification", "pairs")
    backbone_trainable: ClassVar[Optional[str]] = None

    @classmethod
    def plan_notes(cls, params: Any) -> list[str]:
        """Lines the plan (``--dry-run``) adds for the method, e.g. where its extra data comes from."""
        return []

    @classmethod
    def data_missing(cls, params: Any) -> Optional[str]:
        """The one line a run stops with, before anything is built, when data the method needs is absent."""
        return None

    @classmethod
    def check_model(cls, model_name: str, params: Any) -> None:
        """Raise a UserError when model ``model_name`` cannot carry the method (every model can here)."""


def member(strategy: Any, name: str) -> Any:
    """``strategy.<name>``, or its documented default (:class:`StrategyDeclaration`'s) for a class
    registered by a user that does not declare it."""
    return getattr(strategy, name, getattr(StrategyDeclaration, name))


class Declared:
    """A registered strategy before its class is imported: the declaration's members, and the
    class itself (imported by ``load``) when called, i.e. when a run builds the strategy."""

    def __init__(self, declaration: type, load: Callable[[], type]) -> None:
        self.declaration = declaration
        self.load = load
        self.__doc__ = declaration.__doc__  # the plan's description of the method

    def __getattr__(self, name: str) -> Any:  # only for names not set in __init__
        if name.startswith("__") or name == "declaration":  # copy/pickle probes before __init__ ran
            raise AttributeError(name)
        return getattr(self.declaration, name)

    def __call__(self, **kwargs: Any) -> Strategy:
        return self.load()(**kwargs)

    def __repr__(self) -> str:
        return f"Declared({self.declaration.__qualname__})"
