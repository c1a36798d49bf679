"""CPE-CLIP: frozen backbone, prompts entering open_clip's towers layer by layer, the mask over
earlier classes, and the session-aware gradient scaling."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from omegaconf import OmegaConf

from continual.config.schema import TrainConfig

from continual.config.load import load_config, strategy_params
from continual.errors import ConfigError, UserError
from continual.clip.heads import ClipClassifier, restrict
from numerics import sum_rounding
from strategies.cpe_clip import (CPECLIP, CPECLIPParams, PromptedCLIP, UnsupportedTowerError, authors_lr_factor,
                                 mask_logits, session_alpha)

NAMES = ["zero", "one", "two", "three", "four"]
ORDER, SIZES = [3, 0, 4, 1, 2], [3, 2]  # session 1: {0, 3, 4}; session 2: {1, 2} -> alpha_2 = 2/5


@pytest.fixture(scope="module")
def tiny():
    from continual.clip.backbone import create_model

    torch.manual_seed(0)
    return create_model("tiny-vit")  # random init: enough for the structural properties


@pytest.fixture(scope="module")
def vit_b16():
    from continual.clip.backbone import create_model

    torch.manual_seed(0)
    return create_model("ViT-B-16")


def _images(model, n: int) -> torch.Tensor:
    size = model.visual.image_size[0]
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(n))


# -- the pure functions -------------------------------------------------------------------------
def test_session_alpha_and_the_authors_schedule():
    assert session_alpha(5, 65) == 5 / 65 and session_alpha(5, 100) == 0.05
    with pytest.raises(ValueError):
        session_alpha(6, 5)
    factors = [authors_lr_factor(e) for e in range(5)]
    assert factors[0] == 1.0 and 1e-3 * factors[4] == pytest.approx(8.92e-3)  # 1e-3 -> 8.9e-3
    assert authors_lr_factor(50) == pytest.approx(100.0) and authors_lr_factor(200) == 1.0


def test_the_authors_lr_overrides_the_config_schedule_per_epoch():
    from types import SimpleNamespace

    from strategies.cpe_clip import EpochWarmupLR

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    plugin = EpochWarmupLR(1e-3)
    lrs = []
    for epoch in range(5):
        clock = SimpleNamespace(train_exp_epochs=epoch)
        plugin.before_training_iteration(SimpleNamespace(optimizer=optimizer, clock=clock))
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs == pytest.approx([1e-3, 2.98e-3, 4.96e-3, 6.94e-3, 8.92e-3])


def test_mask_logits_is_ce_over_the_current_classes():
    logits = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([2, 5, 2, 5])
    masked = mask_logits(logits, [2, 5])
    assert torch.isinf(masked[:, [0, 1, 3, 4]]).all() and torch.equal(masked[:, [2, 5]], logits[:, [2, 5]])
    torch.testing.assert_close(F.cross_entropy(masked, y), F.cross_entropy(*restrict(logits, y, [2, 5])))


# -- the prompted towers ------------------------------------------------------------------------
def assert_same_tower_output(got: torch.Tensor, want: torch.Tensor, transformer) -> None:
    """Equal up to the float32 rounding of the tower: the same layers over inputs of other shapes
    (other kernels), each a sum of ``width`` products, relative to the outputs' magnitude."""
    rounding = transformer.layers * sum_rounding(transformer.width, float(want.abs().max()))
    torch.testing.assert_close(got, want, rtol=0, atol=rounding)


@pytest.mark.parametrize("which", ["tiny", "vit_b16"])
def test_without_prompts_the_redriven_towers_are_open_clips(which, request):
    model, _, tokenizer = request.getfixturevalue(which)
    prompted = PromptedCLIP(model)
    prompted.enabled = False
    images = _images(model, 1)
    # a text that fills the whole context (no re-truncation needed without prompts)
    tokens = tokenizer(["zero.", "a photo of a big dog.", " ".join(["word"] * 100)])
    with torch.no_grad():
        assert_same_tower_output(prompted.encode_image(images), model.encode_image(images), model.visual.transformer)
        assert_same_tower_output(prompted.encode_text(tokens), model.encode_text(tokens), model.transformer)
        prompted.enabled = True  # and the prompts do change both towers
        assert (prompted.encode_image(images) - model.encode_image(images)).abs().max() > 1e-3
        assert (prompted.encode_text(tokens) - model.encode_text(tokens)).abs().max() > 1e-3


