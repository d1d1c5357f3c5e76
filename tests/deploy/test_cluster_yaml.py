"""cluster.yaml (Ray cluster launcher, AWS) and the example cluster study config, checked offline.

The launcher config goes through Ray's own validation (prepare_config + validate_config of the
installed Ray) with the network switched off, and each node_config through botocore's bundled EC2
RunInstances model. Nothing here talks to AWS or starts Ray.
"""

from __future__ import annotations

import copy
import re
import socket

import jsonschema
import pytest

from mammo_ray.config import load_config
from tests.deploy.manifests import (
    CLUSTER_YAML,
    ENTRYPOINT,
    README,
    STUDY_CONFIG,
    SUBMIT_COMMAND,
    credential_findings,
    ec2_node_config_errors,
    load_yaml,
    ray_image,
    ray_launcher_validate,
    ray_version,
)


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to resolve or connect (AWS, a registry, anything) fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"the network was used: {args!r}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


@pytest.fixture(scope="module")
def raw() -> dict:
    return load_yaml(CLUSTER_YAML)


@pytest.fixture(scope="module")
def prepared(raw: dict) -> dict:
    return ray_launcher_validate(raw)


def start_commands(config: dict) -> list[str]:
    return [*config["head_start_ray_commands"], *config["worker_start_ray_commands"]]


# --- Ray's own validation ----------------------------------------------------------------------------


def test_ray_validates_the_launcher_config_offline(raw: dict, no_network: None) -> None:
    prepared = ray_launcher_validate(raw)
    assert prepared["provider"]["type"] == "aws"
    assert set(prepared["available_node_types"]) == set(raw["available_node_types"])


def test_a_misspelt_node_type_field_fails_ray_validation(raw: dict, no_network: None) -> None:
    broken = copy.deepcopy(raw)
    group = broken["available_node_types"]["ray.worker.gpu"]
    group["min_worker"] = group.pop("min_workers")
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        ray_launcher_validate(broken)


def test_an_unknown_head_node_type_fails_ray_validation(raw: dict, no_network: None) -> None:
    broken = copy.deepcopy(raw)
    broken["head_node_type"] = "ray.head.gpu"
    with pytest.raises(ValueError, match="head_node_type"):
        ray_launcher_validate(broken)


def test_every_node_config_is_a_valid_ec2_run_instances_request(raw: dict) -> None:
    problems = {
        name: error
        for name, node_type in raw["available_node_types"].items()
        if (error := ec2_node_config_errors(node_type["node_config"]))
    }
    assert problems == {}


def test_a_misspelt_node_config_field_fails_the_ec2_model(raw: dict) -> None:
    node_config = copy.deepcopy(raw["available_node_types"]["ray.worker.gpu"]["node_config"])
    node_config["IamInstanceProfil"] = node_config.pop("IamInstanceProfile")
    assert "IamInstanceProfil" in ec2_node_config_errors(node_config)


# --- what the cluster must be ------------------------------------------------------------------------


def test_docker_image_is_the_installed_ray_version(raw: dict) -> None:
    assert raw["docker"]["image"] == ray_image()
    assert not {"head_image", "worker_image"} & set(raw["docker"])


def test_nodes_check_they_run_the_installed_ray_version(raw: dict) -> None:
    pinned = re.findall(r"ray\.__version__ == '([^']+)'", "\n".join(raw["setup_commands"]))
    assert pinned == [ray_version()]


def test_gpu_worker_type_scales_from_zero_with_gpus(prepared: dict) -> None:
    gpu_types = {name: t for name, t in prepared["available_node_types"].items() if t["resources"].get("GPU")}
    assert gpu_types, "no node type offers GPU resources"
    for name, node_type in gpu_types.items():
        assert node_type["resources"]["GPU"] >= 1, name
        assert node_type["min_workers"] == 0, name
        assert node_type["max_workers"] >= 1, name
        assert node_type["node_config"]["InstanceType"].startswith(("g", "p")), name


def test_cpu_worker_type_for_decoding_and_a_cpu_free_head(prepared: dict) -> None:
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    cpu_workers = [
        t for name, t in types.items() if name != prepared["head_node_type"] and not t["resources"].get("GPU")
    ]
    assert cpu_workers and all(t["min_workers"] == 0 and t["resources"]["CPU"] >= 8 for t in cpu_workers)
    assert (
        sum(t["max_workers"] for name, t in types.items() if name != prepared["head_node_type"])
        <= prepared["max_workers"]
    )


def test_s3_access_comes_from_an_instance_profile_on_every_node(raw: dict) -> None:
    for name, node_type in raw["available_node_types"].items():
        profile = node_type["node_config"].get("IamInstanceProfile") or {}
        assert profile.get("Name") or profile.get("Arn"), f"{name} has no IamInstanceProfile"
        assert node_type["node_config"].get("MetadataOptions", {}).get("HttpTokens") == "required", name


