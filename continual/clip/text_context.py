"""Text features of short prompts without the padding: the causal text tower read only up to
the longest text's end token.

open_clip's tokenizer pads every text to the context (77 tokens for CLIP; "a photo of a dress."
is 7), and ``encode_text`` runs the whole context through every layer. In a causal text tower
(CLIP's) position i attends to positions <= i only, and the feature is read at the end token, so
the positions after the longest text's end token change nothing: cutting them gives the same
features up to the rounding of smaller matrix products, for a fraction of the work (a quarter
of a ViT-B-32 fine-tuning step is its text tower on 77 positions). Towers that are not causal,
pool elsewhere, append a class token or mask padding are run as they are.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn


def causal_text_tower(model: nn.Module) -> Optional[tuple[nn.Module, str, Optional[int]]]:
    """(the module holding the text transformer, its pooling, its end-token id) when the model's
    text tower is an open_clip causal transformer pooled at the end token; else None."""
    from open_clip.transformer import TextTransformer

    if all(hasattr(model, a) for a in ("transformer", "token_embedding", "attn_mask", "text_pool_type")):
        owner, pool, eos = model, model.text_pool_type, getattr(model, "text_eos_id", None)  # CLIP's own tower
    elif isinstance(getattr(model, "text", None), TextTransformer):
        owner = model.text
        if owner.cls_emb is not None or owner.use_pad_mask:
            return None
        pool, eos = owner.pool_type, getattr(owner, "eos_id", None)
    else:
        return None
    if owner.attn_mask is None or pool not in ("argmax", "eos") or (pool == "eos" and eos is None):
        return None
    return owner, pool, eos


def encode_text(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text(tokens)`` (unnormalised), reading the tokens only up to the longest
    text's end token where the tower is causal and pools there (see the module's docstring)."""
    from open_clip.transformer import text_global_pool

    tower = causal_text_tower(model) if tokens.dim() == 2 and not tokens.is_floating_point() else None
    if tower is None:
        return model.encode_text(tokens)
    owner, pool, eos = tower
    end = tokens.argmax(dim=-1) if pool == "argmax" else (tokens == eos).int().argmax(dim=-1)
    n = int(end.max()) + 1
    if n >= tokens.shape[1]:
        return model.encode_text(tokens)
    tokens = tokens[:, :n]
    cast = owner.transformer.get_cast_dtype()
    x = owner.token_embedding(tokens).to(cast) + owner.positional_embedding[:n].to(cast)
    x = owner.transformer(x, attn_mask=owner.attn_mask[:n, :n])
    x = text_global_pool(owner.ln_final(x), tokens, pool, eos_token_id=eos)
    projection = owner.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, nn.Linear) else x @ projection
