"""The per-worker training loop of Ray Train (Train V2): `train_loop` runs one stage of one (model, task).

Every epoch trains on this worker's shard of "train", predicts its shard of "val" and computes the metrics
over all workers; rank 0 writes a checkpoint (`mammo_ray.training.checkpoint`) and every worker reports. A
run started again under the same name and storage resumes from its latest checkpoint; one of another setup
is refused. The mechanism: docs/design.md, "Fine-tuning loop".
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mammo_ray import storage
from mammo_ray.config.finetune import AugmentConfig
from mammo_ray.faults import crash_point
from mammo_ray.ray_setup import this_node_cpus
from mammo_ray.training.augment import augment_batch
from mammo_ray.training.checkpoint import (
    MODEL_FILE,
    TRAIN_STATE_FILE,
    check_identity,
    load_torch_file,
    read_state,
    write_checkpoint,
)
from mammo_ray.training.metrics import classification_metrics
from mammo_ray.training.models import build_model, freeze_batchnorm, set_trainable

log = logging.getLogger("mammo_ray.train")


def worker_threads(workers_on_node: int) -> int:
    """Torch threads of a training worker when the config leaves them open: the CPUs of its node shared by
    the workers there. A worker reserves `cpus_per_worker` for scheduling, but one torch thread per reserved
    CPU left half a laptop idle; the input tasks beside it need a small share (decoding is cheap next to a
    training step)."""
    return max(1, this_node_cpus() // max(1, workers_on_node))


def _tell(spec: LoopSpec, line: str) -> None:
    """A progress line of rank 0: to its log, and to `spec.progress_uri`, which the driver echoes on its console
    (worker output stays in Ray's logs)."""
    log.info("%s", line)
    if spec.progress_uri is not None:
        try:
            storage.write_bytes(spec.progress_uri, line.encode())
        except Exception as error:  # noqa: BLE001 - a progress line is for a person: it never fails training
            log.warning("progress line not written to %s: %s", spec.progress_uri, error)


class _Progress:
    """Rank 0's progress line every `progress_s` within an epoch: images, images/s, loss, ETA of the epoch."""

    def __init__(self, spec: LoopSpec, epoch: int, world_size: int, threads: int, started: float) -> None:
        self.spec, self.epoch, self.started = spec, epoch, started
        self.expected = spec.train_rows // max(1, world_size)  # this worker's share of an epoch
        self.threads = threads
        self.next_line = started + spec.progress_s

    def batch_done(self, seen: int, loss_sum: float) -> None:
        now = time.perf_counter()
        if now < self.next_line:
            return
        self.next_line = now + self.spec.progress_s
        rate = seen / (now - self.started)
        left = max(0, self.expected - seen) / rate if rate > 0 else math.nan
        _tell(self.spec, f"{self.spec.info.get('run_name', 'train')}: epoch {self.epoch + 1}/{self.spec.epochs}, "
                         f"{seen}/{self.expected} images, {rate:.1f} images/s ({self.threads} torch threads), loss "
                         f"{loss_sum / max(1, seen):.4f}, epoch ETA {left:.0f} s")


@dataclass(frozen=True)
class LoopSpec:
    """Plain data every worker gets: what to train and how."""

    model: str
    num_classes: int
    train: str
    epochs: int
    lr: float
    weight_decay: float
    batch_size: int
    seed: int
    input_shape: tuple[int, int, int]
    run_token: str
    class_weights: tuple[float, ...] | None = None
    augment: AugmentConfig | None = None
    mixed_precision: bool = True
    torch_threads: int | None = None
    shuffle_buffer: int = 64
    train_rows: int = 0  # images of the training split: the progress log's ETA
    progress_s: float = 30.0  # seconds between progress lines within an epoch (rank 0)
    progress_uri: str | None = None  # where rank 0 leaves its latest progress line for the driver to echo
    info: dict[str, Any] = field(default_factory=dict)


def lr_at(base: float, epoch: int, epochs: int) -> float:
    """Cosine decay over the stage's epochs, one value per epoch (epoch 0 gets `base`)."""
    if epochs <= 1:
        return base
    return base * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


# --- the loop -----------------------------------------------------------------------------------------


def _gather(value: Any, world_size: int) -> list[Any]:
    if world_size == 1:
        return [value]
    import torch.distributed as dist

    out: list[Any] = [None] * world_size
    dist.all_gather_object(out, value)
    return out


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train's `train_loop_per_worker`. config: spec (LoopSpec), init_state (ObjectRef of a state
    dict) or init_checkpoint (the previous stage's ray.train.Checkpoint)."""
    import ray
    import ray.train
    import ray.train.torch
    import torch
    import torch.nn.functional as F

    spec: LoopSpec = config["spec"]
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    threads = spec.torch_threads or worker_threads(context.get_local_world_size())
    torch.set_num_threads(threads)
    device = ray.train.torch.get_device()
    use_cuda = device.type == "cuda"
    amp = bool(spec.mixed_precision and use_cuda)
    torch.manual_seed(spec.seed * 1009 + rank)

    model = build_model(spec.model, spec.num_classes, None, seed=spec.seed)
    resume = ray.train.get_checkpoint()
    start_epoch = 0
    train_state = None
    if resume is not None:
        state = read_state(resume)
        check_identity(state, spec.info, spec.info.get("run_name", ""))
        model.load_state_dict(load_torch_file(resume, MODEL_FILE))
        train_state = load_torch_file(resume, TRAIN_STATE_FILE)
        start_epoch = int(state["epoch"])
    elif config.get("init_state") is not None:
        model.load_state_dict(ray.get(config["init_state"]))
    elif config.get("init_checkpoint") is not None:
        model.load_state_dict(load_torch_file(config["init_checkpoint"], MODEL_FILE))

    set_trainable(model, spec.model, spec.train)
    if use_cuda:
        model = model.to(memory_format=torch.channels_last)
    wrapped = ray.train.torch.prepare_model(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=spec.lr, weight_decay=spec.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    if train_state is not None:
        optimizer.load_state_dict(train_state["optimizer"])
        scaler.load_state_dict(train_state["scaler"])
    weights = (
        torch.tensor(spec.class_weights, dtype=torch.float32, device=device) if spec.class_weights else None
    )
    dtypes = {"image": torch.float32, "target": torch.int64, "row": torch.int64}
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")

    for epoch in range(start_epoch, spec.epochs):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(spec.lr, epoch, spec.epochs)
        wrapped.train()
        freeze_batchnorm(model, spec.model, spec.train)
        epoch_seed = spec.seed * 1_000_003 + epoch * 1009 + rank  # augmentation and shuffle draws
        generator = torch.Generator().manual_seed(epoch_seed)
        seen, loss_sum = 0, 0.0
        started = time.perf_counter()
        progress = _Progress(spec, epoch, world_size, threads, started) if rank == 0 else None
        for batch in train_shard.iter_torch_batches(
            batch_size=spec.batch_size, dtypes=dtypes, device=device,
            local_shuffle_buffer_size=spec.shuffle_buffer or None,
            local_shuffle_seed=epoch_seed if spec.shuffle_buffer else None,
        ):
            images, targets = batch["image"], batch["target"]
            if spec.augment is not None:
                images = augment_batch(images, spec.augment, generator)
            if use_cuda:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
                logits = wrapped(images)
            loss = F.cross_entropy(logits.float(), targets, weight=weights)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            seen += int(targets.shape[0])
            loss_sum += float(loss.detach()) * int(targets.shape[0])
            if progress is not None:
                progress.batch_done(seen, loss_sum)
            crash_point("train.batch")
        train_seconds = time.perf_counter() - started

        # Validation uses the unwrapped model: shards may differ in size, and a DDP forward would
        # wait for the other workers (buffer broadcast) on every batch.
        model.eval()
        rows, targets_seen, probabilities = [], [], []
        with torch.inference_mode():
            batches = val_shard.iter_torch_batches(batch_size=spec.batch_size, dtypes=dtypes, device=device)
            for batch in batches:
                images = batch["image"]
                if use_cuda:
                    images = images.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
                    logits = model(images)
                probabilities.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
                rows.append(batch["row"].cpu().numpy())
                targets_seen.append(batch["target"].cpu().numpy())
        local = (
            seen, loss_sum, train_seconds,
            np.concatenate(rows) if rows else np.zeros(0, np.int64),
            np.concatenate(targets_seen) if targets_seen else np.zeros(0, np.int64),
            np.concatenate(probabilities) if probabilities else np.zeros((0, spec.num_classes), np.float32),
        )
        parts = _gather(local, world_size)
        total_seen = sum(p[0] for p in parts)
        slowest = max(p[2] for p in parts)
        val_rows = np.concatenate([p[3] for p in parts])
        order = np.argsort(val_rows, kind="stable")
        val_rows = val_rows[order]
        val_targets = np.concatenate([p[4] for p in parts])[order]
        val_probabilities = np.concatenate([p[5] for p in parts])[order]
        scores = classification_metrics(val_targets, val_probabilities)
        metrics = {
            "epoch": epoch + 1,
            "start_epoch": start_epoch,
            "epochs": spec.epochs,
            "run_token": spec.run_token,
            "world_size": world_size,
            "device": device.type,
            "mixed_precision": amp,
            "torch_threads": threads,
            "train_images": total_seen,
            "train_loss": sum(p[1] for p in parts) / total_seen if total_seen else math.nan,
            "train_seconds": slowest,
            "train_images_per_s": total_seen / slowest if slowest > 0 else math.nan,
            "n_val": int(val_rows.size),
            **{f"val_{name}": value for name, value in scores.items()},
        }
        if rank == 0:
            _tell(spec, f"{spec.info.get('run_name', 'train')}: epoch {epoch + 1}/{spec.epochs} done, "
                        f"{total_seen} images in {slowest:.0f} s, loss {metrics['train_loss']:.4f}, validation AUROC "
                        f"{scores.get('auroc', math.nan):.3f}")
            with tempfile.TemporaryDirectory(prefix="mammo-ray-ckpt-") as folder:
                write_checkpoint(
                    folder, model_state=model.state_dict(),
                    train_state={"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict()},
                    state={**spec.info, "epoch": epoch + 1, "epochs": spec.epochs,
                           "run_token": spec.run_token, "metrics": metrics},
                    rows=val_rows, targets=val_targets, probabilities=val_probabilities,
                )
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        else:
            ray.train.report(metrics, checkpoint=None)
