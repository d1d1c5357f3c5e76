"""Run the study's stages from one config. Stages talk only through the tables they write.

The stages are declared as data (`STAGES`): each names what it runs, what its outputs depend on and what
it needs before any work. The order, the ledger fingerprints (`Stage.fingerprint`) and the start-up
checks are derived from that list: adding a stage is one entry (and its runner).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from mammo_ray import feature_store, preflight, privacy, storage, tables
from mammo_ray.config import StudyConfig
from mammo_ray.config.sections import DataSource
from mammo_ray.current import CurrentInputs
from mammo_ray.datasets.counts import SourceCounts, counts_of
from mammo_ray.datasets.manifest import read_manifest, write_manifest
from mammo_ray.errors import ConfigError, MammoRayError, ManifestError
from mammo_ray.ray_setup import apply_storage_config, check_ray_before_work, ensure_ray, work_placement

log = logging.getLogger("mammo_ray.study")


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
        return list(STAGE_NAMES)
    if not stages:
        raise ConfigError("stages", f"at least one stage is needed, got none: name one or more of "
                                    f"{list(STAGE_NAMES)}, or leave out --stages to run them all")
    unknown = [s for s in stages if s not in STAGE_NAMES]
    if unknown:
        raise ConfigError("stages", f"unknown stage(s) {unknown}; choose from {list(STAGE_NAMES)}")
    return [s for s in STAGE_NAMES if s in stages]


def build_manifest(config: StudyConfig) -> pd.DataFrame:
    """The study's manifest from the configured source (synthetic cohort, manifest file or adapter), or from
    every one of data.sources, ids prefixed with their source's name."""
    return build_counted_manifest(config)[0]


def build_counted_manifest(config: StudyConfig) -> tuple[pd.DataFrame, dict[str, SourceCounts]]:
    """build_manifest, and what each source read, kept and dropped ('data' for a single source). A source
    without images, or a grid.external source without labels, is refused here: before any image stage."""
    data = config.data
    if data.sources is None:
        cohort = storage.join(config.output, "cohort")
        frame = _source_manifest(data, cohort)
        return frame, {"data": _counted("data", data, frame, cohort)}
    frames: dict[str, pd.DataFrame] = {}
    counts: dict[str, SourceCounts] = {}
    for name, source in data.sources.items():
        cohort = storage.join(config.output, "cohort", name)
        frames[name] = _source_manifest(source, cohort, f"data.sources.{name}.adapter")
        counts[name] = _counted(f"data.sources.{name}", source, frames[name], cohort)
    _check_external_labels(config, frames)
    # validated as it is written (ids unique across sources)
    return pd.concat([_from_source(name, frame) for name, frame in frames.items()], ignore_index=True), counts


def _counted(key_path: str, source: DataSource, frame: pd.DataFrame, cohort_uri: str) -> SourceCounts:
    """The source's counts (an adapter's own; a manifest file or the cohort drops nothing), logged; a source
    that kept no image is refused naming where its images were looked for (a typo in images_uri lists nothing)."""
    counts = counts_of(frame) or SourceCounts.whole(frame, source.manifest or cohort_uri)
    log.info("manifest: %s: %s", key_path, counts.describe())
    if counts.kept == 0:
        raise ManifestError(counts.looked_in, [f"{key_path}: no image to study: {counts.describe()}"])
    return counts


def _check_external_labels(config: StudyConfig, frames: dict[str, pd.DataFrame]) -> None:
    """Each source a grid.external pair fits on or tests on must hold labelled images: refused by name here,
    not as failed rows of results/external.parquet after every image was embedded."""
    for pair in config.grid.external:
        for role, name in (("fitted on", pair.train), ("tested on", pair.test)):
            if not frames[name]["label"].notna().any():
                raise ConfigError("grid.external", f"({pair.train} -> {pair.test}): source {name!r} (data.sources."
                                  f"{name}) holds {len(frames[name])} images and none has a label: it cannot be "
                                  f"{role}")


