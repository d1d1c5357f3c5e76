"""The study config: typed (pydantic), loaded from YAML, every error names its key path.

Unknown keys are errors (a typo must not silently fall back to a default), and the whole file is
validated before any work starts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from mammo_ray import storage
from mammo_ray.config_base import StrictModel
from mammo_ray.classify.config import GridConfig
from mammo_ray.stages.finetune import FinetuneConfig
from mammo_ray.errors import ConfigError, StorageError


class SyntheticSource(StrictModel):
    """Generate the synthetic cohort (the embedded default: no data, no network)."""

    patients: int = Field(24, ge=1, le=100_000)
    seed: int = Field(0, ge=0)
    rows: int = Field(512, ge=64, le=8192)
    positive_fraction: float = Field(0.25, ge=0.0, le=1.0)


class AdapterSource(StrictModel):
    """Build the manifest with a dataset adapter (inbreast, mias, cbis_ddsm, csv)."""

    name: Literal["inbreast", "mias", "cbis_ddsm", "csv"]
    args: dict[str, Any] = Field(default_factory=dict)


class DataConfig(StrictModel):
    """Exactly one of: a synthetic cohort, an existing manifest (Parquet/CSV URI), a dataset adapter."""

    synthetic: SyntheticSource | None = None
    manifest: str | None = None
    adapter: AdapterSource | None = None

    @model_validator(mode="after")
    def _exactly_one_source(self) -> DataConfig:
        chosen = [name for name in ("synthetic", "manifest", "adapter") if getattr(self, name) is not None]
        if len(chosen) != 1:
            raise ValueError(f"set exactly one of synthetic, manifest, adapter (got {chosen or 'none'})")
        return self


class S3Config(StrictModel):
    """Where S3 lives, when not in the AWS variables. Credentials never go here: environment or profile."""

    endpoint_url: str | None = None
    region: str | None = None


class StorageConfig(StrictModel):
    s3: S3Config = Field(default_factory=S3Config)


class RayConfig(StrictModel):
    address: str | None = Field(None, description="None: join a running cluster if there is one, else start local Ray")
    num_cpus: int | None = Field(None, ge=1)


class IngestConfig(StrictModel):
    batch_size: int = Field(4, ge=1, le=1024)
    rows_per_block: int = Field(16, ge=1)
    apply_voi_lut: bool = True
    max_pixels: int = Field(120_000_000, ge=1)
    max_bytes: int = Field(storage.DEFAULT_MAX_BYTES, ge=1, description="larger files are errors rows, refused unread")


class ExtractorConfig(StrictModel):
    """One feature extractor (DESIGN §4): its weights and preprocessing."""

    name: Literal["imagenet_resnet50", "imagenet_resnet18", "imagenet_squeezenet", "nyu_lcc", "nyu_avg"]
    weights: str = Field("random-init:0", description="random-init:<seed>, torchvision:<arch>:<enum>, a path or s3:// URI")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    pool: Literal["global", "4x4"] = "global"
    input_size: int = Field(224, ge=32, le=2048)
    nyu_scale: float = Field(0.25, gt=0.0, le=1.0)
    source_resolution: float | None = Field(None, gt=0.0, le=4.0)
    tta: int = Field(0, ge=0, le=64)


def _default_extractors() -> list[ExtractorConfig]:
    return [ExtractorConfig(name=name) for name in ("imagenet_resnet50", "nyu_lcc", "nyu_avg")]


class EmbedConfig(StrictModel):
    extractors: list[ExtractorConfig] = Field(default_factory=_default_extractors, min_length=1)
    batch_size: int = Field(8, ge=1, le=4096)
    max_actors: int = Field(1, ge=1)
    num_gpus: float | None = Field(None, ge=0.0, description="per actor; None: 1 when the cluster has GPUs")
    max_restarts: int = Field(3, ge=0, le=100, description="dead actors replaced before the stage fails")

    @model_validator(mode="after")
    def _unique_names(self) -> EmbedConfig:
        # An extractor's name is its folder and its grid rows: two settings under one name would mix.
        names = [extractor.name for extractor in self.extractors]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"extractor names must be unique, {', '.join(repeated)} appear(s) more than once: "
                             "one name, one setting (run other settings in another study output)")
        return self


class ZeroShotConfig(StrictModel):
    """Zero-shot NYU inference (Figure 3): the image-wise model's own benign/malignant heads."""

    weights: str = "random-init:0"
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    nyu_scale: float = Field(0.25, gt=0.0, le=1.0)
    source_resolution: float | None = Field(None, gt=0.0, le=4.0)
    tta: int = Field(0, ge=0, le=64)


