"""Run the study's stages from one config. Stages talk only through the tables they write."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import ray

from mammo_ray import feature_store, storage, tables
from mammo_ray.config import StudyConfig
from mammo_ray.datasets.manifest import read_manifest, write_manifest
from mammo_ray.errors import ConfigError, MammoRayError
from mammo_ray.feature_store import ModelKey
from mammo_ray.image_stream import ReadOptions
from mammo_ray.models.extractors import ExtractorSpec
from mammo_ray.stages.embed import EmbedOptions, embedding_key, run_embed
from mammo_ray.stages.ingest import run_ingest
from mammo_ray.stages.zero_shot import ZeroShotSpec, run_zero_shot, zero_shot_key

log = logging.getLogger("mammo_ray.study")

STAGES: tuple[str, ...] = ("manifest", "ingest", "embed", "zero_shot", "grid", "finetune", "report")


@dataclass
class StudyResult:
    output: str
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def manifest_uri(config: StudyConfig) -> str:
    return tables.manifest_uri(config.output)


def check_stages(stages: Sequence[str] | None) -> list[str]:
    """The requested stages in study order (None: all of them); unknown names, or a request naming no stage
    at all (`--stages` with nothing after it), fail before any work starts."""
    if stages is None:
        return list(STAGES)
    if not stages:
        raise ConfigError("stages", f"at least one stage is needed, got none: name one or more of {list(STAGES)}, "
                                    "or leave out --stages to run them all")
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
    from mammo_ray.datasets.adapters import build_with_adapter

    assert data.adapter is not None  # the config guarantees exactly one source
    return build_with_adapter(data.adapter.name, data.adapter.args, "data.adapter.args")


def read_options(config: StudyConfig) -> ReadOptions:
    ingest = config.ingest
    return ReadOptions(
        apply_voi_lut=ingest.apply_voi_lut,
        max_pixels=ingest.max_pixels,
        max_bytes=ingest.max_bytes,
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


class CurrentInputs:
    """What the stages of one study run depend on: the manifest as it is on disk now, and the model keys
    of the config (each computed once per run: it hashes weight files)."""

    def __init__(self, config: StudyConfig) -> None:
        self.config = config
        self.read = read_options(config)
        self._keys: dict[str, ModelKey] = {}
        self._manifest: pd.DataFrame | None = None
        self._digests: dict[str, str] = {}

    def manifest(self) -> pd.DataFrame:
        """The manifest on disk, read once per run (the manifest stage calls `manifest_written`)."""
        if self._manifest is None:
            self._manifest = read_manifest(manifest_uri(self.config))
        return self._manifest

    def manifest_written(self) -> None:
        self._manifest, self._digests = None, {}

    def digest(self, kind: str) -> str:
        """`manifest` (every column) or `images` (what the image stages depend on) of the current manifest."""
        if kind not in self._digests:
            of = tables.manifest_digest if kind == "manifest" else tables.image_digest
            self._digests[kind] = of(self.manifest())
        return self._digests[kind]

    def embedding_key(self, spec: ExtractorSpec) -> ModelKey:
        if spec.name not in self._keys:
            self._keys[spec.name] = embedding_key(spec, self.read)
        return self._keys[spec.name]

    def zero_shot_key(self) -> ModelKey:
        if "zero_shot" not in self._keys:
            self._keys["zero_shot"] = zero_shot_key(zero_shot_spec(self.config), self.read)
        return self._keys["zero_shot"]

    def grid_specs(self) -> list[ExtractorSpec]:
        return [ExtractorSpec(**extractor.model_dump()) for extractor in self.config.grid_extractors]

    def grid_inputs(self) -> dict[str, Any]:
        """What the grid's numbers describe: the whole manifest (labels, patients) and, per extractor, its
        model key and the index of its embeddings (which content each image had)."""
        embeddings = {}
        for spec in self.grid_specs():
            table = tables.embeddings_uri(self.config.output, spec.name)
            embeddings[spec.name] = {"key": self.embedding_key(spec).as_dict(),
                                     "index": feature_store.index_digest(table)}
        return {"manifest": self.digest("manifest"), "embeddings": embeddings}

    def finetune_inputs(self) -> dict[str, Any]:
        from mammo_ray.models.weights import weights_id
        from mammo_ray.stages.finetune import resolve_models

        weights = {f"{m.name}:{m.pretrained_on}": weights_id(m.spec) for m in resolve_models(self.config.finetune)}
        return {"manifest": self.digest("manifest"), "weights": weights}


def stage_fingerprint(current: CurrentInputs, stage: str) -> str | None:
    """What a stage's outputs depend on (content, not file names); None for a stage that always runs.

    The image stages depend on the manifest's image columns (labels do not change pixels), the decode
    settings and their model keys; the grid and fine-tuning on the whole manifest and what they read.
    The manifest stage always rebuilds from its source (a corrected label file must be seen), except the
    synthetic cohort, which its settings fix.
    """
    config = current.config
    if stage == "manifest":
        return _digest(stage, _section(config, "data")) if config.data.synthetic is not None else None
    if stage in _ALWAYS_RUN:
        return None
    images = current.digest("images")
    if stage == "ingest":
        return _digest(stage, images, _section(config, "ingest"))
    if stage == "embed":
        keys = [current.embedding_key(spec).as_dict() for spec in extractor_specs(config)]
        return _digest(stage, images, _section(config, "ingest"), keys)
    if stage == "zero_shot":
        return _digest(stage, images, _section(config, "ingest"), current.zero_shot_key().as_dict())
    if stage == "grid":
        return _digest(stage, current.grid_inputs(), _section(config, "grid"))
    return _digest(stage, current.finetune_inputs(), _section(config, "finetune"))


def _finished_counts(config: StudyConfig, stage: str, fingerprint: str) -> dict[str, int] | None:
    """The counts of a stage already finished for this fingerprint, or None when it must run."""
    uri = tables.ledger_uri(config.output, stage)
    if not storage.exists(uri):
        return None
    entry = json.loads(storage.read_bytes(uri))
    return entry["counts"] if entry.get("fingerprint") == fingerprint else None


def _run_manifest(current: CurrentInputs) -> dict[str, int]:
    config = current.config
    manifest = build_manifest(config)
    write_manifest(manifest, manifest_uri(config))
    current.manifest_written()
    log.info("manifest: %d images -> %s", len(manifest), manifest_uri(config))
    return {"manifest_rows": len(manifest)}


def _run_ingest(current: CurrentInputs) -> dict[str, int]:
    ingested = run_ingest(current.manifest(), current.config.output, current.read)
    log.info("ingest: %d images decoded, %d errors -> %s", ingested.images, ingested.errors, ingested.errors_uri)
    return {"ingested_images": ingested.images, "ingest_errors": ingested.errors}


def _run_embed(current: CurrentInputs) -> dict[str, int]:
    manifest = current.manifest()
    counts = {}
    for spec in extractor_specs(current.config):
        done = run_embed(manifest, current.config.output, spec, embed_options(current.config))
        counts.update(
            {f"embedded:{spec.name}": done.embedded, f"skipped:{spec.name}": done.skipped,
             f"embed_errors:{spec.name}": done.errors}
        )
    return counts


def _run_zero_shot(current: CurrentInputs) -> dict[str, int]:
    config = current.config
    scored = run_zero_shot(current.manifest(), config.output, zero_shot_spec(config), embed_options(config))
    return {"zero_shot_scored": scored.scored, "zero_shot_skipped": scored.skipped, "zero_shot_errors": scored.errors}


def _run_grid(current: CurrentInputs) -> dict[str, int]:
    from mammo_ray.stages.embed import read_embeddings
    from mammo_ray.stages.grid import grid_data, run_grid

    config, manifest = current.config, current.manifest()
    datasets = {spec.name: grid_data(read_embeddings(config.output, manifest, spec, key=current.embedding_key(spec)),
                                     spec.name)
                for spec in current.grid_specs()}
    result = run_grid(config.output, config.grid, datasets, current.grid_inputs())
    log.info("grid: %d cells ok, %d failed -> %s", result.n_ok, result.n_failed, result.uri)
    return {"grid_cells_ok": result.n_ok, "grid_cells_failed": result.n_failed}


def _run_finetune(current: CurrentInputs) -> dict[str, int]:
    from mammo_ray.stages.finetune import run_finetune

    manifest = current.manifest()
    trained = run_finetune(manifest, current.config.output, current.config.finetune, current.finetune_inputs())
    log.info("finetune: %d result rows -> %s", len(trained.rows), trained.uri)
    return {"finetune_rows": len(trained.rows)}


def _run_report(current: CurrentInputs) -> dict[str, int]:
    from mammo_ray.errors import StaleTableError
    from mammo_ray.stages.report import ReportInputs, build_report
    from mammo_ray.stages.zero_shot import read_zero_shot

    config, manifest = current.config, current.manifest()
    zero_shot, problem = None, None
    try:
        zero_shot = read_zero_shot(config.output, manifest, key=current.zero_shot_key())
    except StaleTableError as error:
        problem = None if "has not run" in error.reason else str(error)
    except MammoRayError as error:  # e.g. its weights are not here: nothing can be current
        problem = f"the zero-shot model key cannot be computed: {error}"
    expected: dict[str, Any] = {}
    weights: list[str] = []
    for name, inputs in (("grid", current.grid_inputs), ("finetune", current.finetune_inputs)):
        try:
            expected[name] = inputs()
        except MammoRayError as error:  # weights missing: the table cannot be shown as current
            expected[name] = {"unavailable": str(error)}
    weights += list(expected["finetune"].get("weights", {}).values())
    weights += [embedding["key"]["weights_id"] for embedding in expected["grid"].get("embeddings", {}).values()]
    if zero_shot is not None:
        weights.append(current.zero_shot_key().weights_id)
    stages = ["ingest", *(f"embed:{spec.name}" for spec in extractor_specs(config)), "zero_shot"]
    report_inputs = ReportInputs(
        manifest=manifest, zero_shot=zero_shot, zero_shot_problem=problem,
        error_uris=[tables.errors_uri(config.output, stage) for stage in stages],
        weights_ids=weights, expected_inputs=expected,
    )
    uris = build_report(config.output, {**config.model_dump(mode="json"), "config_hash": config.config_hash()},
                        report_inputs)
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

    Everything that can be refused is refused before any work (paths in a Ray job, the output, weights,
    published values). The study holds the output's lock throughout: a second study on the same output
    is refused. A stage whose outputs already exist for the same inputs and config is skipped (its
    ledger entry under `<output>/_stages/` says so), unless `force`. Stages that process images are also
    incremental inside: after a crash they redo only the images not yet written.
    """
    from mammo_ray.output_lock import check_output_writable

    selected = check_stages(stages)
    check_job_paths(config)
    if any(stage in _NEEDS_RAY for stage in selected):
        if not ray.is_initialized():
            require_token_auth()  # before any work: a refused auth mode must not leave half a study behind
        elif storage_environment(config):
            log.warning("Ray was started before the study: its workers keep the S3 settings they started with; "
                        "storage.s3 of the config reaches only this driver. Set them in the environment before "
                        "Ray starts, or let the study start Ray")
    apply_storage_config(config)
    check_output_writable(config.output)
    check_inputs(config, selected)
    result = StudyResult(output=config.output)
    created = not storage.exists(config.output)
    try:
        _run_stages(config, selected, force, result)
    finally:
        if created:
            storage.remove_empty_folder(config.output)  # refused inside the lock (a bad manifest): no trace
    return result


