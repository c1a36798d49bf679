"""VR-LwF: the KD formula, its value and gradient at student = teacher, the frozen teacher, the
replayed vocabulary (seeded, framed, once per session) and a short end-to-end run."""

from __future__ import annotations

import gc
import math
import weakref
from types import SimpleNamespace

import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Categorical

from numerics import (gradient_at_rounding, kd_gradient_rounding, probability_displacement, softmax_rounding,
                      sum_rounding)

from continual.clip.backbone import create_model, register_model_configs
from continual.context import StrategyContext
from continual.errors import ConfigError
from continual.clip.heads import ClipClassifier, logit_scale, prompts
from strategies.distill import Teacher
from strategies.vrlwf import (VRLwFParams, VRLwFPlugin, kd, random_token_vocabulary, random_word_sentences,
                              tokenizer_spec, vocabulary_generator, vr_loss)

NAMES = ["zero", "one", "two", "three"]


# -- the pure loss --------------------------------------------------------------------------------
def test_kd_on_a_hand_computed_2x2_example():
    # T = 2: teacher rows softmax([0, ln 3]) = (1/4, 3/4) and (1/2, 1/2); student rows (1/2, 1/2)
    # and (3/4, 1/4). CE: ln 2 and 2 ln 2 - ln 3 / 2; T^2 * mean = 6 ln 2 - ln 3 = ln(64 / 3).
    ln3 = math.log(3)
    teacher = torch.tensor([[0.0, 2 * ln3], [0.0, 0.0]])
    student = torch.tensor([[0.0, 0.0], [2 * ln3, 0.0]])
    assert kd(teacher, student, 2.0).item() == pytest.approx(math.log(64 / 3), rel=1e-6)
    # a cross-entropy, not a KL: at student = teacher it is T^2 times the mean entropy
    assert kd(teacher, teacher, 2.0).item() == pytest.approx(4 * (0.25 * math.log(4) + 0.75 * math.log(4 / 3) + math.log(2)) / 2, rel=1e-6)


def entropy_term(teacher_image: torch.Tensor, vocab: torch.Tensor, scale: float, t: float) -> float:
    """T^2 * (mean row entropy of softmax(Z / T) + mean column entropy), Z = s * I U^T."""
    z = scale * F.normalize(teacher_image, dim=-1) @ F.normalize(vocab, dim=-1).t()
    rows = Categorical(logits=z / t).entropy().mean()
    cols = Categorical(logits=z.t() / t).entropy().mean()
    return float(t ** 2 * (rows + cols))


def test_at_student_equal_teacher_the_value_is_the_entropy_and_the_gradient_is_zero():
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(6, 16, generator=g, dtype=torch.float64)
    vocab = torch.randn(50, 16, generator=g, dtype=torch.float64)
    student = teacher.clone().requires_grad_(True)
    loss = vr_loss(teacher, student, vocab, 30.0, 2.0)
    assert loss.item() == pytest.approx(entropy_term(teacher, vocab, 30.0, 2.0), rel=1e-10)
    (grad,) = torch.autograd.grad(loss, student)
    # zero up to float64 rounding: d L / d Z is at most the two KD terms' rounding; Z = s n(f) n(U)^T
    # sums K vocabulary entries (|n(U)| <= 1) per feature, and normalising divides by |f|
    d_logits = kd_gradient_rounding(50, 6, 2.0, torch.float64) + kd_gradient_rounding(6, 50, 2.0, torch.float64)
    bound = 30.0 * 50 * d_logits * math.sqrt(16) / float(teacher.norm(dim=1).min())
    assert grad.abs().max() <= bound
    # away from the teacher the gradient is not zero and the value is larger (Gibbs)
    moved = (teacher + 0.3 * torch.randn(6, 16, generator=g, dtype=torch.float64)).requires_grad_(True)
    loss = vr_loss(teacher, moved, vocab, 30.0, 2.0)
    (grad,) = torch.autograd.grad(loss, moved)
    assert grad.abs().max() > 1e-3 and loss.item() > entropy_term(teacher, vocab, 30.0, 2.0)


