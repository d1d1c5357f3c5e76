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
from mammo_ray.imaging.transforms import (
    HeatmapCropTransform,
    ImageNetTransform,
    ImageTransform,
    NYUHeatmapsTransform,
    NYUTransform,
)
from mammo_ray.models.generic import InputConvention
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
    "nyu_lcc_heatmaps": ("nyu_heatmaps", "lcc"),
    "nyu_avg_heatmaps": ("nyu_heatmaps", "avg"),
}
#: Input channels of the NYU model per family: the window alone, or with its benign and malignant heatmaps.
NYU_CHANNELS: dict[str, int] = {"nyu": 1, "nyu_heatmaps": 3}
#: Vector length of an ImageNet backbone (by member) and of an NYU extractor (by pool).
IMAGENET_DIMS: dict[str, int] = {"resnet50": 2048, "resnet18": 512, "squeezenet1_1": 512}
NYU_DIMS: dict[str, int] = {"global": 256, "4x4": 4096}


#: The family of an extractor by architecture: its input is the ImageNet-style square, with its own convention.
GENERIC = "architecture"


def family(extractor: ExtractorConfig) -> str:
    """'imagenet', 'nyu', 'nyu_heatmaps' (the image+heatmaps model) or 'architecture' (any torchvision or timm
    model by name)."""
    return GENERIC if extractor.architecture is not None else EXTRACTORS[extractor.name][0]


def member(extractor: ExtractorConfig) -> str:
    """The torchvision backbone ('resnet50', ...), the NYU extractor kind ('lcc', 'avg') or the architecture."""
    return extractor.architecture if extractor.architecture is not None else EXTRACTORS[extractor.name][1]


def dim(extractor: ExtractorConfig) -> int:
    """The length of the extractor's vectors."""
    if family(extractor) == GENERIC:
        from mammo_ray.models.generic import feature_dim  # builds the network on the meta device: torch, lazily

        return feature_dim(member(extractor), input_convention(extractor).channels)
    return IMAGENET_DIMS[member(extractor)] if family(extractor) == "imagenet" else NYU_DIMS[extractor.pool]


def input_convention(extractor: ExtractorConfig) -> InputConvention:
    """An extractor by architecture's input: the config's channels, mean and std, else the architecture's."""
    from mammo_ray.models.generic import input_convention as default  # timm's pretrained config: lazily

    assert extractor.architecture is not None
    stated = default(extractor.architecture, extractor.channels)
    return InputConvention(stated.channels, extractor.mean or stated.mean, extractor.std or stated.std)


def weights_spec(section: NYUInputConfig | HeatmapsConfig) -> WeightsSpec:
    """The weights of an extractor (with its checkpoint key), of the zero-shot model or of the patch classifier."""
    return WeightsSpec(section.weights, section.sha256, getattr(section, "checkpoint_key", None))


def zero_shot_heatmaps_weights(section: ZeroShotConfig) -> WeightsSpec:
    """The weights of the zero-shot image+heatmaps model (asked for: `heatmaps_weights` is set)."""
    if section.heatmaps_weights is None:
        raise ValueError("zero_shot.heatmaps_weights is not set: the image+heatmaps model is not asked for")
    return WeightsSpec(section.heatmaps_weights, section.heatmaps_sha256)


def heatmaps_input_id(heatmaps: ModelKey) -> str:
    """Names the heatmaps an image+heatmaps input reads: their model, weights and preprocessing."""
    return f"{heatmaps.model_id}@{heatmaps.weights_id}|{heatmaps.preprocess_id}"


def with_heatmaps(window: NYUTransform, heatmaps: ModelKey | None) -> NYUHeatmapsTransform:
    """The image+heatmaps model's inputs: `window` and the heatmaps of key `heatmaps` cut with it."""
    if heatmaps is None:
        raise ValueError("the image+heatmaps model's inputs need the heatmaps' key")
    return NYUHeatmapsTransform(window, heatmaps_input_id(heatmaps))


