"""The study on a multi-node Ray cluster (tests/multinode.py: a workless head, a CPU worker, a GPU worker,
as cluster.yaml declares them), joined through `ray.address` as a user's job joins its cluster: each kind of
work runs on its node type, and a worker node lost mid-embedding or mid-training costs nothing but time."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from mammo_ray import storage, tables
from mammo_ray.config import ExtractorConfig, parse_config
from mammo_ray.datasets.manifest import read_manifest
from mammo_ray.faults import arm, disarm, fired
from mammo_ray.stages.embed import embeddings_uri, read_embeddings
from mammo_ray.study import run_study
from tests.multinode import (
    SMALLEST_OBJECT_STORE,
    MultiNodeCluster,
    grid_trial_roles,
    roles_of_work,
    run_job_while,
    spilled_bytes,
)
from tests.ray_train_state import checkpoint_committed

pytestmark = pytest.mark.slow

EXTRACTOR = {"name": "imagenet_resnet18", "input_size": 64}
FINETUNE = {"name": "multinode", "models": [{"name": "small_cnn"}], "tasks": ["binary"],
            "stages": [{"name": "all", "train": "all", "size": 32, "epochs": 3, "lr": 1e-3}],
            "batch_size": 2, "cpus_per_worker": 0.5, "data_cpus": 0.5, "augment": {"enabled": False}}


def _settings(cluster: MultiNodeCluster, output: Path, patients: int = 8, rows: int = 96, **sections) -> dict:
    return {
        "name": "multinode", "output": str(output),
        "data": {"synthetic": {"patients": patients, "rows": rows, "positive_fraction": 0.5}},
        "ray": {"address": cluster.address},
        # The GPU node's GPU is logical: the networks run on its CPU, placed there by its marker.
        "embed": {"extractors": [EXTRACTOR], "num_gpus": 0, "batch_size": 2},
        "ingest": {"batch_size": 2, "rows_per_block": 2},
        **sections,
    }


def _config_file(tmp_path: Path, settings: dict) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.fixture(scope="module")
def whole_study(multinode_cluster, tmp_path_factory) -> dict:
    """One study through every stage on the cluster, joined through `ray.address`, shared by the tests that
    read what it did (which node types ran its work; what its fine-tuning spilled). Its fine-tuning caches its
    inputs at 512 px: 48 images as float32 (144 MiB), more than any node's object store holds."""
    output = tmp_path_factory.mktemp("whole") / "study"
    stage = {**FINETUNE["stages"][0], "size": 512, "epochs": 1}
    config = parse_config(_settings(multinode_cluster, output, patients=12, rows=512,
                     grid={"cv_folds": 2, "bootstrap": 20, "classifiers": ["logreg"], "permutations": 1,
                           "oof": {"repeats": 1}},
                     finetune={**FINETUNE, "stages": [stage], "cache_inputs": True}))
    ran = run_study(config, ["manifest", "ingest", "embed", "grid"]).ran
    before = spilled_bytes(multinode_cluster)  # Ray's counts are the nodes' totals: taken just before fine-tuning
    ran += run_study(config, ["finetune"]).ran
    return {"output": output, "ran": ran, "images": len(read_manifest(str(output / "manifest.parquet"))),
            "spilled_before": before, "spilled_after": spilled_bytes(multinode_cluster)}


def test_each_kind_of_work_runs_on_its_node_type(multinode_cluster, whole_study):
    assert whole_study["ran"] == ["manifest", "ingest", "embed", "grid", "finetune"]
    ran = roles_of_work(multinode_cluster)
    assert ran["decode_batch"] == {"cpu"}        # ingest's reads and decodes, and the embedding inputs
    assert ran["prepare_batch"] == {"cpu"}       # fine-tuning's input decoding
    assert ran["inference"] == {"gpu"}           # the networks
    assert ran["train"] == {"gpu"}               # Ray Train's workers
    grid = grid_trial_roles(multinode_cluster, Path(tables.tune_uri(str(whole_study["output"]))))
    assert grid and grid <= {"cpu", "gpu"}          # trials wherever CPUs are free, never the head