def test_both_directions_are_distilled():
    g = torch.Generator().manual_seed(1)
    teacher, student, vocab = (torch.randn(n, 8, generator=g) for n in (5, 5, 20))
    z_t = 10 * F.normalize(teacher, dim=-1) @ F.normalize(vocab, dim=-1).t()
    z_s = 10 * F.normalize(student, dim=-1) @ F.normalize(vocab, dim=-1).t()
    expected = kd(z_t, z_s, 2.0) + kd(z_t.t(), z_s.t(), 2.0)
    assert vr_loss(teacher, student, vocab, 10.0, 2.0).item() == pytest.approx(expected.item(), rel=1e-6)
    assert kd(z_t.t(), z_s.t(), 2.0).item() != pytest.approx(kd(z_t, z_s, 2.0).item(), rel=1e-3)


# -- the vocabulary -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizers():
    register_model_configs()
    return {"clip-bpe": open_clip.get_tokenizer("tiny-vit"), "bert": open_clip.get_tokenizer("lit-effnet-minilm")}


@pytest.mark.parametrize("name", ["clip-bpe", "bert"])
def test_random_tokens_are_framed_and_drawn_from_ordinary_tokens(tokenizers, name):
    tok = tokenizers[name]
    spec = tokenizer_spec(tok)
    tokens = random_token_vocabulary(spec, 300, 10, vocabulary_generator(0, 0))
    assert tokens.shape == (300, tok.context_length)
    # the same framing the tokenizer gives a 10-token sentence
    real = tok(["a photo of a cat on the big red mat ."])[0]
    assert tokens[0, 0] == real[0] and (tokens[:, 0] == real[0]).all()
    end = real[real != 0][-1]
    assert (tokens[:, 11] == end).all() and (tokens[:, 12:] == real[-1]).all() and real[-1] == 0
    body = tokens[:, 1:11]
    specials = set(tok.all_special_ids if name == "clip-bpe" else tok.tokenizer.all_special_ids)
    assert not specials & set(body.unique().tolist())
    assert body.unique().numel() > 2000  # spread over the vocabulary, not a few ids
    if name == "clip-bpe":  # the end token stays the largest id: open_clip pools at argmax
        assert (tokens.argmax(dim=1) == 11).all()


def test_same_seed_same_vocabulary_other_seed_or_session_differs(tokenizers):
    spec = tokenizer_spec(tokenizers["clip-bpe"])
    a = random_token_vocabulary(spec, 100, 10, vocabulary_generator(7, 1))
    assert torch.equal(a, random_token_vocabulary(spec, 100, 10, vocabulary_generator(7, 1)))
    assert not torch.equal(a, random_token_vocabulary(spec, 100, 10, vocabulary_generator(8, 1)))
    assert not torch.equal(a, random_token_vocabulary(spec, 100, 10, vocabulary_generator(7, 2)))


@pytest.mark.parametrize("name", ["clip-bpe", "bert"])
def test_random_words_are_whole_words_of_the_tokenizer(tokenizers, name):
    tok = tokenizers[name]
    spec = tokenizer_spec(tok)
    assert len(spec.words) > 10000 and {"photo", "house", "water"} <= set(spec.words)
    sentences = random_word_sentences(spec.words, 20, 8, vocabulary_generator(0, 0))
    assert sentences == random_word_sentences(spec.words, 20, 8, vocabulary_generator(0, 0))
    tokens = tok(sentences)
    # each word is one token: 8 words + start + end
    assert ((tokens != 0).sum(dim=1) == 10).all()


# -- the plugin on a real (tiny) CLIP model --------------------------------------------------------
@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model, _, tokenizer = create_model("tiny-vit")
    classifier = ClipClassifier(model, NAMES, tokenizer(prompts(NAMES, ["a photo of the digit {}."])), 1)
    context = StrategyContext(encode_texts=tokenizer, tokenizer=tokenizer)
    return classifier, context


def fake_strategy(classifier, session: int, x: torch.Tensor):
    experience = SimpleNamespace(current_experience=session)
    return SimpleNamespace(model=classifier, experience=experience, mb_x=x, loss=torch.zeros(()))


