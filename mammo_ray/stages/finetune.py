"""Fine-tuning stage (the paper's Table 1) on Ray Train: manifest -> checkpoints + results/finetune.parquet.

For every (model, task) the configured stages run in order, each one `TorchTrainer.fit()` (Train V2):
typically the head alone with the body frozen, then the whole network, then the whole network again
at a larger size (progressive resizing, e.g. 224 then 448). Each stage starts from the previous
stage's last checkpoint; the first from the model's pretrained weights (ImageNet through torchvision,
NYU from its published file) or, stated as ``pretrained_on = 'none'``, from a seeded random init.
The small CNN trains from scratch, so it has no "head only" stage: those are skipped for it.

Inputs are decoded and preprocessed to the stage's size in Ray Data CPU tasks and streamed to the
workers (`mammo_ray.training.data`); augmentation runs on the workers for the training split only.
Checkpoints go every epoch to ``RunConfig(storage_path=<checkpoint_path>, name=<run name>)``, a local
folder or s3:// (through `storage.arrow_filesystem`). Run names are
``<config.name>-<model>[-<variant>]-<pretrained_on>-<task>-<protocol>-<stage>`` (variant: the NYU view
head a NYU run starts from, l_cc ... r_mlo): rerunning with the same name
resumes every stage from its latest checkpoint (a finished stage trains no epoch again, a stage
given more epochs continues where it stopped). See `mammo_ray.training.loop` for the mechanism.

The held-out split is grouped by patient (protocol ``patient``, default) or the paper's image-level
20% (protocol ``paper``), the same for every model of a task. Metrics (`training.metrics`) are
computed from the validation predictions of each stage's final checkpoint, each with an interval that
resamples the validation patients (`finetune.bootstrap`, `finetune.ci_level`).

Outputs under `output_uri`:
  results/finetune.parquet              one row per (model, variant, pretrained_on, task, protocol, stage),
                                        schema schemas.FINETUNE_SCHEMA; the rows of this run only
                                        (its provenance names the manifest they were computed on).
                                        n_train: images in the training split; n_val: validation images
                                        predicted (an unreadable one is in the errors table instead);
                                        epochs: the stage's epoch counter in its final checkpoint
  results/finetune_predictions.parquet  the validation predictions behind every row
  checkpoints/<run name>/checkpoint_*   unless `checkpoint_path` points elsewhere
  errors/finetune-<family>-<size>/      images that could not be read or prepared (errors schema)
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
from ray.train import DataConfig

from mammo_ray import preflight, schemas, storage, tables
from mammo_ray.config.finetune import (
    FinetuneConfig,
    FinetuneStageConfig,
)
from mammo_ray.config.sections import IngestConfig
from mammo_ray.errors import ConfigError, MammoRayError
from mammo_ray.models.catalogue import finetune_transform
from mammo_ray.models.finetune_models import FinetuneModel, resolve_models, weights_key
from mammo_ray.models.weights_resolver import ResolvedWeights, resolve_weights
from mammo_ray.placement import ANYWHERE, Placement
from mammo_ray.ray_setup import work_placement
from mammo_ray.schemas import FINETUNE_PREDICTIONS_SCHEMA, FINETUNE_SCHEMA
from mammo_ray.stages.stage import Counts, Stage, tables_missing
from mammo_ray.training.data import class_weights, input_dataset, task_frame
from mammo_ray.training.metrics import classification_metrics, metric_intervals
from mammo_ray.training.models import input_family
from mammo_ray.training.splits import make_split

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from ray import ObjectRef
    from ray.actor import ActorHandle
    from ray.data import DataIterator, Dataset
    from ray.train import Checkpoint, Result

    from mammo_ray.current import CurrentInputs  # types only: CurrentInputs reads the image stages' model keys
    from mammo_ray.training.loop import LoopSpec

log = logging.getLogger("mammo_ray.finetune")


@dataclass(frozen=True)
class StageRun:
    """What one stage's `fit()` did in this call.

    start_epoch: the epoch counter it started from (0 = fresh; > 0 = resumed from a checkpoint);
    epoch: the counter in its final checkpoint; trained: epochs run in this call;
    images_per_s: training throughput of its last epoch in this call (NaN if it trained none).
    """

    model: str
    variant: str
    pretrained_on: str
    task: str
    stage: str
    run_name: str
    start_epoch: int
    epoch: int
    trained: int
    images_per_s: float
    checkpoint_uri: str
    world_size: int
    metrics: dict = field(default_factory=dict)


@dataclass(frozen=True)
class FinetuneResult:
    rows: pd.DataFrame
    runs: list[StageRun]
    uri: str
    predictions_uri: str


def finetune_uri(output_uri: str) -> str:
    return tables.finetune_uri(output_uri)


def predictions_uri(output_uri: str) -> str:
    return tables.finetune_predictions_uri(output_uri)


def run_name(config: FinetuneConfig, model: FinetuneModel, task: str, stage: FinetuneStageConfig) -> str:
    network = f"{model.name}-{model.variant}" if model.variant else model.name
    return f"{config.name}-{network}-{model.pretrained_on}-{task}-{config.protocol}-{stage.name}"


def _stages_for(config: FinetuneConfig, model: str) -> list[tuple[int, FinetuneStageConfig]]:
    stages = list(enumerate(config.stages))
    if model == "small_cnn":  # trained from scratch: a frozen random body is not a stage of it
        stages = [(index, stage) for index, stage in stages if stage.train == "all"]
    return stages


class TrainEvenValWhole(DataConfig):
    """Ray Train DataConfig: "train" is split evenly across workers (DDP needs the same number of batches
    on every worker, so up to world_size - 1 rows an epoch may be left out), "val" is split without
    dropping a row (every validation image is predicted exactly once).

    Only public API: the default ingest options and our own locality flag, not DataConfig's internals."""

    def __init__(self, enable_shard_locality: bool = True) -> None:
        super().__init__(enable_shard_locality=enable_shard_locality)
        self.shard_locality = enable_shard_locality

    def configure(self, datasets: dict[str, Dataset], world_size: int, worker_handles: list[ActorHandle] | None,
                  worker_node_ids: list[str] | None, **kwargs: Any) -> list[dict[str, DataIterator]]:
        output: list[dict] = [{} for _ in range(world_size)]
        hints = worker_node_ids if self.shard_locality else None
        for name, dataset in datasets.items():
            dataset = dataset.copy(dataset)
            if dataset.name is None:
                dataset.set_name(name)
            options = DataConfig.default_ingest_options()
            options.preserve_order = True  # same seed, same batches
            dataset.context.execution_options = options
            splits = dataset.streaming_split(world_size, equal=(name == "train"), locality_hints=hints)
            for rank, split in enumerate(splits):
                output[rank][name] = split
        return output


