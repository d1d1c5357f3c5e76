"""The study's feature extractors: a name -> its preprocessing (CPU tasks) and its model (actors).

`ExtractorSpec` is plain data: it travels to Ray tasks and actors, which build the heavy parts
(preprocessor, model, weights) themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mammo_ray.models.weights import WeightsSpec, resolve_weights

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from mammo_ray.imaging.imagenet import ImageNetPreprocess
    from mammo_ray.imaging.nyu import NYUPreprocess

#: name -> (family, member): ImageNet backbones by torchvision name, NYU extractors by kind.
EXTRACTORS: dict[str, tuple[str, str]] = {
    "imagenet_resnet50": ("imagenet", "resnet50"),
    "imagenet_resnet18": ("imagenet", "resnet18"),
    "imagenet_squeezenet": ("imagenet", "squeezenet1_1"),
    "nyu_lcc": ("nyu", "lcc"),
    "nyu_avg": ("nyu", "avg"),
}
_IMAGENET_DIMS = {"resnet50": 2048, "resnet18": 512, "squeezenet1_1": 512}
_NYU_DIMS = {"global": 256, "4x4": 4096}
#: Rows of a full-field digital mammogram (~4000 at 70-100 um): the resolution the published crop and
#: NYU windows are defined at. Used to estimate an input's resolution from its height.
FULL_FIELD_ROWS = 4000


def source_resolution_for(height: int, configured: float | None) -> float:
    """The configured source resolution, or one estimated from the image height (full field = 1.0)."""
    if configured is not None:
        return configured
    return min(1.0, max(height, 1) / FULL_FIELD_ROWS)


@dataclass(frozen=True)
class ExtractorSpec:
    """One extractor of the study, as the config names it.

    `input_size` applies to ImageNet extractors; `pool`, `nyu_scale` (fraction of the native NYU window
    size: 1.0 is the published 2677x1942 / 2974x1748) and `tta` (test-time augmented windows, averaged;
    0 = none) to NYU ones. `source_resolution` is the input images' resolution relative to a full-field
    mammogram (1.0, ~4000 rows; the published crop and windows are defined there); None estimates it
    per image from its height.
    """

    name: str
    weights: str = "random-init:0"
    sha256: str | None = None
    pool: str = "global"
    input_size: int = 224
    nyu_scale: float = 0.25
    source_resolution: float | None = None
    tta: int = 0

    def __post_init__(self) -> None:
        if self.name not in EXTRACTORS:
            raise ValueError(f"unknown extractor {self.name!r} (known: {', '.join(EXTRACTORS)})")
        if self.pool not in _NYU_DIMS:
            raise ValueError(f"unknown pool {self.pool!r} (use 'global' or '4x4')")

    @property
    def family(self) -> str:
        return EXTRACTORS[self.name][0]

    @property
    def member(self) -> str:
        return EXTRACTORS[self.name][1]

    @property
    def dim(self) -> int:
        return _IMAGENET_DIMS[self.member] if self.family == "imagenet" else _NYU_DIMS[self.pool]

    @property
    def weights_spec(self) -> WeightsSpec:
        return WeightsSpec(self.weights, self.sha256)

    def resolution_for(self, height: int) -> float:
        return source_resolution_for(height, self.source_resolution)

    def preprocessor(self, source_resolution: float = 1.0) -> ImageNetPreprocess | NYUPreprocess:
        if self.family == "imagenet":
            from mammo_ray.imaging.imagenet import ImageNetPreprocess

            return ImageNetPreprocess(size=self.input_size, source_resolution=source_resolution)
        from mammo_ray.imaging.nyu import NYUPreprocess

        return NYUPreprocess(scale=self.nyu_scale, source_resolution=source_resolution, n_augment=self.tta)

    @property
    def model_id(self) -> str:
        """The extractor's identity: its name and every setting of its family that changes the vector."""
        source = "auto" if self.source_resolution is None else repr(float(self.source_resolution))
        if self.family == "imagenet":
            return f"{self.name}:input_size={self.input_size}:source={source}"
        return f"{self.name}:pool={self.pool}:nyu_scale={self.nyu_scale!r}:source={source}:tta={self.tta}"

    @property
    def preprocess_id(self) -> str:
        """Names the preprocessing: any change to it gives new rows instead of mixing old and new."""
        resolution = self.source_resolution if self.source_resolution is not None else 1.0
        suffix = ":source=auto" if self.source_resolution is None else ""
        if self.family == "nyu":
            suffix += f":pool={self.pool}"
        return self.preprocessor(resolution).id + suffix


class LoadedExtractor:
    """The model of an extractor with its weights, ready for inference: (B, C, H, W) -> (B, dim)."""

    def __init__(self, spec: ExtractorSpec) -> None:
        resolved = resolve_weights(spec.weights_spec)
        self.spec = spec
        self.weights_id = resolved.weights_id
        if spec.family == "imagenet":
            from mammo_ray.models.backbones import build_feature_extractor

            self.module, _ = build_feature_extractor(
                spec.member, resolved.state_dict, seed=resolved.seed, source=resolved.source
            )
        else:
            from mammo_ray.models.nyu import build_nyu_model

            self.module = build_nyu_model(resolved.state_dict, seed=resolved.seed, source=resolved.source)

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.spec.family == "imagenet":
            return self.module(inputs)
        return self.module.extract(inputs, self.spec.member, self.spec.pool)