def _inputs_of_blocks(blocks, run):
    seen = []
    hooks = [b.register_forward_pre_hook(lambda m, args, kw: seen.append(args[0].detach().clone()), with_kwargs=True)
             for b in blocks]
    try:
        with torch.no_grad():
            out = run()
    finally:
        for h in hooks:
            h.remove()
    return seen, out


def test_text_prompts_replace_after_the_start_token_and_pool_at_the_shifted_end(tiny):
    model, _, tokenizer = tiny
    prompted = PromptedCLIP(model)
    g = prompted.prompts.g.detach()
    P = g.shape[1]
    tokens = tokenizer(["zero.", "a photo of a big dog.", " ".join(["word"] * 100)])
    inputs, out = _inputs_of_blocks(model.transformer.resblocks, lambda: prompted.encode_text(tokens))
    n = 32  # the full-context text sets the length: 32 - P tokens + P prompts
    assert [x.shape[1] for x in inputs] == [n] * len(inputs)
    pos = model.positional_embedding.detach()
    torch.testing.assert_close(inputs[0][:, 1:1 + P], (g[0] + pos[1:1 + P]).expand(3, -1, -1))
    for layer in range(1, len(inputs)):  # replace mode: the prompt positions take g_l
        assert torch.equal(inputs[layer][:, 1:1 + P], g[layer].expand(3, -1, -1))
    # the words follow the prompts, with positions shifted by P
    word = model.token_embedding.weight.detach()[tokens[1, 1]]
    torch.testing.assert_close(inputs[0][1, 1 + P], word + pos[1 + P])
    # independent of the loop: layer-0 prompts only, through open_clip's own transformer with the
    # causal mask extended by P, pooled at the end token shifted by P
    shallow = PromptedCLIP(model, depth=1)
    shallow.prompts.g.data.copy_(g[:1])
    embed = model.token_embedding
    x = torch.cat([embed(tokens[:2, :1]), g[0].expand(2, -1, -1), embed(tokens[:2, 1:32 - P])], 1)
    x = x + model.positional_embedding
    with torch.no_grad():
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
        end = tokens[:2].argmax(-1) + P
        expected = x[torch.arange(2), end] @ model.text_projection
        assert_same_tower_output(shallow.encode_text(tokens[:2]), expected, model.transformer)
        # a text filling the context is read as if tokenized P tokens shorter (end token kept)
        shorter = F.pad(tokenizer([" ".join(["word"] * 100)], context_length=32 - P), (0, P))
        assert shorter[0, 32 - P - 1] == tokens[2, 31] and shorter[0, 32 - P - 2] == tokens[2, 30 - P]
        assert_same_tower_output(prompted.encode_text(shorter), out[2:], model.transformer)


def test_vision_prompts_accumulate_after_the_patch_tokens(tiny):
    model, _, _ = tiny
    prompted = PromptedCLIP(model)
    images = _images(model, 2)
    inputs, _ = _inputs_of_blocks(model.visual.transformer.resblocks, lambda: prompted.encode_image(images))
    with torch.no_grad():
        pv = prompted.prompts.vision()
        outputs = [model.visual.transformer.resblocks[i](x) for i, x in enumerate(inputs)]
    n0, P = 1 + 64, 2  # class token + 8x8 patches
    assert [x.shape[1] for x in inputs] == [n0 + P * (layer + 1) for layer in range(len(inputs))]
    torch.testing.assert_close(inputs[0][:, n0:], model.visual.ln_pre(pv[0]).expand(2, -1, -1))
    for layer in range(1, len(inputs)):
        # earlier prompt outputs kept, then this layer's P new tokens W g_l + b
        assert torch.equal(inputs[layer][:, :n0 + P * layer], outputs[layer - 1])
        assert torch.equal(inputs[layer][:, n0 + P * layer:], pv[layer].expand(2, -1, -1))


def test_no_accumulation_ablation_replaces_the_vision_prompts_layer_by_layer(tiny):
    model, _, _ = tiny
    prompted = PromptedCLIP(model, vision_mode="replace")
    images = _images(model, 2)
    inputs, _ = _inputs_of_blocks(model.visual.transformer.resblocks, lambda: prompted.encode_image(images))
    with torch.no_grad():
        pv = prompted.prompts.vision()
        outputs = [model.visual.transformer.resblocks[i](x) for i, x in enumerate(inputs)]
    n0, P = 1 + 64, 2
    assert [x.shape[1] for x in inputs] == [n0 + P] * len(inputs)  # P prompt tokens throughout
    torch.testing.assert_close(inputs[0][:, n0:], model.visual.ln_pre(pv[0]).expand(2, -1, -1))
    for layer in range(1, len(inputs)):
        # the class and patch tokens carried on, the P prompt positions overwritten by W g_l + b
        assert torch.equal(inputs[layer][:, :n0], outputs[layer - 1][:, :n0])
        assert torch.equal(inputs[layer][:, n0:], pv[layer].expand(2, -1, -1))
    with pytest.raises(ConfigError, match="vision_mode"):
        CPECLIPParams(vision_mode="accumulate_same")


