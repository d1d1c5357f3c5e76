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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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


def load_config(uri: str | Path) -> StudyConfig:
    """Load a study config from a YAML file (local path or s3://)."""
    uri = str(uri)
    try:
        text = storage.read_bytes(uri).decode("utf-8")
    except StorageError as error:
        raise ConfigError("<file>", str(error)) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError("<file>", f"{uri} is not valid YAML: {error}") from None
    return parse_config(raw, source=uri)