def _source_manifest(source: DataSource, cohort_uri: str, key_path: str = "data.adapter") -> pd.DataFrame:
    if source.synthetic is not None:
        from mammo_ray.datasets.synthetic import generate_cohort

        return generate_cohort(cohort_uri, source.synthetic)
    if source.manifest is not None:
        # Files are not checked here (one request per image on S3): a missing one is an errors row
        # of the ingest stage, and every other image is processed.
        return read_manifest(source.manifest)
    from mammo_ray.datasets.adapters import build_source

    assert source.adapter is not None  # the config guarantees exactly one source
    return build_source(source.adapter.name, source.adapter.args, source.adapter.pseudonymise, key_path)


def _from_source(name: str, manifest: pd.DataFrame) -> pd.DataFrame:
    """One source's rows as the study's: `dataset` = the source, ids `<source>/...` (unique across sources; a
    patient seen at two sites is two patients, which no id can tell apart), site the source's where unset."""
    frame = manifest.copy()
    for column in ("image_id", "patient_id", "exam_id"):
        frame[column] = frame[column].map(lambda value: None if pd.isna(value) else f"{name}/{value}")
    frame["dataset"] = name
    frame["site"] = frame["site"].where(frame["site"].notna(), name)
    return frame


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _section(config: StudyConfig, name: str) -> object:
    return getattr(config, name).model_dump(mode="json")


def _finished_counts(current: CurrentInputs, stage: Stage, fingerprint: str) -> dict[str, int] | None:
    """The counts of a stage already finished for this fingerprint whose outputs are all still there (a prune
    under another config, or a user, may have removed them since), or None when it must run."""
    uri = tables.ledger_uri(current.config.output, stage.name)
    if not storage.exists(uri):
        return None
    entry = json.loads(storage.read_bytes(uri))
    if entry.get("fingerprint") != fingerprint:
        return None
    gone = stage.outputs_missing(current) if stage.outputs_missing is not None else None
    if gone is not None:
        log.info("%s: done for these inputs before, but its outputs are not all there (%s): it runs again",
                 stage.name, gone)
        return None
    return entry["counts"]


def _run_manifest(current: CurrentInputs) -> dict[str, int]:
    config = current.config
    manifest, sources = build_counted_manifest(config)
    write_manifest(manifest, manifest_uri(config), sources=sources)
    current.manifest_written(privacy.locations(manifest))
    _write_locations(config, manifest)
    log.info("manifest: %d images -> %s", len(manifest), manifest_uri(config))
    return {"manifest_rows": len(manifest)}


def _write_locations(config: StudyConfig, manifest: pd.DataFrame) -> None:
    """Each adapter source's mapping file of locators to real paths, where the config asks for one."""
    data = config.data
    named = {None: data} if data.sources is None else dict(data.sources)
    for name, source in named.items():
        if source.adapter is not None and source.adapter.locations:
            rows = manifest if name is None else manifest[manifest["dataset"] == name]
            written = privacy.write_locations(rows, source.adapter.locations)
            log.info("manifest: %d locators' real paths -> the configured locations file", written)


def _locate(config: StudyConfig) -> Callable[[], dict[str, str]]:
    """Where the manifest's locators are: the manifest rebuilt from its source (in memory, never written)."""
    return lambda: privacy.locations(build_manifest(config))


