"""The published protocols as their authors ran them (issue 11): Mod-X's image-level sampling,
phases scored on the whole test split and its COCO recipe; ZSCL's configurable reference data;
the MTIL presets of every baseline of ZSCL's table; the registry of remaining deviations that
``--dry-run`` prints. Real image files (scikit-learn digits as PNGs) in Karpathy's JSON format."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from avalanche.core import SupervisedPlugin
from PIL import Image
from torch import nn

from continual.config.load import load_config, strategy_params
from continual.errors import ConfigError
from continual.clip.heads import ClipClassifier
from continual.run.loop import plan
from streams.pairs import caption_pairs_stream

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def karpathy(folder: Path, splits: dict[str, int], captions: int = 5, name: str = "dataset_tiny.json") -> Path:
    """A Karpathy-format file over real PNGs (digits): ``splits`` images per split, in file order
    train, val, test; image i's captions say its number."""
    from sklearn.datasets import load_digits

    digits = load_digits().images
    images, i = [], 0
    for split, n in splits.items():
        for _ in range(n):
            Image.fromarray(np.uint8(digits[i] * 15)).resize((32, 32)).save(folder / f"img{i}.png")
            images.append({"filepath": "", "filename": f"img{i}.png", "split": split,
                           "sentences": [{"raw": f"picture {i} caption {k}"} for k in range(captions)]})
            i += 1
    path = folder / name
    path.write_text(json.dumps({"images": images}))
    return path


def image_id(key_or_caption: str) -> int:
    """The image number of an image path (img7.png) or of a caption (picture 7 caption 2)."""
    text = Path(key_or_caption).stem if key_or_caption.endswith(".png") else key_or_caption.split()[1]
    return int(text.removeprefix("img"))


def pairs_config(tmp_path: Path, manifest: Path, *overrides: str):
    return load_config(None, [f"output_dir={tmp_path}", "stream.name=caption-pairs", f"stream.sources=[{manifest}]",
                              "stream.session_by=slices", *overrides])


def index_encoders():
    """Image inputs that are the image's number; text inputs that are the caption's id."""
    def images(ds, key):
        return torch.tensor([[float(image_id(ds.pairs[i].key))] for i in range(len(ds))])

    def texts(captions):
        return torch.tensor([[float(image_id(c))] for c in captions])
    return images, texts


class Toy(nn.Module):
    """encode_image / encode_text of the 1-d inputs above (a real, trainable linear model)."""

    def __init__(self) -> None:
        super().__init__()
        self.visual, self.text = nn.Linear(1, 4), nn.Linear(1, 4)
        self.logit_scale = nn.Parameter(torch.tensor(2.0), requires_grad=False)

    def encode_image(self, x):
        return self.visual(x)

    def encode_text(self, t):
        return self.text(t)