def test_no_static_credentials_anywhere_in_the_file() -> None:
    text = CLUSTER_YAML.read_text()
    for forbidden in ("aws_access_key_id", "aws_secret_access_key", "akia"):
        assert forbidden not in text.lower(), forbidden
    assert credential_findings(text, CLUSTER_YAML.name) == []


def test_the_credential_scan_catches_a_key_pasted_into_a_copy() -> None:
    # Built at run time so that no key-shaped literal sits in the repository.
    fake_id = "AKIA" + "Z" * 16
    fake_secret = "wJalrXUtnFEMI" + "K7MDENG" + "bPxRfiCYEXAMPLEKEY" + "a1"
    text = CLUSTER_YAML.read_text() + f"\n# {fake_id}\n# {fake_secret}\n"
    findings = credential_findings(text, "copy")
    assert len(findings) == 2, findings


def test_token_auth_is_on_in_every_start_command(raw: dict) -> None:
    starts = [command for command in start_commands(raw) if "ray start" in command]
    assert len(starts) == 2
    for command in starts:
        assert "RAY_AUTH_MODE=token" in command
        path = re.search(r"RAY_AUTH_TOKEN_PATH=(\S+?);", command)
        assert path and path.group(1) == "/etc/mammo-ray/ray_auth_token"


def test_the_token_is_read_from_ssm_into_a_mounted_file_never_written_here(raw: dict) -> None:
    init = "\n".join(raw["initialization_commands"])
    assert "aws ssm get-parameter" in init and "--with-decryption" in init
    assert "> /etc/mammo-ray/ray_auth_token" in init and "umask 077" in init
    assert "--volume=/etc/mammo-ray:/etc/mammo-ray:ro" in raw["docker"]["run_options"]
    # The token itself never appears: only its path, or (in the how-to comment) a lookup from SSM.
    assert not re.search(r'RAY_AUTH_TOKEN=(?!"\$\(aws ssm get-parameter)', CLUSTER_YAML.read_text())


def test_the_package_is_synced_and_installed_on_every_node(raw: dict) -> None:
    assert raw["file_mounts"] == {"/home/ray/mammo-ray": "."}
    assert "pip install --no-cache-dir -e /home/ray/mammo-ray" in raw["setup_commands"]
    excluded = set(raw["rsync_exclude"])
    assert {".venv", "output"} <= excluded and ".gitignore" in raw["rsync_filter"]


def test_dashboard_is_not_exposed_beyond_the_ssh_tunnel(raw: dict) -> None:
    head_start = "\n".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start


# --- the study the cluster runs ------------------------------------------------------------------------


def test_cluster_study_config_validates() -> None:
    config = load_config(STUDY_CONFIG)
    assert config.data.adapter is not None and config.data.adapter.name == "inbreast"
    assert config.output.startswith("s3://mammo-ray-data/")
    for uri in config.data.adapter.args.values():
        assert str(uri).startswith("s3://mammo-ray-data/INbreast/")
    assert config.embed.num_gpus == 1 and config.embed.max_actors >= 1
    assert config.ray.num_cpus is None  # a local-Ray setting; on a cluster it must stay unset
    weights = {extractor.name: extractor for extractor in config.embed.extractors}
    assert weights["imagenet_resnet50"].weights.endswith("/resnet50-11ad3fa6.pth")  # IMAGENET1K_V2
    for name in ("nyu_lcc", "nyu_avg"):
        assert weights[name].weights.endswith("/ImageOnly__ModeImage_weights.p")
        assert weights[name].pool == "4x4" and weights[name].nyu_scale == 1.0
        assert weights[name].source_resolution == 1.0
    assert all(extractor.weights.startswith("s3://mammo-ray-data/weights/") for extractor in weights.values())


def test_cluster_study_config_carries_no_credentials() -> None:
    text = STUDY_CONFIG.read_text()
    assert credential_findings(text, STUDY_CONFIG.name) == []
    assert not re.search(r"(?i)(access_key|secret|password|token)\s*:", text)


def test_every_mention_of_the_study_command_is_the_same() -> None:
    for path in (CLUSTER_YAML, STUDY_CONFIG):
        lines = [line for line in path.read_text().splitlines() if "full_study.py" in line]
        assert lines, f"{path.name} does not show the study command"
        for line in lines:
            assert line.rstrip().endswith(ENTRYPOINT), line
            if "ray job submit" in line:
                assert SUBMIT_COMMAND in line, line


def test_readme_shows_the_study_command() -> None:
    assert f"-- {ENTRYPOINT}" in README.read_text()
