"""stream.val_fraction / evaluate_on / the session window (continual.run.validation): the validation
split is carved from training data only (disjoint from training and test), per class (per image
on image-text streams), deterministic per seed; with evaluate_on=validation the test data is
sealed: a whole run never encodes or scores a test or control example."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from conftest import small_config
from continual.run import validation
from continual.errors import ConfigError
from continual.registry import STREAMS


def test_split_per_group_is_disjoint_per_class_and_seeded():
    groups = [c for c in range(4) for _ in range(10)] + [9]  # a class of one stays in training
    keep, val = validation.split_per_group(groups, 0.3, seed=0, session=1)
    assert not set(keep) & set(val) and sorted(keep + val) == list(range(len(groups)))
    assert Counter(groups[i] for i in val) == {0: 3, 1: 3, 2: 3, 3: 3}
    assert validation.split_per_group(groups, 0.3, seed=0, session=1) == (keep, val)
    assert validation.split_per_group(groups, 0.3, seed=1, session=1)[1] != val
    assert validation.split_per_group(groups, 0.3, seed=0, session=2)[1] != val


def _ids_encoder(ds, key, train=False):
    """Each item's input is a unique id: its position, +100000 for test data (never asked for
    when sealed)."""
    offset = 100000 if "-test" in key else 0
    return torch.arange(len(ds), dtype=torch.float32)[:, None] + offset


def _ids(dataset) -> list[int]:
    return [int(dataset[i][0].item()) for i in range(len(dataset))]


@pytest.mark.parametrize("evaluate_on", ["test", "validation"])
def test_classification_validation_is_carved_from_training_data(tmp_path, evaluate_on):
    cfg = small_config(tmp_path, "stream.val_fraction=0.25", f"stream.evaluate_on={evaluate_on}")
    plain = STREAMS.get("digits")(small_config(tmp_path).stream, 0, _ids_encoder)
    stream = validation.wrap(STREAMS.get("digits"), cfg.stream)(cfg.stream, 0, _ids_encoder)
    again = validation.wrap(STREAMS.get("digits"), cfg.stream)(cfg.stream, 0, _ids_encoder)
    other_seed = validation.wrap(STREAMS.get("digits"), cfg.stream)(cfg.stream, 1, _ids_encoder)
    for j in range(2):
        whole = _ids(plain.benchmark.train_stream[j].dataset)
        train = _ids(stream.benchmark.train_stream[j].dataset)
        val = _ids(stream.benchmark.validation[j])
        test = _ids(plain.benchmark.test_stream[j].dataset)
        assert not set(train) & set(val) and sorted(train + val) == sorted(whole)  # carved from training data
        assert not set(val) & set(test) and all(v < 100000 for v in val)
        labels = Counter(int(y) for y in stream.benchmark.validation[j].targets)
        assert set(labels.values()) == {10} and len(labels) == len(plain.sessions[j].classes)  # 25% of 40 per class
        assert _ids(again.benchmark.validation[j]) == val  # deterministic per seed
        scored = _ids(stream.benchmark.test_stream[j].dataset)
        assert scored == (val if evaluate_on == "validation" else test)
        assert stream.sessions[j].n_train == len(train)
    assert any(_ids(other_seed.benchmark.validation[j]) != _ids(stream.benchmark.validation[j]) for j in range(2))


def test_session_window(tmp_path):
    cfg = small_config(tmp_path, "stream.first_session=2")
    stream = validation.wrap(STREAMS.get("digits"), cfg.stream)(cfg.stream, 0, _ids_encoder)
    plain = STREAMS.get("digits")(small_config(tmp_path).stream, 0, _ids_encoder)
    assert [s.classes for s in stream.sessions] == [plain.sessions[1].classes] and stream.sessions[0].index == 1
    assert stream.benchmark.train_stream[0].current_experience == 0
    with pytest.raises(ConfigError, match="first_session"):
        validation.wrap(STREAMS.get("digits"), cfg.stream)(small_config(tmp_path, "stream.last_session=3").stream, 0)
    for bad in ("stream.val_fraction=1", "stream.evaluate_on=validation", "stream.evaluate_on=tests"):
        with pytest.raises(ConfigError, match="stream.val_fraction|stream.evaluate_on"):
            small_config(tmp_path, bad)


def test_a_sealed_run_never_touches_test_or_control_data(tmp_path, monkeypatch):
    """A whole run with evaluate_on=validation: every image encoding it asks for is of training
    data (a test dataset's encoding raises), the control loader raises if called, and the
    matrices are scored on validation counts."""
    import continual.clip.features as features
    from continual.registry import CONTROLS
    from continual.run.loop import run

    encoded = []
    real = features.image_inputs

    def spy(ds, key, *args, **kwargs):
        if "-test" in key:
            raise AssertionError(f"test data encoded: {key}")
        encoded.append(key)
        return real(ds, key, *args, **kwargs)

    def no_control(*args, **kwargs):
        raise AssertionError("control data loaded")

    monkeypatch.setattr(features, "image_inputs", spy)
    monkeypatch.setitem(CONTROLS._entries, "heldout-captions", validation_entry(no_control))
    cfg = small_config(tmp_path, "stream.val_fraction=0.25", "stream.evaluate_on=validation", "train.epochs=1",
                       "diagnostics.enabled=false", "threads=1")
    rows = []
    result = run(cfg, echo=lambda _: None, progress=False, on_row=lambda i, m, run_id: rows.append(i))
    assert rows == [0, 1, 2] and encoded and all("-train" in k for k in encoded)
    assert result.control == [] and result.accuracy.shape == (3, 2)


def validation_entry(target):
    from continual.registry import Entry

    return Entry("heldout-captions", target, "raises")


def test_image_text_validation_is_by_image_and_sealed(tmp_path):
    from test_pairs import encoders, stream_cfg, two_caption_manifest
    from streams.pairs import caption_pairs_stream

    images, texts = encoders()
    asked = []

    def encode(ds, key):
        rows = getattr(ds, "indices", range(len(ds)))
        base = getattr(ds, "dataset", ds)
        asked.extend(base.pairs[i].image_path if hasattr(base.pairs[i], "image_path") else base.pairs[i].key for i in rows)
        return images(ds, key)

    path = two_caption_manifest(tmp_path)
    cfg = stream_cfg(tmp_path, f"stream.sources=[{path}]", "stream.n_sessions=2", "stream.val_fraction=0.34",
                     "stream.evaluate_on=validation")
    stream = validation.wrap(caption_pairs_stream, cfg)(cfg, 0, encode, texts)
    for j, s in enumerate(stream.sessions):
        experience = stream.benchmark.train_stream[j].dataset
        train_keys = {stream.caption_keys[int(t)] for t in experience.targets}
        val = stream.tests[j]
        assert len(val.keys) == 1 and len(val.caption_image) == 2  # one held-out image, both its captions
        assert not set(val.keys) & train_keys and len(train_keys) == 2
        for i in range(len(experience)):
            experience[i]  # training inputs: materialised now, training rows only
    assert asked and not any("img3" in str(k) or "img7" in str(k) for k in asked)  # the test images: never encoded
