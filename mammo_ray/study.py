"""The study: its stages in order, run from one config. Stages talk only through the tables they write.

Each stage module declares its own stage (`mammo_ray.stages.stage.Stage`): the tables it reads and writes, the
config sections its outputs depend on, its start-up checks and its runner. This module holds their list, the
order derived from their tables, and the run loop: skipping what is finished for the current inputs, and
running consecutive image stages as one pass over the images.
"""

from __future__ import annotations

import json
import logging
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from mammo_ray import feature_store, preflight, storage, tables
from mammo_ray.config import HeatmapsConfig, StudyConfig, ZeroShotConfig, load_config
from mammo_ray.current import CurrentInputs
from mammo_ray.errors import ConfigError
from mammo_ray.output_lock import hold_output
from mammo_ray.ray_setup import apply_storage_config, check_ray_before_work, ensure_ray, work_placement
from mammo_ray.stages import (
    embed,
    export,
    export_networks,
    finetune,
    grid,
    heatmaps,
    ingest,
    manifest,
    report,
    subgroups,
    thumbnails,
    transfer,
    zero_shot,
)
from mammo_ray.stages.inference import PassResult, run_pass
from mammo_ray.stages.stage import Counts, Stage, stage_order
from mammo_ray.writability import check_output_writable

log = logging.getLogger("mammo_ray.study")

#: Every stage of the study, in the order the tables they read and write allow (ties: as listed).
STAGES: tuple[Stage, ...] = stage_order([
    manifest.STAGE, ingest.STAGE, embed.STAGE, zero_shot.STAGE, heatmaps.STAGE, thumbnails.STAGE, grid.STAGE,
    finetune.STAGE, transfer.STAGE, subgroups.STAGE, export.STAGE,
    export_networks.STAGE, report.STAGE,
])
STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)
_BY_NAME = {stage.name: stage for stage in STAGES}


def describe_stages() -> str:
    """One line per stage, in study order: its name and the tables it writes under the output (`run --help`)."""
    output = "s3://output"  # a URI the storage layer joins as written (a local path would be made absolute)
    width = max(len(name) for name in STAGE_NAMES)
    lines = []
    for stage in STAGES:
        written = dict.fromkeys(table.pattern(output).removeprefix(output + "/") for table in stage.writes)
        lines.append(textwrap.fill(", ".join(written) or "-", width=100, break_on_hyphens=False,
                                   initial_indent=f"  {stage.name.ljust(width)}  ",
                                   subsequent_indent=" " * (width + 4)))
    return "\n".join(lines)


@dataclass
class StudyResult:
    output: str
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


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


def ledger_state(current: CurrentInputs, stage: Stage, fingerprint: str) -> tuple[Counts | None, str]:
    """A stage's ledger against `fingerprint`: its counts when it finished for this fingerprint and its outputs
    are all still there (a prune under another config, or a user, may have removed them since), else None;
    and why, in words."""
    uri = tables.ledger_uri(current.config.output, stage.name)
    if not storage.exists(uri):
        return None, "it never finished on this output"
    entry = json.loads(storage.read_bytes(uri))
    when = f" (it last finished {entry['finished_at']})" if entry.get("finished_at") else ""
    if entry.get("fingerprint") != fingerprint:
        return None, f"its inputs or settings changed since it last finished{when}"
    gone = stage.missing(current)
    if gone is not None:
        return None, f"done for these inputs before, but its outputs are not all there ({gone})"
    return entry["counts"], f"already done for these inputs and config{when}"


def _finished_counts(current: CurrentInputs, stage: Stage, fingerprint: str) -> Counts | None:
    """The counts of a stage already finished for this fingerprint with all its outputs, or None: it must run."""
    counts, reason = ledger_state(current, stage, fingerprint)
    if counts is None and reason.startswith("done for these inputs before"):
        log.info("%s: %s: it runs again", stage.name, reason)
    return counts


def _run_image_pass(current: CurrentInputs, stages: Sequence[Stage]) -> dict[str, Counts]:
    """Image stages as one pass over the images: each image read and decoded once for all of their inference
    tasks (stages.inference.run_pass). Their counts, per stage, each with the pass's own."""
    config = current.config
    outputs = [stage.image_outputs for stage in stages if stage.image_outputs is not None]
    tasks = [task for declared in outputs for task in declared.tasks(current)]
    for declared in outputs:
        if declared.announce is not None:
            declared.announce(current)
    ingest = any(declared.ingest for declared in outputs)
    first, later = [task for task in tasks if not task.after], [task for task in tasks if task.after]
    done = PassResult({}, None, 0, 0, 0)
    if first or ingest:  # else e.g. only heatmaps, switched off
        done = run_pass(current.readable_manifest(), config.output, first, config.embed, current.read,
                        ingest=ingest, placement=work_placement(config))
    if later:
        # Outputs that read others' stored outputs (the image+heatmaps model reads the heatmaps): a second pass,
        # its rows carrying those outputs.
        rows = current.readable_manifest()
        for name in sorted({name for task in later for name in task.after}):
            provider = _BY_NAME[name].image_outputs
            assert provider is not None and provider.inputs_for_later is not None, f"{name} gives no pass inputs"
            rows = provider.inputs_for_later(current, rows)
        done = done.then(run_pass(rows, config.output, later, config.embed, current.read,
                                  placement=work_placement(config)))
    log.info("image pass (%s): %d images, %d decoded, %d network forwards", ", ".join(s.name for s in stages),
             done.images, done.decoded, done.forwards)
    shared = {"pass_images": done.images, "pass_decoded": done.decoded, "pass_forwards": done.forwards,
              "pass_outputs": len(tasks) + int(done.ingest is not None)}
    return {stage.name: {**stage.image_outputs.counts(current, done), **shared}
            for stage in stages if stage.image_outputs is not None}