def test_trainable_parameters_follow_the_formula(tiny, vit_b16):
    def count(model, **kw):
        return sum(p.numel() for p in PromptedCLIP(model, **kw).parameters() if p.requires_grad)

    assert count(tiny[0]) == 4 * 2 * 128 + 128 * 192 + 192 == 25_792
    assert count(vit_b16[0]) == 12 * 2 * 512 + 512 * 768 + 768 == 406_272  # about 0.41 M
    assert count(tiny[0], towers="text") == 4 * 2 * 128  # the text-only variant


def test_unsupported_towers_fail_with_one_clear_line(lit_model):
    for towers in ("both", "text"):
        with pytest.raises(UnsupportedTowerError) as err:
            PromptedCLIP(lit_model[0], towers=towers)
        message = str(err.value)
        assert isinstance(err.value, UserError) and "\n" not in message
        assert message.startswith("CPE-CLIP needs open_clip ViT/text-transformer towers")
        assert "HFTextEncoder" in message and "tiny-vit" in message and "ViT-B-16" in message


def test_params_are_validated_from_the_config(tmp_path):
    cfg = load_config("configs/cpe-clip.yaml", [f"output_dir={tmp_path}"])
    assert strategy_params(cfg, CPECLIPParams) == CPECLIPParams()
    with pytest.raises(ConfigError, match="strategy.lr_schedule"):
        strategy_params(load_config("configs/cpe-clip.yaml", ["strategy.lr_schedule=cosine"]), CPECLIPParams)


# -- training ---------------------------------------------------------------------------------
class GradRecorder(SupervisedPlugin):
    """Prompt gradients right after backward (raw) and right before the step (after CPE-CLIP)."""

    def __init__(self, params):
        super().__init__()
        self.params, self.raw, self.final = list(params), {}, {}

    def after_backward(self, strategy, **kwargs):
        self.raw.setdefault(strategy.experience.current_experience, []).append([p.grad.clone() for p in self.params])

    def before_update(self, strategy, **kwargs):
        self.final.setdefault(strategy.experience.current_experience, []).append([p.grad.clone() for p in self.params])


@pytest.fixture(scope="module")
def trained(tiny):
    """A real two-session Avalanche run of the strategy on the tiny ViT (synthetic images)."""
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark

    from continual.stream import InputsDataset

    model, _, tokenizer = tiny
    backbone_before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    x = _images(model, 40)
    y = [i % 5 for i in range(40)]
    data = {"train": InputsDataset(x, y), "test": InputsDataset(x, y)}
    bench = class_incremental_benchmark(data, class_order=ORDER, num_classes_per_exp=SIZES)
    train = OmegaConf.structured(TrainConfig(epochs=1, batch_size=8, lr=1e-3, optimizer="sgd", weight_decay=1e-5))
    classifier = ClipClassifier(model, NAMES, tokenizer([f"{n}." for n in NAMES]), 1)
    # incremental sessions for one epoch too (the authors: 5; its own test below)
    strategy = CPECLIP(classifier=classifier, train=train, params=CPECLIPParams(incremental_epochs=0))
    g0 = strategy.prompted.prompts.g.detach().clone()
    recorder = GradRecorder(strategy.prompted.prompts.parameters())
    strategy.plugins.append(recorder)
    batch_sizes, alphas = [], []
    for exp in bench.train_stream:
        strategy.train(exp, eval_streams=[])
        batch_sizes.append(strategy.train_mb_size)
        alphas.append(len(strategy.current_classes) / len(strategy.seen_classes))
    return dict(strategy=strategy, model=model, before=backbone_before, g0=g0, recorder=recorder,
                bench=bench, batch_sizes=batch_sizes, alphas=alphas)


def test_training_leaves_every_backbone_weight_bit_identical(trained):
    after = trained["model"].state_dict()
    assert set(after) == set(trained["before"])
    for key, tensor in trained["before"].items():
        assert torch.equal(after[key], tensor), key
    assert not torch.equal(trained["strategy"].prompted.prompts.g, trained["g0"])  # the prompts did learn
    assert trained["batch_sizes"] == [8, 4]  # base session train.batch_size, then incremental 4