def _run_image_pass(current: CurrentInputs, stages: Sequence[str]) -> dict[str, dict[str, int]]:
    """The image stages named (ingest, embed, zero_shot) as one pass over the images: each image read and
    decoded once for all of them (stages.inference.run_pass). Their counts, per stage."""
    from mammo_ray.stages.embed import EmbedTask, embed_result
    from mammo_ray.stages.inference import run_pass
    from mammo_ray.stages.zero_shot import ZeroShotTask, zero_shot_result

    config, manifest = current.config, current.manifest()
    extractors = config.embed.extractors if "embed" in stages else []
    tasks = [EmbedTask(spec) for spec in extractors]
    if "zero_shot" in stages:
        tasks.append(ZeroShotTask(config.zero_shot))
    done = run_pass(current.readable_manifest(), config.output, tasks, config.embed, current.read,
                    ingest="ingest" in stages,
                    placement=work_placement(config))
    log.info("image pass (%s): %d images, %d decoded, %d network forwards", ", ".join(stages), done.images,
             done.decoded, done.forwards)
    shared = {"pass_images": done.images, "pass_decoded": done.decoded, "pass_forwards": done.forwards,
              "pass_outputs": len(tasks) + int(done.ingest is not None)}
    counts: dict[str, dict[str, int]] = {}
    if done.ingest is not None:
        log.info("ingest: %d images decoded, %d errors -> %s", done.ingest.images, done.ingest.errors,
                 done.ingest.errors_uri)
        counts["ingest"] = {"ingested_images": done.ingest.images, "ingest_errors": done.ingest.errors, **shared}
    if "embed" in stages:
        counts["embed"] = dict(shared)
        for spec, run in zip(extractors, done.runs[:len(extractors)], strict=True):  # zero-shot's run is last
            embedded = embed_result(spec, run)
            counts["embed"].update({f"embedded:{spec.name}": embedded.embedded,
                                    f"skipped:{spec.name}": embedded.skipped,
                                    f"embed_errors:{spec.name}": embedded.errors})
    if "zero_shot" in stages:
        scored = zero_shot_result(config.output, manifest, done.runs[-1])
        counts["zero_shot"] = {"zero_shot_scored": scored.scored, "zero_shot_skipped": scored.skipped,
                               "zero_shot_errors": scored.errors, **shared}
    return counts


def _image_stage(name: str) -> Callable[[CurrentInputs], dict[str, int]]:
    """An image stage run alone: a pass of its own."""
    return lambda current: _run_image_pass(current, [name])[name]


def _run_grid(current: CurrentInputs) -> dict[str, int]:
    from mammo_ray.classify.data import GridData
    from mammo_ray.stages.embed import read_embeddings
    from mammo_ray.stages.grid import grid_data, run_grid

    config, manifest = current.config, current.manifest()
    datasets = {spec.name: grid_data(read_embeddings(config.output, manifest, spec, key=current.embedding_key(spec)),
                                     spec.name)
                for spec in current.config.grid_extractors}
    for members in config.grid.combinations(list(datasets)):
        combined = GridData.combine([datasets[name] for name in members])
        datasets[combined.extractor] = combined
    sources = manifest.set_index("image_id")["dataset"] if config.grid.external else None
    result = run_grid(config.output, config.grid, datasets, current.grid_inputs(), sources)
    log.info("grid: %d cells ok, %d failed -> %s", result.n_ok, result.n_failed, result.uri)
    return {"grid_cells_ok": result.n_ok, "grid_cells_failed": result.n_failed}


def _run_finetune(current: CurrentInputs) -> dict[str, int]:
    from mammo_ray.stages.finetune import run_finetune

    manifest = current.readable_manifest()
    trained = run_finetune(manifest, current.config.output, current.config.finetune, current.finetune_inputs(),
                           current.read, work_placement(current.config))
    log.info("finetune: %d result rows -> %s", len(trained.rows), trained.uri)
    return {"finetune_rows": len(trained.rows)}


def _transfer_inputs(current: CurrentInputs) -> dict[str, Any]:
    return {"grid": current.grid_inputs(), "finetune": current.finetune_inputs()}


def _run_transfer(current: CurrentInputs) -> dict[str, int]:
    from mammo_ray.stages.transfer import run_transfer

    table = run_transfer(current.config.output, current.config.grid, _transfer_inputs(current))
    return {"finetune_vs_frozen_rows": table.num_rows}


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
    stages = ["ingest", *(f"embed:{spec.name}" for spec in config.embed.extractors), "zero_shot"]
    report_inputs = ReportInputs(
        manifest=manifest, zero_shot=zero_shot, zero_shot_problem=problem,
        error_uris=[tables.errors_uri(config.output, stage) for stage in stages],
        weights_ids=weights, expected_inputs=expected, breast_shares=_breast_shares(current, zero_shot),
        compare_pipeline=config.grid.compare_pipeline(),
    )
    shown_config = privacy.redact_secrets(config.model_dump(mode="json"))  # a salt leaves as its fingerprint
    uris = build_report(config.output, {**shown_config, "config_hash": config.config_hash()}, report_inputs)
    log.info("report: %s and %s", uris["markdown"], uris["html"])
    return {"report_files": len(uris)}


