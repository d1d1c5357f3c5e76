"""How the image pass sizes its work from the config and the cluster: actors, threads, rows per block."""

from __future__ import annotations

from mammo_ray.config import EmbedConfig, IngestConfig
from mammo_ray.image_stream import block_rows
from mammo_ray.stages.pass_plan import actor_count, actor_torch_threads


def test_the_cpu_inference_pool_has_one_single_thread_actor_per_cpu_and_one_actor_per_gpu():
    assert actor_torch_threads(EmbedConfig()) == 1
    assert actor_torch_threads(EmbedConfig(torch_threads=3)) == 3
    # CPU only: one actor per torch_threads CPUs of each node (a node's remainder gives none).
    assert actor_count(EmbedConfig(), cluster_gpus=0, node_cpus=[2.0, 16.0], batches=100) == 18
    assert actor_count(EmbedConfig(torch_threads=3), cluster_gpus=0, node_cpus=[2.0, 16.0], batches=100) == 5
    assert actor_count(EmbedConfig(torch_threads=4), cluster_gpus=0, node_cpus=[2.0], batches=100) == 1
    # GPUs: one actor per GPU (fractional GPUs per actor: more); num_gpus=0 keeps to the CPUs.
    assert actor_count(EmbedConfig(), cluster_gpus=4, node_cpus=[16.0] * 5, batches=100) == 4
    assert actor_count(EmbedConfig(num_gpus=0.5), cluster_gpus=4, node_cpus=[16.0], batches=100) == 8
    assert actor_count(EmbedConfig(num_gpus=0), cluster_gpus=4, node_cpus=[2.0, 2.0], batches=100) == 4
    assert actor_count(EmbedConfig(max_actors=2), cluster_gpus=4, node_cpus=[16.0], batches=100) == 2
    # A derived pool has one actor per 4 batches at most (an actor's start costs more than it wins on fewer);
    # an explicit max_actors is never more than the batches: each would load every network for nothing.
    assert actor_count(EmbedConfig(), cluster_gpus=0, node_cpus=[16.0], batches=3) == 1
    assert actor_count(EmbedConfig(), cluster_gpus=0, node_cpus=[16.0], batches=9) == 3
    assert actor_count(EmbedConfig(), cluster_gpus=4, node_cpus=[16.0], batches=5) == 2
    assert actor_count(EmbedConfig(max_actors=8), cluster_gpus=0, node_cpus=[16.0], batches=3) == 3
    # Where one image costs seconds (the heatmaps), one actor per batch.
    assert actor_count(EmbedConfig(), cluster_gpus=0, node_cpus=[16.0], batches=3, batches_per_actor=1) == 3
    assert actor_count(EmbedConfig(max_actors=8), cluster_gpus=0, node_cpus=[16.0], batches=0) == 1


def test_blocks_hold_about_four_per_cpu_between_16_and_256_rows_unless_configured():
    derived = IngestConfig()
    assert block_rows(derived, images=410, cpus=2) == 52
    assert block_rows(derived, images=100_000, cpus=2) == 256   # each block costs Ray Data a call
    assert block_rows(derived, images=10, cpus=2) == 16
    assert block_rows(derived, images=100_000, cpus=0) == 256   # a cluster without CPUs yet (scaling from zero)
    assert block_rows(IngestConfig(rows_per_block=3), images=100_000, cpus=64) == 3
