"""What tests/deploy checks the deployment files against, and how: loaders, validators, walkers.

Everything here is offline: Ray's own launcher-config validation, botocore's bundled EC2 API model,
kubernetes-validate's bundled Kubernetes JSON schemas, and the strict KubeRay schema written for these
tests (kuberay_v1_subset.schema.json). Each check is a function returning what it found wrong, so the
negative tests can run the very same check on a deliberately broken copy.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO_ROOT / "cluster.yaml"
K8S_DIR = REPO_ROOT / "k8s"
STUDY_CONFIG = REPO_ROOT / "jobs" / "configs" / "cluster_s3.yaml"
README = REPO_ROOT / "README.md"

#: The study's Ray job entrypoint: every manifest, comment and README must use exactly this.
ENTRYPOINT = "python jobs/full_study.py --config jobs/configs/cluster_s3.yaml"
#: The nightly scoring's entrypoint (k8s/scoring.yaml): a package of the study above, a config of its own.
SCORING_ENTRYPOINT = ("python jobs/score.py s3://mammo-ray-data/studies/inbreast/models/imagenet_resnet50-compare "
                      "--config jobs/configs/cluster_score.yaml")
#: The one command users run against a cluster (README, cluster.yaml, k8s/).
SUBMIT_COMMAND = f"ray job submit --working-dir . -- {ENTRYPOINT}"

#: Kubernetes version whose schemas the built-in kinds are validated against (kubernetes-validate).
K8S_VERSION = "1.33"
#: The Python of the Ray images (the -py311 tag) and where pip --prefix puts packages for it.
IMAGE_PYTHON = "py311"
PREFIX_SITE_PACKAGES = "/opt/mammo-ray/lib/python3.11/site-packages"

#: The Secret that holds the Ray token (key auth_token, as KubeRay's authOptions.secretName expects).
AUTH_SECRET = "mammo-ray-auth"
AUTH_SECRET_KEY = "auth_token"

#: Environment variable names whose values are credentials: only ever from a Secret.
SENSITIVE_ENV = re.compile(
    r"^(AWS_ACCESS_KEY_ID|AWS_SECRET_ACCESS_KEY|AWS_SESSION_TOKEN|RAY_AUTH_TOKEN|.*PASSWORD.*)$"
)
#: Literal AWS access key ids (long-term AKIA..., temporary ASIA...).
AWS_KEY_ID = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")
#: A 40-character AWS-secret-key-like token.
AWS_SECRET_LIKE = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])")

RAY_KINDS = ("RayCluster", "RayJob", "RayCronJob")
BUILTIN_KINDS = ("Namespace", "Secret", "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "CronJob")


def ray_image() -> str:
    """The only Ray image the manifests may use: the installed Ray's version, Python 3.11, GPU build."""
    import ray

    return f"rayproject/ray:{ray.__version__}-{IMAGE_PYTHON}-gpu"


def ray_version() -> str:
    import ray

    return ray.__version__


# --- loading ---------------------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def k8s_files() -> list[Path]:
    return sorted(K8S_DIR.glob("*.yaml"))


def k8s_objects() -> list[tuple[str, dict]]:
    """Every object in k8s/*.yaml plus the RayJob held in a ConfigMap, as (where, object)."""
    found: list[tuple[str, dict]] = []
    for path in k8s_files():
        for index, doc in enumerate(load_docs(path)):
            where = f"{path.name}#{index}"
            found.append((where, doc))
            if doc.get("kind") == "ConfigMap":
                for key, text in (doc.get("data") or {}).items():
                    if key.endswith((".yaml", ".yml")):
                        for inner_index, inner in enumerate(yaml.safe_load_all(text)):
                            if inner is not None:
                                found.append((f"{where}/data/{key}#{inner_index}", inner))
    return found


def objects_of(kind: str) -> list[tuple[str, dict]]:
    return [(where, obj) for where, obj in k8s_objects() if obj.get("kind") == kind]


# --- Ray cluster launcher (cluster.yaml) -----------------------------------------------------------


def ray_launcher_validate(raw: dict) -> dict:
    """Ray's own checks, pinned to the installed Ray: fill in the provider defaults, then validate.

    `prepare_config` merges ray/autoscaler/aws/defaults.yaml (a file in the Ray wheel), merges the
    setup commands, checks the docker section and fills per-type min/max workers; `validate_config`
    checks the result against ray/autoscaler/ray-schema.json plus the cross-field rules (head type
    exists, sum of min_workers <= max_workers). Neither calls AWS: the provider bootstrap that does
    (key pair, security group, IAM role, subnet lookup in `ray up`) is deliberately not run.
    Raises on the first problem; returns the prepared config.
    """
    from ray.autoscaler._private.util import check_legacy_fields, prepare_config, validate_config

    config = copy.deepcopy(raw)
    check_legacy_fields(config)
    prepared = prepare_config(config)
    validate_config(prepared)
    return prepared