def _demo_finetune() -> FinetuneConfig:
    """Small enough for the embedded demo on a laptop: random-init resnet18 and the small CNN, 64 px."""
    return FinetuneConfig(
        models=[{"name": "resnet18", "weights": "random-init:0"}, {"name": "small_cnn"}],
        tasks=["binary"],
        stages=[{"name": "head", "train": "head", "size": 64, "epochs": 1, "lr": 1e-3},
                {"name": "all", "train": "all", "size": 64, "epochs": 2, "lr": 1e-4}],
    )


class ReportConfig(StrictModel):
    published: str | None = Field(None, description="CSV of the paper's published values (report.published)")


class StudyConfig(StrictModel):
    name: str = Field("study", min_length=1)
    output: str = "output/study"
    data: DataConfig = Field(default_factory=lambda: DataConfig(synthetic=SyntheticSource()))
    storage: StorageConfig = Field(default_factory=StorageConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    zero_shot: ZeroShotConfig = Field(default_factory=ZeroShotConfig)
    grid: GridConfig = Field(default_factory=GridConfig)
    finetune: FinetuneConfig = Field(default_factory=_demo_finetune)
    report: ReportConfig = Field(default_factory=ReportConfig)

    @model_validator(mode="after")
    def _grid_extractors_are_configured(self) -> StudyConfig:
        configured = {extractor.name for extractor in self.embed.extractors}
        unknown = [name for name in (self.grid.extractors or []) if name not in configured]
        if unknown:
            raise ValueError(f"grid.extractors {unknown} are not in embed.extractors ({sorted(configured)}): the "
                             "grid runs on the embeddings this config makes")
        return self

    @property
    def grid_extractors(self) -> list[ExtractorConfig]:
        """The extractors the grid runs on: grid.extractors by name, else every configured one."""
        names = self.grid.extractors
        return [e for e in self.embed.extractors if names is None or e.name in names]

    def config_hash(self) -> str:
        """A stable hash of every setting: outputs record it as provenance."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def parse_config(raw: Any, source: str = "<config>") -> StudyConfig:
    """Validate a config mapping; the first problem is raised as ConfigError with its key path."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("<root>", f"{source} must hold a mapping of keys, got {type(raw).__name__}")
    try:
        return StudyConfig.model_validate(raw)
    except ValidationError as error:
        problems = error.errors()
        first = problems[0]
        key_path = ".".join(str(part) for part in first["loc"]) or "<root>"
        reason = first["msg"]
        if len(problems) > 1:
            others = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in problems[1:5]
            )
            reason += f" (also: {others})"
        raise ConfigError(key_path, f"{reason} [in {source}]") from None


#: Most nodes a config may expand to through YAML aliases: a few lines of nested aliases ("billion laughs")
#: expand to billions, which validating, hashing or dumping the config would each walk.
MAX_YAML_NODES = 10_000
_MERGE_TAG = "tag:yaml.org,2002:merge"
_VALUE_TAG = "tag:yaml.org,2002:value"


class _ConfigLoader(yaml.SafeLoader):
    """yaml.safe_load's loader (same tags and constructors); `_load_yaml` checks its composed node graph
    before anything is constructed."""


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [child for pair in node.value for child in pair]
    return []


