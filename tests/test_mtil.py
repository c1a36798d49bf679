"""MTIL (multi-domain task-incremental): the published orders, the plan without data, one-line
errors, and the offline domains' benchmark (real data, a trivial encoder)."""

from __future__ import annotations

import gzip
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from continual.config.schema import ControlConfig

from continual.config.load import load_config
from continual.errors import ConfigError
from streams.captions import EMOJI_FONT_FILE, EMOJI_TEST_FILE, TUX_STAMPS_DIR
from streams.datasets import FASHION_MNIST_SYSTEM_DIR, DataNotFoundError
from streams.mtil import DOMAINS, ORDER_I, ORDER_II, mtil_stream, stratified_split

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

# METHODS.md section 6 (ZSCL): the datasets in the published orders, with their class counts.
PUBLISHED_ORDER_I = ["aircraft", "caltech101", "cifar100", "dtd", "eurosat", "flowers", "food", "mnist",
                     "oxford-pet", "stanford-cars", "sun397"]
PUBLISHED_ORDER_II = ["stanford-cars", "food", "mnist", "oxford-pet", "flowers", "sun397", "aircraft", "caltech101",
                      "dtd", "eurosat", "cifar100"]
N_CLASSES = {"aircraft": 100, "caltech101": 101, "cifar100": 100, "dtd": 47, "eurosat": 10, "flowers": 102,
             "food": 101, "mnist": 10, "oxford-pet": 37, "stanford-cars": 196, "sun397": 397}

needs_offline = pytest.mark.skipif(
    not (FASHION_MNIST_SYSTEM_DIR.is_dir() and EMOJI_TEST_FILE.is_file() and EMOJI_FONT_FILE.is_file()
         and TUX_STAMPS_DIR.is_dir()),
    reason="apt-get install dataset-fashion-mnist fonts-noto-color-emoji unicode-data tuxpaint-stamps-default")