def test_prompt_gradients_are_scaled_by_new_over_seen_classes_after_the_base_session(trained):
    rec = trained["recorder"]
    assert trained["alphas"] == [1.0, 2 / 5]
    for raw, final in zip(rec.raw[0], rec.final[0]):  # session 1: unscaled
        assert all(torch.equal(r, f) for r, f in zip(raw, final))
    assert len(rec.final[0]) == 3 and len(rec.final[1]) == 4  # 24 examples at batch 8, 16 at batch 4
    for raw, final in zip(rec.raw[1], rec.final[1]):  # session 2: exactly x 2/5, every parameter
        assert len(final) == 3 and all(r.abs().sum() > 0 for r in raw)
        assert all(torch.equal(f, r * (2 / 5)) for r, f in zip(raw, final))


def test_incremental_sessions_have_their_own_epoch_count(tiny):
    """CUB's recipe: the base session 6 epochs, every later session 5 (here 3 and 2)."""
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark

    from continual.stream import InputsDataset

    model, _, tokenizer = tiny
    x, y = _images(model, 20), [i % 5 for i in range(20)]
    bench = class_incremental_benchmark({"train": InputsDataset(x, y)}, class_order=ORDER, num_classes_per_exp=SIZES)
    train = OmegaConf.structured(TrainConfig(epochs=3, batch_size=4, lr=1e-3, optimizer="sgd"))
    classifier = ClipClassifier(model, NAMES, tokenizer([f"{n}." for n in NAMES]), 1)
    strategy = CPECLIP(classifier=classifier, train=train, params=CPECLIPParams(incremental_epochs=2))
    epochs = []
    for exp in bench.train_stream:
        strategy.train(exp, eval_streams=[])
        epochs.append(strategy.clock.train_exp_epochs)
    assert epochs == [3, 2] and CPECLIPParams().incremental_epochs == 5


def test_training_loss_ignores_the_classes_of_earlier_sessions(trained, tiny):
    strategy, bench = trained["strategy"], trained["bench"]
    classifier, tokenizer = strategy.model, tiny[2]
    x, y = next(iter(torch.utils.data.DataLoader(bench.train_stream[1].dataset, batch_size=8)))[:2]
    strategy.mbatch = [x, y, torch.zeros_like(y)]
    classifier.train()

    def loss() -> torch.Tensor:
        strategy.mb_output = strategy.forward()
        return strategy.criterion().detach()

    reference = loss()
    assert strategy.label_space() == [1, 2]
    original = classifier.text_inputs.clone()
    try:
        other = tokenizer(["cat."])[0]  # as long as the class prompts: the same text batch shape
        for c in (0, 3, 4):  # earlier classes: any text at all
            classifier.text_inputs[c] = other
        assert torch.equal(loss(), reference)
        classifier.text_inputs[2] = other  # a current class
        assert (loss() - reference).abs() > 1e-4
    finally:
        classifier.text_inputs.copy_(original)
        classifier.invalidate()


def test_end_to_end_run_trains_prompts_only(tmp_path, make_config, monkeypatch):
    import continual.clip.backbone
    from safetensors.torch import load_file

    from continual.run.loop import run

    built = {}
    load = continual.clip.backbone.load_backbone

    def spy(*args, **kwargs):
        backbone = load(*args, **kwargs)
        built["model"] = backbone.model
        built["before"] = {k: v.clone() for k, v in backbone.model.state_dict().items()}
        return backbone

    monkeypatch.setattr(continual.clip.backbone, "load_backbone", spy)
    cfg = make_config(tmp_path, "strategy.name=cpe-clip", "model.name=tiny-vit", "model.pretrained=null",
                      "model.templates=['{}.']", "control.name=null", "train.epochs=1", "train.optimizer=sgd",
                      "train.label_space=current", "eval.label_space=seen", "stream.train_per_class=10",
                      "stream.test_per_class=10")
    result = run(cfg, echo=lambda s: None, progress=False)
    R = result.accuracy
    assert R.shape == (3, 2) and not torch.tensor(R).isnan().any()
    assert [s["trainable_params"] for s in result.sessions] == [25_792] * 3
    after = built["model"].state_dict()
    assert all(torch.equal(after[k], v) for k, v in built["before"].items())
    (ckpt,) = (tmp_path / "checkpoints" / result.run_id).glob("session_002.safetensors")
    stored = {k for k in load_file(ckpt) if not k.startswith("__")}  # "__rng__.torch" aside
    assert stored == {"prompts.g", "prompts.proj.weight", "prompts.proj.bias"}