def run_study(config: StudyConfig, stages: Sequence[str] | None = None, force: bool = False) -> StudyResult:
    """Run the requested stages (all by default) in order and return what was done.

    Everything that can be refused is refused before any work (paths in a Ray job, the output, weights,
    published values). The study holds the output's lock throughout: a second study on the same output
    is refused. A stage whose outputs already exist for the same inputs and config is skipped (its
    ledger entry under `<output>/_stages/` says so), unless `force`. Stages that process images are also
    incremental inside: after a crash they redo only the images not yet written.
    """
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
    with hold_output(config.output) as lock:
        current = CurrentInputs(config, locate=manifest.locate(config))
        passed: dict[str, Counts] = {}  # counts of image stages a shared pass has run already
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
            if stage.run is not None:
                counts = stage.run(current)
            else:
                if stage.name not in passed:
                    # This and the following image stages that must run share one pass. Their fingerprints
                    # depend on the manifest and their settings only, so they can be judged before the pass.
                    passed = _run_image_pass(current, [stage, *_image_stages_to_run(current, selected[position + 1:],
                                                                                    force)])
                counts = passed.pop(stage.name)
            lock.check()  # another study took the output over meanwhile: record nothing as done
            entry = {"stage": stage.name, "fingerprint": fingerprint, "counts": counts,
                     "config_hash": config.config_hash(),
                     "finished_at": datetime.now(UTC).isoformat(timespec="seconds")}
            storage.write_bytes(tables.ledger_uri(config.output, stage.name), json.dumps(entry, indent=2).encode())
            result.ran.append(stage.name)
            result.counts.update(counts)


def _image_stages_to_run(current: CurrentInputs, names: Sequence[str], force: bool) -> list[Stage]:
    """The image stages among `names`, up to the first other stage, whose outputs are not finished."""
    group = []
    for stage in (_BY_NAME[name] for name in names):
        if stage.image_outputs is None:
            break
        fingerprint = stage.fingerprint(current)
        if force or fingerprint is None or _finished_counts(current, stage, fingerprint) is None:
            group.append(stage)
    return group


def prune_output(config: StudyConfig, dry_run: bool = False) -> dict[str, dict[str, int]]:
    """Remove the cached model outputs no reader of the current manifest and config can see: the folders
    of other weights and settings, the rows of images no longer in the manifest, extractors no longer
    configured. Holds the output's lock. Returns what was (with `dry_run`: would be) removed, per folder."""
    apply_storage_config(config)
    with hold_output(config.output):
        current = CurrentInputs(config)
        images = current.manifest() if storage.exists(tables.manifest_uri(config.output)) else None
        configured = {spec.name: spec for spec in config.embed.extractors}
        present = feature_store.subfolders(tables.embeddings_uri(config.output))
        removed = {}
        for name in sorted(set(present) | set(configured)):
            key = current.embedding_key(configured[name]) if name in configured else None
            removed[f"embeddings/{name}"] = feature_store.prune(tables.embeddings_uri(config.output, name), images,
                                                                key, dry_run, config.embed.part_bytes)
        removed["zero_shot"] = feature_store.prune(tables.zero_shot_uri(config.output), images,
                                                   current.zero_shot_key(), dry_run, config.embed.part_bytes)
        removed["zero_shot_heatmaps"] = feature_store.prune(tables.zero_shot_heatmaps_uri(config.output), images,
                                                            current.zero_shot_heatmaps_key(), dry_run,
                                                            config.embed.part_bytes)
        shown = {family.family: thumbnails.ThumbnailTask(family) for family in thumbnails.families(current)}
        for name in sorted(set(feature_store.subfolders(tables.thumbnails_uri(config.output))) | set(shown)):
            key = shown[name].key(current.read) if name in shown else None
            removed[f"thumbnails/{name}"] = feature_store.prune(tables.thumbnails_uri(config.output, name), images,
                                                                key, dry_run, config.embed.part_bytes)
        removed["heatmaps"] = feature_store.prune(tables.heatmaps_uri(config.output), images,
                                                  current.heatmaps_key() if config.heatmaps.enabled else None,
                                                  dry_run, config.embed.part_bytes)
    return removed


def demo_config(output: str = "output/demo") -> StudyConfig:
    """The embedded default: a synthetic cohort generated on the fly, local Ray, no network. Its heatmaps run at
    the small images' own resolution and stride 128 (six patches an image), so they cost well under a minute on
    a laptop's CPUs; the zero-shot image+heatmaps model reads them beside the image-only one."""
    return StudyConfig(name="demo", output=output,
                       zero_shot=ZeroShotConfig(heatmaps_weights="random-init:1"),
                       heatmaps=HeatmapsConfig(enabled=True, scale=0.125, stride=128))


def load_study_config(config_uri: str | None, output: str | None = None) -> StudyConfig:
    """The config of `mammo-ray run` / `prune`: a YAML file or the embedded demo, `output` overriding its own."""
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

