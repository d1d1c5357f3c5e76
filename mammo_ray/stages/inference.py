"""The image pass: one streaming Ray Data pipeline for every image stage of a study (ingest, each extractor,
zero-shot), each image read, hashed and decoded once and only when some output still needs it; then each
output's part files merged, its errors table and its index written (docs/design.md, "The image pass").
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data

from mammo_ray import content_keys, feature_store, storage, tables
from mammo_ray.config.sections import EmbedConfig, IngestConfig
from mammo_ray.feature_store import ModelKey
from mammo_ray.image_stream import CachedContent, block_rows, error_records, errors_table, manifest_dataset, read_images
from mammo_ray.imaging.decode import decode_id
from mammo_ray.placement import ANYWHERE, NODE_TYPES, Placement
from mammo_ray.progress import Progress
from mammo_ray.schemas import IMAGES_SCHEMA
from mammo_ray.stages.inference_task import InferenceRun, InferenceTask
from mammo_ray.stages.pass_batches import (
    INGEST_NUMBERS,
    ImageReading,
    InferenceActor,
    OutputColumns,
    prepare_batch,
    result_schema,
    write_batch,
)
from mammo_ray.stages.pass_plan import BATCHES_PER_ACTOR, actor_count

log = logging.getLogger("mammo_ray.inference")

INGEST_STAGE = "ingest"


@dataclass(frozen=True)
class IngestedContent(CachedContent):
    """Content ingest/images.parquet already summarises under the current decode settings: its record is reused
    (size, statistics), the image is not decoded again for ingest. `keys`: those contents' sha256.

    A record's laterality and view are the manifest's, else the file's tags. Where the manifest gives them the
    tags do not matter; where it leaves them open the tags are needed, and a record knows them only when they
    are null (a null record value means the tag was null too; a value may have been an earlier manifest's).
    `open_laterality` / `open_view`: contents with such a null record."""

    open_laterality: frozenset[str] = frozenset()
    open_view: frozenset[str] = frozenset()

    @classmethod
    def of(cls, records: pd.DataFrame | None) -> IngestedContent:
        if records is None:
            return cls()
        sha = records["content_sha256"]
        return cls(keys=frozenset(sha), open_laterality=frozenset(sha[records["laterality"].isna()]),
                   open_view=frozenset(sha[records["view"].isna()]))

    def __contains__(self, row: tuple[str, object, object]) -> bool:
        sha, laterality, view = row
        return sha in self.keys and (content_keys.orientation_hint(laterality) != "" or sha in self.open_laterality) \
            and (content_keys.orientation_hint(view) != "" or sha in self.open_view)


def _decode_settings(read: IngestConfig) -> dict[str, Any]:
    """The read settings that decide what decoding accepts and produces (pixel values, size and modality
    limits): an ingest record is reused only under the same. Batching is left out; `max_bytes` too (the file is
    read, and refused from its size, whatever is reused)."""
    return read.model_dump(mode="json", exclude={"batch_size", "rows_per_block", "max_bytes"})


def _stored_ingest(output_uri: str, read: IngestConfig) -> pd.DataFrame | None:
    """The records of this output's ingest/images.parquet when written under the same decode settings."""
    uri = tables.ingest_uri(output_uri)
    provenance = tables.read_provenance(uri)
    if provenance is None or provenance.get("decode_settings") != _decode_settings(read):
        return None
    return storage.read_table(uri).to_pandas()


def gpus_per_actor(options: EmbedConfig, placement: Placement = ANYWHERE) -> float:
    """`embed.num_gpus`, else 1 when the cluster has GPUs now or the networks are placed on a node type
    that has them (an autoscaling cluster may have no GPU node yet: the demand starts one)."""
    if options.num_gpus is not None:
        return options.num_gpus
    gpu_type = any(node_type.gpus for node_type in NODE_TYPES.values()
                   if node_type.marker and node_type.marker in placement.resources("inference"))
    return 1.0 if gpu_type or ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def _inference_node_cpus(placement: Placement) -> list[float]:
    """CPUs of each alive node the inference actors may use (those carrying its marker, if placed)."""
    markers = placement.resources("inference")
    return [node["Resources"].get("CPU", 0.0) for node in ray.nodes()
            if node.get("Alive") and all(node["Resources"].get(marker, 0) > 0 for marker in markers)]


@dataclass(frozen=True)
class IngestRun:
    """What ingest found: images decoded, error rows, and its two tables."""

    images: int
    errors: int
    images_uri: str
    errors_uri: str


@dataclass(frozen=True)
class PassResult:
    """One pass: each output's run by its output name (`InferenceTask.stage`), ingest's when asked, how many
    images were decoded (each at most once) and how many network forwards ran (a shared NYU trunk counts once)."""

    runs: dict[str, InferenceRun]
    ingest: IngestRun | None
    images: int
    decoded: int
    forwards: int

    def then(self, second: PassResult) -> PassResult:
        """This pass and a second one over the same images (for outputs that read this one's): both passes' runs,
        decodes and forwards."""
        return PassResult({**self.runs, **second.runs}, self.ingest or second.ingest,
                          max(self.images, second.images), self.decoded + second.decoded,
                          self.forwards + second.forwards)


def run_pass(
    manifest: pd.DataFrame,
    output_uri: str,
    tasks: Sequence[InferenceTask],
    options: EmbedConfig = EmbedConfig(),
    read: IngestConfig = IngestConfig(),
    ingest: bool = False,
    placement: Placement = ANYWHERE,
) -> PassResult:
    """One pass over `manifest`'s images for every output in `tasks` (and ingest when asked): each image
    is read and decoded once, and only when some output still needs it; each output computes the content it
    has not stored under its key. Then each output's index and errors table, and ingest's tables, are written."""
    keys = [task.key(read) for task in tasks]
    cached = [CachedContent(feature_store.stored_content(task.table_uri(output_uri), key), key.orientation)
              for task, key in zip(tasks, keys, strict=True)]
    # An image ingest has a record of (or is not asked for) and every output already holds is hashed, not decoded.
    ingested = _stored_ingest(output_uri, read) if ingest else None
    skip_decode = (IngestedContent.of(ingested), *cached) if ingest else tuple(cached)
    num_gpus = gpus_per_actor(options, placement) if tasks else 0.0
    # A CPU actor writes its own batches, and reads them where decoding is placed on its nodes too (see
    # InferenceActor); a GPU actor's reads and writes, and ingest's alone, go to tasks.
    actor_writes = bool(tasks) and num_gpus == 0
    actor_reads = actor_writes and placement.resources("decode") == placement.resources("inference")
    heavy = any(task.heavy for task in tasks)
    if actor_reads:
        rows_per_block = block_rows(read, len(manifest), ray.cluster_resources().get("CPU", 1.0))
        if heavy and read.rows_per_block is None:  # a block goes to one actor whole: one batch each, to spread
            rows_per_block = min(rows_per_block, options.batch_size)
        stream = manifest_dataset(manifest, rows_per_block)
    else:
        stream = read_images(manifest, read, skip_decode, placement).map_batches(
            prepare_batch, batch_format="pandas", batch_size=read.batch_size,
            fn_kwargs={"tasks": list(tasks), "cached": cached, "ingest": ingest},
            resources=placement.resources("decode"))
    if tasks:
        actors = actor_count(options, ray.cluster_resources().get("GPU", 0.0), _inference_node_cpus(placement),
                             batches=-(-len(manifest) // options.batch_size),
                             batches_per_actor=1 if heavy else BATCHES_PER_ACTOR)
        stream = stream.map_batches(
            InferenceActor,
            fn_constructor_kwargs={"tasks": list(tasks), "keys": keys, "use_gpu": num_gpus > 0, "options": options,
                                   "output_uri": output_uri if actor_writes else None, "ingest": ingest,
                                   "reading": (ImageReading(read, skip_decode, tuple(cached))
                                               if actor_reads else None)},
            # A heavy block goes to an actor only when it is free: queued behind a busy actor it would wait there
            # while a starting actor sits idle.
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors, initial_size=actors,
                                               max_tasks_in_flight_per_actor=1 if heavy else None),
            num_gpus=num_gpus,
            resources=placement.resources("inference"),
            # Ray Data replaces a dead actor and retries the batches it held (its default for actor pools; an
            # actor that dies while starting counts against DataContext.max_consecutive_actor_init_deaths).
            # Part files are named by their content, so a redone batch overwrites instead of duplicating.
            batch_size=options.batch_size,
            batch_format="pandas",
        )
    if not actor_writes:
        stream = stream.map_batches(write_batch, batch_format="pandas", batch_size=None,
                                    fn_kwargs={"tasks": list(tasks), "keys": keys, "output_uri": output_uri,
                                               "ingest": ingest},
                                    resources=placement.resources("decode"))
    progress = Progress(log, f"image pass ({', '.join(task.stage for task in tasks) or 'ingest'})", len(manifest))
    parts = []
    for batch in stream.iter_batches(batch_format="pyarrow", batch_size=None):
        if batch.num_rows:
            parts.append(batch)
            progress.advance(batch.num_rows, errors=_images_with_errors(batch))
    progress.finish()
    schema = result_schema(len(tasks), ingest)
    results = (pa.concat_tables(parts) if parts else schema.empty_table()).to_pandas()
    runs = {task.stage: _finish_output(manifest, output_uri, task, key, results, output, options.part_bytes)
            for output, (task, key) in enumerate(zip(tasks, keys, strict=True))}
    summary = _finish_ingest(manifest, output_uri, read, results, ingested) if ingest else None
    return PassResult(runs, summary, images=len(results), decoded=int(results["decoded"].sum()),
                      forwards=int(results["forwards"].sum()))


def _images_with_errors(batch: pa.Table) -> int:
    """Images of a result batch that are an errors row of at least one output (or of decoding)."""
    flags = [pc.is_valid(batch.column(name)) for name in batch.column_names if name.startswith("error_type")]
    if not flags:
        return 0
    any_error = flags[0]
    for flag in flags[1:]:
        any_error = pc.or_(any_error, flag)
    return int(pc.sum(any_error).as_py() or 0)


def _finish_output(manifest: pd.DataFrame, output_uri: str, task: InferenceTask, key: ModelKey,
                   results: pd.DataFrame, output: int, part_bytes: int) -> InferenceRun:
    """One output's part files merged to about `part_bytes` each, its errors table and its index (written
    last: the run of this output is complete)."""
    columns = OutputColumns(output)
    error_type = results[columns.error_type]
    index = pd.DataFrame({
        "image_id": results["image_id"], "uri": results["uri"], "content_sha256": results["content_sha256"],
        "status": np.where(error_type.notna(), "error", "ok"), "computed": results[columns.computed],
        "error_type": error_type, "error_message": results[columns.error_message],
    })
    errors = errors_table([error_records(index, task.stage)])
    errors = tables.with_provenance(errors, task.stage, weights_ids=[key.weights_id], key=key.as_dict(),
                                    inputs={"images": tables.image_digest(manifest)})
    table_uri, errors_uri = task.table_uri(output_uri), task.errors_uri(output_uri)
    compacted = feature_store.compact(table_uri, key, part_bytes)
    storage.write_table(errors, errors_uri)
    feature_store.write_index(table_uri, task.stage, index, manifest, key)
    written = int(index["computed"].astype(bool).sum())
    failed = int((index["status"] == "error").sum())
    skipped = len(index) - written - failed
    log.info("%s: %d computed, %d already stored (skipped), %d errors; %d part files (%d merged)", task.stage,
             written, skipped, failed, compacted.files_after, compacted.merged)
    return InferenceRun(written, skipped, failed, table_uri, errors_uri, key, compacted.files_after)


def _finish_ingest(manifest: pd.DataFrame, output_uri: str, read: IngestConfig, results: pd.DataFrame,
                   stored: pd.DataFrame | None) -> IngestRun:
    """ingest/images.parquet (one row per readable image: decoded now, or its `stored` record reused) and
    errors/ingest.parquet."""
    failed = results["error_type"].notna()
    images = _with_stored_summaries(results[~failed].sort_values("image_id").reset_index(drop=True), stored)
    images = images.assign(height=images["height"].astype(np.int32), width=images["width"].astype(np.int32))
    inputs = {"images": tables.image_digest(manifest)}
    table = pa.Table.from_pandas(images[IMAGES_SCHEMA.names], schema=IMAGES_SCHEMA, preserve_index=False)
    table = tables.with_provenance(table, INGEST_STAGE, inputs=inputs, decode_id=decode_id(read.apply_voi_lut),
                                   decode_settings=_decode_settings(read))
    failures = tables.with_provenance(errors_table([error_records(results, INGEST_STAGE)]), INGEST_STAGE,
                                      inputs=inputs)
    images_uri, errors_uri = tables.ingest_uri(output_uri), tables.errors_uri(output_uri, INGEST_STAGE)
    storage.write_table(failures, errors_uri)
    storage.write_table(table, images_uri)
    return IngestRun(images=table.num_rows, errors=failures.num_rows, images_uri=images_uri, errors_uri=errors_uri)


def _with_stored_summaries(images: pd.DataFrame, stored: pd.DataFrame | None) -> pd.DataFrame:
    """Images not decoded in this pass (their content has a record: IngestedContent) take the record's size and
    statistics; their id, uri and orientation are this manifest's."""
    reused = ~images["decoded"].astype(bool)
    if not reused.any():
        return images
    assert stored is not None  # a readable image is left undecoded only when ingest has its record
    records = stored.drop_duplicates("content_sha256").set_index("content_sha256")
    images = images.copy()
    images.loc[reused, list(INGEST_NUMBERS)] = records.loc[images.loc[reused, "content_sha256"],
                                                            list(INGEST_NUMBERS)].to_numpy(dtype=np.float64)
    return images


def run_inference(
    manifest: pd.DataFrame,
    output_uri: str,
    task: InferenceTask,
    options: EmbedConfig = EmbedConfig(),
    read: IngestConfig = IngestConfig(),
) -> InferenceRun:
    """A pass with one output: `task` on every image of `manifest` whose output is not yet stored."""
    return run_pass(manifest, output_uri, [task], options, read).runs[task.stage]