def _breast_shares(current: CurrentInputs, zero_shot: pd.DataFrame | None) -> dict[str, tuple[str, pd.Series]]:
    """Per current image output: its family and the breast's share of each image's input (outputs not current
    for this manifest and config are left out: the report shows only what describes the current inputs)."""
    from mammo_ray.errors import StaleTableError
    from mammo_ray.stages.embed import read_embeddings

    config, manifest = current.config, current.manifest()
    shares: dict[str, tuple[str, pd.Series]] = {}
    for spec in config.embed.extractors:
        try:
            key = current.embedding_key(spec)
        except MammoRayError:  # its weights are not here: nothing of it can be current
            continue
        try:
            view = read_embeddings(config.output, manifest, spec, key=key, columns=["breast_share"])
        except StaleTableError:  # not run for these inputs (a store failure is not caught: the report fails)
            continue
        shares[spec.name] = (spec.family, view["breast_share"])
    if zero_shot is not None and "breast_share" in zero_shot:
        shares["zero_shot"] = ("nyu", zero_shot["breast_share"])
    return shares


def _tables_missing(*uris: Callable[[str], str]) -> Callable[[CurrentInputs], str | None]:
    """A stage's `outputs_missing`: which of these tables under the output are gone."""
    def missing(current: CurrentInputs) -> str | None:
        gone = [uri(current.config.output) for uri in uris if not storage.exists(uri(current.config.output))]
        return f"{', '.join(gone)} missing" if gone else None
    return missing


def _model_outputs_missing(current: CurrentInputs, table_uri: str, errors_uri: str,
                           key: feature_store.ModelKey) -> str | None:
    """What of one model output (its feature store for the current manifest and key, its errors table) is gone."""
    problem = feature_store.outputs_problem(table_uri, current.manifest(), key)
    if problem is None and not storage.exists(errors_uri):
        problem = f"{errors_uri} missing"
    return None if problem is None else f"{table_uri}: {problem}"


def _embeddings_missing(current: CurrentInputs) -> str | None:
    from mammo_ray.stages import embed

    output = current.config.output
    problems = (_model_outputs_missing(current, embed.embeddings_uri(output, spec.name),
                                       embed.errors_uri(output, spec.name), current.embedding_key(spec))
                for spec in current.config.embed.extractors)
    return next((problem for problem in problems if problem is not None), None)


def _zero_shot_missing(current: CurrentInputs) -> str | None:
    from mammo_ray.stages import zero_shot

    output = current.config.output
    return _model_outputs_missing(current, zero_shot.zero_shot_uri(output), zero_shot.errors_uri(output),
                                  current.zero_shot_key())


@dataclass(frozen=True)
class Stage:
    """One step of the study, declared as data.

    `run` does the work and returns its counts; consecutive stages of the `image_pass` that must run share one
    pass over the images (`_run_image_pass`). `depends_on` names what its outputs depend on besides its
    config `sections` (digests of content, never file names); None, or a `depends_on` that returns None,
    means the stage always runs. `check` returns the problems that must stop the study before any work
    (preflight.Problem). `reads` and `writes` name its tables (paths under the output, tables.py): a stage
    reads only what the manifest's source or an earlier stage writes (`check_stage_order`). `outputs_missing`
    says what of the outputs its fingerprint vouches for is gone (pruned, deleted by hand), None when all are
    there: a finished stage whose outputs are gone runs again.
    """

    name: str
    run: Callable[[CurrentInputs], dict[str, int]]
    depends_on: Callable[[CurrentInputs], object] | None
    sections: tuple[str, ...] = ()
    needs_ray: bool = False
    check: Callable[[StudyConfig], list[preflight.Problem]] | None = None
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    image_pass: bool = False
    outputs_missing: Callable[[CurrentInputs], str | None] | None = None

    def fingerprint(self, current: CurrentInputs) -> str | None:
        """What this stage's outputs depend on, as one digest; None when it must always run."""
        inputs = None if self.depends_on is None else self.depends_on(current)
        if inputs is None:
            return None
        return _digest(self.name, inputs, [_section(current.config, name) for name in self.sections])