def _run_stages(config: StudyConfig, selected: Sequence[str], force: bool, result: StudyResult) -> None:
    from mammo_ray.output_lock import hold_output

    with hold_output(config.output) as lock:
        current = CurrentInputs(config)
        for stage in selected:
            fingerprint = stage_fingerprint(current, stage)
            finished = None if force or fingerprint is None else _finished_counts(config, stage, fingerprint)
            if finished is not None:
                log.info("%s: already done for these inputs and config (fingerprint %s): skipped", stage, fingerprint)
                result.skipped.append(stage)
                result.counts.update(finished)
                continue
            if stage in _NEEDS_RAY:
                ensure_ray(config)
            counts = _STAGE_RUNNERS[stage](current)
            lock.check()  # another study took the output over meanwhile: record nothing as done
            entry = {"stage": stage, "fingerprint": fingerprint, "counts": counts, "config_hash": config.config_hash()}
            storage.write_bytes(tables.ledger_uri(config.output, stage), json.dumps(entry, indent=2).encode())
            result.ran.append(stage)
            result.counts.update(counts)


def prune_output(config: StudyConfig, dry_run: bool = False) -> dict[str, dict[str, int]]:
    """Remove the cached model outputs no reader of the current manifest and config can see: the folders
    of other weights and settings, the rows of images no longer in the manifest, extractors no longer
    configured. Holds the output's lock. Returns what was (with `dry_run`: would be) removed, per folder."""
    from mammo_ray.output_lock import hold_output

    apply_storage_config(config)
    with hold_output(config.output):
        current = CurrentInputs(config)
        manifest = current.manifest() if storage.exists(manifest_uri(config)) else None
        configured = {spec.name: spec for spec in extractor_specs(config)}
        present = feature_store.subfolders(tables.embeddings_uri(config.output))
        removed = {}
        for name in sorted(set(present) | set(configured)):
            key = current.embedding_key(configured[name]) if name in configured else None
            removed[f"embeddings/{name}"] = feature_store.prune(tables.embeddings_uri(config.output, name), manifest,
                                                                key, dry_run)
        removed["zero_shot"] = feature_store.prune(tables.zero_shot_uri(config.output), manifest,
                                                   current.zero_shot_key(), dry_run)
    return removed


