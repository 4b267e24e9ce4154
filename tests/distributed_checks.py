"""Run under torchrun by tests/test_distributed.py: the collectives of nettrain/engine/distributed.py
(and the run dir the ranks share, nettrain/run/launch.py)
on 2 gloo processes. Prints one `ok <check>` line per passed check on rank 0."""

from __future__ import annotations

import signal

import torch
from pytest import approx as pytest_approx
from torchmetrics.functional.classification import multiclass_f1_score

from nettrain.engine import distributed as dist_lib
from nettrain.engine.metrics import Measures
from nettrain.run import launch


def main() -> None:
    env = launch.detect()
    assert env is not None and env.world_size == 2, env
    with launch.leading(env):
        launch.publish_run_dir("/shared/run")
    argv = launch.follower_argv(["nettrain-train", "hydra.run.dir=own"], launch.wait_for_run_dir(env))
    assert argv == (
        ["nettrain-train", "hydra.run.dir=own"]
        if env.rank == 0
        else ["nettrain-train", *launch.follower_overrides("/shared/run")]
    ), argv
    ctx = dist_lib.init(env, "gloo", torch.device("cpu"))
    assert (ctx.rank, ctx.world_size, ctx.backend) == (env.rank, 2, "gloo")
    report = print if ctx.is_main else (lambda *a: None)
    report("ok run dir")

    total = torch.tensor([1.0 + env.rank, 10.0])
    dist_lib.all_reduce_sum(total)
    assert total.tolist() == [3.0, 20.0], total
    report("ok all-reduce")
    assert dist_lib.broadcast_object({"dir": f"from {env.rank}"}) == {"dir": "from 0"}
    report("ok broadcast")

    # a signal on rank 1 alone, at its step 4: both ranks stop together at the next check point (6)
    stop = dist_lib.SharedStop(every=3)
    stopped_at = None
    for step in range(1, 20):
        if env.rank == 1 and step == 4:
            stop.request(signal.SIGTERM)
        if stop.tick():
            stopped_at = step
            break
    both = dist_lib.broadcast_object(stopped_at) if env.rank == 0 else dist_lib.broadcast_object(None)
    assert stopped_at == 6 and both == 6 and stop.signum == signal.SIGTERM, (
        stopped_at,
        stop.signum,
    )
    report("ok shared stop")

    # metrics=[...] (torchmetrics) over the group: the same figures and confusion matrix whether the
    # ranks share the samples 5/4 or rank 1 has none (a split smaller than the world size)
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(9, 3, generator=g), torch.arange(9) % 3
    names = ["f1_macro", "auroc", "average_precision", "top2_acc"]
    results = []
    for mine in (slice(0, 5) if env.rank == 0 else slice(5, 9), slice(0, 9) if env.rank == 0 else slice(0, 0)):
        measures = Measures(names, "classification", 3, torch.device("cpu"), confusion=True)
        if len(y[mine]):
            measures.update(logits[mine], y[mine])
        results.append((measures.compute(), measures.confusion_matrix))
    (split, split_matrix), (alone, alone_matrix) = results
    expected = multiclass_f1_score(logits, y, num_classes=3, average="macro").item()  # no sync: the whole set
    assert split == pytest_approx(alone) and split["f1_macro"] == pytest_approx(expected), (split, alone, expected)
    assert split_matrix == alone_matrix and sum(map(sum, split_matrix)) == 9, (split_matrix, alone_matrix)
    report("ok metrics")
    dist_lib.shutdown()
    assert not launch.context().distributed


if __name__ == "__main__":
    main()