@cache
def _run_instances_shape() -> Any:
    import botocore.session

    model = botocore.session.get_session().get_service_model("ec2")
    return model.operation_model("RunInstances").input_shape


def ec2_node_config_errors(node_config: dict) -> str:
    """What EC2's RunInstances would reject in a node_config ('' if nothing), from botocore's bundled
    API model: Ray passes node_config to ec2.create_instances with MinCount/MaxCount (and an ImageId it
    picks itself when none is given)."""
    from botocore.validate import ParamValidator

    params = {"ImageId": "ami-00000000000000000", "MinCount": 1, "MaxCount": 1, **copy.deepcopy(node_config)}
    report = ParamValidator().validate(params, _run_instances_shape())
    return report.generate_report() if report.has_errors() else ""


# --- Kubernetes ------------------------------------------------------------------------------------


def builtin_errors(obj: dict) -> str:
    """kubernetes-validate (strict: unknown fields are errors) on a built-in kind; '' when valid."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = ".".join(str(part) for part in error.path)
        return f"{path}: {error.message}"
    return ""


def pod_template_errors(template: dict) -> str:
    """A PodTemplateSpec (as embedded in a Ray CR) validated as the Pod it becomes, strictly."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": template.get("metadata") or {},
        "spec": template.get("spec"),
    }
    return builtin_errors(pod)


@cache
def _kuberay_schema() -> dict:
    return json.loads((Path(__file__).parent / "kuberay_v1_subset.schema.json").read_text())


