"""Everything a study can refuse before any work: relative paths under `ray job submit`, weights that are not
there (all of them in one message), a published-values file that does not parse."""

from __future__ import annotations

import json
import os

from mammo_ray import storage
from mammo_ray.config import StudyConfig
from mammo_ray.config.finetune import DEFAULT_WEIGHTS
from mammo_ray.errors import ConfigError, MammoRayError
from mammo_ray.models.catalogue import dim, weights_spec, zero_shot_heatmaps_weights
from mammo_ray.models.finetune_models import resolve_models
from mammo_ray.models.registry import pretraining_of
from mammo_ray.models.weights import WeightsError
from mammo_ray.models.weights_catalogue import FETCH_HINT, NYU_IMAGE_WISE_FILE, missing_files_hint, weights_file_of
from mammo_ray.models.weights_resolver import check_weights_available
from mammo_ray.report.published import read_published

#: Set by Ray's job supervisor in the environment of a `ray job submit` entrypoint.
_RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def _paths(config: StudyConfig) -> list[tuple[str, str]]:
    """(key path, value) of every path or URI the config names."""
    paths = [("output", config.output), ("report.published", config.report.published),
             ("finetune.checkpoint_path", config.finetune.checkpoint_path),
             ("zero_shot.weights", config.zero_shot.weights), ("heatmaps.weights", config.heatmaps.weights),
             ("zero_shot.heatmaps_weights", config.zero_shot.heatmaps_weights)]
    sources = {"data": config.data} if config.data.sources is None else {
        f"data.sources.{name}": source for name, source in config.data.sources.items()}
    for key, source in sources.items():
        paths.append((f"{key}.manifest", source.manifest))
        if source.adapter is not None:
            paths.append((f"{key}.adapter.locations", source.adapter.locations))
            for name, value in source.adapter.args.items():
                if name.endswith(("_uri", "_root", "_uris")):
                    for item in value if isinstance(value, list) else [value]:
                        paths.append((f"{key}.adapter.args.{name}", item))
    paths += [(f"embed.extractors.{i}.weights", e.weights) for i, e in enumerate(config.embed.extractors)]
    paths += [(f"finetune.models.{i}.weights", m.weights) for i, m in enumerate(config.finetune.models)]
    return [(key, value) for key, value in paths if isinstance(value, str) and value]


def _is_relative_path(value: str) -> bool:
    if "://" in value or value.startswith(("random-init:", "torchvision:")):
        return False
    return not os.path.isabs(os.path.expanduser(value))


def check_job_paths(config: StudyConfig) -> None:
    """Under `ray job submit` the entrypoint runs in a temporary copy of the working dir: a relative
    output would be written into that copy (and lost), a relative input is looked up there. Refuse
    them before any work, saying what to write instead."""
    if _RAY_JOB_ENV not in os.environ:
        return
    try:
        working_dir = json.loads(os.environ[_RAY_JOB_ENV]).get("runtime_env", {}).get("working_dir")
    except (ValueError, AttributeError):
        working_dir = None
    relative = [(key, value) for key, value in _paths(config) if _is_relative_path(value)]
    if relative:
        key, _ = relative[0]
        where = f" (uploaded as {working_dir})" if working_dir else ""
        listed = "; ".join(f"{k} = {v!r}" for k, v in relative)
        raise ConfigError(key, f"relative path(s) in a Ray job: {listed}. This study runs as a Ray job, in a "
                               f"temporary copy of the working dir{where} on the cluster: relative outputs would "
                               "be written into that copy and lost, relative inputs looked up there. Write an "
                               "absolute path every node can reach (shared storage) or an s3:// URI")


#: A problem that must stop the study before any work: (key path, the file or weights source, the error).
Problem = tuple[str, str, MammoRayError]


def _weights_problems(needed: list[tuple[str, object]]) -> list[Problem]:
    problems = []
    for key_path, weights in needed:
        try:
            check_weights_available(weights)
        except MammoRayError as error:
            problems.append((key_path, weights.source, error))
    return problems


def embed_weights(config: StudyConfig) -> list[Problem]:
    """Every extractor's weights are there (and match their sha256)."""
    return _weights_problems([(f"embed.extractors.{i}.weights", weights_spec(spec))
                              for i, spec in enumerate(config.embed.extractors)])


def extractors(config: StudyConfig) -> list[Problem]:
    """Every extractor's weights are there, every architecture exists, and none was pretrained on a collection the
    study tests on."""
    return embed_weights(config) + architectures(config) + contamination(config)


def architectures(config: StudyConfig) -> list[Problem]:
    """Every extractor by architecture names a model its library has (built once on the meta device, which also
    gives its dimension), so a misspelt name fails here instead of in the pass's actors."""
    problems: list[Problem] = []
    for i, spec in enumerate(config.embed.extractors):
        if spec.architecture is None:
            continue
        try:
            dim(spec)
        except (ValueError, RuntimeError) as error:
            problems.append((f"embed.extractors.{i}.architecture", spec.architecture,
                             ConfigError(f"embed.extractors.{i}.architecture", str(error))))
    return problems