def nyu_transform(section: NYUInputConfig) -> NYUTransform:
    """Each image's own view window, `tta` augmented windows when tta > 0."""
    return NYUTransform(scale=section.nyu_scale, source_resolution=section.source_resolution, n_augment=section.tta)


def transform(extractor: ExtractorConfig, heatmaps: ModelKey | None = None) -> ImageTransform:
    """The extractor's inputs: its family's preprocessing with its settings (an image+heatmaps extractor's with
    the heatmaps of key `heatmaps`)."""
    if family(extractor) == "imagenet":
        return ImageNetTransform(size=extractor.input_size, source_resolution=extractor.source_resolution)
    if family(extractor) == GENERIC:
        convention = input_convention(extractor)
        return ImageNetTransform(size=extractor.input_size, source_resolution=extractor.source_resolution,
                                 channels=convention.channels, mean=convention.mean, std=convention.std,
                                 width=extractor.input_width)
    if family(extractor) == "nyu_heatmaps":
        return with_heatmaps(nyu_transform(extractor), heatmaps)
    return nyu_transform(extractor)


def _source(section: NYUInputConfig) -> str:
    return "auto" if section.source_resolution is None else repr(float(section.source_resolution))


def model_id(extractor: ExtractorConfig) -> str:
    """The extractor's identity: its name and every setting of its family that changes the vector."""
    if family(extractor) == "imagenet":
        return f"{extractor.name}:input_size={extractor.input_size}:source={_source(extractor)}"
    if family(extractor) == GENERIC:  # the input convention is in the preprocessing id
        return (f"{extractor.name}:arch={extractor.architecture}:input_size={extractor.input_size}"
                f":source={_source(extractor)}:checkpoint_key={extractor.checkpoint_key}"
                f":key_prefix={extractor.key_prefix}")
    return (f"{extractor.name}:pool={extractor.pool}:nyu_scale={extractor.nyu_scale!r}:source={_source(extractor)}"
            f":tta={extractor.tta}")


def preprocess_id(extractor: ExtractorConfig, heatmaps: ModelKey | None = None) -> str:
    """Names the preprocessing: any change to it gives new rows instead of mixing old and new."""
    pool = f":pool={extractor.pool}" if family(extractor) in NYU_CHANNELS else ""  # kept as stored ids had it
    return transform(extractor, heatmaps).id + pool


def zero_shot_model_id(section: ZeroShotConfig, with_heatmaps: bool = False) -> str:
    """The image-wise model's identity (image-only, or image+heatmaps): its preprocessing settings (the weights
    are keyed apart)."""
    model = "nyu_image_heatmaps_wise" if with_heatmaps else "nyu_image_wise"
    return f"{model}:nyu_scale={section.nyu_scale!r}:source={_source(section)}:tta={section.tta}"


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


def embedding_key(extractor: ExtractorConfig, read: IngestConfig, heatmaps: ModelKey | None = None) -> ModelKey:
    """The model key of an extractor's vectors (an image+heatmaps extractor's: on the heatmaps of key
    `heatmaps`)."""
    return model_key(model_id(extractor), weights_spec(extractor), preprocess_id(extractor, heatmaps), read,
                     transform(extractor, heatmaps).uses_orientation)


def zero_shot_key(section: ZeroShotConfig, read: IngestConfig) -> ModelKey:
    """The model key of the zero-shot probabilities."""
    return model_key(zero_shot_model_id(section), weights_spec(section), nyu_transform(section).id, read)


def zero_shot_heatmaps_key(section: ZeroShotConfig, read: IngestConfig, heatmaps: ModelKey) -> ModelKey:
    """The model key of the zero-shot image+heatmaps model's probabilities, on the heatmaps of key `heatmaps`."""
    return model_key(zero_shot_model_id(section, with_heatmaps=True), zero_shot_heatmaps_weights(section),
                     with_heatmaps(nyu_transform(section), heatmaps).id, read)
