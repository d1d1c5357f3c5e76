"""Run the study's stages from one config. Stages talk only through the tables they write."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd
import ray

from mammo_ray import layout, storage
from mammo_ray.config import StudyConfig
from mammo_ray.datasets.manifest import read_manifest, write_manifest
from mammo_ray.errors import ConfigError, MammoRayError
from mammo_ray.image_stream import ReadOptions
from mammo_ray.models.extractors import ExtractorSpec
from mammo_ray.stages.embed import EmbedOptions, run_embed
from mammo_ray.stages.ingest import run_ingest
from mammo_ray.stages.zero_shot import ZeroShotSpec, run_zero_shot

log = logging.getLogger("mammo_ray.study")

STAGES: tuple[str, ...] = ("manifest", "ingest", "embed", "zero_shot", "grid", "finetune", "report")


@dataclass
class StudyResult:
    output: str
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def manifest_uri(config: StudyConfig) -> str:
    return layout.manifest_uri(config.output)


def check_stages(stages: Sequence[str] | None) -> list[str]:
    """The requested stages in study order; unknown names fail before any work starts."""
    if not stages:
        return list(STAGES)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConfigError("stages", f"unknown stage(s) {unknown}; choose from {list(STAGES)}")
    return [s for s in STAGES if s in stages]


def build_manifest(config: StudyConfig) -> pd.DataFrame:
    """The study's manifest from the configured source (synthetic cohort, manifest file or adapter)."""
    data = config.data
    if data.synthetic is not None:
        from mammo_ray.datasets.synthetic import CohortSpec, generate_cohort

        spec = CohortSpec(**data.synthetic.model_dump())
        return generate_cohort(storage.join(config.output, "cohort"), spec)
    if data.manifest is not None:
        # Files are not checked here (one request per image on S3): a missing one is an errors row
        # of the ingest stage, and every other image is processed.
        return read_manifest(data.manifest)
    from mammo_ray.datasets.adapters import ADAPTERS

    assert data.adapter is not None  # the config guarantees exactly one source
    try:
        return ADAPTERS[data.adapter.name](**data.adapter.args)
    except (TypeError, ValueError) as error:  # wrong adapter argument names, types or choices
        raise ConfigError("data.adapter.args", str(error)) from None


def read_options(config: StudyConfig) -> ReadOptions:
    ingest = config.ingest
    return ReadOptions(
        apply_voi_lut=ingest.apply_voi_lut,
        max_pixels=ingest.max_pixels,
        batch_size=ingest.batch_size,
        rows_per_block=ingest.rows_per_block,
    )


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


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _section(config: StudyConfig, name: str) -> object:
    return getattr(config, name).model_dump(mode="json")


def stage_fingerprint(config: StudyConfig, stage: str) -> str:
    """What a stage's outputs depend on: its config sections and the content of its input tables."""
    if stage == "manifest":
        return _digest(stage, _section(config, "data"))
    if stage in _ALWAYS_RUN:
        return _digest(stage, config.config_hash())
    if stage == "grid":  # its inputs are the embeddings tables: their committed files name their content
        embeddings = layout.embeddings_uri(config.output)
        files = storage.list_files(embeddings, extensions=[".parquet"]) if storage.exists(embeddings) else []
        return _digest(stage, files, _section(config, "grid"))
    manifest_sha = hashlib.sha256(storage.read_bytes(manifest_uri(config))).hexdigest()
    sections = {"ingest": ["ingest"], "embed": ["ingest", "embed"], "zero_shot": ["ingest", "zero_shot"],
                "finetune": ["finetune"]}[stage]
    return _digest(stage, manifest_sha, [_section(config, name) for name in sections])


def _ledger_uri(config: StudyConfig, stage: str) -> str:
    return storage.join(config.output, "_stages", f"{stage}.json")


def _finished_counts(config: StudyConfig, stage: str, fingerprint: str) -> dict[str, int] | None:
    """The counts of a stage already finished for this fingerprint, or None when it must run."""
    uri = _ledger_uri(config, stage)
    if not storage.exists(uri):
        return None
    entry = json.loads(storage.read_bytes(uri))
    return entry["counts"] if entry.get("fingerprint") == fingerprint else None


def _run_manifest(config: StudyConfig) -> dict[str, int]:
    manifest = build_manifest(config)
    write_manifest(manifest, manifest_uri(config))
    log.info("manifest: %d images -> %s", len(manifest), manifest_uri(config))
    return {"manifest_rows": len(manifest)}


def _run_ingest(config: StudyConfig) -> dict[str, int]:
    ingested = run_ingest(read_manifest(manifest_uri(config)), config.output, read_options(config))
    log.info("ingest: %d images decoded, %d errors -> %s", ingested.images, ingested.errors, ingested.errors_uri)
    return {"ingested_images": ingested.images, "ingest_errors": ingested.errors}


def _run_embed(config: StudyConfig) -> dict[str, int]:
    manifest = read_manifest(manifest_uri(config))
    counts = {}
    for spec in extractor_specs(config):
        done = run_embed(manifest, config.output, spec, embed_options(config))
        counts.update(
            {f"embedded:{spec.name}": done.embedded, f"skipped:{spec.name}": done.skipped,
             f"embed_errors:{spec.name}": done.errors}
        )
    return counts


def _run_zero_shot(config: StudyConfig) -> dict[str, int]:
    manifest = read_manifest(manifest_uri(config))
    scored = run_zero_shot(manifest, config.output, zero_shot_spec(config), embed_options(config))
    return {"zero_shot_scored": scored.scored, "zero_shot_skipped": scored.skipped, "zero_shot_errors": scored.errors}