def vocabulary_logits_of(plugin: VRLwFPlugin, model, x: torch.Tensor) -> torch.Tensor:
    """Z = s f_I(x) U^T of ``model`` against the plugin's (teacher's) vocabulary features."""
    with torch.no_grad():
        return plugin.scale * F.normalize(model.encode_image(x), dim=-1) @ plugin.vocab_features.t()


def max_grad(model) -> float:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads, "no parameter received a gradient"
    return max(float(g.abs().max()) for g in grads)


def test_plugin_at_session_start_gives_the_teacher_entropy_and_no_gradient(tiny):
    classifier, context = tiny
    plugin = VRLwFPlugin(VRLwFParams(vocab_size=64), context)
    x = torch.randn(4, 3, 64, 64)
    strategy = fake_strategy(classifier, 0, x)
    plugin.before_training_exp(strategy)
    plugin.before_backward(strategy)
    teacher = plugin.teacher()
    with torch.no_grad():  # independently: the teacher's vocabulary features from the tokens
        vocab = teacher.encode_text(plugin.vocabulary)
        expected = entropy_term(teacher.encode_image(x), vocab, float(logit_scale(teacher)), 2.0)
    assert plugin.last_value == pytest.approx(expected, rel=1e-5)
    assert strategy.loss.item() == pytest.approx(expected, rel=1e-5)  # lambda = 1, the default
    strategy.loss.backward()
    at_start = max_grad(classifier.model)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    # The gradient vanishes up to rounding. The student's and the teacher's distributions are
    # equal up to float32 rounding (bit for bit only where both run the same kernels, which
    # differs between CPUs), and the gradient is linear in their displacement: measure it at a
    # small known displacement and scale it down to the rounding of a softmax over the vocabulary.
    classifier.model.zero_grad()
    with torch.no_grad():
        classifier.model.visual.proj.add_(1e-3 * torch.randn_like(classifier.model.visual.proj))
    strategy.loss = torch.zeros(())
    plugin.before_backward(strategy)
    strategy.loss.backward()
    moved_by = probability_displacement(vocabulary_logits_of(plugin, classifier.model, x),
                                        vocabulary_logits_of(plugin, teacher, x), 2.0, both_directions=True)
    rounding = 2 * softmax_rounding(64)  # student and teacher softmaxes, each off by rounding
    assert at_start <= gradient_at_rounding(max_grad(classifier.model), moved_by, rounding)


def test_the_teacher_gets_no_gradient_and_the_student_does(tiny):
    classifier, context = tiny
    plugin = VRLwFPlugin(VRLwFParams(vocab_size=64), context)
    x = torch.randn(4, 3, 64, 64)
    strategy = fake_strategy(classifier, 0, x)
    plugin.before_training_exp(strategy)
    with torch.no_grad():  # the student moves away from the teacher
        classifier.model.visual.proj.add_(0.05 * torch.randn_like(classifier.model.visual.proj))
    plugin.before_backward(strategy)
    strategy.loss.backward()
    assert classifier.model.visual.proj.grad.abs().max() > 1e-4
    assert all(p.grad is None and not p.requires_grad for p in plugin.teacher().parameters())


def test_vocabulary_features_on_the_lit_base_with_its_split_text_trunk():
    from continual.clip.backbone import load_backbone
    from continual.context import from_backbone

    backbone = load_backbone("lit-effnet-minilm", "", "projections")  # MiniLM trunk split off
    context = from_backbone(backbone)
    classifier = ClipClassifier(backbone.model, NAMES, context.encode_texts(prompts(NAMES, ["a photo of a {}."])), 1)
    plugin = VRLwFPlugin(VRLwFParams(vocab_size=64), context)
    plugin.before_training_exp(fake_strategy(classifier, 0, None))
    assert plugin.vocabulary.shape == (64, 32) and (plugin.vocabulary[:, 0] == 101).all()  # [CLS]
    with torch.no_grad():  # the full-length tokens through the trunk, then the teacher's text head
        expected = F.normalize(plugin.teacher().encode_text(backbone.text_trunk(plugin.vocabulary)), dim=-1)
    # unit rows computed at two sequence lengths (other matrix shapes, masked padding): equal up to
    # the rounding of MiniLM's 6 layers of 384-wide products, relative to the rows' norm of 1
    assert (plugin.vocab_features - expected).norm(dim=1).max() <= 6 * sum_rounding(384, 1.0)


