"""The fine-tuning section of the study config: which networks, from which weights, on which tasks, through
which schedule of stages, on how many Ray Train workers."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mammo_ray.config.base import StrictModel

ModelName = Literal["resnet50", "resnet18", "squeezenet1_1", "nyu", "small_cnn"]
#: Weights used when a model entry gives none. NYU weights are a file only the user can point to.
DEFAULT_WEIGHTS: dict[str, str | None] = {
    "resnet50": "torchvision:resnet50:IMAGENET1K_V1",
    "resnet18": "torchvision:resnet18:IMAGENET1K_V1",
    "squeezenet1_1": "torchvision:squeezenet1_1:IMAGENET1K_V1",
    "nyu": None,
    "small_cnn": "random-init:0",
}
_NAME_PATTERN = r"^[A-Za-z0-9_.]+(?:-[A-Za-z0-9_.]+)*$"


NYUView = Literal["l_cc", "r_cc", "l_mlo", "r_mlo"]


class FinetuneModelConfig(StrictModel):
    """One network to fine-tune and the weights it starts from (`random-init:<seed>` = from scratch).

    `view` (NYU only): which of the NYU model's four view heads fine-tuning starts from: its trunk (CC or
    MLO) and its fc1, with every image shown in that view's input window (the paper fine-tunes from the
    L-MLO and the R-CC head). Two entries of one NYU model with different views are two runs."""

    name: ModelName
    weights: str | None = Field(None, description="None: the default (ImageNet for torchvision models)")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    view: NYUView | None = Field(None, description="NYU only; None: l_cc")

    @model_validator(mode="after")
    def _small_cnn_from_scratch(self) -> FinetuneModelConfig:
        scratch = self.weights is None or self.weights.startswith("random-init")
        if self.name == "small_cnn" and not scratch:
            raise ValueError("small_cnn is the from-scratch baseline: its weights must be random-init:<seed>")
        if self.view is not None and self.name != "nyu":
            raise ValueError(f"view {self.view!r} is a NYU view head; {self.name} has none")
        return self

    @property
    def variant(self) -> str:
        """What tells two runs of one model apart in every output row: the NYU view head, else ''."""
        return (self.view or "l_cc") if self.name == "nyu" else ""


class FinetuneStageConfig(StrictModel):
    """One stage of the schedule: which parameters train, at which input size, for how long."""

    name: str = Field(..., pattern=_NAME_PATTERN, max_length=40)
    train: Literal["head", "all"] = "all"
    size: int = Field(224, ge=16, le=4096)
    epochs: int = Field(1, ge=1, le=10_000)
    lr: float = Field(1e-4, gt=0.0, le=10.0)
    batch_size: int | None = Field(None, ge=1, le=4096)


class AugmentConfig(StrictModel):
    """Training-split augmentation (see `training.augment`)."""

    enabled: bool = True
    hflip: bool = True
    vflip: bool = True
    degrees: float = Field(10.0, ge=0.0, le=180.0)
    translate: float = Field(0.05, ge=0.0, lt=1.0)
    scale: float = Field(0.1, ge=0.0, lt=1.0)

    @property
    def is_identity(self) -> bool:
        """True when no sample would change: disabled, or every transform switched off."""
        return not self.enabled or not (self.hflip or self.vflip or self.degrees or self.translate or self.scale)


def _default_models() -> list[FinetuneModelConfig]:
    return [FinetuneModelConfig(name="resnet50"), FinetuneModelConfig(name="small_cnn")]


def _default_stages() -> list[FinetuneStageConfig]:
    return [
        FinetuneStageConfig(name="head", train="head", size=224, epochs=2, lr=1e-3),
        FinetuneStageConfig(name="all", train="all", size=224, epochs=4, lr=1e-4),
        FinetuneStageConfig(name="all-448", train="all", size=448, epochs=2, lr=5e-5),
    ]


class FinetuneConfig(StrictModel):
    """The fine-tuning stage's settings (one section of the study config)."""

    name: str = Field("finetune", pattern=_NAME_PATTERN, max_length=60,
                      description="run-name prefix: the same name resumes")
    models: list[FinetuneModelConfig] = Field(default_factory=_default_models, min_length=1)
    tasks: list[Literal["binary", "birads"]] = Field(
        default_factory=lambda: ["binary", "birads"], min_length=1
    )
    protocol: Literal["patient", "paper"] = "patient"
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    seed: int = Field(0, ge=0)
    stages: list[FinetuneStageConfig] = Field(default_factory=_default_stages, min_length=1)
    batch_size: int = Field(16, ge=1, le=4096)
    num_workers: int = Field(1, ge=1, le=4096)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, ge=0.0, description="CPUs each training worker reserves")
    data_cpus: float = Field(1.0, gt=0.0, description="CPUs each preprocessing task reserves")
    torch_threads: int | None = Field(None, ge=1, description="None: the node's CPUs / the workers on it")
    mixed_precision: bool = Field(True, description="float16 autocast + GradScaler; only ever used on CUDA")
    class_weighted: bool = True
    bootstrap: int = Field(1000, ge=0, le=100_000, description="patient resamples of each metric's interval; 0 = none")
    ci_level: float = Field(0.95, gt=0.0, lt=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    crop_to_breast: bool = True
    source_resolution: float | None = Field(None, gt=0.0, le=4.0)
    checkpoint_path: str | None = Field(None, description="None: <output>/checkpoints")
    keep_checkpoints: int | None = Field(2, ge=1, description="per run; None keeps every epoch's")
    max_failures: int = Field(2, ge=0, le=100, description="worker-group restarts from the latest checkpoint")
    cache_inputs: bool = Field(False, description="materialise each stage's inputs in the object store first")

    @model_validator(mode="after")
    def _unique(self) -> FinetuneConfig:
        names = [stage.name for stage in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks must be unique, got {self.tasks}")
        return self