def _study_collections(config: StudyConfig) -> dict[str, str]:
    """The collections the study reads (as the adapters name them) -> where the config names each."""
    sources = {"data": config.data} if config.data.sources is None else {
        f"data.sources.{name}": source for name, source in config.data.sources.items()}
    return {source.adapter.name: f"{key}.adapter" for key, source in sources.items() if source.adapter is not None}


def contamination(config: StudyConfig) -> list[Problem]:
    """An extractor pretrained on a collection the study evaluates on gives numbers that are not external: refused
    before any work, naming both, unless the extractor says `pretraining_acknowledged`."""
    tested = _study_collections(config)
    problems: list[Problem] = []
    for i, spec in enumerate(config.embed.extractors):
        pretraining, _licence = pretraining_of(spec)
        shared = sorted(set(pretraining.collections) & set(tested))
        if shared and not spec.pretraining_acknowledged:
            where = ", ".join(tested[name] for name in shared)
            problems.append((f"embed.extractors.{i}", spec.weights, ConfigError(
                f"embed.extractors.{i}", f"{spec.name} was pretrained on {', '.join(shared)} ({pretraining.modality}) "
                f"and the study tests on it ({where}): its numbers there would not be external. Use another "
                "collection, or set pretraining_acknowledged: true on the extractor (the report then marks its rows "
                "as not external)")))
    return problems


def zero_shot_weights(config: StudyConfig) -> list[Problem]:
    """The image-wise model's weights, and the image+heatmaps model's when it is asked for."""
    specs = [("zero_shot.weights", weights_spec(config.zero_shot))]
    if config.zero_shot.heatmaps_weights is not None:
        specs.append(("zero_shot.heatmaps_weights", zero_shot_heatmaps_weights(config.zero_shot)))
    return _weights_problems(specs)


def heatmaps_weights(config: StudyConfig) -> list[Problem]:
    """The patch classifier's weights, when the heatmaps are asked for."""
    return _weights_problems([("heatmaps.weights", weights_spec(config.heatmaps))] if config.heatmaps.enabled else [])


def finetune_weights(config: StudyConfig) -> list[Problem]:
    """Every model to fine-tune resolves to weights that are there; two entries sharing a key are refused."""
    # resolve_models stops at its first bad model: it is asked about each model alone, then about all of
    # them together (two entries sharing a key) once each is known to be fine.
    problems: list[Problem] = []
    for i, model in enumerate(config.finetune.models):
        try:
            resolve_models(config.finetune.model_copy(update={"models": [model]}))
        except MammoRayError as error:
            source = model.weights or DEFAULT_WEIGHTS[model.name] or NYU_IMAGE_WISE_FILE  # nyu: none given
            problems.append((f"finetune.models.{i}.weights", source, error))
    if not problems:
        try:
            resolve_models(config.finetune)
        except MammoRayError as error:
            problems.append(("finetune.models", "", error))
    return problems


def locations_outside_output(config: StudyConfig) -> list[Problem]:
    """A locations file (locators -> real paths) is the user's: never inside the output it keeps them out of."""
    output = storage.join(config.output, "")
    problems: list[Problem] = []
    for key, value in _paths(config):
        if key.endswith(".adapter.locations") and storage.join(value, "").startswith(output):
            problems.append((key, value, ConfigError(key, "the locations file holds the real paths the output must "
                                                          "not: write it outside the output")))
    return problems


def published_values(config: StudyConfig) -> list[Problem]:
    """The published values the report shows parse (a bad file fails now, not after hours of work)."""
    if not config.report.published:
        return []
    try:
        read_published(config.report.published)
    except MammoRayError as error:
        return [("report.published", config.report.published, error)]
    return []


def raise_problems(problems: list[Problem]) -> None:
    """Stop the study with every problem at once: one ConfigError (its key path the first one's), a line per
    key path naming its file, and one `mammo-ray weights fetch` command for all the missing published
    files, so a study missing several files says so in one run."""
    if not problems:
        return
    if len(problems) == 1:
        key_path, _source, error = problems[0]
        raise ConfigError(key_path, error.reason if isinstance(error, ConfigError) else str(error))
    lines, hints, missing = [], {}, {}
    for key_path, source, error in problems:
        if not isinstance(error, WeightsError):
            lines.append(f"{key_path}: {error}")
            continue
        lines.append(f"{key_path}: {error.source}: {error.reason}")
        if error.hint and FETCH_HINT in error.hint:  # a file to get: one fetch command for all of them
            file_name, fetch_name = weights_file_of(source)
            missing[file_name] = fetch_name
        elif error.hint:
            hints[error.hint] = None
    if missing:
        hints[missing_files_hint(missing)] = None
    reason = "\n  ".join([f"{len(problems)} problems; every one must be fixed before the study starts:",
                          *lines, *(f"how to fix: {hint}" for hint in hints)])
    raise ConfigError(problems[0][0], reason)
