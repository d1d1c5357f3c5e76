"""One declaration of the node types (mammo_ray.placement.NODE_TYPES): cluster.yaml, every KubeRay cluster
spec and the cluster study config agree with it, so the work the study places on a type finds nodes."""

from __future__ import annotations

import json
import shlex

import pytest

from mammo_ray.config import load_config
from mammo_ray.placement import NODE_TYPES, WORK_NODE_TYPE
from tests.deploy.manifests import CLUSTER_YAML, STUDY_CONFIG, k8s_objects, load_yaml, ray_cluster_specs

WORKER_TYPES = [node_type for node_type in NODE_TYPES.values() if node_type.kuberay_group]


def kuberay_resources(start_params: dict) -> dict[str, float]:
    """The custom resources a group's `ray start` gets: KubeRay passes the value to the shell as it is."""
    value = start_params.get("resources")
    if value is None:
        return {}
    (text,) = shlex.split(value)
    return json.loads(text)


def cluster_specs() -> list[tuple[str, dict]]:
    return [(f"{where}:{path}", spec) for where, obj in k8s_objects() for path, spec in ray_cluster_specs(obj)]


def test_every_kind_of_work_has_a_worker_type_with_a_marker() -> None:
    for work, role in WORK_NODE_TYPE.items():
        assert NODE_TYPES[role].marker, work
    assert NODE_TYPES["head"].marker is None and NODE_TYPES["head"].cpus == 0


@pytest.mark.parametrize("node_type", list(NODE_TYPES.values()), ids=lambda t: t.role)
def test_cluster_yaml_declares_each_node_type_with_its_marker(node_type) -> None:
    declared = load_yaml(CLUSTER_YAML)["available_node_types"][node_type.launcher_name]["resources"]
    assert declared == node_type.resources


@pytest.mark.parametrize(("where", "spec"), cluster_specs(), ids=[where for where, _ in cluster_specs()])
def test_every_kuberay_cluster_declares_the_worker_types_and_a_workless_head(where: str, spec: dict) -> None:
    assert spec["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0", where
    assert not kuberay_resources(spec["headGroupSpec"]["rayStartParams"]), where
    groups = {group["groupName"]: group for group in spec["workerGroupSpecs"]}
    assert set(groups) == {node_type.kuberay_group for node_type in WORKER_TYPES}, where
    for node_type in WORKER_TYPES:
        group = groups[node_type.kuberay_group]
        assert kuberay_resources(group["rayStartParams"]) == {node_type.marker: 1}, (where, node_type.role)
        (container,) = group["template"]["spec"]["containers"]
        gpus = int(container["resources"]["limits"].get("nvidia.com/gpu", 0))
        assert gpus == node_type.gpus, (where, node_type.role)


def test_the_check_reads_a_marker_the_way_the_shell_passes_it() -> None:
    assert kuberay_resources({"resources": '"{\\"mammo_ray_gpu_node\\": 1}"'}) == {"mammo_ray_gpu_node": 1}
    with pytest.raises(json.JSONDecodeError):
        kuberay_resources({"resources": "mammo_ray_gpu_node=1"})


def test_the_cluster_study_places_work_on_the_declared_types() -> None:
    # Its worker types scale from zero: only a demand for their markers makes the autoscaler start them.
    assert load_config(STUDY_CONFIG).ray.node_types == "required"
