"""The study config: typed (pydantic), loaded from YAML, every error names its key path.

Unknown keys are errors (a typo must not silently fall back to a default), and the whole file is
validated before any work starts. One type per section (`sections`), the type the stages take;
`StudyConfig` holds them and the checks across sections; `load_config` reads a file. Importing this
package imports no Ray.
"""

from mammo_ray.config.base import StrictModel
from mammo_ray.config.finetune import AugmentConfig, FinetuneConfig, FinetuneModelConfig, FinetuneStageConfig
from mammo_ray.config.grid import GridCell, GridConfig
from mammo_ray.config.loading import load_config
from mammo_ray.config.sections import (
    AdapterSource,
    DataConfig,
    EmbedConfig,
    ExtractorConfig,
    HeatmapsConfig,
    IngestConfig,
    NYUInputConfig,
    RayConfig,
    ReportConfig,
    ScoreConfig,
    StorageConfig,
    SyntheticSource,
    ZeroShotConfig,
)
from mammo_ray.config.study_config import StudyConfig, parse_config

__all__ = [
    "AdapterSource", "AugmentConfig", "DataConfig", "EmbedConfig", "ExtractorConfig", "FinetuneConfig",
    "FinetuneModelConfig", "FinetuneStageConfig", "GridCell", "GridConfig", "HeatmapsConfig", "IngestConfig",
    "NYUInputConfig", "RayConfig", "ReportConfig", "ScoreConfig", "StorageConfig", "StrictModel", "StudyConfig",
    "SyntheticSource", "ZeroShotConfig", "load_config", "parse_config",
]
