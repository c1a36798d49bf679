"""Data parallelism: two processes (torchrun, gloo, CPU) compute what one process computes on
the same global batch: the cross-entropy, contrastive, Mod-X and VR-LwF losses and the
parameters after two SGD steps (float64, so anything beyond rounding is a bug); gradient
accumulation with DDP's no_sync; and the helpers' single-process behaviour."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler

from continual.system import distributed
from continual.errors import ConfigError
from numerics import kl_rounding, sum_rounding

REPO = Path(__file__).resolve().parents[1]


def torchrun(nproc: int, *args: str, **kwargs) -> subprocess.Popen:
    """Start ``torchrun --standalone --nproc_per_node=nproc ARGS`` with this checkout first on the path."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             f"--nproc_per_node={nproc}", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)


@pytest.fixture(scope="module")
def two_and_one(tmp_path_factory):
    import _ddp_worker as worker

    out = tmp_path_factory.mktemp("ddp") / "results.pt"
    proc = torchrun(2, "tests/_ddp_worker.py", str(out))
    try:
        reference = worker.run_cases(worker.REFERENCE)  # meanwhile, in this process
        log, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:  # torchrun passes SIGTERM on to its workers
            proc.terminate()
            proc.wait(timeout=30)
    assert proc.returncode == 0, log[-3000:]
    return torch.load(out), reference


def test_two_processes_ran(two_and_one):
    ddp, _ = two_and_one
    assert ddp["world_size"] == 2


@pytest.mark.parametrize("case,reference", [("modx", "modx"), ("vrlwf", "vrlwf"), ("contrastive", "contrastive"),
                                            ("lwf", "lwf"),
                                            ("finetune-accumulate", "finetune")])
def test_two_processes_equal_one_process_on_the_global_batch(two_and_one, case, reference):
    ddp, one = two_and_one
    got, want = ddp[case], one[reference]
    # exactly: DDP's all-reduce hands every process the same bytes, whatever the order of its sums
    assert got["max_rank_difference"] == 0.0
    # Otherwise equal up to float64 rounding. Two processes sum the same products in other orders
    # (local sums, then the gather and the all-reduce): each sum of at most 16 images x 64
    # vocabulary entries is off by n eps of its terms, and a softmax of logits up to s = 100
    # turns a relative error of the logits into one 100 times larger.
    n, logit_range = 16 * 64, 100.0
    if case != "finetune-accumulate":  # micro-batches have their own loss values; the step is what counts
        assert len(got["steps"]) == len(want["steps"]) == 2
        # a term that is zero (a KL at student = teacher: Mod-X's, or a distillation reported as one)
        # reads rounding: a KL's over 16 rows of up to 64 logits of up to s / T = 50, times the weight
        zero = 1000.0 * kl_rounding(rows=16, n=64, logit_bound=50.0, dtype=torch.float64)
        for step_got, step_want in zip(got["steps"], want["steps"]):
            assert step_got.keys() == step_want.keys()
            for term, value in step_want.items():
                assert step_got[term] == pytest.approx(
                    value, rel=logit_range * sum_rounding(n, 1.0, torch.float64), abs=zero), term
    # the parameters: the rounding of the update (two steps, each a forward and a backward pass,
    # momentum carrying the first into the second: 8 such sums), relative to how far it moved them
    moved = max(float((want["params"][k] - want["start"][k]).abs().max()) for k in want["params"])
    tolerance = 8 * logit_range * sum_rounding(n, moved, torch.float64)
    for name, value in want["params"].items():
        torch.testing.assert_close(got["params"][name], value, rtol=0, atol=tolerance)


def test_the_methods_terms_drive_the_compared_update(two_and_one):
    """The comparison is sensitive: each method's term moves the parameters far beyond the tolerance."""
    _, one = two_and_one
    for case in ("modx", "vrlwf", "lwf"):
        second = one[case]["steps"][1]
        assert second[case] > 0
        moved = max(float((one[case]["params"][n] - p).abs().max()) for n, p in one["finetune"]["params"].items())
        assert moved > 1e-2, case


