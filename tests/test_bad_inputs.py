"""Bad input is caught before training: exit status 2, one line naming the problem and the fix,
no traceback, nothing half-written, no MLflow run left RUNNING.

Every case goes through :func:`fails` (or :func:`refused`, for a command run in a subprocess),
which counts it; the last test checks that the README's count of bad inputs tried is that count.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from continual.cli import main

SMALL = ["model.pretrained=null", "stream.name=digits", "stream.n_sessions=2", "stream.train_per_class=20",
         "stream.test_per_class=10", "control.name=null", "train.epochs=1", "tracking.experiment=bad"]
TRIED: list[str] = []  # every bad input tried in this file (its command line)


def fails(capsys, tmp_path: Path, *args: str, small: bool = True, trained_before: bool = False) -> str:
    """Run the CLI; assert a clean one-line failure and return the message. ``trained_before``: the
    case starts from an earlier run's outputs (checkpoints that must stay as they are)."""
    argv = list(args)
    if small and args[0] == "run":  # the case's own arguments come last, so that they win
        argv = argv[:2] + [f"output_dir={tmp_path}"] + SMALL + argv[2:]
    TRIED.append(" ".join(args))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert "Traceback" not in err
    if not trained_before:
        assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").rglob("*"))
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob(".*.creating"))
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
    ("seed=-1", "seed must be in 0..4294967295"),
    ("model.name=${model.nam}", "Interpolation key 'model.nam' not found"),
]


@pytest.mark.parametrize("override, needle", CONFIG_CASES)
def test_config_mistakes(capsys, tmp_path, override, needle):
    assert needle in fails(capsys, tmp_path, "run", "configs/default.yaml", override)