def _fit_stage(
    *, config: FinetuneConfig, model: FinetuneModel, task: str, stage: FinetuneStageConfig, classes: list[str],
    train_frame: pd.DataFrame, val_frame: pd.DataFrame, init_state: ObjectRef[dict[str, torch.Tensor]] | None,
    init_checkpoint: Checkpoint | None, output_uri: str, info: dict, read: IngestConfig, placement: Placement,
) -> tuple[Result, LoopSpec]:
    import ray.train
    from ray.train.torch import TorchTrainer

    from mammo_ray.training.loop import (  # torch: imported when fine-tuning runs, not by every study
        LoopSpec,
        train_loop,
    )

    transform = finetune_transform(config, input_family(model.name), stage.size, model.variant)
    errors = tables.finetune_errors_uri(output_uri, f"{transform.family}-{stage.size}")
    tag = f"finetune:{transform.family}:{stage.size}"
    datasets = {
        name: input_dataset(frame, transform, errors_uri=errors, stage=tag, read=read,
                            num_cpus=config.data_cpus, placement=placement,
                            shuffle_seed=config.seed if name == "train" else None)
        for name, frame in (("train", train_frame), ("val", val_frame))
    }
    if config.cache_inputs:
        datasets = {name: dataset.materialize() for name, dataset in datasets.items()}
    weights = None
    if config.class_weighted:
        weights = tuple(class_weights(train_frame["target"].to_numpy(), len(classes)))
    spec = LoopSpec(
        model=model.name, num_classes=len(classes), train=stage.train, epochs=stage.epochs, lr=stage.lr,
        weight_decay=config.weight_decay, batch_size=stage.batch_size or config.batch_size, seed=config.seed,
        input_shape=transform.shape, run_token=uuid.uuid4().hex, class_weights=weights,
        augment=config.augment, mixed_precision=config.mixed_precision,
        torch_threads=config.torch_threads, train_rows=len(train_frame),
        info={**info, "train": stage.train, "image_size": stage.size, "preprocess_id": transform.id},
    )
    _warn_if_no_cpu_left_for_data(config)
    resources = {"CPU": config.cpus_per_worker, **placement.resources("train")}
    if config.use_gpu:
        resources["GPU"] = 1
    checkpoints = config.checkpoint_path or storage.join(output_uri, "checkpoints")
    filesystem, path = storage.arrow_filesystem(checkpoints)
    name = info["run_name"]
    spec = replace(spec, progress_uri=storage.join(checkpoints, f"{name}.progress"))
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"spec": spec, "init_state": init_state, "init_checkpoint": init_checkpoint},
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.num_workers, use_gpu=config.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=name, storage_path=path, storage_filesystem=filesystem,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.keep_checkpoints),
            # A dead worker (lost node, OOM kill) restarts the group from the last committed epoch.
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
        ),
        datasets=datasets,
        dataset_config=TrainEvenValWhole(),
    )
    log.info("finetune %s: %d train / %d val images, %s", name, len(train_frame), len(val_frame), stage)
    with echoed_progress(spec.progress_uri):
        result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"finetune run {name} finished without a checkpoint")
    return result, spec


