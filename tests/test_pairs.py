"""Image-text streams: manifests (several captions per image), sessions by group / source /
slices, retrieval on every session's test pairs, and real runs with Mod-X and VR-LwF."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from continual.config.load import load_config
from continual.run.evaluation import retrieval
from continual.stream import PairSet
from streams.pairs import caption_pairs_stream

DIGITS = None


def digit_png(folder: Path, i: int) -> str:
    """A real image file: scikit-learn digit ``i`` as a PNG."""
    global DIGITS
    if DIGITS is None:
        from sklearn.datasets import load_digits
        DIGITS = load_digits().images
    path = folder / f"img{i}.png"
    Image.fromarray(np.uint8(DIGITS[i] * 15)).resize((32, 32)).save(path)
    return path.name


def stream_cfg(tmp_path, *overrides: str):
    return load_config(None, [f"output_dir={tmp_path}", "stream.name=caption-pairs", *overrides]).stream


def encoders():
    """Trivial but real encoders: pixels and caption lengths as features."""
    def images(ds, key):
        return torch.stack([torch.as_tensor(np.asarray(ds[i][0].convert("L").resize((4, 4))), dtype=torch.float32).flatten()
                            for i in range(len(ds))])

    def texts(captions):
        return torch.tensor([[len(c), c.count(" ")] for c in captions], dtype=torch.float32)
    return images, texts


def write_csv(tmp_path: Path, rows: list[tuple]) -> str:
    path = tmp_path / "pairs.csv"
    path.write_text("image,caption,group,split\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return str(path)


def two_caption_manifest(tmp_path: Path) -> str:
    """8 images in 2 groups, 2 captions each; images 3 and 7 are the test images of each group."""
    rows = []
    for i in range(8):
        name = digit_png(tmp_path, i)
        group = "animals" if i < 4 else "vehicles"
        split = "test" if i in (3, 7) else "train"
        rows += [(name, f"picture {i}", group, split), (name, f"another view of {i}", group, split)]
    return write_csv(tmp_path, rows)


def test_manifest_sessions_by_group_with_several_captions_per_image(tmp_path):
    path = two_caption_manifest(tmp_path)
    cfg = stream_cfg(tmp_path, f"stream.sources=[{path}]", "stream.n_sessions=2")
    plan = caption_pairs_stream(cfg, seed=0)
    assert [(s.n_train, s.n_test) for s in plan.sessions] == [(6, 2), (6, 2)]
    assert sorted(s.name for s in plan.sessions) == ["animals", "vehicles"]
    assert plan.sessions[0].classes == list(range(6)) and plan.sessions[1].classes == list(range(6, 12))

    images, texts = encoders()
    stream = caption_pairs_stream(cfg, 0, images, texts)
    assert len(stream.benchmark.train_stream) == 2
    first = stream.benchmark.train_stream[0]
    assert sorted(first.classes_in_this_experience) == list(range(6))
    for session, test in zip(stream.sessions, stream.tests):
        assert len(test.keys) == 1 and test.caption_image.tolist() == [0, 0]  # one image, its two captions
        i = 3 if session.name == "animals" else 7
        assert test.keys == [str(tmp_path / f"img{i}.png")]
        assert torch.equal(test.text_inputs, texts([f"picture {i}", f"another view of {i}"]))
    # a training pair's input is its own image's: the two captions of image 0 share it
    items = {int(first.dataset[i][1]): first.dataset[i][0] for i in range(len(first.dataset))}
    assert sorted(items) == list(range(6)) and torch.equal(items[0], items[1]) and not torch.equal(items[0], items[2])


def test_same_seed_same_sessions_other_seed_other(tmp_path):
    cfg = stream_cfg(tmp_path, "stream.n_sessions=4")
    a = caption_pairs_stream(cfg, seed=0)
    b = caption_pairs_stream(cfg, seed=0)
    c = caption_pairs_stream(cfg, seed=1)
    assert [s.name for s in a.sessions] == [s.name for s in b.sessions]
    assert [s.name for s in a.sessions] != [s.name for s in c.sessions]


def test_slices_cut_each_source_in_file_order(tmp_path):
    rows = [{"image": digit_png(tmp_path, i), "caption": f"digit number {i}"} for i in range(12)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = stream_cfg(tmp_path, f"stream.sources=[{path}]", "stream.session_by=slices", "stream.n_sessions=3",
                     "stream.test_fraction=0.25")
    stream = caption_pairs_stream(cfg, seed=0, encode=encoders()[0], encode_texts=encoders()[1])
    assert [s.n_train + s.n_test for s in stream.sessions] == [4, 4, 4]
    for k, test in enumerate(stream.tests):  # slice k holds images 4k..4k+3
        assert all(int(Path(key).stem[3:]) // 4 == k for key in test.keys)


def test_karpathy_split_file(tmp_path):
    images = []
    for i, split in enumerate(["train", "restval", "val", "test"]):
        digit_png(tmp_path, i)
        images.append({"filepath": "", "filename": f"img{i}.png", "split": split,
                       "sentences": [{"raw": f"a digit {i} "}, {"raw": f"the  number {i}"}]})
    path = tmp_path / "dataset_tiny.json"
    path.write_text(json.dumps({"images": images}))
    cfg = stream_cfg(tmp_path, f"stream.sources=[{path}]", "stream.session_by=source", "stream.n_sessions=1")
    stream = caption_pairs_stream(cfg, seed=0, encode=encoders()[0], encode_texts=encoders()[1])
    assert stream.class_names == ["a digit 0", "the number 0", "a digit 1", "the number 1"]  # restval trains, val is out
    assert stream.tests[0].keys == [str(tmp_path / "img3.png")] and len(stream.tests[0].caption_image) == 2


class FixedFeatures(torch.nn.Module):
    """A "model" whose encoders return given features (inputs are indices)."""

    def __init__(self, image_features, text_features):
        super().__init__()
        self.i, self.t = torch.tensor(image_features, dtype=torch.float32), torch.tensor(text_features, dtype=torch.float32)

    def encode_image(self, idx):
        return self.i[idx]

    def encode_text(self, idx):
        return self.t[idx]


def test_retrieval_with_several_captions_per_image_hand_computed():
    # 3 images; captions 0,1 -> image 0; 2,3 -> image 1; 4 -> image 2 (unit vectors in the plane)
    angle = {"i0": 0, "i1": 60, "i2": 120, "c0": 100, "c1": 10, "c2": 170, "c3": 50, "c4": 115}
    vec = {k: [np.cos(np.radians(a)), np.sin(np.radians(a))] for k, a in angle.items()}
    model = FixedFeatures([vec["i0"], vec["i1"], vec["i2"]], [vec[f"c{c}"] for c in range(5)])
    pairs = PairSet("hand", torch.arange(3), torch.arange(5), torch.tensor([0, 0, 1, 1, 2]), ["0", "1", "2"])
    m = retrieval(model, pairs)
    # image-to-text: i0's best own caption c1 (10 deg) is nearest of all -> rank 1;
    # i1 (60): c3 (50) at 10 deg is nearest -> rank 1; i2 (120): c4 (115) nearest -> rank 1
    assert m["i2t_r1"] == pytest.approx(100.0)
    # text-to-image: c0 (100) nearest image is i1 (40 deg) or i2 (20 deg) -> i2; its own i0 is 100 deg: rank 3
    # c1 -> i0 rank 1; c2 (170) -> i2 nearest (50), i1 (110), i0 (170): own i1 rank 2; c3 (50) -> i1 rank 1;
    # c4 (115) -> i2 rank 1. Ranks [3, 1, 2, 1, 1]: R@1 = 3/5, median 1
    assert m["t2i_r1"] == pytest.approx(60.0)
    assert m["t2i_r5"] == pytest.approx(100.0)
    assert m["t2i_median_rank"] == 1.0 and m["i2t_median_rank"] == 1.0


@pytest.mark.parametrize("strategy", ["modx", "vrlwf"])
def test_offline_pairs_run_logs_retrieval_matrices(tmp_path, strategy):
    from mlflow import MlflowClient

    from continual.run.loop import run

    cfg = load_config("configs/pairs-offline.yaml", [
        f"output_dir={tmp_path}", f"strategy.name={strategy}", "train.epochs=3", "stream.n_sessions=2"])
    result = run(cfg, echo=lambda s: None, progress=False)
    assert set(result.matrices) == {"i2t_r1", "t2i_r1"}
    for R in result.matrices.values():
        assert R.shape == (3, 2) and np.isfinite(R).all()
    client = MlflowClient(result.tracking_uri)
    data = client.get_run(result.run_id).data
    assert {"i2t/cl/forgetting", "t2i/cl/forgetting", "i2t/session_2", "retrieval/session_1/i2t_r5"} <= set(data.metrics)
    assert [m.step for m in client.get_metric_history(result.run_id, "t2i/session_1")] == [0, 1, 2]
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert any("i2t_r1_matrix" in a for a in artifacts) and any("t2i_r1_matrix" in a for a in artifacts)
    # the control set keeps only concepts the stream never trains on
    assert result.control and result.control[0]["i2t_r1"] > 0