def _stored_rows(output: Path, spec: ExtractorConfig) -> pd.DataFrame:
    """Every row of every part file of the extractor's store: what a retried batch would duplicate."""
    root = Path(embeddings_uri(str(output), spec.name))
    parts = [path for path in root.rglob("part-*.parquet") if not any(p.startswith(".") for p in path.parts)]
    return pd.concat([pq.read_table(path, columns=["content_sha256"]).to_pandas() for path in parts])


def test_a_gpu_node_lost_mid_embedding_costs_nothing_but_time(multinode_cluster, tmp_path, crash_points):
    output = tmp_path / "study"
    config = _config_file(tmp_path, _settings(multinode_cluster, output))
    # The inference actor stops in its 3rd batch (two already written); then its node goes.
    arm(crash_points, "inference.actor_batch", after=3, hold=True)
    lost: list[str] = []

    def lose_the_gpu_node() -> bool:
        if fired(crash_points, "inference.actor_batch"):
            lost.append(multinode_cluster.replace("gpu"))
        return bool(lost)

    run_job_while(config, ["manifest", "ingest", "embed"], tmp_path / "job.log", lose_the_gpu_node)
    disarm(crash_points, "inference.actor_batch")
    assert lost and lost[0] in multinode_cluster.removed
    manifest = read_manifest(str(output / "manifest.parquet"))
    spec = ExtractorConfig(**EXTRACTOR)
    embedded = read_embeddings(str(output), manifest, spec)
    assert sorted(embedded["image_id"]) == sorted(manifest["image_id"])  # every image, once
    stored = _stored_rows(output, spec)
    assert not stored["content_sha256"].duplicated().any()               # no batch landed twice
    assert storage.read_table(tables.ingest_uri(str(output))).num_rows == len(manifest)
    assert storage.read_table(tables.errors_uri(str(output), "embed-imagenet_resnet18")).num_rows == 0


def test_inputs_larger_than_the_object_store_are_spilled_not_a_failure(whole_study):
    # Every node's store holds 75 MiB; the whole study's fine-tuning, its inputs cached, holds its images at
    # 512 px as float32 in the CPU node's store at once: Ray must spill them to disk, and the study goes on.
    assert whole_study["images"] == 48 and whole_study["images"] * 3 * 512 * 512 * 4 > SMALLEST_OBJECT_STORE
    assert whole_study["spilled_after"] > whole_study["spilled_before"]
    rows = storage.read_table(tables.finetune_uri(str(whole_study["output"]))).to_pandas()
    assert len(rows) == 1 and int(rows["epochs"].iloc[0]) == 1 and int(rows["image_size"].iloc[0]) == 512


def test_a_gpu_node_lost_mid_training_resumes_from_the_last_checkpoint(multinode_cluster, tmp_path, crash_points):
    output = tmp_path / "study"
    config = _config_file(tmp_path, _settings(multinode_cluster, output, finetune=FINETUNE))
    run_folder = output / "checkpoints" / "multinode-small_cnn-none-binary-patient-all"
    state = {"armed": False, "lost": None}

    def lose_the_gpu_node_after_a_checkpoint() -> bool:
        if not state["armed"] and checkpoint_committed(run_folder):  # an epoch committed: stop in the next
            arm(crash_points, "train.batch", hold=True)
            state["armed"] = True
        if state["armed"] and fired(crash_points, "train.batch"):
            state["lost"] = multinode_cluster.replace("gpu")
            return True
        return False

    log = run_job_while(config, ["manifest", "finetune"], tmp_path / "job.log", lose_the_gpu_node_after_a_checkpoint)
    disarm(crash_points, "train.batch")
    assert state["lost"] in multinode_cluster.removed
    resumed = re.search(r"resumed from its checkpoint at epoch (\d) of 3", log)
    assert resumed and 1 <= int(resumed.group(1)) < 3, log[-3000:]
    rows = storage.read_table(tables.finetune_uri(str(output))).to_pandas()
    assert len(rows) == 1 and int(rows["epochs"].iloc[0]) == 3