#: Set by Ray's job supervisor in the environment of a `ray job submit` entrypoint.
_RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def _paths(config: StudyConfig) -> list[tuple[str, str]]:
    """(key path, value) of every path or URI the config names."""
    paths = [("output", config.output), ("data.manifest", config.data.manifest), ("report.published",
             config.report.published), ("finetune.checkpoint_path", config.finetune.checkpoint_path),
             ("zero_shot.weights", config.zero_shot.weights)]
    if config.data.adapter is not None:
        for name, value in config.data.adapter.args.items():
            if name.endswith(("_uri", "_root", "_uris")):
                for item in value if isinstance(value, list) else [value]:
                    paths.append((f"data.adapter.args.{name}", item))
    paths += [(f"embed.extractors.{i}.weights", e.weights) for i, e in enumerate(config.embed.extractors)]
    paths += [(f"finetune.models.{i}.weights", m.weights) for i, m in enumerate(config.finetune.models)]
    return [(key, value) for key, value in paths if isinstance(value, str) and value]


def _is_relative_path(value: str) -> bool:
    if "://" in value or value.startswith(("random-init:", "torchvision:")):
        return False
    return not os.path.isabs(os.path.expanduser(value))


def check_job_paths(config: StudyConfig) -> None:
    """Under `ray job submit` the entrypoint runs in a temporary copy of the working dir: a relative
    output would be written into that copy (and lost), a relative input is looked up there. Refuse
    them before any work, saying what to write instead."""
    if _RAY_JOB_ENV not in os.environ:
        return
    try:
        working_dir = json.loads(os.environ[_RAY_JOB_ENV]).get("runtime_env", {}).get("working_dir")
    except (ValueError, AttributeError):
        working_dir = None
    relative = [(key, value) for key, value in _paths(config) if _is_relative_path(value)]
    if relative:
        key, _ = relative[0]
        where = f" (uploaded as {working_dir})" if working_dir else ""
        listed = "; ".join(f"{k} = {v!r}" for k, v in relative)
        raise ConfigError(key, f"relative path(s) in a Ray job: {listed}. This study runs as a Ray job, in a "
                               f"temporary copy of the working dir{where} on the cluster: relative outputs would "
                               "be written into that copy and lost, relative inputs looked up there. Write an "
                               "absolute path every node can reach (shared storage) or an s3:// URI")