class Visits(SupervisedPlugin):
    """The images (by number) and caption ids of every training iteration."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[tuple[list[int], list[int]]] = []

    def after_training_iteration(self, strategy, **kwargs):
        self.steps.append(([int(v) for v in strategy.mb_x[:, 0]], [int(c) for c in strategy.mb_y]))


def train_one_session(stream, cfg, epochs: int = 1) -> Visits:
    from strategies.finetune import FineTune

    names = stream.class_names
    classifier = ClipClassifier(Toy(), names, index_encoders()[1](names), 1)
    visits = Visits()
    train = load_config(None, [f"train.epochs={epochs}", f"train.batch_size={cfg.train.batch_size}",
                               f"train.drop_last={cfg.train.drop_last}"]).train
    strategy = FineTune(classifier=classifier, train=train, task_loss="contrastive", plugins=[visits])
    strategy.train(stream.benchmark.train_stream[0], eval_streams=[])
    return visits


# -- Mod-X: image-level sampling ---------------------------------------------------------------------
def test_image_sampling_an_epoch_visits_each_image_once_with_one_of_its_captions(tmp_path):
    torch.manual_seed(0)  # the run's seed fixes the draws
    manifest = karpathy(tmp_path, {"train": 24, "test": 4})
    cfg = pairs_config(tmp_path, manifest, "stream.n_sessions=1", "stream.sampling=image", "train.batch_size=8")
    stream = caption_pairs_stream(cfg.stream, 0, *index_encoders())
    assert stream.sessions[0].n_train == 24 and stream.train_unit == "images" and len(stream.class_names) == 120
    visits = train_one_session(stream, cfg, epochs=3)
    assert len(visits.steps) == 3 * 24 // 8  # images / batch steps per epoch, not pairs / batch
    drawn = []
    for epoch in range(3):
        steps = visits.steps[3 * epoch:3 * epoch + 3]
        images = [i for x, _ in steps for i in x]
        assert sorted(images) == list(range(24))  # each image once per epoch
        for x, y in steps:  # each with one of its own captions
            assert all(image_id(stream.class_names[c]) == i for i, c in zip(x, y))
            drawn += list(zip(x, y))
    # over 3 epochs the draws differ: the captions of an image are not always the first
    assert len({c for _, c in drawn}) > 24


def test_pair_sampling_is_one_example_per_caption_and_drop_last_drops_the_partial_batch(tmp_path):
    manifest = karpathy(tmp_path, {"train": 10, "test": 2})
    cfg = pairs_config(tmp_path, manifest, "stream.n_sessions=1", "train.batch_size=8", "train.drop_last=true")
    stream = caption_pairs_stream(cfg.stream, 0, *index_encoders())
    assert stream.sessions[0].n_train == 50 and stream.train_unit == "pairs"
    visits = train_one_session(stream, cfg)
    assert len(visits.steps) == 50 // 8 and all(len(x) == 8 for x, _ in visits.steps)
    assert Counter(c for _, y in visits.steps for c in y).most_common(1)[0][1] == 1  # each pair at most once


def test_phases_are_scored_on_the_whole_test_split_and_val_images_train_when_asked(tmp_path):
    manifest = karpathy(tmp_path, {"train": 12, "val": 3, "test": 6})
    cfg = pairs_config(tmp_path, manifest, "stream.n_sessions=3", "stream.sampling=image", "stream.test_by=source",
                       "stream.train_splits=[train,val]")
    stream = caption_pairs_stream(cfg.stream, 0, *index_encoders())
    trained = [sorted(image_id(stream.class_names[c]) for c in exp.classes_in_this_experience)
               for exp in stream.benchmark.train_stream]
    assert trained == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14]]  # train + val in file order, 3 phases
    for test in stream.tests:  # every phase: all 6 test images and their 30 captions
        assert sorted(image_id(k) for k in test.keys) == list(range(15, 21)) and len(test.caption_image) == 30


def test_after_every_phase_the_retrieval_gallery_is_the_whole_test_split(tmp_path, monkeypatch):
    """A real run (tiny open_clip model, real PNGs, MLflow): the runner scores each phase on all
    test images of the source, whatever slice trained."""
    import continual.run.evaluation
    from continual.run.loop import run

    manifest = karpathy(tmp_path, {"train": 12, "test": 6})
    galleries = []
    retrieval = continual.run.evaluation.retrieval

    def spy(model, pairs, batch_size=256):
        galleries.append(sorted(image_id(k) for k in pairs.keys))
        return retrieval(model, pairs, batch_size)

    monkeypatch.setattr(continual.run.evaluation, "retrieval", spy)
    cfg = pairs_config(tmp_path, manifest, "stream.n_sessions=2", "stream.sampling=image", "stream.test_by=source",
                       "model.name=tiny-vit", "model.pretrained=null", "model.trainable=all", "control.name=null",
                       "strategy.name=modx", "train.epochs=1", "train.batch_size=4", "train.drop_last=true",
                       "train.warmup_fraction=0.2", "tracking.experiment=fidelity")
    result = run(cfg, echo=lambda s: None, progress=False)
    assert result.matrices["i2t_r1"].shape == (3, 2)
    assert galleries == [list(range(12, 18))] * 6  # 3 rows x 2 columns, each the whole test split
    assert [s["examples"] for s in result.sessions[1:]] == [4, 4]  # 6 images a phase, batch 4, last dropped


def test_modx_protocol_plan_without_the_data():
    lines = plan(load_config(CONFIGS / "modx-coco-flickr.yaml"))
    sessions = [line.strip() for line in lines if line.strip().startswith("session ")]
    # Flickr30K's 29,000 train + 1,014 val images in the authors' 5 slices; the 1K test each time
    assert sessions == [f"session {i + 1} (dataset_flickr30k.json {i + 1}/5): {n} train images / 5000 test pairs"
                        for i, n in enumerate([6002, 6003, 6003, 6003, 6003])]
    text = "\n".join(lines)
    assert "model RN50-text6 (pretrained: base:modx-coco, trainable: all)" in text
    assert "control manifest-test: data absent, nominal 5000 images, 25000 captions" in text
    assert "warm-up 20% of each session" in text and "last partial batch dropped" in text
    assert "fidelity: no known deviations" in text


def test_the_coco_recipe_is_the_authors_and_its_model_has_a_6_layer_text_transformer():
    from continual.clip.backbone import create_model
    from continual.run.pretrain import BASES, load_pretrain_config

    assert load_pretrain_config(str(CONFIGS / "pretrain-modx-coco.yaml")) == BASES["modx-coco"]
    recipe = BASES["modx-coco"]
    assert (recipe.model, recipe.trainable, recipe.train_splits, recipe.sampling) == ("RN50-text6", "all", ["train"], "image")
    assert (recipe.epochs, recipe.batch_size, recipe.lr, recipe.weight_decay, recipe.warmup) == (35, 280, 5e-4, 0.1, 0.2)
    model, preprocess, _ = create_model("RN50-text6")
    assert len(model.transformer.resblocks) == 6 and type(model.visual).__name__ == "ModifiedResNet"
    assert model.visual.layer1 and sum(len(getattr(model.visual, f"layer{i}")) for i in range(1, 5)) == 3 + 4 + 6 + 3


def test_pretrain_on_a_karpathy_manifest_holds_its_test_split_out(tmp_path, monkeypatch):
    """``continual pretrain`` from scratch on a manifest's train split (image-level sampling,
    warm-up), reporting retrieval on its test split, which the base records as held out."""
    from safetensors import safe_open

    from continual.run.pretrain import PretrainConfig, base_path, pretrain

    monkeypatch.setenv("CONTINUAL_CACHE", str(tmp_path / "cache"))
    manifest = karpathy(tmp_path, {"train": 16, "val": 2, "test": 4})
    cfg = PretrainConfig(name="karpathy-test", model="tiny-vit", trainable="all", corpus="manifest-test",
                         sources=[str(manifest)], train_splits=["train"], sampling="image", epochs=2, batch_size=8,
                         lr=1e-4, warmup=0.25, zero_shot_stream=None)
    lines = []
    report = pretrain(cfg, echo=lines.append)
    assert "on 80 pairs of 16 images; 4 held out" in lines[0]
    assert {"heldout_i2t_r1", "heldout_t2i_r10"} <= set(report)
    with safe_open(str(base_path(cfg)), framework="pt") as f:
        held = json.loads(f.metadata()["heldout_keys"])
    assert sorted(image_id(k) for k in held) == [18, 19, 20, 21]


# -- ZSCL: reference data from files -------------------------------------------------------------
def test_zscl_reference_images_from_a_folder_and_sentences_from_a_text_file(tmp_path):
    from continual.context import StrategyContext
    from strategies.zscl import ZSCL, ZSCLParams

    folder = tmp_path / "ref" / "class_a"
    folder.mkdir(parents=True)
    karpathy(folder, {"train": 5})  # 5 PNGs (and a JSON, not an image)
    (tmp_path / "ref" / "notes.txt").write_text("not an image")
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("a dog on a beach\n\na red car\nthree birds\n")
    encoded = {}

    def encode_images(ds, key):
        encoded["images"] = [ds.paths[i] for i in range(len(ds))]
        return torch.stack([torch.full((1,), float(i)) for i in range(len(ds))])

    def encode_texts(texts):
        encoded["texts"] = list(texts)
        return torch.arange(len(texts), dtype=torch.float32)[:, None]

    params = ZSCLParams(ref_images=str(tmp_path / "ref"), ref_sentences=str(sentences), we=False)
    context = StrategyContext(encode_texts, tokenizer=None, encode_images=encode_images)  # no control set
    classifier = ClipClassifier(Toy(), ["x", "y"], torch.zeros(2, 1), 1)
    train = load_config(None, []).train
    strategy = ZSCL(classifier=classifier, train=train, params=params, context=context)
    plugin = next(p for p in strategy.plugins if type(p).__name__ == "ZSCLPlugin")
    plugin.before_training_exp(type("S", (), {"model": classifier, "device": "cpu"})())
    assert [Path(p).name for p in encoded["images"]] == [f"img{i}.png" for i in range(5)]
    assert encoded["texts"] == ["a dog on a beach", "a red car", "three birds"]
    assert len(plugin.reference.keys) == 5 and plugin._teacher_texts.shape == (3, 4)


def test_reference_sentences_from_a_csv_column_or_a_headerless_tsv(tmp_path):
    from streams.reference import read_sentences

    (tmp_path / "caps.csv").write_text("url,caption\nhttp://a,a cat\nhttp://b,two  dogs\n")
    (tmp_path / "cc.tsv").write_text("a boat\thttp://x\nthe sky\thttp://y\n")  # Conceptual Captions' layout
    assert read_sentences(tmp_path / "caps.csv", "caption") == ["a cat", "two dogs"]
    assert read_sentences(tmp_path / "cc.tsv", "0") == ["a boat", "the sky"]
    with pytest.raises(ConfigError, match="no column 'text'"):
        read_sentences(tmp_path / "caps.csv", "text")


def test_zscl_reference_options_fail_before_training_with_one_line(tmp_path):
    from strategies.zscl import ZSCL, ZSCLParams

    with pytest.raises(ConfigError, match="give strategy.ref_sentences"):
        ZSCLParams(ref_images=str(tmp_path))
    with pytest.raises(ConfigError, match="ref_texts=batch"):
        ZSCLParams(ref_images=str(tmp_path), ref_sentences="s.txt", ref_texts="batch")
    assert "reference images not found: data/nowhere" in ZSCL.data_missing(
        ZSCLParams(ref_images="data/nowhere", ref_sentences="s.txt"))
    assert ZSCL.data_missing(ZSCLParams()) is None  # the offline default


# -- MTIL: a preset per baseline of ZSCL's table ---------------------------------------------------
@pytest.mark.parametrize("config", ["mtil-order1.yaml", "mtil-order2.yaml"])
@pytest.mark.parametrize("method, options", [
    ("zscl", "weight=1.0, temperature=2.0, ref_batch_size=64, ref_texts=all, text_features=teacher, we=True, "
             "we_interval=100, l2=1.0, ref_images=data/imagenet/train, "
             "ref_sentences=data/conceptual_captions/Validation_GCC-1.1.0-Validation.tsv, ref_column=0"),
    ("lwf", "alpha=1.0, temperature=2.0, classes=current, text_features=teacher, symmetric=True"),
    ("vrlwf", "lam=1.0, temperature=2.0, vocab_size=1000, vocab_length=10, vocab_draw=once, vocabulary=random_tokens"),
    ("wiseft", "alpha=0.8, anchor=previous"),
    ("finetune", None),
])
def test_mtil_presets_plan_the_authors_options(tmp_path, config, method, options):
    cfg = load_config(CONFIGS / config, [f"strategy.name={method}", f"stream.root={tmp_path}", f"output_dir={tmp_path}"])
    text = "\n".join(plan(cfg))
    if options:
        assert options in text
    assert "train: 1000 iterations/session, batch 64, adamw lr 1e-05, lr by session {'aircraft': 5e-05, 'mnist': 5e-05}" in text
    assert "label smoothing 0.2" in text and "(training with each class's first)" in text
    assert "training images: random-resized crop (scale 0.9-1.0)" in text
    assert "datasets without a test split: one random split, 80% / 20%, seed 42" in text
    deviations = [line for line in text.splitlines() if line.startswith("  deviation:")]
    # what remains: the split's item order, and the distillation batch / token ids of the LwF family
    assert len(deviations) == {"lwf": 2, "vrlwf": 3}.get(method, 1), deviations


def test_presets_are_defaults_under_the_keys_given_beside_them():
    from strategies.lwf import LwFParams
    from strategies.wiseft import WiSEFTParams

    cfg = load_config(None, ["strategy.name=wiseft", "strategy.preset=mtil", "strategy.alpha=0.6"])
    assert strategy_params(cfg, WiSEFTParams) == WiSEFTParams(alpha=0.6, anchor="previous")
    with pytest.raises(ConfigError, match="'zscl' is not a preset of strategy 'lwf'; choose one of: mtil"):
        strategy_params(load_config(None, ["strategy.name=lwf", "strategy.preset=zscl"]), LwFParams)
    assert strategy_params(load_config(None, ["strategy.preset=mtil"]), None) is None  # finetune: nothing to set


def test_random_holdout_is_torchs_random_split_with_seed_42():
    from streams.mtil import random_split_indices

    n = 8677  # Caltech101's images
    train, test = random_split_indices(n, 0.2, 42)
    a, b = torch.utils.data.random_split(range(n), [int(0.8 * n), n - int(0.8 * n)],
                                         generator=torch.Generator().manual_seed(42))
    assert train == sorted(a.indices) and test == sorted(b.indices) and len(test) == 1736


def test_training_prompts_use_the_first_template_and_evaluation_all(tmp_path):
    torch.manual_seed(0)
    inputs = torch.randn(6, 1)  # 2 classes x 3 templates
    classifier = ClipClassifier(Toy(), ["a", "b"], inputs, 3, train_templates="first")
    classifier.train()
    first = classifier.class_embeddings()
    with torch.no_grad():
        expected = nn.functional.normalize(classifier.model.encode_text(inputs[[0, 3]]), dim=-1)
    torch.testing.assert_close(first, expected)
    classifier.eval()
    assert not torch.allclose(classifier.class_embeddings(), first)  # the mean over all three


def test_augmentation_is_the_training_transform_of_training_images_only():
    from continual.clip.backbone import load_backbone
    from streams.classification import digits_stream

    backbone = load_backbone("tiny-vit", "", "all")
    crop = backbone.preprocess_train.transforms[0]
    assert type(crop).__name__ == "RandomResizedCrop" and crop.scale == (0.9, 1.0)
    calls = []

    def encode(ds, key, train=False):
        calls.append(train)
        return torch.zeros(len(ds), 1)

    cfg = load_config(None, ["stream.name=digits", "stream.n_sessions=2", "stream.augment=true"])
    digits_stream(cfg.stream, 0, encode)
    assert calls == [True, False]  # the training split through the training transform, the test split not


def test_augmentation_with_cached_trunk_features_says_so_in_one_line_before_training(tmp_path, make_config):
    from continual.run.loop import run

    lines = []
    run(make_config(tmp_path, "stream.augment=true", "control.name=null", "train.epochs=1"), echo=lines.append,
        progress=False)
    said = [i for i, line in enumerate(lines) if line.startswith("stream.augment: off")]
    started = next(i for i, line in enumerate(lines) if line.startswith("MLflow run"))
    assert len(said) == 1 and said[0] < started


# -- every protocol config: the deviations that remain, one line each ---------------------------------
@pytest.mark.parametrize("config, expected", [
    ("modx-coco-flickr.yaml", []),
    ("modx-flickr-openai.yaml", ["Mod-X starts from RN50 (openai)"]),
    ("fscil-cifar100.yaml", ["5 shots are drawn with the seed"]),
    ("fscil-miniimagenet.yaml", ["5 shots are drawn with the seed"]),
    ("fscil-cub200.yaml", ["5 shots are drawn with the seed"]),
    ("mtil-order1.yaml", ["random 80/20 split (seed 42) over the images in sorted path order"]),
    ("mtil-order2.yaml", ["random 80/20 split (seed 42) over the images in sorted path order"]),
    ("mtil-offline.yaml", ["no training augmentation", "mean of every template", "recipe: model lit-effnet-minilm"]),
    ("modx.yaml", ["Mod-X starts from lit-effnet-minilm", "on classification batches", "train.drop_last False",
                   "set at batch 280"]),
    ("vrlwf.yaml", ["special tokens", "second batch"]),
    ("zscl.yaml", ["reference data: the control set's complement"]),
    ("cpe-clip.yaml", ["backbone tiny-vit", "stream fashion-mnist, not a few-shot protocol"]),
])
def test_dry_run_names_each_remaining_deviation(tmp_path, config, expected):
    cfg = load_config(CONFIGS / config, [f"output_dir={tmp_path}"])
    lines = plan(cfg)
    deviations = [line for line in lines if line.startswith("  deviation: ")]
    assert len(deviations) == len(expected), deviations
    for line, needle in zip(deviations, expected):
        assert needle in line
    assert any(line.startswith(f"fidelity: {len(expected) or 'no'} known deviation") for line in lines)


def test_switching_an_option_back_removes_its_deviation(tmp_path):
    cfg = load_config(CONFIGS / "modx-coco-flickr.yaml", [f"output_dir={tmp_path}", "stream.sampling=pair",
                                                          "stream.test_by=session", "stream.train_splits=[train]"])
    deviations = [line for line in plan(cfg) if line.startswith("  deviation: ")]
    starts = ["one example per (image, caption) pair", "each phase is scored on the test images inside its slice",
              "Flickr30K's val images are not trained"]
    assert len(deviations) == 3 and all(d.split(": ", 1)[1].startswith(s) for d, s in zip(deviations, starts))
