"""`continual bench` runs and prints ratios (its figures are in the README; no timing is asserted)."""

from __future__ import annotations

import re

from continual.bench.costs import RunCost, bench, report, run_costs


def test_bench_prints_every_ratio_for_a_model():
    text = bench(["tiny-vit"], batch_size=4, steps=1, warmup=1, rounds=1, profile=True, echo=lambda _: None)
    assert "torch threads 1" in text
    assert re.search(r"our step vs bare open_clip loop: throughput \d+\.\d+ of the bare loop's", text)
    for variant in ("vrlwf", "modx", "cpe-clip"):
        assert re.search(rf"{variant}\s+step / fine-tuning step: \d+\.\d+x  \[goal <= ", text), variant
    assert len(re.findall(r"the teacher [\d.,]+ MiB = \d\.\d+ frozen copies", text)) == 2
    assert re.search(r"= \d\.\d+ of one large matrix product's", text)
    assert re.search(r"where fine-tuning's session time goes: matrix products \d+%", text)


def test_run_cost_against_sessions(tmp_path):
    small = ("model.pretrained=", "stream.name=digits", "stream.train_per_class=20", "stream.test_per_class=10",
             "control.sources=[tux]")
    costs = run_costs([1, 2], echo=lambda _: None, overrides=small, rounds=1)  # the medians are the bench's; one round here
    assert [c.sessions for c in costs] == [1, 2]
    assert all(c.total > c.train > 0 and c.evaluation > 0 for c in costs)
    assert costs[0].ratio == 1.0 and costs[1].ratio == costs[1].total / costs[0].total  # one round: its own ratio
    text = report([], costs, "cpu", "fp32")
    assert "2 sessions: cost" in text and "evaluation is" in text


def test_report_of_run_costs_is_relative_to_the_fewest_sessions():
    # the ratio printed is the median of the rounds' ratios, not the ratio of the median rounds
    text = report([], [RunCost(2, 10.0, 4.0, 1.0), RunCost(5, 15.0, 4.0, 2.0, ratio=1.4)], "cpu", "fp32")
    assert "5 sessions: cost 1.40x the 2-session run (median round 15.0 s" in text
    assert "evaluation is 20% of training + evaluation" in text


def test_trunk_features_are_measured_against_a_bare_loop():
    from continual.bench.features import bench_features, report_lines

    result = bench_features(lambda _: None, rounds=1, per_class=2, pairs_every=300)
    text = "\n".join(report_lines(result, {"base built": 50.0, "data ready": 70.0, "first training step": 80.0}))
    for data in ("Fashion-MNIST (20 images)", "emoji + Tux Paint", "captions"):
        assert re.search(rf"{re.escape(data)}.*: ours [\d,]+ (images|texts)/s, bare [\d,]+ (images|texts)/s: "
                         r"\d+\.\d\dx the bare loop's", text), data
    assert "first training step at 80 s  [goal <= 90 s on 2 cores: met]" in text
