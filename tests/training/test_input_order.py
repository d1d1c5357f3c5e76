"""Fine-tuning inputs come in an order drawn from the seed: the same seed gives the same batches."""

from __future__ import annotations

import pytest

from mammo_ray.config import FinetuneConfig
from mammo_ray.config.sections import IngestConfig
from mammo_ray.datasets.synthetic import SyntheticSource, generate_cohort
from mammo_ray.models.catalogue import finetune_transform
from mammo_ray.training.data import input_dataset, task_frame


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    cohort = generate_cohort(str(tmp_path_factory.mktemp("cohort")), SyntheticSource(patients=4, seed=2, rows=64))
    return task_frame(cohort, "binary")[0]


def _epoch_rows(frame, tmp_path, *, block_seed: int, shuffle_seed: int) -> list[int]:
    transform = finetune_transform(FinetuneConfig(), "imagenet", 32)
    dataset = input_dataset(frame, transform, errors_uri=str(tmp_path / "errors"), stage="t",
                            read=IngestConfig(batch_size=2, rows_per_block=2), num_cpus=0.5,
                            shuffle_seed=block_seed)
    rows = []
    for batch in dataset.iter_torch_batches(batch_size=3, local_shuffle_buffer_size=4,
                                            local_shuffle_seed=shuffle_seed):
        rows += batch["row"].tolist()
    return rows


@pytest.mark.usefixtures("ray_session")
def test_the_same_seeds_give_the_same_order_and_another_seed_another(frame, tmp_path):
    first = _epoch_rows(frame, tmp_path, block_seed=0, shuffle_seed=7)
    assert sorted(first) == list(range(len(frame)))
    assert _epoch_rows(frame, tmp_path, block_seed=0, shuffle_seed=7) == first
    assert _epoch_rows(frame, tmp_path, block_seed=0, shuffle_seed=8) != first
    assert _epoch_rows(frame, tmp_path, block_seed=1, shuffle_seed=7) != first