def _synthetic_only(current: CurrentInputs) -> object:
    # The manifest is rebuilt from its source every run (a corrected label file must be seen), except the
    # synthetic cohort, which its settings fix.
    data = current.config.data
    synthetic = [data] if data.sources is None else list(data.sources.values())
    return "synthetic cohort" if all(source.synthetic is not None for source in synthetic) else None


STAGES: tuple[Stage, ...] = (
    Stage("manifest", _run_manifest, _synthetic_only, sections=("data",), check=preflight.locations_outside_output,
          writes=("manifest",), outputs_missing=_tables_missing(tables.manifest_uri)),
    # The image stages depend on the manifest's images and orientation (labels do not change pixels), on the
    # decode settings and on each model's key; the grid and fine-tuning on the whole manifest and what they read.
    Stage("ingest", _image_stage("ingest"), lambda c: c.digest("images"), sections=("ingest",), needs_ray=True,
          reads=("manifest",), writes=("ingest", "errors/ingest"), image_pass=True,
          outputs_missing=_tables_missing(tables.ingest_uri, lambda output: tables.errors_uri(output, "ingest"))),
    Stage("embed", _image_stage("embed"),
          lambda c: (c.digest("images"), [c.embedding_key(s).as_dict() for s in c.config.embed.extractors]),
          sections=("ingest",), needs_ray=True, check=preflight.embed_weights,
          reads=("manifest",), writes=("embeddings/<extractor>", "errors/embed-<extractor>"), image_pass=True,
          outputs_missing=_embeddings_missing),
    Stage("zero_shot", _image_stage("zero_shot"), lambda c: (c.digest("images"), c.zero_shot_key().as_dict()),
          sections=("ingest",), needs_ray=True, check=preflight.zero_shot_weights,
          reads=("manifest",), writes=("zero_shot", "errors/zero_shot", "figures/zero_shot_by_birads.png"),
          image_pass=True, outputs_missing=_zero_shot_missing),
    Stage("grid", _run_grid, lambda c: c.grid_inputs(), sections=("grid",), needs_ray=True,
          reads=("manifest", "embeddings/<extractor>"),
          writes=("results/grid", "results/grid_predictions", "results/comparisons"),
          outputs_missing=_tables_missing(tables.grid_uri, tables.grid_predictions_uri, tables.comparisons_uri)),
    Stage("finetune", _run_finetune, lambda c: c.finetune_inputs(), sections=("finetune",), needs_ray=True,
          check=preflight.finetune_weights, reads=("manifest",),
          writes=("results/finetune", "results/finetune_predictions", "checkpoints",
                  "errors/finetune-<family>-<size>"),
          outputs_missing=_tables_missing(tables.finetune_uri, tables.finetune_predictions_uri)),
    # The paper's second question: fine-tuned networks against their frozen features, on the same images.
    Stage("transfer", _run_transfer, _transfer_inputs, sections=("grid", "finetune"),
          reads=("results/grid_predictions", "results/finetune", "results/finetune_predictions"),
          writes=("results/finetune_vs_frozen",), outputs_missing=_tables_missing(tables.finetune_vs_frozen_uri)),
    # Cheap, and its inputs are every other table: always rebuilt.
    Stage("report", _run_report, None, check=preflight.published_values,
          reads=("manifest", "errors/ingest", "zero_shot", "results/grid", "results/grid_predictions",
                 "results/comparisons", "results/finetune", "results/finetune_predictions",
                 "results/finetune_vs_frozen"), writes=("report",)),
)