def test_missing_and_invalid_config_files(capsys, tmp_path):
    assert "config not found" in fails(capsys, tmp_path, "run", str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    assert "not valid YAML" in fails(capsys, tmp_path, "run", str(bad))


@pytest.mark.parametrize("text, needle", [
    ("", "is empty (it sets nothing)"),
    ("# only a comment\n", "is empty (it sets nothing)"),
    ("- train\n- lr: 0.1\n", "the top level is a list"),
    ("model:\n  name: ${model.nam}\n", "Interpolation key 'model.nam' not found"),
])
def test_config_files_that_are_no_config(capsys, tmp_path, text, needle):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert needle in fails(capsys, tmp_path, "run", str(path))


# Refused before anything is built, and found by --dry-run too (it makes the same checks).
NO_GPU = not torch.cuda.is_available()
BEFORE_TRAINING = [
    (["tracking.uri=ftp://x"], "cannot track to a 'ftp://' URI"),
    (["tracking.experiment=" + "x" * 501], "MLflow allows at most 500"),
    (["device=banana"], "'banana' is not a device"),
    (["strategy.name=cpe-clip"], "CPE-CLIP needs open_clip ViT/text-transformer towers"),
    (["strategy.name=cpe-clip", "model.name=RN50"], "ModifiedResNet image tower"),
    (["train.epochs=0"], "trains nothing"),
    (["stream.name=caption-pairs", "stream.n_sessions=2", "train.batch_size=1"], "nothing to contrast it with"),
    (["model.name=ViT-Q-99"], "unknown open_clip model 'ViT-Q-99'"),
    (["model.pretrained=base:nope"], "unknown base 'base:nope'"),
]


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
@pytest.mark.parametrize("overrides, needle", BEFORE_TRAINING)
def test_refused_before_anything_is_built_and_by_the_dry_run(capsys, tmp_path, overrides, needle, dry_run):
    flags = ["--dry-run"] if dry_run else []
    assert needle in fails(capsys, tmp_path, "run", "configs/default.yaml", *overrides, *flags)
    assert not (tmp_path / "mlflow.db").exists()  # no MLflow run was made, not even the store


def test_a_device_this_machine_lacks(capsys, tmp_path):
    """Refused by the run; the dry run, which may plan a GPU run on a laptop, says the run would stop."""
    device, needle = (("device=cuda", "no CUDA GPU is available") if NO_GPU
                      else (f"device=cuda:{torch.cuda.device_count()}", "GPU(s)"))
    assert needle in fails(capsys, tmp_path, "run", "configs/default.yaml", device)
    assert main(["run", "configs/default.yaml", f"output_dir={tmp_path}", *SMALL, device, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"a run on this machine would stop: {device}" in out and needle in out


def test_experiment_name_limit_is_mlflows():
    from mlflow.utils.validation import MAX_EXPERIMENT_NAME_LENGTH

    from continual.run.preflight import MAX_EXPERIMENT_NAME_LENGTH as ours

    assert ours == MAX_EXPERIMENT_NAME_LENGTH


def test_towers_judged_from_the_config_as_from_the_built_model(lit_model):
    """CPE-CLIP's fit is decided before anything is built (from open_clip's config); the built
    model gives the same answer."""
    from continual.clip.backbone import create_model
    from strategies.cpe_clip import PromptedCLIP, UnsupportedTowerError, config_problem

    assert "Hugging Face text tower" in config_problem("lit-effnet-minilm", "both")
    with pytest.raises(UnsupportedTowerError):
        PromptedCLIP(lit_model)
    assert config_problem("tiny-vit", "both") is None
    PromptedCLIP(create_model("tiny-vit")[0])  # prompts fit


def test_run_options_that_contradict(capsys, tmp_path):
    assert "contradict each other" in fails(capsys, tmp_path, "run", "configs/default.yaml", "--resume",
                                            "0123456789abcdef", "--fresh")


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
    ("model.pretrained=/nonexistent/weights.safetensors", "/nonexistent/weights.safetensors"),
])
def test_models_that_cannot_be_built(capsys, tmp_path, override, needle):
    assert needle in fails(capsys, tmp_path, "run", "configs/default.yaml", override)


class Payload:
    """A pickle that would create a file when unpickled: it must never be."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_weights_of_another_shape_or_a_pickle_as_model_pretrained(capsys, tmp_path):
    import pickle

    marker = tmp_path / "payload-ran"
    evil = tmp_path / "weights.pt"
    evil.write_bytes(pickle.dumps({"state_dict": Payload(marker)}))
    assert "refused without running it" in fails(capsys, tmp_path, "run", "configs/default.yaml",
                                                 "model.name=tiny-vit", f"model.pretrained={evil}")
    named_safetensors = tmp_path / "weights.safetensors"
    named_safetensors.write_bytes(evil.read_bytes())
    assert "unreadable or truncated" in fails(capsys, tmp_path, "run", "configs/default.yaml",
                                              f"model.pretrained={named_safetensors}")
    assert not marker.exists()
    other = tmp_path / "other.pt"
    torch.save({"visual.proj": torch.zeros(3, 3)}, other)
    assert "does not fit model tiny-vit" in fails(capsys, tmp_path, "run", "configs/default.yaml",
                                                  "model.name=tiny-vit", f"model.pretrained={other}")


def test_truncated_model_checkpoint(capsys, tmp_path):
    bad = tmp_path / "weights.safetensors"
    bad.write_bytes(b"\x20\x00\x00\x00\x00\x00\x00\x00{")
    assert "unreadable or truncated" in fails(capsys, tmp_path, "run", "configs/default.yaml",
                                              f"model.pretrained={bad}")


def test_resume_of_an_unknown_run(capsys, tmp_path):
    assert "no such run" in fails(capsys, tmp_path, "run", "configs/default.yaml", "--resume", "0123456789abcdef")


def test_resume_of_a_finished_run_and_of_checkpoints_that_do_not_fit(capsys, tmp_path):
    """A finished run is not logged again; a checkpoint whose tensors have other shapes, or that is
    a pickle, is refused in one line (its checksum recomputed, as a deliberate swap would)."""
    import pickle

    from mlflow import MlflowClient
    from safetensors.torch import load_file, save_file

    from continual.run import checkpoint

    argv = ["run", "configs/default.yaml", f"output_dir={tmp_path}", *SMALL, "--no-progress"]
    assert main(argv) == 0
    capsys.readouterr()
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("bad").experiment_id])
    run_id = run.info.run_id
    logged = len(client.get_metric_history(run_id, "total/train_seconds"))
    assert "is finished" in fails(capsys, tmp_path, *argv[:2], "--resume", run_id, trained_before=True)
    assert len(client.get_metric_history(run_id, "total/train_seconds")) == logged == 1

    folder = tmp_path / "checkpoints" / run_id
    state_path = folder / checkpoint.STATE_FILE
    state = json.loads(state_path.read_text())
    weights = folder / state["weights_file"]
    client.set_terminated(run_id, "KILLED")  # as if stopped after its last checkpoint: resumable

    def swap(write) -> None:
        write(weights)
        state_path.write_text(json.dumps(dict(state, weights_sha256=checkpoint._sha256(weights))))

    tensors = load_file(str(weights))
    name = next(k for k in tensors if not k.startswith("__"))  # a trained parameter (not RNG, not extras)
    swap(lambda path: save_file({**tensors, name: torch.zeros(3, 3)}, str(path)))
    assert "holds tensors of other shapes" in fails(capsys, tmp_path, *argv[:2], trained_before=True)
    marker = tmp_path / "payload-ran"
    swap(lambda path: path.write_bytes(pickle.dumps(Payload(marker))))
    assert "is not a safetensors file" in fails(capsys, tmp_path, *argv[:2], trained_before=True)
    assert not marker.exists()


def test_metrics_of_a_bad_matrix(capsys, tmp_path):
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("1,2\n3\n")
    assert "non-rectangular" in fails(capsys, tmp_path, "metrics", str(ragged))
    words = tmp_path / "words.csv"
    words.write_text("1,2\n3,abc\n")
    assert "non-numeric" in fails(capsys, tmp_path, "metrics", str(words))
    for i, cells in enumerate(["50,-10\n90,40\n", "50,10\n190,40\n", "50,inf\n10,40\n"]):
        path = tmp_path / f"range{i}.csv"
        path.write_text(cells)
        assert "is not an accuracy (0..100" in fails(capsys, tmp_path, "metrics", str(path), "--format", "json")


def test_metrics_json_is_strict(capsys, tmp_path):
    """Undefined metrics (no row 0: no forward transfer; a cell not evaluated) are null, never NaN."""
    path = tmp_path / "m.csv"
    path.write_text("50,nan\n40,80\n")
    assert main(["metrics", str(path), "--format", "json"]) == 0

    def refuse(token):
        raise AssertionError(f"not JSON: {token}")

    out = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert out["fwt"] is None and out["forgetting"] == 10.0


PAIRS = ["stream.name=caption-pairs", "stream.n_sessions=2"]


# -- the disk: full, read-only (a real tmpfs and a read-only bind mount, in a private mount namespace)
def mount_namespace_available() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0
    except OSError:
        return False


def refused(script: str, tmp_path: Path, *args: str) -> str:
    """Run ``continual run`` (``$RUN`` in ``script``) in a private mount namespace set up by
    ``script``; assert a clean one-line failure and return the message."""
    run = " ".join([sys.executable, "-m", "continual", "run", "configs/default.yaml", "--no-progress", *SMALL, *args])
    TRIED.append(f"{script} {' '.join(args)}")
    out = subprocess.run(["unshare", "-rm", "sh", "-c", script.replace("$RUN", run)], capture_output=True,
                         text=True, timeout=300)
    err = out.stderr.strip()
    assert out.returncode == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err[-3000:]
    return err[len("error: "):]


needs_mounts = pytest.mark.skipif(not mount_namespace_available(),
                                  reason="needs `unshare -rm` (user and mount namespaces) for a tmpfs and a read-only mount")


@needs_mounts
def test_full_disk_and_read_only_output_dir(tmp_path):
    disk, store = tmp_path / "disk", tmp_path / "store"
    disk.mkdir()
    store.mkdir()
    # a full disk: refused before anything starts
    message = refused(f"mount -t tmpfs -o size=64k tmpfs {disk} && (head -c 1000000 /dev/zero > {disk}/fill 2>/dev/null; $RUN)",
                      tmp_path, f"output_dir={disk}/out")
    assert f"cannot write in {disk} (No space left on device)" in message  # the store's folder, checked first
    # a read-only output_dir, the store elsewhere
    message = refused(f"mount -o bind,ro {disk} {disk} && $RUN", tmp_path, f"output_dir={disk}",
                      f"tracking.uri=sqlite:///{store}/mlflow.db")
    assert f"output_dir {disk}" in message and "Read-only file system" in message
    assert not (store / "mlflow.db").exists()  # refused before the store was touched


@needs_mounts
def test_disk_that_fills_up_during_the_run(tmp_path):
    """2 MB: room for the store, not for the first checkpoint (1.7 MB of projections)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    # exit 99 if a half-written file is left behind
    script = (f"mount -t tmpfs -o size=2m tmpfs {disk} && $RUN; status=$?; "
              f"find {disk} -name '*.tmp' | grep -q . && exit 99; exit $status")
    message = refused(script, tmp_path, f"output_dir={disk}/out")
    assert "No space left on device" in message and "once space is freed" in message


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

    from continual.config.load import load_config
    from streams.pairs import caption_pairs_stream

    cfg = load_config(None, ["stream.name=caption-pairs", "stream.n_sessions=1", f"stream.sources=[{manifest}]",
                             "stream.on_corrupt=skip"]).stream
    stream = caption_pairs_stream(cfg, 0, lambda ds, key: torch.zeros(len(ds), 2), lambda t: torch.zeros(len(t), 2))
    assert any("skipped 1 unreadable images" in note for note in stream.notes)
    assert sum(s.n_train + s.n_test for s in stream.sessions) == 5


def test_readme_counts_every_bad_input_tried(request):
    """Last in this file: README's "tries N" is the number of bad inputs the tests above tried."""
    module = request.node.parent
    expected = {item.nodeid for item in module.collect()} - {request.node.nodeid}
    ran = {item.nodeid for item in request.session.items} & expected
    if ran != expected or request.session.testsfailed or not mount_namespace_available():
        pytest.skip("run every test of this file (all passing, none skipped) to check the README's count")
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    found = re.search(r"`tests/test_bad_inputs.py` tries (\d+) of them", readme)
    assert found, "README must say how many bad inputs tests/test_bad_inputs.py tries"
    assert int(found.group(1)) == len(TRIED), f"README says {found.group(1)}, the tests tried {len(TRIED)}"

