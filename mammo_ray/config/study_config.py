"""The whole study config: every section, and the checks across sections."""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError, model_validator

from mammo_ray.config import sections
from mammo_ray.config.base import StrictModel, config_error
from mammo_ray.config.finetune import FinetuneConfig
from mammo_ray.config.grid import GridConfig, combinations
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
    name: str = Field("study", min_length=1, description="study name")
    output: str = Field("output/study", description="output folder URI (local or s3://)")
    data: sections.DataConfig = Field(default_factory=lambda: sections.DataConfig(synthetic=sections.SyntheticSource()),
                                      description="where the images come from: exactly one of synthetic, manifest, "
                                                  "adapter, sources")
    storage: sections.StorageConfig = Field(default_factory=sections.StorageConfig,
                                            description="storage settings: where S3 lives")
    ray: sections.RayConfig = Field(default_factory=sections.RayConfig,
                                    description="the Ray cluster and where each kind of work runs on it")
    ingest: sections.IngestConfig = Field(default_factory=sections.IngestConfig,
                                          description="how images are read and decoded, by every image stage")
    embed: sections.EmbedConfig = Field(default_factory=sections.EmbedConfig,
                                        description="the feature extractors and the inference pool of the image pass")
    zero_shot: sections.ZeroShotConfig = Field(
        default_factory=sections.ZeroShotConfig,
        description="zero-shot NYU inference (Figure 3): the image-wise model's own benign/malignant heads")
    heatmaps: sections.HeatmapsConfig = Field(
        default_factory=sections.HeatmapsConfig,
        description="the NYU patch classifier's benign and malignant heatmaps, an output of the image pass")
    grid: GridConfig = Field(default_factory=GridConfig, description="the classifier grid: its axes and every "
                                                                     "setting a cell depends on")
    finetune: FinetuneConfig = Field(default_factory=_demo_finetune,
                                     description="fine-tuning: networks, weights, tasks, the schedule of stages, "
                                                 "Ray Train workers")
    score: sections.ScoreConfig = Field(default_factory=sections.ScoreConfig,
                                        description="mammo-ray score: how breast and exam rows aggregate images")
    report: sections.ReportConfig = Field(default_factory=sections.ReportConfig,
                                          description="the report: published values and the contact sheet")

    @model_validator(mode="after")
    def _grid_extractors_are_configured(self) -> StudyConfig:
        configured = {extractor.name for extractor in self.embed.extractors}
        unknown = [name for name in (self.grid.extractors or []) if name not in configured]
        if unknown:
            raise ValueError(f"grid.extractors {unknown} are not in embed.extractors ({sorted(configured)}): the "
                             "grid runs on the embeddings this config makes")
        grid_names = [extractor.name for extractor in self.grid_extractors]
        for members in self.grid.combined or []:
            missing = [name for name in members if name not in grid_names]
            if missing:
                raise ValueError(f"grid.combined {members}: {missing} not among the grid's extractors {grid_names}")
        known = grid_names + ["+".join(members) for members in combinations(self.grid, grid_names)]
        for a, b in self.grid.comparisons or []:
            if not {a, b} <= set(known):
                raise ValueError(f"grid.comparisons ({a}, {b}): not among the grid's extractors and combinations "
                                 f"{known}")
        return self

    @model_validator(mode="after")
    def _heatmaps_for_their_models(self) -> StudyConfig:
        needing = [f"embed.extractors: {e.name}" for e in self.embed.extractors
                   if e.architecture is None and e.name.endswith("_heatmaps")]
        if self.zero_shot.heatmaps_weights is not None:
            needing.append("zero_shot.heatmaps_weights")
        if needing and not self.heatmaps.enabled:
            raise ValueError(f"{', '.join(needing)}: the image+heatmaps model reads the heatmaps; set "
                             "heatmaps.enabled: true")
        return self

    @model_validator(mode="after")
    def _external_sources_exist(self) -> StudyConfig:
        names = sorted(self.data.sources or {})
        for pair in self.grid.external:
            unknown = [name for name in (pair.train, pair.test) if name not in names]
            if unknown:
                raise ValueError(f"grid.external ({pair.train} -> {pair.test}): {unknown} not in data.sources "
                                 f"({names or 'none: external validation needs data.sources'})")
        return self

    @property
    def grid_extractors(self) -> list[sections.ExtractorConfig]:
        """The extractors the grid runs on: grid.extractors by name, else every configured one."""
        names = self.grid.extractors
        return [e for e in self.embed.extractors if names is None or e.name in names]



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