def _check_expansion(root: yaml.Node, uri: str) -> None:
    """Refuse a document whose aliases expand it beyond MAX_YAML_NODES nodes, or that contains itself.

    An alias is the very node it names, so the composed graph stays small while its expansion grows
    exponentially; the expanded size of each node is memoised on identity, which keeps this linear.
    """
    expanded: dict[int, int] = {}
    open_nodes: set[int] = set()  # the nodes being counted: the ancestors of the current one
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, counted_children = stack.pop()
        if counted_children:
            expanded[id(node)] = 1 + sum(expanded[id(child)] for child in _children(node))
            open_nodes.discard(id(node))
            continue
        if id(node) in expanded:
            continue
        open_nodes.add(id(node))
        stack.append((node, True))
        for child in reversed(_children(node)):
            if id(child) in open_nodes:
                raise ConfigError("<file>", f"{uri}: the node at line {child.start_mark.line + 1} contains an "
                                            "alias of itself (a recursive document is not a config)")
            if id(child) not in expanded:
                stack.append((child, False))
    total = expanded[id(root)]
    if total > MAX_YAML_NODES and total > len(expanded):  # the excess comes from aliases
        raise ConfigError("<file>", f"{uri}: YAML aliases expand the document to {total} nodes (at most "
                                    f"{MAX_YAML_NODES}); refused before building it")


def _check_duplicate_keys(loader: _ConfigLoader, root: yaml.Node, uri: str) -> None:
    """Refuse a mapping that repeats a key, at any depth: YAML keeps the last one and drops the first silently.

    Keys compare as the document means them (`1` and `01` are one int). Keys merged in with `<<: *anchor`
    are not the mapping's own, so overriding one explicitly is allowed.
    """
    visited: set[int] = set()
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        children: list[tuple[yaml.Node, str]] = []
        if isinstance(node, yaml.MappingNode):
            first_lines: dict[object, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:
                    children.append((value_node, path))
                    continue
                label = key_node.value if isinstance(key_node, yaml.ScalarNode) else "<complex key>"
                key_path = f"{path}.{label}" if path else str(label)
                if isinstance(key_node, yaml.ScalarNode):
                    # `=` (the value key) is a plain string key once PyYAML flattens the mapping
                    key = key_node.value if key_node.tag == _VALUE_TAG else loader.construct_object(key_node)
                    line = key_node.start_mark.line + 1
                    if key in first_lines:
                        raise ConfigError(key_path, f"duplicate key {label!r} at line {line} of {uri} (first at "
                                                    f"line {first_lines[key]}): YAML would keep only the last")
                    first_lines[key] = line
                children.append((value_node, key_path))
        elif isinstance(node, yaml.SequenceNode):
            children = [(item, f"{path}.{index}" if path else str(index)) for index, item in enumerate(node.value)]
        stack.extend(reversed(children))  # document order: the first duplicate is the one reported


def _load_yaml(text: str, uri: str) -> Any:
    """yaml.safe_load with the checks above run on the composed nodes, before the document is constructed."""
    loader = _ConfigLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _check_expansion(root, uri)
        _check_duplicate_keys(loader, root, uri)
        return loader.construct_document(root)
    except RecursionError:
        raise ConfigError("<file>", f"{uri}: YAML nested too deeply") from None
    finally:
        loader.dispose()


def load_config(uri: str | Path) -> StudyConfig:
    """Load a study config from a YAML file (local path or s3://)."""
    uri = str(uri)
    try:
        data = storage.read_bytes(uri)
    except StorageError as error:
        raise ConfigError("<file>", str(error)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError("<file>", f"{uri} is not UTF-8 text (byte {error.start}: {error.reason}); save it "
                                    "as UTF-8") from None
    try:
        raw = _load_yaml(text, uri)
    except yaml.YAMLError as error:
        raise ConfigError("<file>", f"{uri} is not valid YAML: {error}") from None
    return parse_config(raw, source=uri)
