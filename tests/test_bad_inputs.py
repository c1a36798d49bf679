"""Bad input is caught before training: exit status 2, one line naming the problem and the fix,
no traceback, nothing half-written, no MLflow run left RUNNING."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from continual.cli import main

SMALL = ["model.pretrained=null", "stream.name=digits", "stream.n_sessions=2", "stream.train_per_class=20",
         "stream.test_per_class=10", "control.name=null", "train.epochs=1", "tracking.experiment=bad"]


def fails(capsys, tmp_path: Path, *args: str, small: bool = True) -> str:
    """Run the CLI; assert a clean one-line failure and return the message."""
    argv = list(args)
    if small and args[0] == "run":  # the case's own arguments come last, so that they win
        argv = argv[:2] + [f"output_dir={tmp_path}"] + SMALL + argv[2:]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert "Traceback" not in err
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").rglob("*"))
    assert not list(tmp_path.rglob("*.tmp"))
    db = tmp_path / "mlflow.db"
    if db.exists():
        from mlflow import MlflowClient

        client = MlflowClient(f"sqlite:///{db}")
        runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
        assert all(r.info.status != "RUNNING" for r in runs)
    return err[len("error: "):]


CONFIG_CASES = [
    ("train.lrr=0.1", "did you mean 'lr'"),
    ("sede=1", "did you mean 'seed'"),
    ("trian.lr=0.1", "unknown config key 'trian'"),
    ("train.epochs=three", "train.epochs: expected Integer"),
    ("model.train_logit_scale=maybe", "model.train_logit_scale"),
    ("train.lr=-0.001", "train.lr must be > 0"),
    ("stream.n_sessions=0", "stream.n_sessions must be > 0"),
    ("stream.train_per_class=-5", "stream.train_per_class must be >= 0"),
    ("train.label_smoothing=1.5", "train.label_smoothing must be in [0, 1)"),
    ("model.trainable=everything", "model.trainable"),
    ("train.optimizer=adam", "did you mean 'adamw'"),
    ("train.scheduler=linear", "train.scheduler"),
    ("eval.label_space=future", "eval.label_space"),
    ("model.templates=[a photo]", "'{}'"),
    ("strategy.name=finetun", "did you mean 'finetune'"),
    ("stream.name=cifar10", "unknown stream 'cifar10'"),
    ("control.name=imagenet", "unknown control set 'imagenet'"),
    ("control.heldout_fraction=1.5", "control.heldout_fraction"),
    ("threads=-1", "threads must be >= 0"),
    ("strategy.lam=5", "takes no parameters"),
    ("train.lr", "is not key=value"),
]


@pytest.mark.parametrize("override, needle", CONFIG_CASES)
def test_config_mistakes(capsys, tmp_path, override, needle):
    assert needle in fails(capsys, tmp_path, "run", "configs/default.yaml", override)


def test_missing_and_invalid_config_files(capsys, tmp_path):
    assert "config not found" in fails(capsys, tmp_path, "run", str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    assert "not valid YAML" in fails(capsys, tmp_path, "run", str(bad))


@pytest.mark.parametrize("override, needle", [
    ("stream.n_sessions=11", "between 1 and the number of classes (10)"),
    ("stream.class_order=[0,1,2]", "permutation of 0..9"),
])
def test_stream_that_cannot_be_built(capsys, tmp_path, override, needle):
    assert needle in fails(capsys, tmp_path, "run", "configs/default.yaml", override)


def test_missing_data(capsys, tmp_path):
    message = fails(capsys, tmp_path, "run", "configs/default.yaml", "stream.name=fashion-mnist",
                    f"stream.root={tmp_path / 'absent'}")
    assert "apt-get install dataset-fashion-mnist" in message


@pytest.mark.parametrize("uri, needle", [
    ("http://127.0.0.1:9", "127.0.0.1:9"),
    ("file:///tmp/mlruns", "file"),
])
def test_tracking_store_that_cannot_be_used(capsys, tmp_path, uri, needle):
    assert needle in fails(capsys, tmp_path, "run", "configs/default.yaml", f"tracking.uri={uri}")


@pytest.mark.parametrize("override, needle", [
    ("model.name=ViT-Q-99", "unknown open_clip model 'ViT-Q-99'"),
    ("model.pretrained=base:nope", "unknown base 'base:nope'"),
    ("model.pretrained=/nonexistent/weights.safetensors", "/nonexistent/weights.safetensors"),
])
def test_models_that_cannot_be_built(capsys, tmp_path, override, needle):
    assert needle in fails(capsys, tmp_path, "run", "configs/default.yaml", override)


def test_truncated_model_checkpoint(capsys, tmp_path):
    bad = tmp_path / "weights.safetensors"
    bad.write_bytes(b"\x20\x00\x00\x00\x00\x00\x00\x00{")
    assert "unreadable or truncated" in fails(capsys, tmp_path, "run", "configs/default.yaml",
                                              f"model.pretrained={bad}")


def test_resume_of_an_unknown_run(capsys, tmp_path):
    assert "no such run" in fails(capsys, tmp_path, "run", "configs/default.yaml", "--resume", "0123456789abcdef")


def test_metrics_of_a_bad_matrix(capsys, tmp_path):
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("1,2\n3\n")
    assert "non-rectangular" in fails(capsys, tmp_path, "metrics", str(ragged))
    words = tmp_path / "words.csv"
    words.write_text("1,2\n3,abc\n")
    assert "non-numeric" in fails(capsys, tmp_path, "metrics", str(words))


PAIRS = ["stream.name=caption-pairs", "stream.n_sessions=2"]


@pytest.mark.parametrize("overrides, needle", [
    (["eval.metric=retrieval"], "eval.metric=retrieval needs an image-text stream"),
    ([*PAIRS, "eval.metric=accuracy"], "eval.metric=accuracy needs a classification stream"),
    ([*PAIRS, "strategy.name=cpe-clip"], "strategy 'cpe-clip' works on classification streams"),
    ([*PAIRS, "strategy.name=lwf"], "strategy 'lwf' works on classification streams"),
    ([*PAIRS, "train.loss=ce"], "train.loss=ce needs class labels"),
    ([*PAIRS, "stream.session_by=source", "stream.n_sessions=3"], "set n_sessions=2"),
    ([*PAIRS, "stream.session_by=slices", "stream.slices=[1]"], "stream.slices must give"),
    ([*PAIRS, "stream.sources=[emoji,flickr]"], "'flickr' is neither a built-in source"),
    (["train.session_lr={aircraft: 1e-4}"], "train.session_lr.aircraft: no session of that name"),
    (["stream.test_fraction=1.0"], "stream.test_fraction must be in (0, 1)"),
    (["stream.on_corrupt=ignore"], "stream.on_corrupt"),
    (["train.iterations=-1"], "train.iterations must be >= 0"),
])
def test_method_metric_or_option_that_does_not_fit_the_stream(capsys, tmp_path, overrides, needle):
    assert needle in fails(capsys, tmp_path, "run", "configs/default.yaml", *overrides)


def test_manifest_problems(capsys, tmp_path):
    absent = tmp_path / "data" / "dataset_flickr30k.json"
    message = fails(capsys, tmp_path, "run", "configs/default.yaml", *PAIRS, "stream.session_by=source",
                    "stream.n_sessions=1", f"stream.sources=[{absent}]")
    assert f"manifest not found: {absent}" in message and "karpathy" in message.lower()
    no_caption = tmp_path / "pairs.csv"
    no_caption.write_text("image,text\na.png,a cat\n")
    assert "lacks the column(s) caption" in fails(capsys, tmp_path, "run", "configs/default.yaml", *PAIRS,
                                                   f"stream.sources=[{no_caption}]")


def test_corrupt_image_in_a_manifest(capsys, tmp_path):
    from PIL import Image

    rows = []
    for i in range(6):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,red square {i},squares")
    (tmp_path / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    manifest = tmp_path / "pairs.csv"
    manifest.write_text("image,caption,group\n" + "\n".join(rows) + "\n")
    message = fails(capsys, tmp_path, "run", "configs/default.yaml", "stream.name=caption-pairs", "stream.n_sessions=1",
                    f"stream.sources=[{manifest}]")
    assert f"cannot read image {tmp_path / '3.png'}" in message and "stream.on_corrupt=skip" in message

    from continual.config import load_config
    from streams.pairs import caption_pairs_stream

    cfg = load_config(None, ["stream.name=caption-pairs", "stream.n_sessions=1", f"stream.sources=[{manifest}]",
                             "stream.on_corrupt=skip"]).stream
    stream = caption_pairs_stream(cfg, 0, lambda ds, key: torch.zeros(len(ds), 2), lambda t: torch.zeros(len(t), 2))
    assert any("skipped 1 unreadable images" in note for note in stream.notes)
    assert sum(s.n_train + s.n_test for s in stream.sessions) == 5
