"""VR-LwF: Learning without Forgetting via a Replayed Vocabulary (Ding et al. 2022).

A frozen teacher f^old (the model at the end of the previous session) and a replayed
vocabulary V of K pseudo-sentences that stand in for CLIP's open vocabulary. Once per session
the teacher's vocabulary features are computed and cached, U = f_T^old(V) (normalised, no grad).
On a batch of current-session images x:

    Z_t = s * f_I^old(x) U^T          (teacher, no grad)
    Z_s = s * f_I(x)     U^T          (student image encoder against the TEACHER's vocabulary)
    KD(a, b; T) = T^2 * mean_rows CE(softmax(a / T), softmax(b / T))
    L_VR = KD(Z_t, Z_s; T) + KD(Z_t^T, Z_s^T; T)      [image -> vocabulary, vocabulary -> image]
    L = L_task + lambda * L_VR

s is the TEACHER's logit scale (exp, clamped to 100): both logit matrices share one constant
scale, so the term never pulls on the student's logit scale (ZSCL's implementation uses the
model's scale, which does not train there: the same value). KD is a cross-entropy as in the
spec (ZSCL's later helper uses the KL divergence, which differs by the teacher's entropy, a
constant: same gradient). At student = teacher its value is T^2 times the teacher's mean entropy
and its gradient is zero.

No author code exists; the defaults follow ZSCL's LwF-VR baseline (mtil/scripts/lwf_vr.sh, the
only published anchor: MTIL Order I Transfer 57.2, Avg 65.1, Last 76.6): K = 1000 sequences of 10
random token ids wrapped in start/end tokens, T = 2, lambda = 1 per direction, and one vocabulary
for the whole run (``vocab_draw="once"``: ZSCL seeds every task's process with 42 before drawing,
so every session gets the same sentences); ``vocab_draw="session"`` redraws it each session
from the seed and the session index.

Why not lambda = 5: 5 appears only in ZSCL's class-incremental configs, where the "teacher"
shares its parameter storage with the student (cil/continual_clip/models.py sets param_q.data =
param_k.data), so teacher and student are one model, the distillation gradient there is about
zero and its weight never mattered: no published result comes from an effective lambda of 5.
The vocabulary is the same on every rank (same seed), so under data parallelism the plugin
gathers only the image features (the student's with gradient, the teacher's without) before
calling :func:`vr_loss` (see ``continual.system.distributed``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from torch import nn

from continual.system import distributed
from continual.clip.backbone import HFTextTrunk
from continual.context import StrategyContext
from continual.errors import ConfigError
from continual.clip.heads import ClipClassifier, logit_scale
from strategies import declarations as declared
from strategies.base import ClipStrategy, record_term
from strategies.declarations import VOCAB_DRAWS, VOCABULARIES, VRLwFParams  # noqa: F401  (ours to import)
from strategies.distill import Teacher, kd, kl_of



# -- the loss: pure functions of tensors ----------------------------------------------------------
def vocabulary_logits(image_features: torch.Tensor, vocab_features: torch.Tensor,
                      scale: torch.Tensor | float) -> torch.Tensor:
    """Z = s * f_I(x) U^T: [B, K] logits of images against the vocabulary (features normalised here)."""
    return scale * F.normalize(image_features, dim=-1) @ F.normalize(vocab_features, dim=-1).t()


def vr_loss(teacher_image: torch.Tensor, student_image: torch.Tensor, vocab_features: torch.Tensor,
            scale: torch.Tensor | float, temperature: float = 2.0) -> torch.Tensor:
    """L_VR = KD(Z_t, Z_s; T) + KD(Z_t^T, Z_s^T; T), with Z_t = s f_I^old(x) U^T, Z_s = s f_I(x) U^T.

    ``teacher_image``/``student_image``: [B, d] image features of the same (gathered) batch;
    ``vocab_features``: U = f_T^old(V), [K, d]; ``scale``: the teacher's s.
    """
    z_t = vocabulary_logits(teacher_image.detach(), vocab_features, scale).detach()
    z_s = vocabulary_logits(student_image, vocab_features.detach(), scale)
    return kd(z_t, z_s, temperature) + kd(z_t.t(), z_s.t(), temperature)


# -- the replayed vocabulary --------------------------------------------------------------------
@dataclass
class TokenizerSpec:
    """What random token sequences need from an open_clip tokenizer."""

    ids: torch.Tensor  # token ids that may be drawn (special and reserved tokens excluded)
    start: int
    end: Optional[int]  # None when the tokenizer strips its end token
    pad: int
    context_length: int
    words: list[str]  # whole-word vocabulary entries (lower-case letters, 3+ characters)


_WORD = re.compile(r"[a-z]{3,}")


def tokenizer_spec(tokenizer: Any) -> TokenizerSpec:
    """Token ids and framing of open_clip's ``SimpleTokenizer`` (CLIP BPE: <start_of_text> ...
    <end_of_text>, pad 0) or ``HFTokenizer`` (e.g. BERT: [CLS] ... [SEP], pad 0)."""
    if hasattr(tokenizer, "encoder") and hasattr(tokenizer, "sot_token_id"):  # SimpleTokenizer
        vocab, special = tokenizer.encoder, set(tokenizer.all_special_ids)
        start, end, pad = tokenizer.sot_token_id, tokenizer.eot_token_id, 0
        # whole words are the BPE entries that end a word: "cat</w>"
        words = {t[:-4]: i for t, i in vocab.items() if t.endswith("</w>") and _WORD.fullmatch(t[:-4])}
    elif hasattr(tokenizer, "tokenizer") and hasattr(tokenizer.tokenizer, "get_vocab"):  # HFTokenizer
        hf = tokenizer.tokenizer
        vocab = hf.get_vocab()
        # BERT's "[unused17]" entries are reserved placeholders with untrained embeddings
        special = set(hf.all_special_ids) | {i for t, i in vocab.items() if t.startswith("[") and t.endswith("]")}
        start = hf.cls_token_id if hf.cls_token_id is not None else hf.bos_token_id
        end = hf.sep_token_id if hf.sep_token_id is not None else hf.eos_token_id
        if getattr(tokenizer, "strip_sep_token", False):
            end = None
        pad = hf.pad_token_id or 0
        words = {t: i for t, i in vocab.items() if _WORD.fullmatch(t)}
    else:
        raise TypeError(f"random vocabularies need an open_clip SimpleTokenizer or HFTokenizer, got {type(tokenizer).__name__}")
    if start is None:
        raise TypeError(f"{type(tokenizer).__name__} has no start token")
    special |= {start, pad} | ({end} if end is not None else set())
    ids = torch.tensor(sorted(i for i in set(vocab.values()) if i not in special), dtype=torch.long)
    return TokenizerSpec(ids, start, end, pad, int(tokenizer.context_length),
                         [w for w, _ in sorted(words.items(), key=lambda kv: kv[1])])


def vocabulary_generator(seed: int, session: int) -> torch.Generator:
    """The generator of session ``session``'s vocabulary: a deterministic function of both."""
    state = np.random.SeedSequence([int(seed), int(session)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)


def random_token_vocabulary(spec: TokenizerSpec, size: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """[size, context_length] token ids: start, ``length`` ids drawn uniformly (special tokens
    excluded), end, then padding (ZSCL's ``virtual_vocab``)."""
    framing = 1 + (spec.end is not None)
    if length + framing > spec.context_length:
        raise ConfigError(f"strategy.vocab_length: {length} tokens plus start/end exceed the context length {spec.context_length}")
    body = spec.ids[torch.randint(len(spec.ids), (size, length), generator=generator)]
    tokens = torch.full((size, spec.context_length), spec.pad, dtype=torch.long)
    tokens[:, 0] = spec.start
    tokens[:, 1:length + 1] = body
    if spec.end is not None:
        tokens[:, length + 1] = spec.end
    return tokens


def random_word_sentences(words: list[str], size: int, length: int, generator: torch.Generator) -> list[str]:
    """``size`` sentences of ``length`` words drawn uniformly from ``words``."""
    if not words:
        raise ValueError("the tokenizer has no whole-word vocabulary entries")
    index = torch.randint(len(words), (size, length), generator=generator)
    return [" ".join(words[j] for j in row) for row in index.tolist()]


def earlier_classes(experience: Any) -> list[int]:
    """Classes of the stream's experiences before ``experience`` (from the stream itself, so it
    survives a resumed run)."""
    stream = experience.origin_stream
    return sorted({int(c) for k in range(experience.current_experience)
                   for c in stream[k].classes_in_this_experience})


@torch.no_grad()
def encode_texts_in_chunks(model: nn.Module, inputs: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Normalised f_T(inputs), a chunk at a time (the vocabulary may be large)."""
    return torch.cat([F.normalize(model.encode_text(part), dim=-1) for part in inputs.split(chunk)])


# -- the method ---------------------------------------------------------------------------------
class VRLwFPlugin(SupervisedPlugin, supports_distributed=True):
    """Adds lambda * L_VR in ``before_backward``; usable in any Avalanche strategy whose model is
    a :class:`continual.clip.heads.ClipClassifier` (``strategy.model.model`` is the CLIP model).

    ``context`` gives the tokenizer and text encoding (needed for the random vocabularies);
    ``model``: the CLIP model before training, copied now when ``teacher="initial"``.
    Inspect ``vocabulary`` (this session's tokens or sentences), ``vocab_features`` (U) and
    ``last_value`` (L_VR of the last batch, unweighted).
    """

    def __init__(self, params: Optional[VRLwFParams] = None, context: Optional[StrategyContext] = None,
                 model: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.params = params or VRLwFParams()
        self.context = context
        self.teacher = Teacher(self.params.teacher, model)
        self.seed = self.params.seed if self.params.seed is not None else torch.initial_seed()
        self.vocabulary: Any = None
        self.vocab_features: Optional[torch.Tensor] = None
        self.scale: Optional[torch.Tensor] = None
        self.teacher_image: Optional[torch.Tensor] = None  # f_I^old of the global batch, from before_forward
        self.last_value: Optional[float] = None

    # -- once per session ---------------------------------------------------------------------
    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        classifier: ClipClassifier = strategy.model
        self.teacher.refresh(classifier.model)
        inputs = self.vocabulary_inputs(classifier, strategy.experience)
        teacher = self.teacher()
        device = next(teacher.parameters()).device
        self.vocab_features = encode_texts_in_chunks(teacher, inputs.to(device))  # U, cached all session
        self.scale = logit_scale(teacher).detach()

    def vocabulary_inputs(self, classifier: ClipClassifier, experience: Any) -> torch.Tensor:
        """This session's vocabulary V as model text inputs (sets ``self.vocabulary``)."""
        p = self.params
        draw = experience.current_experience if p.vocab_draw == "session" else 0
        generator = vocabulary_generator(self.seed, draw)
        if p.vocabulary == "class_names":
            classes = earlier_classes(experience)
            if classes:
                rows = classifier.prompt_rows(classes)
                owners = [c for c in classes for _ in range(int(classifier.counts[c]))]
                if len(rows) > p.vocab_size:
                    keep = torch.randperm(len(rows), generator=generator)[:p.vocab_size].tolist()
                    rows, owners = [rows[i] for i in keep], [owners[i] for i in keep]
                self.vocabulary = [classifier.class_names[c] for c in owners]
                return classifier.text_inputs[rows]
            # the first session has no earlier classes: fall back to ZSCL's random tokens
        if self.context is None:
            raise ValueError(f"vocabulary '{p.vocabulary}' needs a StrategyContext (tokenizer, text encoding)")
        spec = tokenizer_spec(self.context.tokenizer)
        if p.vocabulary == "random_words":
            self.vocabulary = random_word_sentences(spec.words, p.vocab_size, p.vocab_length, generator)
            return self.context.encode_texts(self.vocabulary)
        self.vocabulary = random_token_vocabulary(spec, p.vocab_size, p.vocab_length, generator)
        tokens = self.vocabulary
        if isinstance(self.context.text_trunk, HFTextTrunk):
            # its attention and pooling mask the padding: dropping the trailing pad columns gives
            # the same features (to 1e-6) for a fraction of the cost (12 of 32 positions)
            tokens = tokens[:, :int((tokens != spec.pad).sum(dim=1).max())]
        return self.context.tokens_to_inputs(tokens)

    # -- every batch ----------------------------------------------------------------------------
    @torch.no_grad()
    def teacher_features(self, x: torch.Tensor) -> torch.Tensor:
        """f_I^old(x) of every process's rows, normalised like the student's (so that student =
        teacher gives the same logits bit for bit)."""
        return distributed.gather(F.normalize(self.teacher().encode_image(x), dim=-1))

    def before_forward(self, strategy: Any, **kwargs: Any) -> None:
        # before the student's activations exist: at the step's peak a teacher costs its weights only
        self.teacher_image = self.teacher_features(strategy.mb_x)

    def before_backward(self, strategy: Any, **kwargs: Any) -> None:
        x = strategy.mb_x
        teacher_image = self.teacher_image if self.teacher_image is not None else self.teacher_features(x)
        self.teacher_image = None
        # f_I(x) as ClipStrategy's forward kept it; other Avalanche strategies encode again
        student_image = getattr(strategy, "mb_image_features", None)
        student_image = strategy.model.encode_images(x) if student_image is None else student_image
        student_image = distributed.gather(student_image, with_grad=True)  # the global batch's rows
        term = vr_loss(teacher_image, student_image, self.vocab_features, self.scale, self.params.temperature)
        self.last_value = float(term.detach())
        weighted = self.params.lam * term
        with torch.no_grad():  # the term's value at student = teacher: the teacher's entropies
            at_teacher = vr_loss(teacher_image, teacher_image, self.vocab_features, self.scale, self.params.temperature)
        record_term(strategy, "vrlwf", weighted, reported=self.params.lam * kl_of(term, at_teacher))
        strategy.loss = strategy.loss + weighted


class VRLwF(declared.VRLwF, ClipStrategy):
    """VR-LwF: distil the previous model's image-vocabulary logits on a replayed random vocabulary."""

    def method_plugins(self, classifier: ClipClassifier) -> list[SupervisedPlugin]:
        return [VRLwFPlugin(self.params, self.context, model=classifier.model)]
