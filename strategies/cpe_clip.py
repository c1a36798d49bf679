"""CPE-CLIP: parameter-efficient class-incremental learning with multimodal prompts.

D'Alessandro et al., ICCV-W 2023 ("Multimodal Parameter-Efficient Few-Shot Class Incremental
Learning"); official code neuraptic/cpe-clip (MIT). This is our own implementation on open_clip
towers. The CLIP backbone is frozen; the only parameters that learn are prompts:

    g   in R^{L x P x d_T}            L prompted layers (all text layers), P = 2 tokens each
    P_v = W g + b                     vision prompts, W: d_T -> d_V          (Xavier-uniform g)

- Text tower, "replace" mode: the P prompt tokens enter right after the start token,
  x^0 = [e(sot), g_1, e(w_1) .. e(w_m), e(eot)] + pos[0 .. m+P+1]; before every layer l > 1
  the P prompt positions are overwritten with g_l; causal attention over the m+P+2 positions;
  f_T = ln_final(x^L)[eot + P] @ proj (the end token, shifted by P).
- Vision tower, "accumulate" mode: before layer l the P tokens P_v[l] are appended after the
  patch tokens and the earlier layers' prompt outputs are kept (P, 2P, ..., LP extra tokens);
  the tower's pooling reads the class/patch tokens only: f_I = pool(x^L[:, :1+N]) @ proj.
- Logits: z = 100 * cos(f_I(x), f_T("{class}.")) (fixed scale, not the backbone's).
- Training in session t with classes C_t: L = CE(z restricted to C_t, y): the classes of earlier
  sessions are masked out (:func:`mask_logits`); evaluation ranges over all seen classes.
- Session-aware regularisation: in sessions t >= 2 the gradients of g, W and b are multiplied
  by alpha_t = |C_t| / |C_1 u ... u C_t| (:func:`session_alpha`) before the optimizer step.

Choices where the paper leaves room, following the official code unless said otherwise:

- Context length. The authors' tokenizer pads to the longest text of the batch and positions
  are added after the prompts are inserted (the words shift by P positions). Here too: trailing
  padding is trimmed to the batch's longest text of n tokens (exact under the causal mask),
  then the P prompts are inserted and positions 0..n+P-1 added. A text that fills the whole context is
  re-truncated by P tokens, keeping its end token (as a tokenizer with context_length - P
  would), so that n+P never exceeds the positional embedding.
- The first layer's vision prompts pass through the tower's ``ln_pre`` like the patch tokens
  (the authors apply the pre-LayerNorm after appending them); later layers' prompts enter raw.
- Depth: g has one row per text layer (Params.depth: the first layers only). Vision layers past
  the prompted depth (towers of unequal depth, e.g. ViT-L-14: 24 vs 12) add no new prompts and
  carry the accumulated ones, as the official code does for layers >= deep_g.
- The frozen backbone stays in eval mode while the prompts train (no dropout in it).
- Learning rate (Params.lr_schedule): "authors" (default) reproduces the official scheduler,
  CosineAnnealingWarmupRestarts(first_cycle_steps=200, warmup_steps=50, max_lr=0.1,
  min_lr=0.001) stepped once per EPOCH and restarted every session, i.e. lr_e =
  train.lr * (1 + 99 e / 50) at epoch e (1e-3 -> 8.9e-3 over 5 epochs; max_lr is never
  reached), with train.lr = 1e-3 as min_lr. "config" uses the train section's scheduler.
- Batch size: base session train.batch_size (authors: 32), later sessions
  Params.incremental_batch_size (authors: 4).
- Params.towers = "text" is a variant (the authors' "no_vision_prompts" ablation, not the
  method): text prompts only, the image tower unprompted, so it also runs where the text tower
  is an open_clip text transformer but the image tower is not a ViT. Params.session_scaling =
  false is their "no_regularization" ablation. Params.vision_mode = "replace" is the vision
  half of their "no_accumulation" ablation: each layer's P prompt positions after the patch
  tokens are overwritten by that layer's prompts instead of appended to (P tokens throughout);
  their train.py runs that ablation with the regularisation off too (session_scaling=false).
  Their text "accumulate" modes are not available.
- Epochs: the base session train.epochs (CUB: 6), later sessions Params.incremental_epochs
  (authors: 5 on every dataset).
- The training loss always ranges over the current session's classes (``label_space``), whatever
  train.label_space says (the config sets it to "current" so the plan reads right).

As an Avalanche plugin in another strategy: wrap the open_clip model in :class:`PromptedCLIP`,
classify with it (e.g. ``continual.clip.heads.ClipClassifier``), optimise only its ``prompts``
parameters, and add :class:`CPEPlugin` (logit mask and gradient scaling) and, for the authors'
schedule, :class:`EpochWarmupLR`.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional, Sequence

import torch
from avalanche.core import SupervisedPlugin
from open_clip.transformer import TextTransformer, Transformer, VisionTransformer
from torch import nn

from continual.config.load import check_choice
from continual.errors import ConfigError
from continual.clip.heads import ClipClassifier
from strategies import declarations as declared
from strategies.base import ClipStrategy
from strategies.declarations import (  # noqa: F401  (ours to import)
    LR_SCHEDULES, TOWERS, VISION_MODES, CPECLIPParams, UnsupportedTowerError, config_problem)

LOGIT_SCALE = 100.0  # the authors' fixed 100 * cosine


# -- the method's equations ---------------------------------------------------------------------
def session_alpha(n_new: int, n_seen: int) -> float:
    """alpha_t = |C_t| / |C_1 u ... u C_t|: new classes over all classes seen, this session's
    included (5/65 ... 5/100 on CIFAR100's 60 + 8x5 protocol)."""
    if not 0 < n_new <= n_seen:
        raise ValueError(f"need 0 < |C_t| <= |C_1..C_t|, got {n_new} and {n_seen}")
    return n_new / n_seen


def mask_logits(logits: torch.Tensor, keep: Sequence[int]) -> torch.Tensor:
    """z'[:, c] = z[:, c] for c in ``keep`` (the current session's classes), -inf otherwise.

    CE(z', y) = CE(z restricted to ``keep``, y): the masked classes get zero probability and no
    gradient. (With label smoothing, restrict the columns instead: ``continual.clip.heads.restrict``.)
    """
    kept = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    kept[torch.as_tensor(list(keep), dtype=torch.long, device=logits.device)] = True
    return logits.masked_fill(~kept, float("-inf"))


@torch.no_grad()
def scale_gradients(params: Iterable[torch.Tensor], alpha: float) -> None:
    """grad(theta) <- alpha * grad(theta) for every parameter that has a gradient (in place)."""
    for p in params:
        if p.grad is not None:
            p.grad.mul_(alpha)


def authors_lr_factor(epoch: int, warmup: int = 50, cycle: int = 200, ratio: float = 100.0) -> float:
    """Multiplier of the minimum lr at ``epoch`` (0-based, within a session) under the official
    CosineAnnealingWarmupRestarts(first_cycle_steps=cycle, warmup_steps=warmup,
    max_lr=ratio * min_lr) stepped once per epoch:

        1 + (ratio - 1) e / warmup                                  for e < warmup
        1 + (ratio - 1) (1 + cos(pi (e - warmup) / (cycle - warmup))) / 2   after, period cycle
    """
    e = epoch % cycle
    if e < warmup:
        return 1.0 + (ratio - 1.0) * e / warmup
    return 1.0 + (ratio - 1.0) * (1.0 + math.cos(math.pi * (e - warmup) / (cycle - warmup))) / 2.0


# -- the prompted model ---------------------------------------------------------------------------
class CPEPrompts(nn.Module):
    """The learnable parameters: g [depth, P, d_T] and the vision map W, b (d_T -> d_V)."""

    def __init__(self, depth: int, n_tokens: int, text_width: int, vision_width: Optional[int]) -> None:
        super().__init__()
        self.g = nn.Parameter(torch.empty(depth, n_tokens, text_width))
        nn.init.xavier_uniform_(self.g)
        self.proj = nn.Linear(text_width, vision_width) if vision_width else None

    def vision(self) -> torch.Tensor:
        """P_v = W g + b: [depth, P, d_V]."""
        return self.proj(self.g)


def _run_block(block: nn.Module, x: torch.Tensor, attn_mask: Optional[torch.Tensor], batch_first: bool) -> torch.Tensor:
    """One residual attention block on batch-first ``x``, whatever layout the tower uses."""
    if batch_first:
        return block(x, attn_mask=attn_mask)
    return block(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)


def _tower_names(model: nn.Module) -> tuple[str, str]:
    visual = type(getattr(model, "visual", None)).__name__
    text = getattr(model, "text", None)
    if text is None and isinstance(getattr(model, "transformer", None), Transformer):
        return visual, "built-in TextTransformer"
    return visual, type(text).__name__


def _unsupported(model: nn.Module, why: str) -> UnsupportedTowerError:
    visual, text = _tower_names(model)
    return UnsupportedTowerError(
        f"CPE-CLIP needs open_clip ViT/text-transformer towers; this model has a {visual} image tower "
        f"and a {text} text tower ({why}); use model.name=tiny-vit (model.pretrained=base:vit) or ViT-B-16")


def _text_tower(model: nn.Module) -> tuple[str, str, Optional[int]]:
    """Where the text transformer lives ("" = open_clip CLIP's built-in tower, "text" = a
    TextTransformer), its pooling ("argmax" | "eos") and end-token id; raises if unpromptable."""
    if isinstance(getattr(model, "transformer", None), Transformer) and hasattr(model, "token_embedding"):
        path, owner, pool, eos = "", model, model.text_pool_type, getattr(model, "text_eos_id", None)
    elif isinstance(getattr(model, "text", None), TextTransformer):
        owner = model.text
        if owner.cls_emb is not None or owner.use_pad_mask:
            raise _unsupported(model, "its text tower appends a class token or masks padding")
        path, pool, eos = "text", owner.pool_type, owner.eos_id
    else:
        raise _unsupported(model, "the text tower is not an open_clip text transformer")
    if owner.attn_mask is None:
        raise _unsupported(model, "its text tower is not causal")
    if pool not in ("argmax", "eos"):
        raise _unsupported(model, f"its text tower pools '{pool}', not at the end token")
    return path, pool, eos


class PromptedCLIP(nn.Module):
    """An open_clip CLIP model with CPE-CLIP's prompts, used like an open_clip model:
    ``encode_image(x)``, ``encode_text(tokens)``, ``logit_scale`` (fixed: ln 100).

    The wrapped model (``self.clip``) is frozen here. ``enabled = False`` runs the same
    layer-by-layer forward with no prompt inserted (it then equals the model's own encoders).
    """

    def __init__(self, clip: nn.Module, n_tokens: int = 2, depth: int = 0, towers: str = "both",
                 vision_mode: str = "accumulate") -> None:
        super().__init__()
        check_choice("strategy.towers", towers, TOWERS)
        check_choice("strategy.vision_mode", vision_mode, VISION_MODES)
        self.vision_mode = vision_mode
        self._text_path, self._pool, self._eos = _text_tower(clip)
        text = clip.get_submodule(self._text_path) if self._text_path else clip
        n_text = len(text.transformer.resblocks)
        vision_width = None
        if towers == "both":
            if not isinstance(getattr(clip, "visual", None), VisionTransformer):
                raise _unsupported(clip, "the image tower is not an open_clip VisionTransformer; "
                                         "strategy.towers=text prompts the text tower only")
            vision_width = clip.visual.transformer.width
        depth = depth or n_text
        if not 1 <= depth <= n_text:
            raise ConfigError(f"strategy.depth must be between 1 and the text tower's {n_text} layers "
                              f"(0 = all), got {depth}")
        if n_tokens < 1:
            raise ConfigError(f"strategy.prompt_tokens must be >= 1, got {n_tokens}")
        self.clip = clip.requires_grad_(False).eval()
        self.prompts = CPEPrompts(depth, n_tokens, text.transformer.width, vision_width)
        self.register_buffer("logit_scale", torch.tensor(math.log(LOGIT_SCALE)), persistent=False)
        self.enabled = True

    @property
    def n_tokens(self) -> int:
        return self.prompts.g.shape[1] if self.enabled else 0

    def train(self, mode: bool = True) -> "PromptedCLIP":
        super().train(mode)
        self.clip.eval()  # the frozen backbone never runs in training mode
        return self

    # -- text ---------------------------------------------------------------------------------
    def _fit_context(self, tokens: torch.Tensor, n_prompts: int, n_pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens trimmed to the longest text, each text re-truncated so that it fits with
        ``n_prompts`` more positions (end token kept); returns (tokens, end-token index)."""
        end = tokens.argmax(dim=-1) if self._pool == "argmax" else (tokens == self._eos).int().argmax(dim=-1)
        limit = n_pos - 1 - n_prompts  # the last index an end token may take
        over = end > limit
        if over.any():
            tokens = tokens.clone()
            tokens[over, limit] = tokens[over, end[over]]
            end = end.clamp(max=limit)
        return tokens[:, : int(end.max()) + 1], end

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        t = self.clip.get_submodule(self._text_path) if self._text_path else self.clip
        P, depth = self.n_tokens, self.prompts.g.shape[0]
        tokens, end = self._fit_context(text, P, t.positional_embedding.shape[0])
        B, n = tokens.shape
        dtype = t.transformer.get_cast_dtype()
        x = t.token_embedding(tokens).to(dtype)
        g = self.prompts.g.to(dtype)
        if P:  # [sot, g_1, words, eot]
            x = torch.cat([x[:, :1], g[0].expand(B, -1, -1), x[:, 1:]], dim=1)
        x = x + t.positional_embedding[: n + P].to(dtype)
        mask = t.attn_mask[: n + P, : n + P]
        for layer, block in enumerate(t.transformer.resblocks):
            if P and 0 < layer < depth:  # replace: the prompt positions take g_l
                x = torch.cat([x[:, :1], g[layer].expand(B, -1, -1), x[:, 1 + P:]], dim=1)
            x = _run_block(block, x, mask, t.transformer.batch_first)
        x = t.ln_final(x)
        x = x[torch.arange(B, device=x.device), end + P]
        if t.text_projection is not None:
            x = t.text_projection(x) if isinstance(t.text_projection, nn.Linear) else x @ t.text_projection
        return nn.functional.normalize(x, dim=-1) if normalize else x

    # -- image --------------------------------------------------------------------------------
    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        if self.prompts.proj is None:  # text-only variant: the image tower as it is
            return self.clip.encode_image(image, normalize=normalize)
        v = self.clip.visual
        x = v._embeds(image)  # class token + patches + positions, ln_pre
        B, n_keep = x.shape[0], x.shape[1]
        P = self.n_tokens
        if P:
            prompts = self.prompts.vision().to(x.dtype)
        for layer, block in enumerate(v.transformer.resblocks):
            if P and layer < prompts.shape[0]:
                new = v.ln_pre(prompts[0]) if layer == 0 else prompts[layer]
                # accumulate: append P new tokens, keep the old | replace: the P positions take them
                kept = x if layer == 0 or self.vision_mode == "accumulate" else x[:, :n_keep]
                x = torch.cat([kept, new.expand(B, -1, -1)], dim=1)
            x = _run_block(block, x, None, v.transformer.batch_first)
        pooled, _ = v._pool(x[:, :n_keep])  # the tower's own pooling, prompt tokens dropped
        if v.proj is not None:
            pooled = pooled @ v.proj
        return nn.functional.normalize(pooled, dim=-1) if normalize else pooled


# -- training -------------------------------------------------------------------------------------
class CPEPlugin(SupervisedPlugin, supports_distributed=True):
    """CPE-CLIP's training rules, for any Avalanche strategy whose outputs are logits over class ids
    and whose experiences carry ``classes_in_this_experience`` / ``classes_seen_so_far``:

    - ``after_forward``: training logits outside the current session's classes C_t -> -inf
      (:func:`mask_logits`), so the CE ranges over C_t only;
    - ``before_update``: in sessions t >= 2, the prompt gradients times alpha_t (:func:`session_alpha`).
    """

    def __init__(self, prompts: nn.Module, mask_earlier: bool = True, session_scaling: bool = True) -> None:
        super().__init__()
        self.prompts = prompts
        self.mask_earlier = mask_earlier
        self.session_scaling = session_scaling

    def after_forward(self, strategy: Any, **kwargs) -> None:
        if self.mask_earlier:
            strategy.mb_output = mask_logits(strategy.mb_output, sorted(strategy.experience.classes_in_this_experience))

    def before_update(self, strategy: Any, **kwargs) -> None:
        exp = strategy.experience
        if self.session_scaling and exp.current_experience > 0:  # not the base session
            alpha = session_alpha(len(exp.classes_in_this_experience), len(exp.classes_seen_so_far))
            scale_gradients(self.prompts.parameters(), alpha)


class EpochWarmupLR(SupervisedPlugin, supports_distributed=True):
    """The authors' learning rate: lr_e = lr * :func:`authors_lr_factor` (e), e = the epoch within
    the session (restarts every session). Overrides the lr set before it each iteration."""

    def __init__(self, lr: float) -> None:
        super().__init__()
        self.lr = lr

    def before_training_iteration(self, strategy: Any, **kwargs) -> None:
        lr = self.lr * authors_lr_factor(strategy.clock.train_exp_epochs)
        for group in strategy.optimizer.param_groups:
            group["lr"] = lr


class CPECLIP(declared.CPECLIP, ClipStrategy):
    """CPE-CLIP: frozen CLIP, text prompts and projected vision prompts, session-aware scaling.

    Trains only the prompts (:class:`PromptedCLIP`, installed as ``classifier.model``) with CE
    over the current session's classes; the gradients are scaled by alpha_t in sessions t >= 2.
    """

    def __init__(self, *, classifier: ClipClassifier, params: Optional[CPECLIPParams] = None, **kwargs: Any) -> None:
        params = params if params is not None else CPECLIPParams()
        if not isinstance(classifier.model, PromptedCLIP):  # before the optimizer is built
            classifier.model = PromptedCLIP(classifier.model, params.prompt_tokens, params.depth, params.towers,
                                            params.vision_mode)
            classifier.invalidate()
        self.prompted: PromptedCLIP = classifier.model
        super().__init__(classifier=classifier, params=params, **kwargs)

    def method_plugins(self, classifier: ClipClassifier) -> list[SupervisedPlugin]:
        prompts = self.prompted.prompts
        plugins: list[SupervisedPlugin] = [CPEPlugin(prompts, session_scaling=self.params.session_scaling)]
        if self.params.lr_schedule == "authors":
            plugins.append(EpochWarmupLR(self.train_cfg.lr))
        return plugins

    def label_space(self) -> list[int]:
        """Training CE over the current session's classes only (earlier ones masked)."""
        return self.current_classes

    def _before_training_exp(self, **kwargs) -> None:
        incremental = self.experience.current_experience > 0
        if incremental and self.params.incremental_batch_size:
            self.train_mb_size = self.micro_batch_size(self.params.incremental_batch_size, "strategy.incremental_batch_size")
        else:
            self.train_mb_size = self.micro_batch_size(self.train_cfg.batch_size)
        self.train_epochs = (self.params.incremental_epochs if incremental and self.params.incremental_epochs
                             else self.train_cfg.epochs)
        super()._before_training_exp(**kwargs)  # builds the dataloader with train_mb_size