def kuberay_errors(obj: dict) -> list[str]:
    """The strict KubeRay-subset schema for the object's kind; [] when valid."""
    import jsonschema

    schema = _kuberay_schema()
    kind = obj.get("kind")
    if kind not in RAY_KINDS:
        return [f"kind {kind!r} is not one of {RAY_KINDS}"]
    root = {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": f"#/$defs/{kind}"}
    validator = jsonschema.Draft202012Validator(root)
    return [
        f"{'.'.join(str(part) for part in error.absolute_path) or '<root>'}: {error.message}"
        for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    ]


# --- walking the Ray objects ----------------------------------------------------------------------


def ray_job_specs(obj: dict) -> Iterator[tuple[str, dict]]:
    if obj.get("kind") == "RayJob":
        yield "spec", obj["spec"]
    elif obj.get("kind") == "RayCronJob":
        yield "spec.jobTemplate", obj["spec"]["jobTemplate"]


def ray_cluster_specs(obj: dict) -> Iterator[tuple[str, dict]]:
    if obj.get("kind") == "RayCluster":
        yield "spec", obj["spec"]
    for path, job in ray_job_specs(obj):
        if "rayClusterSpec" in job:
            yield f"{path}.rayClusterSpec", job["rayClusterSpec"]


def pod_templates(obj: dict) -> Iterator[tuple[str, dict]]:
    """Every PodTemplateSpec in a Ray CR or a CronJob, as (path, template)."""
    for path, cluster in ray_cluster_specs(obj):
        yield f"{path}.headGroupSpec.template", cluster["headGroupSpec"]["template"]
        for index, group in enumerate(cluster.get("workerGroupSpecs", [])):
            yield f"{path}.workerGroupSpecs[{index}:{group['groupName']}].template", group["template"]
    for path, job in ray_job_specs(obj):
        if "submitterPodTemplate" in job:
            yield f"{path}.submitterPodTemplate", job["submitterPodTemplate"]
    if obj.get("kind") == "CronJob":
        yield "spec.jobTemplate.spec.template", obj["spec"]["jobTemplate"]["spec"]["template"]


def containers(pod_spec: dict) -> Iterator[dict]:
    yield from pod_spec.get("initContainers", [])
    yield from pod_spec.get("containers", [])


def env_entries(obj: Any) -> Iterator[dict]:
    """Every env entry anywhere in an object (containers, init containers, autoscalerOptions)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == "env" and isinstance(value, list):
                yield from (entry for entry in value if isinstance(entry, dict))
            else:
                yield from env_entries(value)
    elif isinstance(obj, list):
        for item in obj:
            yield from env_entries(item)


# --- security checks -------------------------------------------------------------------------------


def container_security_findings(container: dict, pod_security: dict, where: str) -> list[str]:
    """Non-root, no escalation, capabilities dropped, read-only root, requests and limits."""
    found: list[str] = []
    security = container.get("securityContext") or {}
    name = f"{where}/{container.get('name', '?')}"
    if security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is not True:
        found.append(f"{name}: runAsNonRoot is not true")
    run_as_user = security.get("runAsUser", pod_security.get("runAsUser"))
    if run_as_user is None or run_as_user == 0:
        found.append(f"{name}: runAsUser is {run_as_user!r} (must be a non-zero uid)")
    if security.get("allowPrivilegeEscalation") is not False:
        found.append(f"{name}: allowPrivilegeEscalation is not false")
    if security.get("readOnlyRootFilesystem") is not True:
        found.append(f"{name}: readOnlyRootFilesystem is not true")
    if "ALL" not in ((security.get("capabilities") or {}).get("drop") or []):
        found.append(f"{name}: capabilities.drop does not contain ALL")
    if security.get("privileged"):
        found.append(f"{name}: privileged")
    resources = container.get("resources") or {}
    for section in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in (resources.get(section) or {}):
                found.append(f"{name}: no resources.{section}.{resource}")
    gpu_limit = (resources.get("limits") or {}).get("nvidia.com/gpu")
    if gpu_limit is not None and (resources.get("requests") or {}).get("nvidia.com/gpu") != gpu_limit:
        found.append(f"{name}: nvidia.com/gpu requests != limits")
    return found


def pod_security_findings(pod_spec: dict, where: str, extra_containers: tuple[dict, ...] = ()) -> list[str]:
    """A pod template's spec (plus containers KubeRay adds from our settings, e.g. the autoscaler)."""
    found: list[str] = []
    pod_security = pod_spec.get("securityContext") or {}
    if pod_security.get("runAsNonRoot") is not True:
        found.append(f"{where}: pod securityContext.runAsNonRoot is not true")
    if (pod_security.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        found.append(f"{where}: pod seccompProfile is not RuntimeDefault")
    if pod_spec.get("hostNetwork") or pod_spec.get("hostPID") or pod_spec.get("hostIPC"):
        found.append(f"{where}: uses the host's namespaces")
    volumes = {volume["name"]: volume for volume in pod_spec.get("volumes", [])}
    for volume in volumes.values():
        if "hostPath" in volume:
            found.append(f"{where}: hostPath volume {volume['name']}")
    for container in (*containers(pod_spec), *extra_containers):
        found += container_security_findings(container, pod_security, where)
        for mount in container.get("volumeMounts", []):
            if mount["name"] not in volumes:
                found.append(f"{where}/{container.get('name', '?')}: mounts undefined volume {mount['name']}")
    return found


def autoscaler_container(cluster_spec: dict) -> dict | None:
    """The autoscaler sidecar KubeRay adds to the head, as far as our settings define it."""
    if not cluster_spec.get("enableInTreeAutoscaling"):
        return None
    options = cluster_spec.get("autoscalerOptions") or {}
    return {
        "name": "autoscaler",
        "securityContext": options.get("securityContext"),
        "resources": options.get("resources"),
        "volumeMounts": options.get("volumeMounts", []),
    }


def object_security_findings(obj: dict) -> list[str]:
    found: list[str] = []
    autoscalers = {
        f"{path}.headGroupSpec.template": autoscaler_container(cluster)
        for path, cluster in ray_cluster_specs(obj)
    }
    for path, template in pod_templates(obj):
        extra = autoscalers.get(path)
        found += pod_security_findings(template["spec"], path, (extra,) if extra else ())
    return found


def credential_findings(text: str, where: str) -> list[str]:
    """Literal AWS access key ids and AWS-secret-key-like strings in a file's text."""
    found: list[str] = []
    for match in AWS_KEY_ID.finditer(text):
        found.append(f"{where}: literal AWS access key id {match.group(0)[:4]}...")
    for match in AWS_SECRET_LIKE.finditer(text):
        token = match.group(0)
        # 40 characters of base64 with both cases and a digit: what an AWS secret key looks like
        if re.search(r"[a-z]", token) and re.search(r"[A-Z]", token) and re.search(r"[0-9]", token):
            found.append(f"{where}: a 40-character secret-like string {token[:4]}...")
    return found


def env_credential_findings(obj: dict, where: str) -> list[str]:
    """Sensitive env vars must come from a Secret (valueFrom.secretKeyRef), never a literal value."""
    found: list[str] = []
    for entry in env_entries(obj):
        from_secret = "value" not in entry and "secretKeyRef" in (entry.get("valueFrom") or {})
        if SENSITIVE_ENV.match(entry.get("name", "")) and not from_secret:
            found.append(f"{where}: env {entry['name']} is not from a secretKeyRef")
    return found
