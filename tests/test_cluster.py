"""run_hyper.py and run_compare.py on a real Ray cluster started with ``ray start``.

A head node and a second node on this machine (1 CPU each, loopback only, free ports, a temp
dir of their own) form the cluster; the commands join it with ``--address=127.0.0.1:<port>``.
Each trial records the id of the Ray node it ran on: on the cluster every one must be a node of
the cluster (a driver that had started a local Ray of its own would report another node), and
the outputs must equal those of the same command on a local Ray. The nodes are stopped at the
end, also when a test fails (their whole process groups: nothing else on the machine is touched).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RAY = Path(sys.executable).parent / "ray"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1",
                PYTHONWARNINGS="ignore", RAY_USAGE_STATS_ENABLED="0")


@dataclass
class Cluster:
    address: str
    node_ids: set[str]


def start_node(folder: str, *extra: str) -> subprocess.Popen:
    """``ray start --block`` in its own process group (its raylet and workers join that group)."""
    command = [
        str(RAY), "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats",
        f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}", *extra,
    ]  # fmt: skip
    log = open(Path(folder) / f"node{len(os.listdir(folder))}.log", "w")  # noqa: SIM115 (closed with the node)
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env(), start_new_session=True)


def stop_node(node: subprocess.Popen) -> None:
    """SIGTERM to the node's process group, then SIGKILL to whatever of it is left."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(node.pid, sig)
        except ProcessLookupError:
            return
        try:
            node.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(node.pid, signal.SIGKILL)  # the group outlives its leader (gcs_server, workers)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def cluster():
    import ray

    folder = tempfile.mkdtemp(prefix="rbc", dir="/tmp")  # short: Ray's socket paths have a length limit
    port = free_port()
    address = f"127.0.0.1:{port}"
    nodes = []
    try:
        nodes.append(start_node(folder, "--head", f"--port={port}", f"--temp-dir={folder}",
                                "--include-dashboard=false", f"--ray-client-server-port={free_port()}"))
        deadline = time.monotonic() + 120
        while True:
            assert nodes[0].poll() is None, (Path(folder) / "node0.log").read_text()[-3000:]
            try:
                ray.init(address=address, log_to_driver=False)
                break
            except Exception:  # noqa: BLE001 (the head is still starting)
                assert time.monotonic() < deadline, "the head node did not come up"
                time.sleep(0.5)
        nodes.append(start_node(folder, f"--address={address}"))
        while len([n for n in ray.nodes() if n["Alive"]]) < 2:
            assert time.monotonic() < deadline, "the second node did not join"
            time.sleep(0.5)
        node_ids = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        ray.shutdown()
        yield Cluster(address, node_ids)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for node in reversed(nodes):
            stop_node(node)
        shutil.rmtree(folder, ignore_errors=True)


def run(script: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(PROJECT_ROOT / script), *args], cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def trial_nodes(run_dir: Path) -> list[str]:
    return [json.loads(p.read_text())["node_id"] for p in sorted(run_dir.glob("*/trial_summary.json"))]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_run_hyper_on_the_cluster_equals_a_local_run(cluster, tmp_path, ml100k_root):
    space = tmp_path / "space.yaml"
    space.write_text("learning_rate: [0.001, 0.01]\n", encoding="utf-8")
    common = ["--model=BPR", f"--space={space}", "--verbose=0", "--epochs=1", f"--data_path={ml100k_root}",
              "--scheduler=fifo", "--name=search"]  # fmt: skip
    run("run_hyper.py", [*common, f"--address={cluster.address}", f"--storage={tmp_path / 'cluster'}"], tmp_path)
    run("run_hyper.py", [*common, "--num_cpus=2", f"--storage={tmp_path / 'local'}"], tmp_path)

    on_cluster, local = tmp_path / "cluster" / "search", tmp_path / "local" / "search"
    assert len(trial_nodes(on_cluster)) == 2 and set(trial_nodes(on_cluster)) <= cluster.node_ids
    assert not set(trial_nodes(local)) & cluster.node_ids  # the local run used a Ray of its own
    columns = ("status", "best_valid_recall@20", "best_epoch", "learning_rate")
    assert [[r[c] for c in columns] for r in read_csv(on_cluster / "trials.csv")] == \
        [[r[c] for c in columns] for r in read_csv(local / "trials.csv")]
    best = [json.loads((d / "best_test_results.json").read_text()) for d in (on_cluster, local)]
    assert best[0]["params"] == best[1]["params"]
    assert best[0]["test"] == pytest.approx(best[1]["test"], abs=1e-6)


def test_run_compare_on_the_cluster_equals_a_local_run(cluster, tmp_path, ml100k_root):
    common = ["--dataset=ml100k", "--baselines", "BPR", "--seeds", "0", "1", "--num_samples=1", "--epochs=1",
              f"--data_path={ml100k_root}"]  # fmt: skip
    run("run_compare.py", [*common, f"--address={cluster.address}", f"--output={tmp_path / 'cluster'}"], tmp_path)
    run("run_compare.py", [*common, "--num_cpus=2", f"--output={tmp_path / 'local'}"], tmp_path)

    runs = {where: [json.loads((tmp_path / where / "runs" / f"BPR.seed{s}.json").read_text()) for s in (0, 1)]
            for where in ("cluster", "local")}  # fmt: skip
    assert {r["node_id"] for r in runs["cluster"]} <= cluster.node_ids
    assert not {r["node_id"] for r in runs["local"]} & cluster.node_ids
    for on_cluster, local in zip(runs["cluster"], runs["local"], strict=True):
        assert on_cluster["params"] == local["params"]
        assert on_cluster["test"] == pytest.approx(local["test"], abs=1e-6)
    tables = [read_csv(tmp_path / where / "comparison.csv") for where in ("cluster", "local")]
    assert tables[0] == tables[1]