def extractor_specs(config: StudyConfig) -> list[ExtractorSpec]:
    return [ExtractorSpec(**extractor.model_dump()) for extractor in config.embed.extractors]


def zero_shot_spec(config: StudyConfig) -> ZeroShotSpec:
    return ZeroShotSpec(**config.zero_shot.model_dump())


def check_inputs(config: StudyConfig, stages: Sequence[str]) -> None:
    """Every file the requested stages need is there before any work: weights (matching their sha256),
    the published values of the report.

    Every weights problem of embed, zero_shot and finetune is collected and raised as one ConfigError (its
    key_path the first one's), a line per key path naming its file, and one `mammo-ray weights fetch`
    command for all the missing published files: a study missing several files says so in one run.
    """
    from mammo_ray.models.weights import (
        FETCH_HINT, NYU_IMAGE_WISE_FILE, WeightsError, check_weights_available, missing_files_hint, weights_file_of,
    )

    needed = []
    if "embed" in stages:
        needed += [(f"embed.extractors.{i}.weights", s.weights_spec) for i, s in enumerate(extractor_specs(config))]
    if "zero_shot" in stages:
        needed.append(("zero_shot.weights", zero_shot_spec(config).weights_spec))
    failures: list[tuple[str, str, MammoRayError]] = []  # (key path, weights source, error)
    for key_path, weights in needed:
        try:
            check_weights_available(weights)
        except MammoRayError as error:
            failures.append((key_path, weights.source, error))
    if "finetune" in stages:
        from mammo_ray.stages.finetune import DEFAULT_WEIGHTS, resolve_models

        # resolve_models stops at its first bad model: it is asked about each model alone, then about all
        # of them together (two entries sharing a key) once each is known to be fine.
        for i, model in enumerate(config.finetune.models):
            try:
                resolve_models(config.finetune.model_copy(update={"models": [model]}))
            except MammoRayError as error:
                source = model.weights or DEFAULT_WEIGHTS[model.name] or NYU_IMAGE_WISE_FILE  # nyu: none given
                failures.append((f"finetune.models.{i}.weights", source, error))
        if not failures:
            try:
                resolve_models(config.finetune)
            except MammoRayError as error:
                failures.append(("finetune.models", "", error))
    if len(failures) == 1:
        key_path, _source, error = failures[0]
        raise ConfigError(key_path, error.reason if isinstance(error, ConfigError) else str(error))
    if failures:
        lines, hints, missing = [], {}, {}
        for key_path, source, error in failures:
            if not isinstance(error, WeightsError):
                lines.append(f"{key_path}: {error}")
                continue
            lines.append(f"{key_path}: {error.source}: {error.reason}")
            if error.hint and FETCH_HINT in error.hint:  # a file to get: one fetch command for all of them
                file_name, fetch_name = weights_file_of(source)
                missing[file_name] = fetch_name
            elif error.hint:
                hints[error.hint] = None
        if missing:
            hints[missing_files_hint(missing)] = None
        reason = "\n  ".join([f"{len(failures)} weights problems; every one must be fixed before the study starts:",
                              *lines, *(f"how to fix: {hint}" for hint in hints)])
        raise ConfigError(failures[0][0], reason)
    if "report" in stages and config.report.published:
        from mammo_ray.report.published import read_published

        read_published(config.report.published)  # a bad file fails now, not after hours of work


