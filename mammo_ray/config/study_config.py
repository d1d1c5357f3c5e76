"""The whole study config: every section, the checks across sections, and its hash."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import Field, ValidationError, model_validator

from mammo_ray.config.base import StrictModel, config_error
from mammo_ray.config.finetune import FinetuneConfig
from mammo_ray.config.grid import GridConfig
from mammo_ray.config.sections import (
    DataConfig,
    EmbedConfig,
    ExtractorConfig,
    IngestConfig,
    RayConfig,
    ReportConfig,
    StorageConfig,
    SyntheticSource,
    ZeroShotConfig,
)
from mammo_ray.errors import ConfigError


def _demo_finetune() -> FinetuneConfig:
    """Small enough for the embedded demo on a laptop: random-init resnet18 and the small CNN, 64 px."""
    return FinetuneConfig(
        models=[{"name": "resnet18", "weights": "random-init:0"}, {"name": "small_cnn"}],
        tasks=["binary"],
        stages=[{"name": "head", "train": "head", "size": 64, "epochs": 1, "lr": 1e-3},
                {"name": "all", "train": "all", "size": 64, "epochs": 2, "lr": 1e-4}],
    )


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
        raise config_error(error, source=source) from None

