"""How a study meets Ray: token auth always, the config's S3 settings for every process, never credentials."""

from __future__ import annotations

import logging
import os

import ray

from mammo_ray.config import StudyConfig
from mammo_ray.errors import ConfigError
from mammo_ray.placement import Placement, resolve

log = logging.getLogger("mammo_ray.ray_setup")


def storage_environment(config: StudyConfig) -> dict[str, str]:
    """The S3 settings of the config as the AWS variables every process (driver and workers) reads."""
    s3 = config.storage.s3
    env = {}
    if s3.endpoint_url:
        env["AWS_ENDPOINT_URL_S3"] = s3.endpoint_url
    if s3.region:
        env["AWS_REGION"] = s3.region
    return env


def apply_storage_config(config: StudyConfig) -> None:
    os.environ.update(storage_environment(config))


def require_token_auth() -> None:
    """Every Ray we start or join runs with token auth: RAY_AUTH_MODE unset (Ray 2.60 then turns token auth
    on for a new local cluster, with its own token file ~/.ray/auth_token, created on first use) or
    `token`; never `disabled`. The variable is left for Ray to set: set by us after `import ray`, Ray's
    cached config would miss it and start a GCS without a token."""
    mode = os.environ.get("RAY_AUTH_MODE", "token")
    if mode.lower() != "token":
        raise ConfigError("ray", f"RAY_AUTH_MODE={mode}: mammo-ray only runs Ray with token auth; unset it or "
                                 "set RAY_AUTH_MODE=token (and the cluster's token for a remote one)")


def ensure_ray(config: StudyConfig) -> None:
    """Join the cluster this process belongs to (RAY_ADDRESS under `ray job submit`), else start local Ray,
    with token auth either way (`require_token_auth`).

    Workers get the config's storage settings through the runtime environment, never credentials:
    those come from each node's own environment or instance profile.
    """
    if ray.is_initialized():
        return
    require_token_auth()
    ray.init(
        address=config.ray.address,
        num_cpus=config.ray.num_cpus,
        log_to_driver=False,
        runtime_env={"env_vars": storage_environment(config)},
    )


def work_placement(config: StudyConfig) -> Placement:
    """Where decoding, the networks and Ray Train run on the cluster joined (`ray.node_types`)."""
    placement = resolve(config.ray.node_types, ray.cluster_resources())
    log.info("placement (ray.node_types=%s): %s", config.ray.node_types,
             ", ".join(f"{work} on {dict(asks)}" for work, asks in placement.asks.items()) or "anywhere")
    return placement


def check_ray_before_work(config: StudyConfig) -> None:
    """What can be refused about Ray before any work: an auth mode other than token; and a warning when
    Ray was started before the study, so its workers never see the config's storage settings."""
    if not ray.is_initialized():
        require_token_auth()  # before any work: a refused auth mode must not leave half a study behind
    elif storage_environment(config):
        log.warning("Ray was started before the study: its workers keep the S3 settings they started with; "
                    "storage.s3 of the config reaches only this driver. Set them in the environment before "
                    "Ray starts, or let the study start Ray")


def this_node_cpus() -> int:
    """CPUs of the Ray node this process runs on (a worker sizes its torch threads by it)."""
    node = ray.get_runtime_context().get_node_id()
    cpus = next((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("NodeID") == node), 0)
    return max(1, int(cpus or os.cpu_count() or 1))
