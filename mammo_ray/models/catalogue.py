"""What each network of a study is (docs/design.md, "Extractors"): the extractor catalogue (family, member,
dimension per name), and from a config section its weights spec, its inputs' transform and the ids that
key its outputs (docs/design.md, "Feature stores").

The sections are plain validated data (`mammo_ray.config`); this module reads them and never validates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mammo_ray.feature_store import ModelKey
from mammo_ray.imaging.decode import decode_id
from mammo_ray.imaging.nyu import NYU_WINDOWS
from mammo_ray.imaging.transforms import HeatmapCropTransform, ImageNetTransform, ImageTransform, NYUTransform
from mammo_ray.models.weights import WeightsSpec
from mammo_ray.models.weights_resolver import weights_id

if TYPE_CHECKING:  # pragma: no cover - types only: the config sits above models, which never import it
    from mammo_ray.config.finetune import FinetuneConfig
    from mammo_ray.config.sections import (
        ExtractorConfig,
        HeatmapsConfig,
        IngestConfig,
        NYUInputConfig,
        ZeroShotConfig,
    )

#: Extractor name -> (family, member): ImageNet backbones by torchvision name, NYU extractors by kind. The
#: config's `ExtractorName` lists the same names.
EXTRACTORS: dict[str, tuple[str, str]] = {
    "imagenet_resnet50": ("imagenet", "resnet50"),
    "imagenet_resnet18": ("imagenet", "resnet18"),
    "imagenet_squeezenet": ("imagenet", "squeezenet1_1"),
    "nyu_lcc": ("nyu", "lcc"),
    "nyu_avg": ("nyu", "avg"),
}
#: Vector length of an ImageNet backbone (by member) and of an NYU extractor (by pool).
IMAGENET_DIMS: dict[str, int] = {"resnet50": 2048, "resnet18": 512, "squeezenet1_1": 512}
NYU_DIMS: dict[str, int] = {"global": 256, "4x4": 4096}


def family(extractor: ExtractorConfig) -> str:
    """'imagenet' or 'nyu'."""
    return EXTRACTORS[extractor.name][0]


def member(extractor: ExtractorConfig) -> str:
    """The torchvision backbone ('resnet50', ...) or the NYU extractor kind ('lcc', 'avg')."""
    return EXTRACTORS[extractor.name][1]


def dim(extractor: ExtractorConfig) -> int:
    """The length of the extractor's vectors."""
    return IMAGENET_DIMS[member(extractor)] if family(extractor) == "imagenet" else NYU_DIMS[extractor.pool]


def weights_spec(section: NYUInputConfig | HeatmapsConfig) -> WeightsSpec:
    """The weights of an extractor, of the zero-shot model or of the patch classifier."""
    return WeightsSpec(section.weights, section.sha256)


def nyu_transform(section: NYUInputConfig) -> NYUTransform:
    """Each image's own view window, `tta` augmented windows when tta > 0."""
    return NYUTransform(scale=section.nyu_scale, source_resolution=section.source_resolution, n_augment=section.tta)


def transform(extractor: ExtractorConfig) -> ImageTransform:
    """The extractor's inputs: its family's preprocessing with its settings."""
    if family(extractor) == "imagenet":
        return ImageNetTransform(size=extractor.input_size, source_resolution=extractor.source_resolution)
    return nyu_transform(extractor)


def _source(section: NYUInputConfig) -> str:
    return "auto" if section.source_resolution is None else repr(float(section.source_resolution))


def model_id(extractor: ExtractorConfig) -> str:
    """The extractor's identity: its name and every setting of its family that changes the vector."""
    if family(extractor) == "imagenet":
        return f"{extractor.name}:input_size={extractor.input_size}:source={_source(extractor)}"
    return (f"{extractor.name}:pool={extractor.pool}:nyu_scale={extractor.nyu_scale!r}:source={_source(extractor)}"
            f":tta={extractor.tta}")


def preprocess_id(extractor: ExtractorConfig) -> str:
    """Names the preprocessing: any change to it gives new rows instead of mixing old and new."""
    pool = f":pool={extractor.pool}" if family(extractor) == "nyu" else ""  # kept so stored ids stay as they were
    return transform(extractor).id + pool


def zero_shot_model_id(section: ZeroShotConfig) -> str:
    """The image-wise model's identity: its preprocessing settings (the weights are keyed apart)."""
    return f"nyu_image_wise:nyu_scale={section.nyu_scale!r}:source={_source(section)}:tta={section.tta}"


def heatmaps_transform(section: HeatmapsConfig) -> HeatmapCropTransform:
    """The patch classifier's input: the standardised breast crop at the section's scale."""
    return HeatmapCropTransform(scale=section.scale, source_resolution=section.source_resolution)


def heatmaps_model_id(section: HeatmapsConfig) -> str:
    """The patch classifier's identity: the stride changes which patches it sees (the crop is keyed apart)."""
    return f"nyu_patch:stride={section.stride}"


def heatmaps_key(section: HeatmapsConfig, read: IngestConfig) -> ModelKey:
    """The model key of the heatmaps."""
    transform = heatmaps_transform(section)
    return model_key(heatmaps_model_id(section), weights_spec(section), transform.id, read, transform.uses_orientation)


def finetune_transform(config: FinetuneConfig, input_family: str, size: int, variant: str = "") -> ImageTransform:
    """The inputs of one fine-tuning stage: ImageNet's at size x size, or the window of the NYU view head
    `variant` (CC for l_cc / r_cc, MLO for l_mlo / r_mlo) scaled to `size` rows."""
    if input_family == "imagenet":
        return ImageNetTransform(size=size, crop_to_breast=config.crop_to_breast,
                                 source_resolution=config.source_resolution)
    window = "MLO" if variant.endswith("mlo") else "CC"
    return NYUTransform(scale=size / NYU_WINDOWS[window][0], source_resolution=config.source_resolution, view=window)


def model_key(model_id: str, weights: WeightsSpec, preprocess_id: str, read: IngestConfig,
              orientation: bool = True) -> ModelKey:
    """What a model output depends on besides the images: the model, its weights (hashed, never unpickled,
    here), its preprocessing with the decode settings, and whether the orientation hints change its inputs."""
    return ModelKey(model_id=model_id, weights_id=weights_id(weights),
                    preprocess_id=f"{preprocess_id}|{decode_id(read.apply_voi_lut)}", orientation=orientation)


def embedding_key(extractor: ExtractorConfig, read: IngestConfig) -> ModelKey:
    """The model key of an extractor's vectors."""
    return model_key(model_id(extractor), weights_spec(extractor), preprocess_id(extractor), read,
                     transform(extractor).uses_orientation)


def zero_shot_key(section: ZeroShotConfig, read: IngestConfig) -> ModelKey:
    """The model key of the zero-shot probabilities."""
    return model_key(zero_shot_model_id(section), weights_spec(section), nyu_transform(section).id, read)