@contextlib.contextmanager
def echoed_progress(uri: str, every_s: float = 5.0) -> Iterator[None]:
    """While the body runs, each new progress line rank 0 leaves at `uri` is logged on this (the driver's)
    console, where the workers' own output does not reach; the last one too, then the file goes."""
    stop = threading.Event()
    shown = [b""]

    def echo() -> None:
        try:
            line = storage.read_bytes(uri) if storage.exists(uri) else b""
        except MammoRayError:  # a line half-written or a store hiccup: the next look shows it
            return
        if line and line != shown[0]:
            shown[0] = line
            log.info("%s", line.decode(errors="replace"))

    def watch() -> None:
        while not stop.wait(every_s):
            echo()

    watcher = threading.Thread(target=watch, name="finetune-progress", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
        echo()
        with contextlib.suppress(MammoRayError):  # a store that went away is the body's error to report, not this
            storage.remove(uri)


def _warn_if_no_cpu_left_for_data(config: FinetuneConfig) -> None:
    """Streaming inputs need CPUs beside the training workers' own; say so before a run stalls."""
    import ray

    if config.cache_inputs or not ray.is_initialized():
        return
    free = ray.cluster_resources().get("CPU", 0.0) - config.num_workers * config.cpus_per_worker
    if free < config.data_cpus:
        log.warning(
            "finetune: the workers reserve %.1f of %.1f CPUs, leaving %.1f for preprocessing tasks that need "
            "%.1f each: lower cpus_per_worker or data_cpus, or set cache_inputs",
            config.num_workers * config.cpus_per_worker, ray.cluster_resources().get("CPU", 0.0), free,
            config.data_cpus,
        )


def _prepare_tasks(manifest: pd.DataFrame, config: FinetuneConfig) -> dict[str, tuple]:
    """task -> (task frame, classes, split); every problem raises before any work starts."""
    tasks = {}
    for task in config.tasks:
        frame, classes = task_frame(manifest, task)
        if len(classes) < 2:
            raise ConfigError("finetune.tasks", f"task {task!r} needs at least 2 classes in the manifest, "
                                                f"found {classes or 'none'} ({len(frame)} usable images)")
        split = make_split(frame, config.protocol, val_fraction=config.val_fraction, seed=config.seed)
        if np.unique(frame["target"].to_numpy()[split.train]).size < 2:
            raise ConfigError("finetune.tasks", f"task {task!r}: the training split holds a single class")
        tasks[task] = (frame, classes, split)
    return tasks


def _initial_state(model: FinetuneModel, resolved: ResolvedWeights, num_classes: int,
                   config: FinetuneConfig) -> ObjectRef[dict[str, torch.Tensor]]:
    """The starting weights of a (model, task) as an object-store reference (workers load it)."""
    import ray

    from mammo_ray.training.models import build_model  # torch: imported when fine-tuning runs, not by every study

    seed = resolved.seed if resolved.seed is not None else config.seed
    initial = build_model(model.name, num_classes, resolved.state_dict, seed=seed, source=resolved.source,
                          nyu_view=model.variant)  # the NYU view head; unused by other models
    return ray.put({key: value.detach().cpu() for key, value in initial.state_dict().items()})


def _outcome(result: Result, spec: LoopSpec, info: dict, frame: pd.DataFrame, n_train: int,
             stage_index: int, config: FinetuneConfig) -> tuple[dict[str, Any], pd.DataFrame, StageRun]:
    """(finetune row, predictions frame, StageRun) of one finished stage, from its final checkpoint."""
    # torch: imported when fine-tuning runs, not by every study
    from mammo_ray.training.checkpoint import check_identity, checkpoint_uri, read_predictions, read_state

    checkpoint = result.checkpoint
    state = read_state(checkpoint)
    check_identity(state, {**info, **spec.info}, info["run_name"])
    predicted = read_predictions(checkpoint)
    k = len(info["classes"])
    probabilities = np.stack(predicted["probabilities"].to_numpy()) if len(predicted) else np.zeros((0, k))
    images = frame.set_index("row").loc[predicted["row"].to_numpy()]
    scores = classification_metrics(predicted["target"].to_numpy(), probabilities)
    intervals = metric_intervals(predicted["target"].to_numpy(), probabilities,
                                 images["patient_id"].astype(str).to_numpy(), config.bootstrap, config.ci_level,
                                 config.seed)
    for metric, (low, high) in intervals.items():
        scores[f"{metric}_ci_low"], scores[f"{metric}_ci_high"] = low, high
    uri = checkpoint_uri(checkpoint)
    epoch = int(state["epoch"])
    # result.metrics is this call's last report, or (nothing trained now) the restored checkpoint's.
    fresh = bool(result.metrics) and result.metrics.get("run_token") == spec.run_token
    start = int(result.metrics["start_epoch"]) if fresh else epoch
    rate = float(result.metrics["train_images_per_s"]) if fresh else math.nan
    keys = {key: info[key] for key in (*schemas.FINETUNE_RUN_KEYS, "stage")}
    run = StageRun(**keys, run_name=info["run_name"], start_epoch=start, epoch=epoch, trained=epoch - start,
                   images_per_s=rate, checkpoint_uri=uri,
                   world_size=int(state["metrics"].get("world_size", 0)),
                   metrics=dict(state["metrics"]))
    row = {
        **keys, "stage_index": stage_index, "train": spec.train, "image_size": spec.info["image_size"],
        "epochs": epoch, **scores, "n_train": n_train, "n_val": len(predicted), "protocol": info["protocol"],
        "classes": info["classes"], "checkpoint_uri": uri, "weights_id": info["weights_id"],
        "run_name": info["run_name"], "config_hash": info["config_hash"],
    }
    predictions = pd.DataFrame({
        **keys, "protocol": info["protocol"],
        "image_id": images["image_id"].astype(str).to_numpy(),
        "patient_id": images["patient_id"].astype(str).to_numpy(),
        "target": predicted["target"].to_numpy(np.int64),
        "prediction": probabilities.argmax(axis=1).astype(np.int64),
        "probabilities": [np.asarray(p, dtype=np.float32) for p in probabilities],
    })
    return row, predictions, run


def run_finetune(manifest: pd.DataFrame, output_uri: str, config: FinetuneConfig,
                 inputs: dict | None = None, read: IngestConfig = IngestConfig(),
                 placement: Placement = ANYWHERE) -> FinetuneResult:
    """Fine-tune every configured model on every task through the configured stages; see the module doc.

    `read`: how images are read and decoded (the study's ingest section, as for every image stage);
    `placement`: where the input decoding and the Ray Train workers run (mammo_ray.placement).

    `inputs`: the digests of what the run describes (the manifest), recorded as the tables' provenance.

    Fails before any work with WeightsError when pretrained weights cannot be found, and with
    ConfigError when a task has fewer than 2 classes.
    """
    models = resolve_models(config)
    tasks = _prepare_tasks(manifest, config)
    config_hash = config.config_hash()
    rows: list[dict] = []
    predictions: list[pd.DataFrame] = []
    runs: list[StageRun] = []
    weights_ids: dict[str, str] = {}
    for model in models:
        resolved = resolve_weights(model.spec)
        weights_ids[weights_key(model)] = resolved.weights_id
        for task, (frame, classes, split) in tasks.items():
            init_state, previous = _initial_state(model, resolved, len(classes), config), None
            train_frame, val_frame = frame.iloc[split.train], frame.iloc[split.val]
            for stage_index, stage in _stages_for(config, model.name):
                info = {
                    "model": model.name, "variant": model.variant, "pretrained_on": model.pretrained_on,
                    "task": task,
                    "stage": stage.name, "classes": classes, "weights_id": resolved.weights_id,
                    "protocol": config.protocol, "config_hash": config_hash,
                    "run_name": run_name(config, model, task, stage),
                }
                result, spec = _fit_stage(
                    config=config, model=model, task=task, stage=stage, classes=classes,
                    train_frame=train_frame, val_frame=val_frame, output_uri=output_uri, info=info,
                    init_state=init_state if previous is None else None, init_checkpoint=previous, read=read,
                    placement=placement,
                )
                row, predicted, run = _outcome(result, spec, info, frame, len(train_frame), stage_index, config)
                rows.append(row)
                predictions.append(predicted)
                runs.append(run)
                previous = result.checkpoint
                if run.start_epoch:
                    log.info("finetune %s: resumed from its checkpoint at epoch %d of %d (%d trained now)",
                             info["run_name"], run.start_epoch, run.epoch, run.trained)
                log.info("finetune %s: epoch %d, %s", info["run_name"], run.epoch,
                         {k: row[k] for k in ("accuracy", "auroc", "precision", "recall")})

    frame = pd.DataFrame.from_records(rows, columns=FINETUNE_SCHEMA.names)
    frames = [p for p in predictions if len(p)]
    predicted = (
        pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=FINETUNE_PREDICTIONS_SCHEMA.names)
    )
    provenance = {"config_hash": config_hash, "weights_ids": list(weights_ids.values()),
                  "weights_by_model": weights_ids, "inputs": inputs}
    _write(predictions_uri(output_uri), predicted, FINETUNE_PREDICTIONS_SCHEMA, provenance)
    table = _write(finetune_uri(output_uri), frame, FINETUNE_SCHEMA, provenance)  # last: the run is complete
    return FinetuneResult(table.to_pandas(), runs, finetune_uri(output_uri), predictions_uri(output_uri))


