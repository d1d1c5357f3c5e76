"""The checkpoint format of the training loop: files written, read back, and the identity check."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pyarrow.fs as pafs
import pytest
import torch

from mammo_ray.errors import ConfigError
from mammo_ray.training.checkpoint import (
    IDENTITY_KEYS,
    MODEL_FILE,
    TRAIN_STATE_FILE,
    check_identity,
    checkpoint_uri,
    load_torch_file,
    read_predictions,
    read_state,
    write_checkpoint,
)


def _info() -> dict:
    return {"model": "small_cnn", "pretrained_on": "none", "task": "pathology", "stage": "all",
            "classes": ["a", "b"], "train": "all", "image_size": 64, "protocol": "patient",
            "preprocess_id": "p1", "run_name": "x-small"}


def test_written_checkpoint_reads_back(tmp_path):
    model = torch.nn.Linear(3, 2)
    rows, targets = np.array([4, 1, 7]), np.array([0, 1, 1])
    probabilities = np.array([[0.9, 0.1], [0.25, 0.75], [0.5, 0.5]])
    state = {**_info(), "epoch": 2, "epochs": 3, "run_token": "t", "metrics": {"val_auroc": np.float32(0.5)}}
    write_checkpoint(str(tmp_path), model_state=model.state_dict(), train_state={"optimizer": {"step": 1}},
                     state=state, rows=rows, targets=targets, probabilities=probabilities)
    checkpoint = SimpleNamespace(filesystem=pafs.LocalFileSystem(), path=str(tmp_path) + "/")
    assert checkpoint_uri(checkpoint) == str(tmp_path) + "/"
    assert read_state(checkpoint) == {**state, "metrics": {"val_auroc": 0.5}}
    loaded = load_torch_file(checkpoint, MODEL_FILE)
    torch.testing.assert_close(loaded["weight"], model.weight.detach())
    assert load_torch_file(checkpoint, TRAIN_STATE_FILE) == {"optimizer": {"step": 1}}
    predicted = read_predictions(checkpoint)
    assert predicted["row"].tolist() == [4, 1, 7] and predicted["target"].tolist() == [0, 1, 1]
    np.testing.assert_array_equal(np.stack(predicted["probabilities"]), probabilities.astype(np.float32))
    remote = SimpleNamespace(filesystem=object(), path="/bucket/run/c_1")  # any non-local filesystem: S3
    assert checkpoint_uri(remote) == "s3://bucket/run/c_1"


def test_identity_check_refuses_a_checkpoint_of_another_setup():
    info = _info()
    check_identity({**info, "epoch": 3, "run_token": "old"}, info, "x-small")  # epochs and tokens may differ
    with pytest.raises(ConfigError) as caught:
        check_identity({**info, "image_size": 32, "task": "birads"}, info, "x-small")
    error = caught.value
    assert error.key_path == "finetune.name"
    assert error.reason == (
        "run x-small resumed a checkpoint of another setup (task: checkpoint 'birads' vs config 'pathology', "
        "image_size: checkpoint 32 vs config 64); choose another finetune.name or remove the old checkpoints"
    )
    # A key one side lacks counts as None: an old checkpoint without preprocess_id is another setup.
    older = {k: v for k, v in info.items() if k != "preprocess_id"}
    with pytest.raises(ConfigError, match="preprocess_id: checkpoint None vs config 'p1'"):
        check_identity(older, info, "x-small")
    assert set(IDENTITY_KEYS) <= set(info)
