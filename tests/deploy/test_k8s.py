"""k8s/: built-in kinds against the Kubernetes schemas (kubernetes-validate, strict, offline), the KubeRay
kinds against the strict schema in kuberay_v1_subset.schema.json, every pod template as the Pod it
becomes, and the deployment rules: hardened containers, no literal credentials, token auth, the one
entrypoint, the image of the installed Ray. No cluster, no network.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from mammo_ray.config import load_config
from tests.deploy.manifests import (
    AUTH_SECRET,
    AUTH_SECRET_KEY,
    BUILTIN_KINDS,
    ENTRYPOINT,
    K8S_DIR,
    PREFIX_SITE_PACKAGES,
    RAY_KINDS,
    REPO_ROOT,
    SCORING_ENTRYPOINT,
    STUDY_CONFIG,
    SUBMIT_COMMAND,
    autoscaler_container,
    builtin_errors,
    containers,
    credential_findings,
    env_credential_findings,
    env_entries,
    k8s_files,
    k8s_objects,
    kuberay_errors,
    load_docs,
    object_security_findings,
    objects_of,
    pod_template_errors,
    pod_templates,
    ray_cluster_specs,
    ray_image,
    ray_job_specs,
    ray_version,
)

OBJECTS = k8s_objects()
BUILTINS = [(where, obj) for where, obj in OBJECTS if obj.get("kind") in BUILTIN_KINDS]
RAY_OBJECTS = [(where, obj) for where, obj in OBJECTS if obj.get("kind") in RAY_KINDS]
TEMPLATES = [
    (f"{where}:{path}", template) for where, obj in RAY_OBJECTS for path, template in pod_templates(obj)
]
WITH_PODS = [(where, obj) for where, obj in OBJECTS if any(True for _ in pod_templates(obj))]


def ids(pairs: list[tuple[str, object]]) -> list[str]:
    return [where for where, _ in pairs]


def only(kind: str, name: str | None = None) -> dict:
    matches = [obj for _, obj in objects_of(kind) if name is None or obj["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def own_cluster_job() -> dict:
    return only("RayJob", "mammo-ray-study")


def env_of(container: dict) -> dict[str, dict]:
    return {entry["name"]: entry for entry in container.get("env", [])}


# --- the files --------------------------------------------------------------------------------------


def test_the_expected_files_and_kinds_are_there() -> None:
    names = {path.name for path in k8s_files()}
    assert {
        "namespace.yaml",
        "raycluster.yaml",
        "rayjob.yaml",
        "raycronjob.yaml",
        "cronjob.yaml",
        "secrets.example.yaml",
    } <= names
    assert (K8S_DIR / "README.md").is_file()
    kinds = {obj["kind"] for _, obj in OBJECTS}
    assert kinds == set(BUILTIN_KINDS) | set(RAY_KINDS)
    for where, obj in OBJECTS:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "mammo-ray", where


def test_namespace_enforces_the_restricted_pod_security_profile() -> None:
    labels = only("Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


# --- schemas ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("where", "obj"), BUILTINS, ids=ids(BUILTINS))
def test_builtin_kind_is_valid_kubernetes(where: str, obj: dict) -> None:
    assert builtin_errors(obj) == ""


@pytest.mark.parametrize(("where", "obj"), RAY_OBJECTS, ids=ids(RAY_OBJECTS))
def test_ray_kind_matches_the_strict_kuberay_schema(where: str, obj: dict) -> None:
    assert kuberay_errors(obj) == []


@pytest.mark.parametrize(("where", "template"), TEMPLATES, ids=ids(TEMPLATES))
def test_ray_pod_template_is_a_valid_kubernetes_pod(where: str, template: dict) -> None:
    assert pod_template_errors(template) == ""


def test_autoscaler_settings_are_a_valid_kubernetes_container() -> None:
    for where, obj in RAY_OBJECTS:
        for path, cluster in ray_cluster_specs(obj):
            autoscaler = autoscaler_container(cluster)
            assert autoscaler is not None, f"{where}:{path} has no in-tree autoscaler"
            head = cluster["headGroupSpec"]["template"]["spec"]
            pod = {"spec": {"containers": [{**autoscaler, "image": ray_image()}], "volumes": head["volumes"]}}
            assert pod_template_errors(pod) == "", f"{where}:{path}"


def test_negative_a_misspelt_field_fails_the_kuberay_schema() -> None:
    broken = copy.deepcopy(only("RayCluster"))
    group = broken["spec"]["workerGroupSpecs"][0]
    group["maxReplica"] = group.pop("maxReplicas")
    assert any("maxReplica" in error for error in kuberay_errors(broken))
    broken = copy.deepcopy(only("RayCluster"))
    broken["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # must be the string "0"
    assert any("num-cpus" in error for error in kuberay_errors(broken))
    broken = copy.deepcopy(only("RayCronJob", "mammo-ray-nightly"))
    broken["spec"]["jobTemplate"]["shutdownAfterJobFinishes"] = False  # ttl needs shutdown
    assert kuberay_errors(broken) != []


def test_negative_a_misspelt_field_fails_kubernetes_validate() -> None:
    broken = copy.deepcopy(only("CronJob"))
    broken["spec"]["concurrencyPolicyy"] = broken["spec"].pop("concurrencyPolicy")
    assert "concurrencyPolicyy" in builtin_errors(broken)
    broken = copy.deepcopy(only("Role"))
    broken["rules"][0]["verb"] = broken["rules"][0].pop("verbs")
    assert "verb" in builtin_errors(broken)


def test_negative_a_misspelt_container_field_fails_the_pod_check() -> None:
    template = copy.deepcopy(own_cluster_job()["spec"]["rayClusterSpec"]["headGroupSpec"]["template"])
    head = template["spec"]["containers"][0]
    head["resource"] = head.pop("resources")
    assert "resource" in pod_template_errors(template)


# --- security ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("where", "obj"), WITH_PODS, ids=ids(WITH_PODS))
def test_every_container_is_non_root_read_only_and_limited(where: str, obj: dict) -> None:
    assert object_security_findings(obj) == []


def test_negative_the_security_check_catches_a_root_unlimited_container() -> None:
    broken = copy.deepcopy(only("RayCluster"))
    worker = broken["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    worker["securityContext"] = {**worker["securityContext"], "runAsUser": 0, "readOnlyRootFilesystem": False}
    del worker["resources"]["limits"]
    broken["spec"]["autoscalerOptions"]["securityContext"]["allowPrivilegeEscalation"] = True
    findings = "\n".join(object_security_findings(broken))
    for expected in (
        "runAsUser is 0",
        "readOnlyRootFilesystem",
        "resources.limits.cpu",
        "allowPrivilegeEscalation",
    ):
        assert expected in findings


def test_no_literal_credentials_in_any_file() -> None:
    for path in [*k8s_files(), K8S_DIR / "README.md"]:
        assert credential_findings(path.read_text(), path.name) == []
    for where, obj in OBJECTS:
        assert env_credential_findings(obj, where) == []


def test_negative_the_credential_checks_catch_a_literal_secret() -> None:
    broken = copy.deepcopy(only("RayCluster"))
    head = broken["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    head["env"] = [{"name": "AWS_SECRET_ACCESS_KEY", "value": "not-from-a-secret"}, *head["env"]]
    assert env_credential_findings(broken, "copy") == [
        "copy: env AWS_SECRET_ACCESS_KEY is not from a secretKeyRef"
    ]
    assert credential_findings("key: AKIA" + "Q" * 16, "copy") != []


def test_secrets_appear_only_as_clearly_fake_examples() -> None:
    secrets = [(where, obj) for where, obj in OBJECTS if obj["kind"] == "Secret"]
    assert {where.split("#")[0] for where, _ in secrets} == {"secrets.example.yaml"}
    for where, secret in secrets:
        assert "data" not in secret, f"{where}: use stringData placeholders"
        for key, value in secret["stringData"].items():
            assert value.startswith("REPLACE-ME"), f"{where}: {key}"


def test_every_secret_reference_resolves_to_an_example_secret() -> None:
    keys = {
        (secret["metadata"]["name"], key)
        for _, secret in objects_of("Secret")
        for key in secret["stringData"]
    }
    refs = {
        (ref["name"], ref["key"])
        for _, obj in OBJECTS
        for entry in env_entries(obj)
        if (ref := (entry.get("valueFrom") or {}).get("secretKeyRef"))
    }
    assert refs and refs <= keys
    assert (AUTH_SECRET, AUTH_SECRET_KEY) in keys


# --- token auth -------------------------------------------------------------------------------------


def test_every_ray_cluster_uses_token_auth_from_the_secret() -> None:
    specs = [(where, path, spec) for where, obj in RAY_OBJECTS for path, spec in ray_cluster_specs(obj)]
    assert len(specs) == 4  # raycluster, rayjob (own cluster), raycronjob, the ConfigMap's rayjob
    for where, path, spec in specs:
        assert spec["authOptions"] == {"mode": "token", "secretName": AUTH_SECRET}, f"{where}:{path}"
        # KubeRay needs spec.rayVersion >= 2.52.0 for token mode; it must be the Ray we run
        assert spec["rayVersion"] == ray_version(), f"{where}:{path}"
        assert tuple(int(part) for part in spec["rayVersion"].split(".")) >= (2, 52, 0)


def test_every_submitter_sends_the_token() -> None:
    submitters = [
        (where, job["submitterPodTemplate"]) for where, obj in RAY_OBJECTS for _, job in ray_job_specs(obj)
    ]
    assert len(submitters) == 5  # the study's four and the nightly scoring
    for where, template in submitters:
        for container in template["spec"]["containers"]:
            env = env_of(container)
            assert env["RAY_AUTH_MODE"] == {"name": "RAY_AUTH_MODE", "value": "token"}, where
            ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"]) == (AUTH_SECRET, AUTH_SECRET_KEY), where


# --- entrypoint, images, versions -------------------------------------------------------------------


def test_every_job_runs_exactly_the_study_entrypoint_or_the_nightly_scoring() -> None:
    jobs = [(where, job) for where, obj in RAY_OBJECTS for _, job in ray_job_specs(obj)]
    assert len(jobs) == 5
    scoring = [(where, job) for where, job in jobs if where.startswith("scoring.yaml")]
    assert len(scoring) == 1 and scoring[0][1]["entrypoint"] == SCORING_ENTRYPOINT
    for where, job in jobs:
        if (where, job) not in scoring:
            assert job["entrypoint"] == ENTRYPOINT, where


def test_the_nightly_scoring_runs_on_the_raycluster_after_the_study_and_cannot_overlap() -> None:
    cron = only("RayCronJob", "mammo-ray-nightly-scoring")["spec"]
    assert cron["schedule"] == "0 3 * * *"
    assert cron["jobTemplate"]["clusterSelector"] == {"ray.io/cluster": only("RayCluster")["metadata"]["name"]}
    assert cron["jobTemplate"]["activeDeadlineSeconds"] < 24 * 3600
    package, config = SCORING_ENTRYPOINT.split()[2], SCORING_ENTRYPOINT.split()[-1]
    scoring = load_config(REPO_ROOT / config)
    assert package.startswith(load_config(STUDY_CONFIG).output + "/models/")
    assert scoring.output != load_config(STUDY_CONFIG).output


def test_every_mention_of_the_study_command_is_the_same() -> None:
    for path in [*k8s_files(), K8S_DIR / "README.md"]:
        for line in path.read_text().splitlines():
            if "full_study.py" in line:
                assert line.rstrip().endswith(ENTRYPOINT), f"{path.name}: {line}"
                if "ray job submit" in line:
                    assert SUBMIT_COMMAND in line, f"{path.name}: {line}"


def test_every_ray_container_uses_the_installed_ray_image() -> None:
    expected = ray_image()
    for where, obj in RAY_OBJECTS:
        for path, template in pod_templates(obj):
            for container in containers(template["spec"]):
                assert container["image"] == expected, f"{where}:{path}/{container['name']}"


def test_the_installed_package_matches_the_image_python_and_ray() -> None:
    assert ray_image().endswith("-py311-gpu") and "python3.11" in PREFIX_SITE_PACKAGES
    for where, obj in RAY_OBJECTS:
        for path, cluster in ray_cluster_specs(obj):
            for template in [
                cluster["headGroupSpec"]["template"],
                *(g["template"] for g in cluster["workerGroupSpecs"]),
            ]:
                spec = template["spec"]
                install = [c for c in spec["initContainers"] if c["name"] == "install-mammo-ray"]
                assert len(install) == 1, f"{where}:{path}"
                script = install[0]["args"][0]
                assert "--prefix /opt/mammo-ray" in script
                assert re.findall(r"ray\.__version__ == '([^']+)'", script) == [ray_version()]
                for container in containers(spec):
                    assert env_of(container)["PYTHONPATH"]["value"] == PREFIX_SITE_PACKAGES


def test_the_kubectl_image_is_pinned() -> None:
    cron = only("CronJob")
    spec = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    for container in containers(spec):
        assert re.fullmatch(
            r"registry\.k8s\.io/kubectl:v\d+\.\d+\.\d+(@sha256:[0-9a-f]{64})?", container["image"]
        )


# --- the cluster ------------------------------------------------------------------------------------


def test_the_cluster_autoscales_gpu_and_cpu_workers_from_zero() -> None:
    spec = only("RayCluster")["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {group["groupName"]: group for group in spec["workerGroupSpecs"]}
    gpu = groups["gpu"]
    assert (gpu["replicas"], gpu["minReplicas"]) == (0, 0) and gpu["maxReplicas"] >= 1
    gpu_container = gpu["template"]["spec"]["containers"][0]
    for section in ("requests", "limits"):
        assert gpu_container["resources"][section]["nvidia.com/gpu"] == 1
    cpu = groups["cpu"]
    assert cpu["minReplicas"] == 0 and cpu["maxReplicas"] >= 1
    for container in containers(cpu["template"]["spec"]):
        assert "nvidia.com/gpu" not in container["resources"]["limits"]


def test_s3_credentials_come_from_the_s3_secret_in_every_ray_container() -> None:
    for where, obj in RAY_OBJECTS:
        for path, cluster in ray_cluster_specs(obj):
            for template in [
                cluster["headGroupSpec"]["template"],
                *(g["template"] for g in cluster["workerGroupSpecs"]),
            ]:
                for container in containers(template["spec"]):
                    env = env_of(container)
                    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                        ref = env[name]["valueFrom"]["secretKeyRef"]
                        assert (ref["name"], ref["key"]) == ("mammo-ray-s3", name), f"{where}:{path}"


# --- RayJob, RayCronJob, CronJob -------------------------------------------------------------------


def test_the_copies_of_the_study_spec_do_not_drift() -> None:
    cluster = only("RayCluster")["spec"]
    job = own_cluster_job()["spec"]
    assert job["rayClusterSpec"] == cluster
    assert only("RayCronJob", "mammo-ray-nightly")["spec"]["jobTemplate"] == job
    scheduled = only("RayJob", "mammo-ray-scheduled")
    assert scheduled["spec"] == job


def test_rayjobs_run_the_code_archive_the_pods_install() -> None:
    install = own_cluster_job()["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"][
        "initContainers"
    ][0]
    code_uri = env_of(install)["MAMMO_RAY_CODE_URI"]["value"]
    for where, obj in RAY_OBJECTS:
        for _, job in ray_job_specs(obj):
            assert yaml.safe_load(job["runtimeEnvYAML"]) == {"working_dir": code_uri}, where


def test_the_own_cluster_rayjob_cleans_up_and_the_other_uses_the_raycluster() -> None:
    own = own_cluster_job()["spec"]
    assert own["shutdownAfterJobFinishes"] is True and own["ttlSecondsAfterFinished"] > 0
    assert own["activeDeadlineSeconds"] > 0
    existing = only("RayJob", "mammo-ray-study-on-cluster")["spec"]
    assert existing["clusterSelector"] == {"ray.io/cluster": only("RayCluster")["metadata"]["name"]}
    assert "rayClusterSpec" not in existing and not existing.get("shutdownAfterJobFinishes")


def test_the_raycronjob_documents_its_feature_gate_and_cannot_overlap() -> None:
    text = (K8S_DIR / "raycronjob.yaml").read_text()
    assert "RayCronJob=true" in text and "feature gate" in text
    cron = only("RayCronJob", "mammo-ray-nightly")["spec"]
    assert cron["schedule"] == "0 2 * * *"  # daily: a period of 24 h
    assert cron["jobTemplate"]["activeDeadlineSeconds"] < 24 * 3600


def test_the_cronjob_forbids_overlap_and_creates_the_configmap_rayjob() -> None:
    cron = only("CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    job = cron["spec"]["jobTemplate"]["spec"]
    pod = job["template"]["spec"]
    configmap = only("ConfigMap")
    rayjob = only("RayJob", "mammo-ray-scheduled")
    name = rayjob["metadata"]["name"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["rayjob-manifest"]["configMap"]["name"] == configmap["metadata"]["name"]
    steps = {container["name"]: container["args"] for container in containers(pod)}
    assert list(steps) == ["delete-previous", "create-rayjob", "wait-finished", "check-succeeded"]
    assert steps["create-rayjob"] == ["create", "--filename=/etc/mammo-ray/rayjob.yaml"]
    assert "rayjob.yaml" in configmap["data"]
    for step in ("delete-previous", "wait-finished", "check-succeeded"):
        assert f"rayjob.ray.io/{name}" in steps[step]
    # the pod outlives the study it waits for, so Forbid covers the whole run
    assert job["activeDeadlineSeconds"] > rayjob["spec"]["activeDeadlineSeconds"]


def test_the_scheduler_may_only_manage_rayjobs_in_its_namespace() -> None:
    account = only("ServiceAccount")
    role = only("Role")
    binding = only("RoleBinding")
    pod = only("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": account["metadata"]["namespace"],
        }
    ]
    for rule in role["rules"]:
        assert rule["apiGroups"] == ["ray.io"] and rule["resources"] == ["rayjobs"]
        assert (
            {"create", "get", "list", "delete"}
            <= set(rule["verbs"])
            <= {"create", "get", "list", "watch", "delete"}
        )
    assert not [obj for _, obj in OBJECTS if obj["kind"] in ("ClusterRole", "ClusterRoleBinding")]


def test_multi_document_files_parse_into_the_expected_objects() -> None:
    assert [doc["kind"] for doc in load_docs(K8S_DIR / "rayjob.yaml")] == ["RayJob", "RayJob"]
    assert [doc["kind"] for doc in load_docs(K8S_DIR / "cronjob.yaml")] == [
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "CronJob",
    ]


# --- the install init container's script ----------------------------------------------------------


def install_script() -> str:
    spec = only("RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]
    (install,) = [c for c in spec["initContainers"] if c["name"] == "install-mammo-ray"]
    assert install["command"] == ["/bin/bash", "-c"]
    return install["args"][0]


def test_the_install_script_is_valid_bash() -> None:
    result = subprocess.run(
        ["bash", "-n"], input=install_script(), text=True, capture_output=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_the_install_script_fetches_and_unpacks_a_git_archive_from_s3(s3_bucket: str, tmp_path: Path) -> None:
    """The Python half of the script against a real S3 protocol (moto), paths moved under tmp_path."""
    import boto3

    python_part = re.search(r"<<'PY'\n(.*?)\nPY\n", install_script(), re.DOTALL)
    assert python_part
    code = python_part.group(1).replace("/opt/mammo-ray", str(tmp_path))
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as zf:  # what `git archive --format=zip --prefix=mammo-ray/` makes
        zf.writestr("mammo-ray/pyproject.toml", "[project]\nname = 'mammo-ray'\n")
        zf.writestr("mammo-ray/jobs/full_study.py", "")
    bucket = s3_bucket.removeprefix("s3://")
    boto3.client("s3").upload_file(str(archive), bucket, "code/mammo-ray.zip")
    (tmp_path / "src").mkdir()
    env = {**os.environ, "MAMMO_RAY_CODE_URI": f"{s3_bucket}/code/mammo-ray.zip"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, text=True, capture_output=True, check=False
    )
    assert result.returncode == 0, result.stderr
    source = Path((tmp_path / "src-dir").read_text())
    assert source == tmp_path / "src" / "mammo-ray"
    assert (source / "jobs" / "full_study.py").is_file()
