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

    name: ModelName = Field(description="the network: resnet50, resnet18, squeezenet1_1, nyu or small_cnn (the "
                                        "from-scratch baseline)")
    weights: str | None = Field(None, description="random-init:<seed>, torchvision:<arch>:<enum>, a path or s3:// "
                                                  "URI; None: torchvision's IMAGENET1K_V1 for the torchvision "
                                                  "networks, random-init:0 for small_cnn (nyu needs a file)")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$",
                               description="expected sha256 of the weights file (hex); None: not verified")
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

    name: str = Field(..., pattern=_NAME_PATTERN, max_length=40,
                      description="the stage's name, unique in the schedule and part of its run names")
    train: Literal["head", "all"] = Field("all", description="head: only the head trains, the rest frozen; all: "
                                                             "every parameter")
    size: int = Field(224, ge=16, le=4096, description="input size in pixels: ImageNet inputs size x size, NYU "
                                                       "windows scaled to size rows")
    epochs: int = Field(1, ge=1, le=10_000, description="epochs of the stage")
    lr: float = Field(1e-4, gt=0.0, le=10.0, description="learning rate of the stage's first epoch, cosine-decayed "
                                                         "over its epochs")
    batch_size: int | None = Field(None, ge=1, le=4096, description="images per training batch on each worker; "
                                                                    "None: finetune.batch_size")


class AugmentConfig(StrictModel):
    """Training-split augmentation (see `training.augment`)."""

    enabled: bool = Field(True, description="augment the training split (the validation split never is)")
    hflip: bool = Field(True, description="random horizontal flips (probability 0.5)")
    vflip: bool = Field(True, description="random vertical flips (probability 0.5)")
    degrees: float = Field(10.0, ge=0.0, le=180.0, description="rotation in degrees, drawn from [-degrees, degrees]")
    translate: float = Field(0.05, ge=0.0, lt=1.0, description="shift of up to this share of the image size on "
                                                               "each axis")
    scale: float = Field(0.1, ge=0.0, lt=1.0, description="isotropic zoom, drawn from [1 - scale, 1 + scale]")

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
    models: list[FinetuneModelConfig] = Field(default_factory=_default_models, min_length=1,
                                              description="the networks to fine-tune and the weights each starts from")
    tasks: list[Literal["binary", "birads"]] = Field(
        default_factory=lambda: ["binary", "birads"], min_length=1,
        description="binary (the manifest label) or birads (the BI-RADS category): each task a run of its own"
    )
    protocol: Literal["patient", "paper"] = Field(
        "patient", description="held-out split: patient (about val_fraction of the patients, all their images) "
                               "or paper (the paper's image-level split)")
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="held-out share: of the patients (patient) or of "
                                                                 "the images (paper)")
    seed: int = Field(0, ge=0, description="seed of the split, shuffling, augmentation, bootstrap, and of "
                                           "random-init weights that name none")
    stages: list[FinetuneStageConfig] = Field(default_factory=_default_stages, min_length=1,
                                              description="the schedule: stages run in order, progressive sizes")
    batch_size: int = Field(16, ge=1, le=4096, description="images per training batch on each worker, for stages "
                                                           "that set none")
    num_workers: int = Field(1, ge=1, le=4096, description="Ray Train workers")
    use_gpu: bool = Field(False, description="one GPU per Ray Train worker")
    cpus_per_worker: float = Field(1.0, ge=0.0, description="CPUs each training worker reserves")
    data_cpus: float = Field(1.0, gt=0.0, description="CPUs each preprocessing task reserves")
    torch_threads: int | None = Field(None, ge=1, description="None: the node's CPUs / the workers on it")
    mixed_precision: bool = Field(True, description="float16 autocast + GradScaler; only ever used on CUDA")
    class_weighted: bool = Field(True, description="weight the loss by class: n / (k * count) per class (sklearn's "
                                                   "balanced)")
    bootstrap: int = Field(1000, ge=0, le=100_000, description="patient resamples of each metric's interval; 0 = none")
    ci_level: float = Field(0.95, gt=0.0, lt=1.0, description="confidence level of each metric's interval")
    weight_decay: float = Field(1e-4, ge=0.0, description="AdamW weight decay")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="training-split augmentation: random "
                                                                              "flips and a small affine")
    crop_to_breast: bool = Field(True, description="ImageNet inputs: crop to the breast box before resizing")
    source_resolution: float | None = Field(
        None, gt=0.0, le=4.0, description="the images' resolution relative to a ~4000-row full-field mammogram; "
                                          "None: estimated per image from its height")
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
