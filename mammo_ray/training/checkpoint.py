"""The checkpoint format of the training loop: what one epoch writes, how it is read back and checked.

Checkpoint directory (one per epoch, under RunConfig(storage_path, name)):
  model.pt            the unwrapped model's state dict
  train_state.pt      {"optimizer": ..., "scaler": ...}
  state.json          {"epoch": completed epochs of this stage, "epochs", "run_token", "metrics", + info}
  predictions.parquet row, target, probabilities (list<float32>) for every validation image

Files are read through the ray.train.Checkpoint's own filesystem (local or S3); torch files with
``weights_only=True``. A resumed checkpoint must belong to the setup resuming it (`check_identity`).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from mammo_ray.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import pyarrow as pa
    from ray.train import Checkpoint

MODEL_FILE = "model.pt"
TRAIN_STATE_FILE = "train_state.pt"
STATE_FILE = "state.json"
PREDICTIONS_FILE = "predictions.parquet"
#: What a resumed checkpoint must agree on with the run resuming it (the epoch count may grow).
IDENTITY_KEYS: tuple[str, ...] = (
    "model", "pretrained_on", "task", "stage", "classes", "train", "image_size", "protocol", "preprocess_id",
)


# --- writing ------------------------------------------------------------------------------------------


def predictions_table(rows: np.ndarray, targets: np.ndarray, probabilities: np.ndarray) -> pa.Table:
    import pyarrow as pa

    k = probabilities.shape[1] if probabilities.ndim == 2 else 0
    return pa.table(
        {
            "row": pa.array(rows, pa.int64()),
            "target": pa.array(targets, pa.int64()),
            "probabilities": pa.FixedSizeListArray.from_arrays(
                pa.array(probabilities.astype(np.float32).reshape(-1), pa.float32()), k
            ),
        }
    )


def write_checkpoint(folder: str, *, model_state: Mapping[str, Any], train_state: Mapping[str, Any],
                     state: Mapping[str, Any], rows: np.ndarray, targets: np.ndarray,
                     probabilities: np.ndarray) -> None:
    """The four files of one epoch's checkpoint, into the local directory `folder`."""
    import pyarrow.parquet as pq
    import torch

    torch.save(model_state, os.path.join(folder, MODEL_FILE))
    torch.save(train_state, os.path.join(folder, TRAIN_STATE_FILE))
    with open(os.path.join(folder, STATE_FILE), "w", encoding="utf-8") as handle:
        json.dump(state, handle, indent=1, default=float)
    pq.write_table(predictions_table(rows, targets, probabilities), os.path.join(folder, PREDICTIONS_FILE))


# --- reading ------------------------------------------------------------------------------------------


def read_checkpoint_file(checkpoint: Checkpoint, name: str) -> bytes:
    """One file of a ray.train.Checkpoint, read through its own filesystem (local or S3)."""
    with checkpoint.filesystem.open_input_stream(f"{checkpoint.path.rstrip('/')}/{name}") as handle:
        return handle.read()


def load_torch_file(checkpoint: Checkpoint, name: str) -> Any:
    import torch

    data = read_checkpoint_file(checkpoint, name)
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def read_state(checkpoint: Checkpoint) -> dict[str, Any]:
    return json.loads(read_checkpoint_file(checkpoint, STATE_FILE).decode("utf-8"))


def read_predictions(checkpoint: Checkpoint) -> pd.DataFrame:
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(read_checkpoint_file(checkpoint, PREDICTIONS_FILE))).to_pandas()


def checkpoint_uri(checkpoint: Checkpoint) -> str:
    """The checkpoint's URI: its local path, or s3://<bucket/key> for an S3-backed filesystem."""
    import pyarrow.fs as pafs

    if isinstance(checkpoint.filesystem, pafs.LocalFileSystem):
        return checkpoint.path
    return "s3://" + checkpoint.path.lstrip("/")


def check_identity(state: Mapping[str, Any], expected: Mapping[str, Any], name: str) -> None:
    """ConfigError (finetune.name) unless checkpoint `state` agrees with `expected` (the run's info) on
    every IDENTITY_KEYS value (a key absent from either side counts as None)."""
    different = [key for key in IDENTITY_KEYS if state.get(key) != expected.get(key)]
    if different:
        details = ", ".join(
            f"{k}: checkpoint {state.get(k)!r} vs config {expected.get(k)!r}" for k in different
        )
        raise ConfigError("finetune.name", f"run {name} resumed a checkpoint of another setup ({details}); "
                                            "choose another finetune.name or remove the old checkpoints")
