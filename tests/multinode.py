"""A Ray cluster of several nodes on this machine, shaped like cluster.yaml's: its node types come from
mammo_ray.placement.NODE_TYPES (one source of truth), each worker node scaled down to one CPU.

Nodes are real raylets with their own object stores (ray.cluster_utils.Cluster); the GPU node's GPU is
logical (no CUDA here), so the study's networks run on its CPU (`embed.num_gpus: 0`). A node removed with
`remove` goes as a lost machine goes: its raylet and every worker on it stop, its objects are lost.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from mammo_ray.placement import NODE_TYPES, node_type_of

#: Each worker node of the fixture: one CPU (this machine has two), the type's GPUs and marker.
WORKER_CPUS = 1
#: Every node's object store at the smallest Ray allows (75 MiB): the study's data in flight is what
#: a small store must take, spilled or streamed, never a failure.
SMALLEST_OBJECT_STORE = 75 * 2**20


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def node_args(role: str, object_store_memory: int | None = None) -> dict:
    """`Cluster.add_node` arguments for a node of type `role`, scaled down to this machine."""
    node_type = NODE_TYPES[role]
    args: dict = {"num_cpus": WORKER_CPUS if node_type.cpus else 0, "num_gpus": node_type.gpus,
                  "resources": {node_type.marker: 1} if node_type.marker else {}}
    if object_store_memory is not None:
        args["object_store_memory"] = object_store_memory
    return args


@dataclass
class MultiNodeCluster:
    """A head that runs no work, one CPU worker and one GPU worker (as declared), on this machine, each
    with the smallest object store Ray allows."""

    object_store_memory: int | None = SMALLEST_OBJECT_STORE
    cluster: Cluster = field(init=False)
    nodes: dict[str, list] = field(init=False, default_factory=lambda: defaultdict(list))
    removed: list[str] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        head = {**node_args("head", self.object_store_memory), "include_dashboard": True,
                "dashboard_port": _free_port()}  # the state API (which node ran what) lives in the dashboard
        self.cluster = Cluster(initialize_head=True, head_node_args=head)
        for role in ("cpu", "gpu"):
            self.add(role)

    @property
    def address(self) -> str:
        """What a study's `ray.address` names: the head's GCS."""
        return self.cluster.address

    @property
    def state_address(self) -> str:
        """The head's state API: given explicitly, so no other Ray on this machine is ever asked."""
        return "http://" + self.cluster.head_node.address_info["webui_url"]

    def add(self, role: str) -> None:
        self.nodes[role].append(self.cluster.add_node(**node_args(role, self.object_store_memory)))
        self.cluster.wait_for_nodes()

    def replace(self, role: str) -> str:
        """Take the oldest alive node of type `role` away (no graceful drain) and add a fresh one of the
        same type, as an autoscaler does after losing a machine. Returns the lost node's id."""
        lost = self.nodes[role].pop(0)
        self.cluster.remove_node(lost, allow_graceful=False)
        self.removed.append(lost.node_id)
        self.add(role)
        return lost.node_id

    def node_roles(self) -> dict[str, str]:
        """node id -> node type role, for every node this cluster has had (removed ones included)."""
        return {node["NodeID"]: node_type_of(node["Resources"]) for node in ray.nodes()}

    def shutdown(self) -> None:
        self.cluster.shutdown()


REPO = Path(__file__).resolve().parent.parent


def spilled_bytes(cluster: MultiNodeCluster) -> int:
    """Bytes Ray has spilled from the object stores of the cluster's alive nodes (`ray memory --stats-only`)."""
    from ray._private.internal_api import memory_summary

    found = re.search(r"Spilled (\d+) MiB", memory_summary(cluster.address, stats_only=True))
    return int(found.group(1)) * 2**20 if found else 0


def run_job_while(config: Path, stages: list[str], log: Path, act: Callable[[], bool]) -> str:
    """Run the study as a user's job runs it (`python jobs/full_study.py`, joining the cluster through the
    config's `ray.address`) and poll `act()` from this thread until it returns True; then wait for the job.
    Nodes are added here, in the main thread (Ray's node start installs signal handlers, which only the main
    thread may do). Returns the job's log; fails if the job fails. No timing is asserted."""
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    command = [sys.executable, "jobs/full_study.py", "--config", str(config), "--stages", *stages]
    with log.open("w") as sink:
        job = subprocess.Popen(command, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        try:
            acted = False
            while job.poll() is None:
                acted = acted or act()
                assert time.monotonic() < deadline, "the job did not finish: " + log.read_text()[-4000:]
                time.sleep(0.05)
            assert acted, "the job ended before the test could act on it"
        finally:
            if job.poll() is None:
                job.kill()
            job.wait(timeout=600)
    text = log.read_text()
    assert job.returncode == 0, text[-4000:]
    return text


def roles_of_work(cluster: MultiNodeCluster) -> dict[str, set[str]]:
    """Which node types ran each kind of work, from Ray's state API: Ray Data tasks and actors by their
    function or class name, Ray Train's workers by their actor class."""
    from ray.util.state import list_actors, list_tasks

    roles = cluster.node_roles()
    ran: dict[str, set[str]] = defaultdict(set)
    for task in list_tasks(address=cluster.state_address, detail=True, limit=10_000, raise_on_missing_output=False):
        if task.node_id and task.type == "NORMAL_TASK":
            for kind in ("decode_batch", "prepare_batch", "write_batch"):
                if kind in task.name:
                    ran[kind].add(roles.get(task.node_id, "unknown"))
    for actor in list_actors(address=cluster.state_address, detail=True, limit=10_000,
                             raise_on_missing_output=False):
        if not actor.node_id:
            continue
        if "InferenceActor" in actor.class_name:
            ran["inference"].add(roles.get(actor.node_id, "unknown"))
        elif actor.class_name == "RayTrainWorker":
            ran["train"].add(roles.get(actor.node_id, "unknown"))
    return dict(ran)


def grid_trial_roles(cluster: MultiNodeCluster, tune_dir: Path) -> set[str]:
    """Which node types ran the grid's trials, from the node each trial's result names (Tune's result.json):
    unlike the state API's list of dead actors, the study's own output does not age out under load."""
    roles = cluster.node_roles()
    return {roles.get(json.loads(line)["node_id"], "unknown")
            for result in tune_dir.rglob("result.json") for line in result.read_text().splitlines() if line.strip()}