def assert_one_line(excinfo: pytest.ExceptionInfo, *needles: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def order_config(name: str, tmp_path: Path, *overrides: str):
    return load_config(CONFIGS / name, [f"stream.root={tmp_path / 'absent'}", f"output_dir={tmp_path}", *overrides])


# --- the published orders, planned without the data --------------------------------------------


@pytest.mark.parametrize("config, order", [("mtil-order1.yaml", PUBLISHED_ORDER_I),
                                           ("mtil-order2.yaml", PUBLISHED_ORDER_II)])
def test_order_configs_plan_the_11_datasets_in_the_published_order(tmp_path, config, order) -> None:
    from continual.run.loop import plan

    cfg = order_config(config, tmp_path)
    assert list(cfg.stream.datasets) == order
    stream = mtil_stream(cfg.stream, cfg.seed)
    assert [s.name for s in stream.sessions] == order
    assert [len(s.classes) for s in stream.sessions] == [N_CLASSES[n] for n in order]
    assert len(stream.class_names) == len(stream.templates) == 1201
    start = 0  # labels are concatenated in session order
    for session in stream.sessions:
        assert session.classes == list(range(start, start + N_CLASSES[session.name]))
        start += len(session.classes)
    assert stream.benchmark is None
    assert not (tmp_path / "absent").exists()  # a plan creates no data folder
    # Nominal sizes where the data is absent: the official splits, or 80/20 without one.
    sizes = {s.name: (s.n_train, s.n_test) for s in stream.sessions}
    assert sizes["aircraft"] == (3334, 3333) and sizes["cifar100"] == (50000, 10000)
    assert sizes["oxford-pet"] == (3680, 3669) and sizes["sun397"] == (87003, 21751)
    assert sum("data absent" in note for note in stream.notes) == 11

    lines = plan(cfg)  # what `continual run CONFIG --dry-run` prints
    text = "\n".join(lines)
    assert "stream mtil: 11 sessions, 1201 classes" in text
    for i, name in enumerate(order, start=1):
        assert f"session {i} ({name}): {N_CLASSES[name]} classes" in text

    # The ZSCL recipe.
    assert (cfg.model.name, cfg.model.pretrained, cfg.model.trainable) == ("ViT-B-16", "openai", "all")
    assert cfg.strategy.name == "zscl" and cfg.train.iterations == 1000 and cfg.train.batch_size == 64
    assert cfg.train.lr == 1e-5 and dict(cfg.train.session_lr) == {"aircraft": 5e-5, "mnist": 5e-5}
    assert cfg.train.label_smoothing == 0.2 and cfg.train.label_space == "current"
    assert cfg.eval.label_space == "session"


def test_order_constants_and_domain_table() -> None:
    assert ORDER_I == PUBLISHED_ORDER_I and ORDER_II == PUBLISHED_ORDER_II
    for name, domain in DOMAINS.items():
        assert domain.templates and all("{}" in t for t in domain.templates), name
        assert not domain.classes or len(domain.classes) == domain.n_classes, name
        assert len(domain.class_names()) == domain.n_classes
    assert {n: DOMAINS[n].n_classes for n in ORDER_I} == N_CLASSES


# --- one-line errors ------------------------------------------------------------------------------


def test_unknown_repeated_or_missing_domains_are_one_line_config_errors(tmp_path) -> None:
    cfg = order_config("mtil-offline.yaml", tmp_path, "stream.datasets=[digits,aircraf]")
    with pytest.raises(ConfigError) as excinfo:
        mtil_stream(cfg.stream, 0)
    assert_one_line(excinfo, "stream.datasets[1]", "'aircraf'", "did you mean 'aircraft'", "sun397", "emoji-groups")

    cfg = order_config("mtil-offline.yaml", tmp_path, "stream.datasets=[digits,digits]")
    with pytest.raises(ConfigError) as excinfo:
        mtil_stream(cfg.stream, 0)
    assert_one_line(excinfo, "digits more than once")

    cfg = order_config("mtil-offline.yaml", tmp_path, "stream.datasets=[]")
    with pytest.raises(ConfigError) as excinfo:
        mtil_stream(cfg.stream, 0)
    assert_one_line(excinfo, "stream.datasets is empty")


@pytest.mark.parametrize("name, fix", [("aircraft", "stream.download=true"),
                                       ("stanford-cars", "torchvision cannot download Stanford Cars")])
def test_absent_data_stops_a_real_build_with_the_path_and_the_fix(tmp_path, name, fix) -> None:
    cfg = order_config("mtil-order1.yaml", tmp_path, f"stream.datasets=[{name}]")
    with pytest.raises(DataNotFoundError) as excinfo:
        mtil_stream(cfg.stream, 0, lambda ds, key: torch.zeros(len(ds), 4))
    assert_one_line(excinfo, str(tmp_path / "absent" / name), fix)


# --- a torchvision domain read from stream.root ---------------------------------------------------


@pytest.mark.skipif(not FASHION_MNIST_SYSTEM_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_torchvision_domain_reads_its_folder_under_root(tmp_path) -> None:
    # torchvision's MNIST file layout, filled with the Fashion-MNIST IDX files installed here: the
    # test exercises the torchvision path (labels, names from the data, sampling, offsets).
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in FASHION_MNIST_SYSTEM_DIR.glob("*-ubyte.gz"):
        with gzip.open(gz) as src, open(raw / gz.name.removesuffix(".gz"), "wb") as dst:
            shutil.copyfileobj(src, dst)
    cfg = load_config(CONFIGS / "mtil-order1.yaml", [f"stream.root={tmp_path}", "stream.datasets=[digits,mnist]",
                                                     "stream.train_per_class=7", "stream.test_per_class=3"])
    stream = mtil_stream(cfg.stream, 0, lambda ds, key: torch.tensor([float(t) for t in ds.targets])[:, None])
    assert [(s.name, s.n_train, s.n_test) for s in stream.sessions] == [("digits", 70, 30), ("mnist", 70, 30)]
    assert stream.class_names[10:12] == ["0 - zero", "1 - one"]  # torchvision's names, as ZSCL
    assert stream.templates[10] == ['a photo of the number: "{}".']
    test = stream.benchmark.test_stream[1].dataset
    assert sorted(set(test.targets)) == list(range(10, 20))
    assert all(int(x) + 10 == y for x, y, *_ in test)  # the encoder saw the unshifted labels


def test_stratified_split_keeps_units_together_and_is_seeded() -> None:
    targets = [0] * 10 + [1] * 4
    units = [f"c{i // 2}" for i in range(10)] + ["a", "b", "c", "d"]  # class 0: pairs of variants
    train, test = stratified_split(targets, 0.2, seed=0, units=units)
    assert sorted(train + test) == list(range(14))
    assert {units[i] for i in train}.isdisjoint(units[i] for i in test)
    assert Counter(targets[i] for i in test) == {0: 2, 1: 1}  # 1 of 5 units, 1 of 4 units
    assert stratified_split(targets, 0.2, 0, units) == (train, test)
    assert any(stratified_split(targets, 0.2, s, units) != (train, test) for s in range(1, 5))


# --- the offline variant --------------------------------------------------------------------------


@needs_offline
def test_offline_plan_sessions_classes_and_templates(tmp_path) -> None:
    cfg = load_config(CONFIGS / "mtil-offline.yaml", [f"output_dir={tmp_path}"])
    stream = mtil_stream(cfg.stream, cfg.seed)
    assert [s.name for s in stream.sessions] == ["fashion-mnist", "digits", "emoji-groups", "tux-categories"]
    assert [len(s.classes) for s in stream.sessions] == [10, 10, 9, 11]
    names = stream.class_names
    assert names[0] == "T-shirt/top" and names[10] == "zero" and names[22] == "animals & nature"
    assert names[29] == "animals" and "flags" in names[20:29]
    assert stream.templates[0][0] == "a photo of a {}, a type of clothing."
    assert stream.templates[22] == ["an emoji of {}.", "an emoji in the category {}."]
    assert stream.templates[39] == ["a picture of {}.", "a picture in the category {}."]
    train, test = cfg.stream.train_per_class, cfg.stream.test_per_class
    assert (stream.sessions[0].n_train, stream.sessions[0].n_test) == (10 * train, 10 * test)
    for s in stream.sessions:
        assert 0 < s.n_test and s.n_train <= train * len(s.classes) and s.n_test <= test * len(s.classes)
    assert not any("data absent" in note for note in stream.notes)


@needs_offline
def test_offline_benchmark_one_experience_per_domain_with_label_offsets(tmp_path) -> None:
    from streams.control import heldout_captions

    cfg = load_config(CONFIGS / "mtil-offline.yaml", ["stream.train_per_class=6", "stream.test_per_class=4"])
    seen: dict[str, object] = {}

    def encode(ds, key: str) -> torch.Tensor:
        seen[key] = ds
        return torch.tensor([float(t) for t in ds.targets])[:, None]  # the domain's own label

    stream = mtil_stream(cfg.stream, cfg.seed, encode)
    bench = stream.benchmark
    assert len(bench.train_stream) == len(bench.test_stream) == 4
    offsets = [0, 10, 20, 29]
    for k, session in enumerate(stream.sessions):
        for exp, n in ((bench.train_stream[k], session.n_train), (bench.test_stream[k], session.n_test)):
            assert sorted(exp.classes_in_this_experience) == session.classes
            assert len(exp.dataset) == n
            assert all(int(x) + offsets[k] == y for x, y, *_ in exp.dataset)
    assert len(seen) == 8 and len(set(seen)) == 8  # one cache key per domain and split
    # The emoji / Tux images never include the control's held-out concepts.
    control_keys = set(heldout_captions(ControlConfig()).keys)
    pair_ids = {i for key, ds in seen.items() if "emoji" in key or "tux" in key for i in ds.ids}
    assert pair_ids and pair_ids.isdisjoint(control_keys)
    image, label = next(ds for key, ds in seen.items() if "emoji-groups-test" in key)[0]
    assert image.mode == "RGB" and 0 <= label < 9


@pytest.mark.slow
@needs_offline
@pytest.mark.parametrize("strategy", ["vrlwf", "modx"])
def test_offline_mtil_runs_end_to_end_and_logs_its_matrices(tmp_path, strategy) -> None:
    # Features are cached after the first run; a fresh machine first builds the base (minutes).
    import numpy as np
    from mlflow import MlflowClient

    from continual.run.loop import run

    cfg = load_config(CONFIGS / "mtil-offline.yaml", [f"output_dir={tmp_path}", f"strategy.name={strategy}",
                                                      "train.iterations=10", "train.warmup_steps=1"])
    result = run(cfg, echo=lambda s: None, progress=False)
    R = result.accuracy
    assert R.shape == (5, 4) and np.isfinite(R).all()
    assert np.diag(R[1:]).mean() > R[0].mean() + 10  # each domain is learnt in its session
    assert result.summary["mtil/last"] == pytest.approx(R[4].mean())
    client = MlflowClient(result.tracking_uri)
    for key in ("mtil/transfer", "mtil/avg", "mtil/last"):
        assert [m.step for m in client.get_metric_history(result.run_id, key)] == [1, 2, 3, 4]
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"accuracy_matrix.csv", "accuracy_matrix_heatmap.png", "data_plan.txt"} <= artifacts