# -- single-process behaviour of the helpers -------------------------------------------------------
def test_helpers_are_the_identity_in_one_process():
    assert not distributed.is_distributed() and distributed.is_main() and distributed.world_size() == 1
    x = torch.randn(5, 3, requires_grad=True)
    assert distributed.gather(x, with_grad=True) is x
    assert distributed.gather_rows(x) is x
    assert distributed.shard(x) is x
    assert distributed.all_reduce_sum(3, 4) == (3, 4)
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.wrap(torch.nn.Linear(2, 2), "cpu") is None
    assert distributed.local_batch_size(64, 2) == 32
    with pytest.raises(ConfigError, match="divisible"):
        distributed.local_batch_size(10, 4)


def test_the_global_batch_does_not_depend_on_the_number_of_processes():
    """DistributedSampler: at step k the W shards' local batches together are the same block of
    the seeded permutation, for any W; so a step's global batch is the same in 1, 2 or 4 processes."""
    n, batch = 40, 8
    dataset = list(range(n))

    def global_batches(world: int) -> list[set]:
        shards = []
        for r in range(world):
            sampler = DistributedSampler(dataset, num_replicas=world, rank=r, shuffle=True, seed=3)
            sampler.set_epoch(2)
            order = list(sampler)
            shards.append([order[i:i + batch // world] for i in range(0, len(order), batch // world)])
        return [set().union(*(s[k] for s in shards)) for k in range(len(shards[0]))]

    assert global_batches(1) == global_batches(2) == global_batches(4)


def test_silent_logger_logs_nothing_and_knows_the_run():
    logger = distributed.SilentLogger("abc")
    assert logger.run_id == "abc"
    assert logger.log_metrics({"a": 1.0}, step=0) is None and logger.finish("FINISHED") is None


# -- end to end: `torchrun -m continual run`, killed and resumed ------------------------------------
def run_command(out: Path) -> list[str]:
    return ["-m", "continual", "run", "configs/default.yaml", "--no-progress", f"output_dir={out}",
            "model.pretrained=null", "stream.name=digits", "stream.n_sessions=2", "stream.train_per_class=60",
            "stream.test_per_class=20", "control.sources=[tux]", "train.epochs=15", "train.batch_size=16",
            "tracking.experiment=ddp"]


def finished(out: Path):
    import json

    import numpy as np
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])  # one run only
    summary = json.loads(Path(client.download_artifacts(run.info.run_id, "summary.json")).read_text())
    return client, run, np.array(summary["accuracy"])


def kill_tree(root: int) -> None:
    """SIGKILL ``root`` and every process under it (torchrun starts its workers in sessions of
    their own: killing its process group would leave them running)."""
    import signal

    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            pass
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        tree += frontier
    for pid in reversed(tree):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_torchrun_run_logs_once_and_resumes_after_a_kill(tmp_path):
    import json
    import time

    import numpy as np

    whole = torchrun(2, *run_command(tmp_path / "whole"))
    log, _ = whole.communicate(timeout=300)
    assert whole.returncode == 0, log[-3000:]
    assert log.count("Accuracy matrix") == 1  # rank 0 reports, the other stays silent
    client, run, expected = finished(tmp_path / "whole")
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "acc/session_1")] == [0, 1, 2]
    assert len(list((tmp_path / "whole" / "checkpoints").glob("*/state.json"))) == 1

    out = tmp_path / "killed"
    proc = torchrun(2, *run_command(out))
    deadline = time.time() + 300
    while time.time() < deadline:  # kill the whole job as soon as session 1 is checkpointed
        states = list((out / "checkpoints").glob("*/state.json"))
        if states and json.loads(states[0].read_text())["session"] >= 1:
            break
        time.sleep(0.02)
    kill_tree(proc.pid)  # a crash: the launcher and both workers die at once
    proc.wait()
    killed_at = json.loads(next((out / "checkpoints").glob("*/state.json")).read_text())["session"]
    assert killed_at < 2, "the run finished before it could be killed"

    again = torchrun(2, *run_command(out))
    log, _ = again.communicate(timeout=300)
    assert again.returncode == 0, log[-3000:]
    assert f"resuming after session {killed_at} of 2" in log
    client, run, resumed = finished(out)
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "acc/session_1")) == [0, 1, 2]
    np.testing.assert_array_equal(resumed, expected)  # the data order depends on seed, session and epoch only