def embed_options(config: StudyConfig) -> EmbedOptions:
    embed = config.embed
    return EmbedOptions(
        batch_size=embed.batch_size, max_actors=embed.max_actors, num_gpus=embed.num_gpus,
        max_restarts=embed.max_restarts, read=read_options(config),
    )


def demo_config(output: str = "output/demo") -> StudyConfig:
    """The embedded default: a synthetic cohort generated on the fly, local Ray, no network."""
    return StudyConfig(name="demo", output=output)


def load_study_config(config_uri: str | None, output: str | None = None) -> StudyConfig:
    """The config of `mammo-ray run` / `prune`: a YAML file or the embedded demo, `output` overriding its own."""
    from mammo_ray.config import load_config

    config = load_config(config_uri) if config_uri else demo_config()
    return config.model_copy(update={"output": output}) if output else config


def run_from_cli(
    config_uri: str | None, output: str | None, stages: Sequence[str] | None, force: bool = False
) -> int:
    """Entry point of `mammo-ray run` and jobs/full_study.py. Everything is validated before work starts."""
    config = load_study_config(config_uri, output)
    selected = check_stages(stages)
    log.info("study %s (config %s) -> %s; stages: %s", config.name, config.config_hash(), config.output, selected)
    result = run_study(config, selected, force=force)
    print(json.dumps({"output": result.output, "ran": result.ran, "skipped": result.skipped, "counts": result.counts}))
    return 0
