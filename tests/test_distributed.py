"""nettrain/engine/distributed.py and nettrain/run/launch.py in one process: the torchrun and SLURM environments (faked), SLURM's
host lists, the global-batch sharding arithmetic, the device and backend rules, the shared stop
decision and the overrides that give every rank rank 0's run dir."""

from __future__ import annotations

import sys

import pytest
from torchrun import workers

from conftest import needs_extra
from nettrain.config.store import register_schema
from nettrain.data import loss_weight, share_of, usable_samples
from nettrain.engine import distributed as dist_lib
from nettrain.errors import ConfigError
from nettrain.run import launch
from nettrain.run.launch import DistEnv, DistributedSetupError, detect, expand_nodelist

TORCHRUN = {
    "RANK": "3",
    "WORLD_SIZE": "4",
    "LOCAL_RANK": "1",
    "MASTER_ADDR": "10.0.0.5",
    "MASTER_PORT": "29400",
}
SLURM = {
    "SLURM_PROCID": "5",
    "SLURM_NTASKS": "8",
    "SLURM_LOCALID": "1",
    "SLURM_JOB_ID": "123456",
    "SLURM_JOB_NODELIST": "gpu[07-08]",
}


def test_no_launcher_variables_means_one_process():
    assert detect({}) is None
    assert detect({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_JOB_NODELIST": "n1"}) is None  # one task


def test_torchrun_environment():
    assert detect(TORCHRUN) == DistEnv(3, 4, 1, "10.0.0.5", 29400, "torchrun")
    one = {**TORCHRUN, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    assert detect(one).world_size == 1  # torchrun --nproc_per_node=1: a group of one (DDP, nccl)


def test_torchrun_wins_over_slurm_when_both_are_set():
    assert detect({**SLURM, **TORCHRUN}).launcher == "torchrun"  # torchrun started inside an allocation


def test_a_faked_slurm_environment_2_nodes_x_4_tasks():
    env = detect(SLURM)
    assert env == DistEnv(5, 8, 1, "gpu07", 15000 + 123456 % 20000, "slurm")
    given = detect({**SLURM, "MASTER_PORT": "4000", "MASTER_ADDR": "head"})
    assert (given.master_addr, given.master_port) == ("head", 4000)


def test_an_incomplete_environment_names_what_is_missing():
    with pytest.raises(DistributedSetupError, match="MASTER_ADDR, MASTER_PORT is not"):
        detect({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(DistributedSetupError, match="SLURM_JOB_NODELIST is not set"):
        detect({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"})
    with pytest.raises(DistributedSetupError, match="WORLD_SIZE='two': must be an integer"):
        detect({**TORCHRUN, "WORLD_SIZE": "two"})


@pytest.mark.parametrize(
    ("nodelist", "hosts"),
    [
        ("node01", ["node01"]),
        ("node[01-04,07]", ["node01", "node02", "node03", "node04", "node07"]),
        ("a[9-11],b3", ["a9", "a10", "a11", "b3"]),
        ("gpu[008-010]-ib,login", ["gpu008-ib", "gpu009-ib", "gpu010-ib", "login"]),
        ("c1,c2", ["c1", "c2"]),
    ],
)
def test_slurm_host_lists(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


def test_a_malformed_host_list_is_an_error():
    with pytest.raises(DistributedSetupError, match="cannot read the range 'x-3'"):
        expand_nodelist("n[x-3]")


@pytest.mark.parametrize(("size", "world"), [(64, 2), (33, 2), (10, 4), (3, 3), (7, 8)])
def test_shares_cover_each_position_once_in_rank_order(size, world):
    parts = [share_of(100, 100 + size, r, world) for r in range(world)]
    assert [p for a, b in parts for p in range(a, b)] == list(range(100, 100 + size))
    lengths = [b - a for a, b in parts]
    assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)


def test_loss_weights_make_the_averaged_gradient_the_global_mean():
    # rank means m_r over shares s_r, weighted by s_r * W / B, averaged over W ranks = sum / B
    shares = [17, 16]
    weights = [loss_weight(s, 33, 2) for s in shares]
    assert sum(w / 2 for w in weights) == pytest.approx(1.0)
    assert weights[0] * (1 / 17) / 2 == pytest.approx(1 / 33)  # each sample counts 1/B
    assert loss_weight(32, 64, 2) == 1.0


def test_a_final_batch_smaller_than_the_world_size_is_dropped():
    assert usable_samples(320, 64, 2) == 320
    assert usable_samples(321, 64, 2) == 320  # one sample cannot be shared by 2 ranks
    assert usable_samples(322, 64, 2) == 322
    assert usable_samples(321, 64, 1) == 321


def test_device_per_rank():
    env = detect(TORCHRUN)
    assert dist_lib.device_name("auto", env, cuda_available=True) == "cuda:1"
    assert dist_lib.device_name("cuda", env, cuda_available=True) == "cuda:1"
    assert dist_lib.device_name("auto", env, cuda_available=False) == "cpu"
    assert dist_lib.device_name("cpu", env, cuda_available=True) == "cpu"


def test_an_explicit_gpu_under_torchrun_is_refused_with_the_reason():
    with pytest.raises(ConfigError) as err:
        dist_lib.device_name("cuda:0", detect(TORCHRUN), cuda_available=True)
    assert str(err.value.problems[0]).startswith(
        "device='cuda:0': under torchrun each process uses the GPU of its local rank"
    )
    with pytest.raises(ConfigError, match="CUDA is not available"):
        dist_lib.device_name("cuda", detect(TORCHRUN), cuda_available=False)


def test_backend_choice():
    assert dist_lib.backend_for("auto", "cpu") == "gloo"
    assert dist_lib.backend_for("auto", "cuda") == "nccl"
    assert dist_lib.backend_for("gloo", "cuda") == "gloo"
    with pytest.raises(ConfigError, match="distributed.backend='nccl': needs device=cuda"):
        dist_lib.backend_for("nccl", "cpu")


def test_shared_stop_in_one_process():
    stop = dist_lib.SharedStop(every=3)
    assert not stop.tick()
    stop.request(15)
    assert not stop.tick()  # pending until the check point: every rank stops at the same step
    assert stop.tick() and stop.signum == 15 and stop.steps == 3
    counted = dist_lib.SharedStop(after_steps=2, every=100)
    assert [counted.tick(), counted.tick()] == [False, True] and counted.signum == 0


def test_followers_use_rank_0s_run_dir_and_write_no_hydra_files():
    overrides = launch.follower_overrides("/runs/it's here")
    assert overrides[0] == "hydra.run.dir='/runs/it\\'s here'"
    assert "hydra.output_subdir=null" in overrides


def test_followers_wait_for_rank_0s_run_dir_or_its_exit(monkeypatch):
    messages = []

    class Store:
        def get(self, key):
            assert key == launch.RUN_DIR_KEY
            return messages[-1].encode()

        def set(self, key, value):
            messages.append(value)

    monkeypatch.setattr(launch, "_store", Store())
    monkeypatch.setattr(launch, "_published", False)
    leader, follower = DistEnv(0, 2, 0, "h", 1, "torchrun"), DistEnv(1, 2, 1, "h", 1, "torchrun")
    with pytest.raises(SystemExit), launch.leading(leader):
        sys.exit(2)  # rank 0 ended before training (a config error)
    with pytest.raises(SystemExit) as exited:
        launch.wait_for_run_dir(follower)
    assert exited.value.code == 2

    monkeypatch.setenv("WORLD_SIZE", "2")
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(name, value)
    with launch.leading(leader):
        launch.publish_run_dir("/out/a")
    assert len(messages) == 2  # published once, and not replaced by an exit status
    run_dir = launch.wait_for_run_dir(follower)
    argv = launch.follower_argv(["nettrain-train", "lr=0.1", "hydra.run.dir=/elsewhere"], run_dir)
    assert argv == ["nettrain-train", "lr=0.1", *launch.follower_overrides("/out/a")]
    assert launch.wait_for_run_dir(leader) is None


def test_multirun_under_a_launcher_is_refused_by_every_rank(capsys, monkeypatch):
    class Store(dict):
        def set(self, key, value):
            self[key] = value

        def get(self, key):
            return self[key]

        def wait(self, keys, timeout):
            assert all(key in self for key in keys)

    monkeypatch.setattr(launch, "_store", Store({"nettrain/multirun_refused/1": "1"}))
    for rank in (0, 1):
        with pytest.raises(SystemExit) as exited:
            launch.refuse_multirun(DistEnv(rank, 2, rank, "h", 1, "torchrun"), ["nettrain-train", "-m", "lr=1,2"])
        assert exited.value.code == 2
    assert capsys.readouterr().err.count("Error: --multirun under torchrun: every process") == 1
    launch.refuse_multirun(None, ["nettrain-train", "-m"])  # one process: Hydra's multirun as usual


@pytest.mark.slow
def test_two_gloo_processes_share_the_run_dir_sums_the_stop_decision_and_the_metrics(tmp_path):
    proc = workers("distributed_checks.py", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("\n")[:5] == [
        "ok run dir",
        "ok all-reduce",
        "ok broadcast",
        "ok shared stop",
        "ok metrics",
    ], proc.stdout


def test_submitit_local_tasks_form_a_group_on_this_machine():
    env = detect(
        {
            "SUBMITIT_LOCAL_GLOBALID": "1",
            "SUBMITIT_LOCAL_LOCALID": "1",
            "SUBMITIT_LOCAL_NTASKS": "2",
            "SUBMITIT_LOCAL_JOB_ID": "4242",
        }
    )
    assert env == DistEnv(1, 2, 1, "127.0.0.1", 15000 + 4242, "submitit_local")


@pytest.mark.parametrize(("nodes", "gpus", "tasks"), [(2, 4, 4), (1, 0, 1)])
@needs_extra("slurm", "hydra_plugins.hydra_submitit_launcher")
def test_the_slurm_preset_runs_one_task_per_gpu_on_every_node(nodes, gpus, tasks, tmp_path, monkeypatch):
    import submitit
    from hydra import compose, initialize_config_module
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf
    from submitit.slurm.slurm import SlurmExecutor

    register_schema()
    overrides = [
        "hydra/launcher=slurm",
        f"hydra.launcher.nodes={nodes}",
        f"hydra.launcher.gpus_per_node={gpus}",
        f"hydra.sweep.dir={tmp_path}",
    ]
    with initialize_config_module("nettrain.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert (launcher["nodes"], launcher["gpus_per_node"], launcher["tasks_per_node"]) == (nodes, gpus, tasks)
    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # no srun here
    params = {k: v for k, v in launcher.items() if k != "_target_"}
    executor = submitit.AutoExecutor(
        folder=params.pop("submitit_folder"), cluster="slurm", slurm_max_num_timeout=params.pop("max_num_timeout")
    )
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python -m submitit.core._submit x", "uid")
    for line in (f"#SBATCH --nodes={nodes}", f"#SBATCH --ntasks-per-node={tasks}", "#SBATCH --signal=USR2@120"):
        assert line in script, script
    assert f"#SBATCH --gpus-per-node={gpus}" in script
    # each task then finds its place from SLURM's variables: task 5 of 8 is rank 5, GPU 1 of node 2
    env = detect({**SLURM, "SLURM_NTASKS": str(nodes * tasks), "SLURM_PROCID": str(nodes * tasks - 1)})
    assert env is None if nodes * tasks == 1 else env.rank == nodes * tasks - 1


def test_submitits_preemption_signal_is_handed_over_after_the_checkpoint():
    import signal

    assert launch.preemption_signal({}) is None
    assert launch.preemption_signal({"SUBMITIT_EXECUTOR": "slurm"}) == signal.SIGUSR2
    assert launch.preemption_signal({"SUBMITIT_EXECUTOR": "slurm", "SUBMITIT_PREEMPT_SIGNAL": "USR1"}) == signal.SIGUSR1
    received = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: received.append(signum))
    try:
        launch.hand_over(signal.SIGUSR2)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert received == [signal.SIGUSR2]


def test_sync_bn_converts_batchnorm_in_a_group_and_needs_cuda(monkeypatch):
    import torch

    from nettrain.models import MLP

    model = MLP(input_shape=[1, 4, 4], num_classes=3, hidden=[8], norm="batchnorm")
    assert dist_lib.sync_batchnorm(model, True, torch.device("cpu")) is model  # one process: unchanged
    monkeypatch.setattr(launch, "_context", launch.Context(backend="nccl"))
    converted = dist_lib.sync_batchnorm(model, True, torch.device("cuda", 0))
    assert [type(m).__name__ for m in converted.modules() if "BatchNorm" in type(m).__name__] == ["SyncBatchNorm"]
    with pytest.raises(ConfigError, match=r"model.sync_bn=True: torch's SyncBatchNorm runs on CUDA only"):
        dist_lib.sync_batchnorm(model, True, torch.device("cpu"))


def test_other_ranks_print_only_warnings_prefixed_with_their_rank(capsys):
    import warnings

    from nettrain.insight.report import Reporter

    Reporter(rank=1).note("epoch lines and notes stay with rank 0")
    Reporter(rank=1).warn("vanishing gradient in fc1.weight")
    Reporter().note("rank 0 prints")
    out, err = capsys.readouterr()
    assert out == "rank 0 prints\n" and err == "[rank 1] warning: vanishing gradient in fc1.weight\n"
    plain = warnings.formatwarning
    try:
        launch.prefix_warnings(2)
        assert warnings.formatwarning("careful", UserWarning, "x.py", 1, "").startswith("[rank 2] x.py:1: UserWarning")
    finally:
        warnings.formatwarning = plain


def test_distributed_settings_are_validated_up_front():
    from hydra import compose, initialize_config_module

    from nettrain.config.schema import problems

    register_schema()
    bad = ["distributed.backend=mpi", "distributed.stop_check_every=0", "model.sync_bn=maybe"]
    with initialize_config_module("nettrain.conf", version_base="1.3"):
        found = problems(compose("train", overrides=bad))
    assert found == [
        "distributed.backend='mpi': allowed: auto, gloo, nccl",
        "distributed.stop_check_every=0: must be an integer >= 1 (1 = every step)",
        "model.sync_bn='maybe': allowed: true, false",
    ]