def check_stage_order(stages: Sequence[Stage]) -> None:
    """Raise if a stage reads a table no earlier stage writes, or two stages share a name or a table."""
    written: set[str] = set()
    names = [stage.name for stage in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"stage names repeat: {names}")
    for stage in stages:
        missing = [table for table in stage.reads if table not in written]
        if missing:
            raise ValueError(f"stage {stage.name!r} reads {missing}, which no earlier stage writes")
        clash = written & set(stage.writes)
        if clash:
            raise ValueError(f"stage {stage.name!r} writes {sorted(clash)}, which an earlier stage writes")
        written |= set(stage.writes)


check_stage_order(STAGES)
STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)
_BY_NAME = {stage.name: stage for stage in STAGES}


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
    preflight.check_job_paths(config)
    if any(_BY_NAME[name].needs_ray for name in selected):
        check_ray_before_work(config)
    apply_storage_config(config)
    check_output_writable(config.output)
    preflight.raise_problems([problem for name in selected if _BY_NAME[name].check is not None
                              for problem in _BY_NAME[name].check(config)])
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
        current = CurrentInputs(config, locate=_locate(config))
        passed: dict[str, dict[str, int]] = {}  # counts of image stages a shared pass has run already
        for position, stage in enumerate(_BY_NAME[name] for name in selected):
            fingerprint = stage.fingerprint(current)
            finished = None if force or fingerprint is None else _finished_counts(current, stage, fingerprint)
            if finished is not None:
                log.info("%s: already done for these inputs and config (fingerprint %s): skipped", stage.name,
                         fingerprint)
                result.skipped.append(stage.name)
                result.counts.update(finished)
                continue
            if stage.needs_ray:
                ensure_ray(config)
            if stage.image_pass and stage.name not in passed:
                # This and the following image stages that must run share one pass. Their fingerprints depend
                # on the manifest and their settings only, so they can be judged before the pass runs.
                group = [stage.name, *_image_stages_to_run(current, selected[position + 1:], force)]
                passed = _run_image_pass(current, group)
            counts = passed.pop(stage.name) if stage.image_pass else stage.run(current)
            lock.check()  # another study took the output over meanwhile: record nothing as done
            entry = {"stage": stage.name, "fingerprint": fingerprint, "counts": counts,
                     "config_hash": config.config_hash()}
            storage.write_bytes(tables.ledger_uri(config.output, stage.name), json.dumps(entry, indent=2).encode())
            result.ran.append(stage.name)
            result.counts.update(counts)


def _image_stages_to_run(current: CurrentInputs, names: Sequence[str], force: bool) -> list[str]:
    """The image stages among `names`, up to the first other stage, whose outputs are not finished."""
    group = []
    for stage in (_BY_NAME[name] for name in names):
        if not stage.image_pass:
            break
        fingerprint = stage.fingerprint(current)
        if force or fingerprint is None or _finished_counts(current, stage, fingerprint) is None:
            group.append(stage.name)
    return group


def prune_output(config: StudyConfig, dry_run: bool = False) -> dict[str, dict[str, int]]:
    """Remove the cached model outputs no reader of the current manifest and config can see: the folders
    of other weights and settings, the rows of images no longer in the manifest, extractors no longer
    configured. Holds the output's lock. Returns what was (with `dry_run`: would be) removed, per folder."""
    from mammo_ray.output_lock import hold_output

    apply_storage_config(config)
    with hold_output(config.output):
        current = CurrentInputs(config)
        manifest = current.manifest() if storage.exists(manifest_uri(config)) else None
        configured = {spec.name: spec for spec in config.embed.extractors}
        present = feature_store.subfolders(tables.embeddings_uri(config.output))
        removed = {}
        for name in sorted(set(present) | set(configured)):
            key = current.embedding_key(configured[name]) if name in configured else None
            removed[f"embeddings/{name}"] = feature_store.prune(tables.embeddings_uri(config.output, name), manifest,
                                                                key, dry_run, config.embed.part_bytes)
        removed["zero_shot"] = feature_store.prune(tables.zero_shot_uri(config.output), manifest,
                                                   current.zero_shot_key(), dry_run, config.embed.part_bytes)
    return removed


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

