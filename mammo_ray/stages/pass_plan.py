"""How the image pass (`mammo_ray.stages.inference`) sizes its inference actors from the `embed` section and
the cluster: how many actors, and how many torch threads each CPU actor runs.
"""

from __future__ import annotations

from collections.abc import Sequence

from mammo_ray.config.sections import EmbedConfig


def actor_torch_threads(options: EmbedConfig) -> int:
    """Torch threads of a CPU inference actor: `torch_threads`, else 1. Several one-thread actors beat one
    actor with the node's threads: a small batch's forward scales poorly over threads, and each actor
    decodes its own batches meanwhile (`jobs/benchmark.py embed` measures it)."""
    return options.torch_threads or 1


#: A derived pool has one actor per this many batches at most: an actor's start (importing torch, building every
#: network of the pass) costs seconds of CPU, which a pass of fewer batches per actor does not win back
#: (docs/benchmarks.md, "Image pass").
BATCHES_PER_ACTOR = 4


def actor_count(options: EmbedConfig, cluster_gpus: float, node_cpus: Sequence[float], batches: int,
                batches_per_actor: int = BATCHES_PER_ACTOR) -> int:
    """The inference pool's size: `max_actors` (never more than the pass has batches), else one actor per GPU
    the actors can have (each holds every network of the pass, so no GPU waits for another pool), else one
    actor per `actor_torch_threads` CPUs of each alive node, and at most one per `batches_per_actor` batches
    (1 where a batch costs far more than an actor's start, as the heatmaps' do). Each actor holds a copy of every
    network of the pass: memory grows with the count."""
    if options.max_actors is not None:
        return max(1, min(options.max_actors, batches))
    per_actor = 1.0 if options.num_gpus is None else options.num_gpus
    if cluster_gpus > 0 and per_actor > 0:
        wanted = int(cluster_gpus // per_actor)
    else:
        wanted = sum(int(cpus // actor_torch_threads(options)) for cpus in node_cpus)
    return max(1, min(wanted, -(-batches // batches_per_actor)))
