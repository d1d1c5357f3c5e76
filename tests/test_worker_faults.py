"""Worker faults: an inference actor or a Ray Train worker dies mid-run (a crash point, not a timer), the
stage still finishes, nothing is duplicated, training resumes from its last committed checkpoint."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from mammo_ray import feature_store, storage
from mammo_ray.config import EmbedConfig, ExtractorConfig, FinetuneConfig
from mammo_ray.datasets.synthetic import SyntheticSource, generate_cohort
from mammo_ray.faults import arm, fired
from mammo_ray.stages.embed import embedding_key, read_embeddings, run_embed
from mammo_ray.stages.finetune import run_finetune
from tests.ray_train_state import checkpoint_committed

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow]


def test_an_inference_actor_killed_mid_run_is_replaced_and_every_good_image_lands_once(tmp_path, crash_points):
    manifest = generate_cohort(str(tmp_path / "cohort"), SyntheticSource(patients=3, seed=4, rows=96))
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"DICM but not really")
    manifest = pd.concat([manifest, manifest.iloc[:1].assign(image_id="broken", uri=str(broken))],
                         ignore_index=True)
    arm(crash_points, "inference.actor_batch", after=2)  # the actor dies before its 2nd batch
    spec = ExtractorConfig(name="imagenet_resnet18", weights="random-init:0", input_size=64)
    output = str(tmp_path / "out")

    result = run_embed(manifest, output, spec, EmbedConfig(batch_size=2))

    assert fired(crash_points, "inference.actor_batch")
    assert (result.embedded, result.errors) == (12, 1)
    # Every committed part file of the run's key, before any deduplication: one row per good image's content.
    table = storage.read_table(feature_store.key_uri(result.uri, embedding_key(spec)))
    good = [hashlib.sha256(Path(uri).read_bytes()).hexdigest() for uri in manifest["uri"][:12]]
    assert len(set(good)) == 12  # distinct contents: a duplicated row could not hide behind a shared hash
    assert table.num_rows == 12 and sorted(table.column("content_sha256").to_pylist()) == sorted(good)
    embedded = read_embeddings(output, manifest, spec)
    assert sorted(embedded["image_id"]) == sorted(manifest["image_id"][:12])


def _when_committed(run_folder: Path, then: Callable[[], None], timeout: float = 600.0) -> threading.Thread:
    """Call `then` (in a thread) once Ray Train has committed a checkpoint of the run."""

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if checkpoint_committed(run_folder):
                then()
                return
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_training_worker_killed_mid_epoch_resumes_from_the_last_checkpoint(tmp_path, crash_points):
    manifest = generate_cohort(str(tmp_path / "cohort"), SyntheticSource(patients=6, seed=5, rows=96,
                                                                     positive_fraction=0.5))
    config = FinetuneConfig.model_validate({
        "name": "faulty", "models": [{"name": "small_cnn"}], "tasks": ["binary"],
        "stages": [{"name": "all", "train": "all", "size": 32, "epochs": 3, "lr": 1e-3}],
        "batch_size": 2, "num_workers": 1, "cpus_per_worker": 0.5, "data_cpus": 0.5, "max_failures": 1,
        "augment": {"enabled": False},
    })
    output = str(tmp_path / "out")
    run_folder = Path(output) / "checkpoints" / "faulty-small_cnn-none-binary-patient-all"
    # Armed only once epoch 1 is committed: the worker then dies at its next training batch, mid-epoch.
    watcher = _when_committed(run_folder, lambda: arm(crash_points, "train.batch", after=1))

    result = run_finetune(manifest, output, config)

    watcher.join(timeout=1)
    assert fired(crash_points, "train.batch")
    (run,) = result.runs
    assert run.epoch == 3 and 1 <= run.start_epoch < 3, run  # the restarted group began at a checkpoint
    (row,) = result.rows.itertuples()
    assert row.epochs == 3 and row.n_val > 0