def _run_grid(config: StudyConfig) -> dict[str, int]:
    from mammo_ray.stages.grid import run_grid

    result = run_grid(config.output, config.grid)
    log.info("grid: %d cells ok, %d failed -> %s", result.n_ok, result.n_failed, result.uri)
    return {"grid_cells_ok": result.n_ok, "grid_cells_failed": result.n_failed}


def _run_finetune(config: StudyConfig) -> dict[str, int]:
    from mammo_ray.stages.finetune import run_finetune

    trained = run_finetune(read_manifest(manifest_uri(config)), config.output, config.finetune)
    log.info("finetune: %d result rows -> %s", len(trained.rows), trained.uri)
    return {"finetune_rows": len(trained.rows)}


def _run_report(config: StudyConfig) -> dict[str, int]:
    from mammo_ray.stages.report import build_report

    uris = build_report(config.output, {**config.model_dump(mode="json"), "config_hash": config.config_hash()})
    log.info("report: %s and %s", uris["markdown"], uris["html"])
    return {"report_files": len(uris)}


_STAGE_RUNNERS = {
    "manifest": _run_manifest, "ingest": _run_ingest, "embed": _run_embed, "zero_shot": _run_zero_shot,
    "grid": _run_grid, "finetune": _run_finetune, "report": _run_report,
}
#: Cheap stages whose inputs are every other table: always rebuilt.
_ALWAYS_RUN = {"report"}
_NEEDS_RAY = {"ingest", "embed", "zero_shot", "grid", "finetune"}


def run_study(config: StudyConfig, stages: Sequence[str] | None = None, force: bool = False) -> StudyResult:
    """Run the requested stages (all by default) in order and return what was done.

    A stage whose outputs already exist for the same inputs and config is skipped (its ledger entry under
    `<output>/_stages/` says so), unless `force`. Stages that process images are also incremental
    inside: after a crash they redo only the images not yet written.
    """
    selected = check_stages(stages)
    if any(stage in _NEEDS_RAY for stage in selected):
        if not ray.is_initialized():
            require_token_auth()  # before any work: a refused auth mode must not leave half a study behind
        elif storage_environment(config):
            log.warning("Ray was started before the study: its workers keep the S3 settings they started with; "
                        "storage.s3 of the config reaches only this driver. Set them in the environment before "
                        "Ray starts, or let the study start Ray")
    check_inputs(config, selected)
    result = StudyResult(output=config.output)
    apply_storage_config(config)
    for stage in selected:
        fingerprint = stage_fingerprint(config, stage)
        finished = None if force or stage in _ALWAYS_RUN else _finished_counts(config, stage, fingerprint)
        if finished is not None:
            log.info("%s: already done for these inputs and config (fingerprint %s): skipped", stage, fingerprint)
            result.skipped.append(stage)
            result.counts.update(finished)
            continue
        if stage in _NEEDS_RAY:
            ensure_ray(config)
        counts = _STAGE_RUNNERS[stage](config)
        entry = {"stage": stage, "fingerprint": fingerprint, "counts": counts, "config_hash": config.config_hash()}
        storage.write_bytes(_ledger_uri(config, stage), json.dumps(entry, indent=2).encode())
        result.ran.append(stage)
        result.counts.update(counts)
    return result


def extractor_specs(config: StudyConfig) -> list[ExtractorSpec]:
    return [ExtractorSpec(**extractor.model_dump()) for extractor in config.embed.extractors]


def zero_shot_spec(config: StudyConfig) -> ZeroShotSpec:
    return ZeroShotSpec(**config.zero_shot.model_dump())


def check_inputs(config: StudyConfig, stages: Sequence[str]) -> None:
    """Every file the requested stages need is there before any work: weights (matching their sha256),
    the published values of the report."""
    from mammo_ray.models.weights import check_weights_available

    needed = []
    if "embed" in stages:
        needed += [(f"embed.extractors.{i}.weights", s.weights_spec) for i, s in enumerate(extractor_specs(config))]
    if "zero_shot" in stages:
        needed.append(("zero_shot.weights", zero_shot_spec(config).weights_spec))
    for key_path, weights in needed:
        try:
            check_weights_available(weights)
        except MammoRayError as error:
            raise ConfigError(key_path, str(error)) from None
    if "report" in stages and config.report.published:
        from mammo_ray.report.published import read_published

        read_published(config.report.published)  # a bad file fails now, not after hours of work
    if "finetune" in stages:
        from mammo_ray.stages.finetune import resolve_models

        try:
            resolve_models(config.finetune)
        except MammoRayError as error:
            raise ConfigError("finetune.models", str(error)) from None


def embed_options(config: StudyConfig) -> EmbedOptions:
    embed = config.embed
    return EmbedOptions(
        batch_size=embed.batch_size, max_actors=embed.max_actors, num_gpus=embed.num_gpus,
        max_restarts=embed.max_restarts, read=read_options(config),
    )


def demo_config(output: str = "output/demo") -> StudyConfig:
    """The embedded default: a synthetic cohort generated on the fly, local Ray, no network."""
    return StudyConfig(name="demo", output=output)


def run_from_cli(
    config_uri: str | None, output: str | None, stages: Sequence[str] | None, force: bool = False
) -> int:
    """Entry point of `mammo-ray run` and jobs/full_study.py. Everything is validated before work starts."""
    from mammo_ray.config import load_config

    config = load_config(config_uri) if config_uri else demo_config()
    if output:
        config = config.model_copy(update={"output": output})
    selected = check_stages(stages)
    log.info("study %s (config %s) -> %s; stages: %s", config.name, config.config_hash(), config.output, selected)
    result = run_study(config, selected, force=force)
    print(json.dumps({"output": result.output, "ran": result.ran, "skipped": result.skipped, "counts": result.counts}))
    return 0