def _write(uri: str, frame: pd.DataFrame, schema: pa.Schema, provenance: dict) -> pa.Table:
    """The whole table of this run, atomically, with provenance: rows of earlier runs (other models,
    another manifest) never stay beside it."""
    table = pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
    table = tables.with_provenance(table, "finetune", **provenance)
    storage.write_table(table, uri)
    return table


__all__ = ["FinetuneResult", "StageRun", "finetune_uri", "predictions_uri", "run_finetune"]


def _run(current: CurrentInputs) -> Counts:
    trained = run_finetune(current.readable_manifest(), current.config.output, current.config.finetune,
                           current.finetune_inputs(), current.read, work_placement(current.config))
    log.info("finetune: %d result rows -> %s", len(trained.rows), trained.uri)
    return {"finetune_rows": len(trained.rows)}


STAGE = Stage("finetune", lambda current: current.finetune_inputs(), run=_run, sections=("finetune",),
              needs_ray=True, check=preflight.finetune_weights, reads=(tables.MANIFEST, tables.COHORT),
              writes=(tables.FINETUNE, tables.FINETUNE_PREDICTIONS, tables.CHECKPOINTS, tables.FINETUNE_ERRORS),
              outputs_missing=tables_missing(tables.FINETUNE, tables.FINETUNE_PREDICTIONS))