def test_default_weight_is_zscl_mtil_one_and_one_vocabulary_serves_every_session():
    params = VRLwFParams()
    assert params.lam == 1.0 and params.vocab_draw == "once"
    with pytest.raises(ConfigError, match="vocab_draw"):
        VRLwFParams(vocab_draw="epoch")


@pytest.mark.parametrize("draw", ["once", "session"])
def test_vocabulary_follows_the_seed_and_the_session_when_redrawn(tiny, draw):
    classifier, context = tiny
    draws = []
    for seed, session in [(3, 0), (3, 0), (4, 0), (3, 1)]:
        plugin = VRLwFPlugin(VRLwFParams(vocab_size=32, seed=seed, vocab_draw=draw), context)
        plugin.vocabulary_inputs(classifier, SimpleNamespace(current_experience=session))
        draws.append(plugin.vocabulary)
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    # once (ZSCL): session 2 replays session 1's sentences; session: a new draw
    assert torch.equal(draws[0], draws[3]) == (draw == "once")


def test_class_names_vocabulary_uses_earlier_sessions_prompts(tiny):
    classifier, context = tiny
    plugin = VRLwFPlugin(VRLwFParams(vocabulary="class_names"), context)
    stream = [SimpleNamespace(classes_in_this_experience=[0, 1]), SimpleNamespace(classes_in_this_experience=[2, 3])]
    first = SimpleNamespace(current_experience=0, origin_stream=stream)
    second = SimpleNamespace(current_experience=1, origin_stream=stream)
    # session 1 has no earlier classes: ZSCL's random tokens
    assert plugin.vocabulary_inputs(classifier, first).shape == (1000, 32)
    inputs = plugin.vocabulary_inputs(classifier, second)
    assert plugin.vocabulary == ["zero", "one"] and torch.equal(inputs, classifier.text_inputs[:2])


def test_teacher_previous_is_refreshed_initial_is_kept_and_only_one_copy_lives(tiny):
    classifier, _ = tiny
    model = classifier.model
    start = model.visual.proj.detach().clone()
    previous, initial = Teacher("previous"), Teacher("initial", model)
    previous.refresh(model)
    old = weakref.ref(previous.model)
    with torch.no_grad():
        model.visual.proj.add_(1.0)
    assert previous.refresh(model) and not initial.refresh(model)
    gc.collect()
    assert old() is None  # the previous copy was released
    assert torch.equal(previous().visual.proj, model.visual.proj)
    assert torch.equal(initial().visual.proj, start)
    with pytest.raises(ValueError):
        Teacher("best")


# -- end to end -----------------------------------------------------------------------------------
def test_short_run_through_the_runner_computes_the_vocabulary_once_per_session(tmp_path, make_config, monkeypatch):
    from mlflow import MlflowClient

    from continual.run.loop import run

    calls = []
    cls = open_clip.CustomTextCLIP  # the LiT composite's class
    original = cls.encode_text

    def counting(self, text, *args, **kwargs):
        if not any(p.requires_grad for p in self.parameters()):  # the frozen teacher
            calls.append(len(text))
        return original(self, text, *args, **kwargs)

    monkeypatch.setattr(cls, "encode_text", counting)
    cfg = make_config(tmp_path, "strategy.name=vrlwf", "strategy.vocab_size=64", "control.name=null")
    result = run(cfg, echo=lambda s: None, progress=False)
    # 2 sessions x 2 epochs x 7 batches, but U = f_T^old(V) once per session
    assert calls == [64, 64]
    client = MlflowClient(result.tracking_uri)
    run_ = client.get_run(result.run_id)
    assert run_.info.status == "FINISHED" and run_.data.tags["strategy"] == "vrlwf"
    assert result.accuracy.shape == (3, 2) and result.accuracy[1, 0] > result.accuracy[0, 0] + 20
