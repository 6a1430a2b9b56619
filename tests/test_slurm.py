"""Against the real local Slurm (scripts/slurm-local.sh): the cluster query, srun tasks' distributed
environment, and bad requests refused before anything is submitted. Skipped, with the reason, only when
no Slurm is reachable and CI is not set; with CI set they fail instead."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from launch.cluster import query_partitions
from launch.slurm_env import expand_nodelist
from pretrain.cli import main as hetron

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("require_slurm")]


@pytest.fixture(autouse=True)
def own_job_records(tmp_path, monkeypatch):
    monkeypatch.setenv("HETRON_HOME", str(tmp_path / "hetron-home"))


def sinfo(fmt: str) -> list[str]:
    return subprocess.run(["sinfo", "-h", "-o", fmt], capture_output=True, text=True, check=True).stdout.split()


def test_the_cluster_query_sees_what_sinfo_sees():
    partitions = query_partitions()
    for row in sinfo("%R|%D|%c"):
        name, nodes, cpus = row.split("|")
        assert len(partitions[name].nodes) == int(nodes)
        assert max(n.cpus for n in partitions[name].nodes) == int(cpus.rstrip("+"))
    assert sum(p.is_default for p in partitions.values()) == 1


def test_nodelist_expansion_agrees_with_scontrol():
    nodelist = "gpu[01-03,7],login,n[009-011]"
    hostnames = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                               check=True).stdout.split()
    assert expand_nodelist(nodelist) == hostnames


def test_srun_tasks_derive_one_consistent_world():
    probe = ("import json, os; from launch.slurm_env import distributed_env_from_slurm as d; "
             "print(json.dumps(d(os.environ, cuda_available=False).as_environ()))")
    out = subprocess.run(["srun", "--ntasks=2", "--time=2", sys.executable, "-c", probe], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    envs = sorted((json.loads(line) for line in out.splitlines()), key=lambda e: e["RANK"])
    assert [(e["RANK"], e["LOCAL_RANK"], e["WORLD_SIZE"]) for e in envs] == [("0", "0", "2"), ("1", "1", "2")]
    default = next(p for p in query_partitions().values() if p.is_default)  # where a plain srun runs
    assert envs[0]["MASTER_ADDR"] == envs[1]["MASTER_ADDR"] == default.nodes[0].name
    assert envs[0]["MASTER_PORT"] == envs[1]["MASTER_PORT"]


def largest_node() -> tuple[int, int]:
    nodes = [n for p in query_partitions().values() for n in p.nodes]
    return max(n.cpus for n in nodes), max(n.gpus for n in nodes)


@pytest.mark.parametrize("case", ["partition", "nodes", "gpus", "time", "config", "sweep"])
def test_bad_requests_fail_before_submitting(case, tmp_path, capsys):
    node_count = len({n.name for p in query_partitions().values() for n in p.nodes})
    _, gpus = largest_node()
    args = {
        "partition": (["--partition", "no-such-partition"], "--partition no-such-partition: no such partition"),
        "nodes": (["--nodes", str(node_count + 1)], f"--nodes {node_count + 1}: partition"),
        "gpus": (["--gpus-per-node", str(gpus + 1)], f"--gpus-per-node {gpus + 1} on 1 node(s)"),
        "time": (["checkpoint.every=400", "train.steps=1000", "--time", "2"],
                 "--time 2 min is shorter than one checkpoint interval"),
        "config": (["model.preset=huge"], "model.preset='huge' is not one of"),
        "sweep": (["--sweep", "train.steps=4,x"], "train.steps='x'"),
    }[case]
    code = hetron(["submit", f"run.dir={tmp_path / 'run'}", *args[0]])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("hetron submit: error: ") and args[1] in err
    assert not (tmp_path / "run").exists()
    assert not (tmp_path / "hetron-home").exists()  # no job recorded: nothing was submitted


def test_status_of_an_unknown_job_says_so(capsys):
    assert hetron(["status", "999999"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hetron status: error: job 999999: not submitted by hetron submit here")


def test_by_default_each_task_gets_its_share_of_the_node(tmp_path, capsys):
    """Slurm's own default is one CPU per task and the site's default memory: a GPU's data loading and
    host work on one core."""
    node = next(p for p in query_partitions().values() if p.is_default).nodes[0]  # where the job goes
    assert hetron(["submit", f"run.dir={tmp_path}", "train.steps=20", "launch.nproc=2", "--dry-run"]) == 0
    script = capsys.readouterr().out
    assert "#SBATCH --ntasks-per-node=2" in script
    assert f"#SBATCH --cpus-per-task={node.cpus // 2}" in script
    assert f"#SBATCH --mem={node.memory_mb}M" in script  # two tasks of half the cores: all of its memory
    assert hetron(["submit", f"run.dir={tmp_path}", "launch.nproc=2", "--cpus-per-task=1", "--dry-run"]) == 0
    script = capsys.readouterr().out
    assert "#SBATCH --cpus-per-task=1" in script and f"#SBATCH --mem={node.memory_mb * 2 // node.cpus}M" in script
