"""Where each kind of work runs on a cluster: the node types, declared once, and what each kind asks Ray for.

A study's cluster has three node types (cluster.yaml's `available_node_types`, the KubeRay RayCluster's
head and worker groups): a head that runs no work, CPU workers that read and decode images, and GPU
workers that run the networks and Ray Train. Each worker type carries one custom resource, its marker;
work that belongs on a type asks for a sliver of that marker, so Ray (and its autoscaler, which launches
the type whose resources fit a waiting demand) places it there. The grid's trials ask for CPUs only: they
run wherever CPUs are free. `NODE_TYPES` is the one declaration: the deploy tests check cluster.yaml and
the KubeRay manifests against it, and the multi-node tests build their nodes from it.

`ray.node_types` in the study config chooses: `auto` asks for a marker only when a node that carries it is
alive now (a laptop or a plain local Ray has none: work runs anywhere); `required` always asks (a cluster
that scales its worker types from zero: the demand is what makes the autoscaler start them); `off` never.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

WorkKind = Literal["decode", "inference", "train"]
NodeTypesMode = Literal["auto", "required", "off"]

#: What one task or actor asks of its node type's marker: a sliver, so the marker never limits how many
#: run on a node (its CPUs and GPUs do).
MARKER_SHARE = 0.001


@dataclass(frozen=True)
class NodeType:
    """One node type: its role, the custom resource marking it (None: the head, which runs no work), the
    CPUs and GPUs of the declared machine, and its names in cluster.yaml and in the KubeRay RayCluster."""

    role: str
    marker: str | None
    cpus: int
    gpus: int
    launcher_name: str
    kuberay_group: str | None  # None: the head group

    @property
    def resources(self) -> dict[str, float]:
        """The node's Ray resources as cluster.yaml declares them (the marker's amount is 1 per node)."""
        declared: dict[str, float] = {"CPU": self.cpus}
        if self.gpus:
            declared["GPU"] = self.gpus
        if self.marker:
            declared[self.marker] = 1
        return declared


NODE_TYPES: dict[str, NodeType] = {
    "head": NodeType("head", None, cpus=0, gpus=0, launcher_name="ray.head.default", kuberay_group=None),
    "cpu": NodeType("cpu", "mammo_ray_cpu_node", cpus=16, gpus=0, launcher_name="ray.worker.cpu",
                    kuberay_group="cpu"),
    "gpu": NodeType("gpu", "mammo_ray_gpu_node", cpus=4, gpus=1, launcher_name="ray.worker.gpu",
                    kuberay_group="gpu"),
}

#: Which node type each kind of work belongs on. Decoding (ingest, every image pass, fine-tuning's
#: inputs) on CPU workers; the networks (embedding, zero-shot) and Ray Train's workers on GPU workers.
WORK_NODE_TYPE: dict[WorkKind, str] = {"decode": "cpu", "inference": "gpu", "train": "gpu"}


@dataclass(frozen=True)
class Placement:
    """The custom resources each kind of work asks for (empty: anywhere). Built once per run by
    `resolve`, handed to the stages as data."""

    asks: Mapping[WorkKind, Mapping[str, float]] = field(default_factory=dict)

    def resources(self, work: WorkKind) -> dict[str, float]:
        """Ray `resources=` for one kind of work (a new dict: callers may add to it)."""
        return dict(self.asks.get(work, {}))


#: Work runs wherever Ray has room: a laptop, a local Ray, or `ray.node_types: off`.
ANYWHERE = Placement()


def resolve(mode: NodeTypesMode, cluster_resources: Mapping[str, float]) -> Placement:
    """The placement for a cluster whose resources (alive nodes, summed) are `cluster_resources`."""
    if mode == "off":
        return ANYWHERE
    asks: dict[WorkKind, dict[str, float]] = {}
    for work, node_type in WORK_NODE_TYPE.items():
        marker = NODE_TYPES[node_type].marker
        if marker and (mode == "required" or cluster_resources.get(marker, 0) > 0):
            asks[work] = {marker: MARKER_SHARE}
    return Placement(asks)


def node_type_of(node_resources: Mapping[str, float]) -> str:
    """The role of a node from its resources: the type whose marker it carries, else `head` for a node
    without CPUs, else `untyped` (a node outside the declared types)."""
    for node_type in NODE_TYPES.values():
        if node_type.marker and node_resources.get(node_type.marker, 0) > 0:
            return node_type.role
    return "head" if not node_resources.get("CPU", 0) else "untyped"
