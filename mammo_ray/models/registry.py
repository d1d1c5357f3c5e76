"""The weights registry (docs/design.md, "Weights registry"): for each weight file the product knows, its family and
architecture, file name, published sha256 where there is one, where to get it, its licence, what it was
pretrained on, its input convention and whether its checkpoint layout is confirmed. `mammo-ray weights list`
prints it; the study reads it to name each extractor's pretraining in the report and to refuse a test collection
an extractor was pretrained on.

Facts come from the design notes (docs/design.md, "Weights registry") and the models' public pages; an
entry whose layout could not be confirmed from public sources says so and loads only through the generic path
(an extractor by `architecture` with `checkpoint_key` / `key_prefix`), never through a loader of its own.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from mammo_ray.vocabulary import PRETRAINING_GROUPS

if TYPE_CHECKING:  # pragma: no cover - types only: models never import the config at run time
    from mammo_ray.config.sections import ExtractorConfig


@dataclass(frozen=True)
class Pretraining:
    """What weights were pretrained on: collections (the names the product's adapters give a dataset, lower
    case: `cmmd`, `vindr`, `inbreast`, ...; or a name of its own, e.g. `imagenet-1k`), modality, size, group."""

    collections: tuple[str, ...]
    modality: str
    size: str
    group: str  # one of vocabulary.PRETRAINING_GROUPS

    def __post_init__(self) -> None:
        if self.group not in PRETRAINING_GROUPS:
            raise ValueError(f"pretraining group {self.group!r}: one of {PRETRAINING_GROUPS}")


@dataclass(frozen=True)
class RegistryEntry:
    """One known weight file."""

    name: str
    family: str
    architecture: str
    extractors: str  # the config's names that load it (extractors, zero_shot, heatmaps), or how to load it
    file_name: str
    sha256: str | None
    source: str
    licence: str
    pretraining: Pretraining
    input: str
    layout: str  # "confirmed: ..." or "unconfirmed: ..." (then only the generic path loads it)


_NYU_SOURCE = "https://github.com/nyukat/breast_cancer_classifier (models/)"
_NYU_LICENCE = "AGPL-3.0 (the repository's; check its terms before clinical or commercial use)"
_NYU_DATA = Pretraining(("nyu-screening",), "mammography (screening, 4 views)", "about 230,000 exams, 1M images",
                        "mammography")
_NYU_WINDOW = "1 channel, NYU window (CC 2677 x 1942, MLO 2974 x 1748), standardised per window"
_IMAGENET = Pretraining(("imagenet-1k",), "natural images", "1.28M images, 1,000 classes", "natural images")
_TORCHVISION_LICENCE = "BSD-3-Clause (torchvision code); ImageNet-1k terms: non-commercial research (the data)"
_IMAGENET_INPUT = "3 channels, 224 x 224, ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225)"
_TORCHVISION_SOURCE = "https://download.pytorch.org/models/"
_MAMMO_CLIP_INPUT = ("3 channels (grey replicated), 1520 x 912 (aspect kept, zero-padded), mean 0.3089, std 0.2505 "
                     "(the intensity scaling before them unconfirmed; here: [0, 1] at the 99.9th percentile)")
_GENERIC_ONLY = "an extractor by architecture of your own (checkpoint_key, key_prefix)"

REGISTRY: tuple[RegistryEntry, ...] = (
    RegistryEntry("nyu-image-wise", "nyu", "NYU ResNet-22 image-wise", "nyu_lcc, nyu_avg, zero_shot.weights",
                  "ImageOnly__ModeImage_weights.p", None, _NYU_SOURCE, _NYU_LICENCE, _NYU_DATA, _NYU_WINDOW,
                  "confirmed: {'model': state dict}, four_view_resnet.{cc,mlo}.* (docs/design.md, 'NYU model')"),
    RegistryEntry("nyu-view-wise", "nyu", "NYU ResNet-22 view-wise", "finetune models nyu (view heads)",
                  "sample_image_model.p", None, _NYU_SOURCE,
                  _NYU_LICENCE, _NYU_DATA, _NYU_WINDOW, "confirmed: as nyu-image-wise, per-view trunk prefixes"),
    RegistryEntry("nyu-image-heatmaps", "nyu", "NYU ResNet-22 image-wise, image + 2 heatmaps",
                  "nyu_lcc_heatmaps, nyu_avg_heatmaps, zero_shot.heatmaps_weights",
                  "ImageHeatmaps__ModeImage_weights.p", None,
                  _NYU_SOURCE, _NYU_LICENCE, _NYU_DATA, "3 channels: the NYU window and its benign and malignant "
                  "heatmaps (not standardised)", "confirmed: nyu-image-wise's keys, first_conv with 3 channels"),
    RegistryEntry("nyu-patch", "nyu", "DenseNet-121 patch classifier, TensorFlow SAME padding", "heatmaps.weights",
                  "sample_patch_model.p", None, _NYU_SOURCE, _NYU_LICENCE,
                  Pretraining(("nyu-screening",), "mammography patches", "patches of the NYU screening dataset",
                              "mammography"),
                  "3 channels (grey replicated), 256 x 256 patches of the standardised crop",
                  "confirmed: a bare torchvision DenseNet-121 state dict, 4 classes"),
    *(RegistryEntry(f"torchvision:{arch}:{enum}", "imagenet", f"torchvision:{arch}", extractor, file_name, None,
                    _TORCHVISION_SOURCE + file_name, _TORCHVISION_LICENCE, _IMAGENET, _IMAGENET_INPUT,
                    "confirmed: torchvision's own state dict (its file name carries its sha256's first 8 digits)")
      for arch, enum, file_name, extractor in (
          ("resnet50", "IMAGENET1K_V1", "resnet50-0676ba61.pth", "imagenet_resnet50"),
          ("resnet50", "IMAGENET1K_V2", "resnet50-11ad3fa6.pth", "imagenet_resnet50"),
          ("resnet18", "IMAGENET1K_V1", "resnet18-f37072fd.pth", "imagenet_resnet18"),
          ("squeezenet1_1", "IMAGENET1K_V1", "squeezenet1_1-b8a52dc0.pth", "imagenet_squeezenet"))),
    RegistryEntry("mammo-clip-b5", "mammo-clip", "EfficientNet-B5 image encoder (tf_efficientnet_b5_ns-detect: "
                  "efficientnet_pytorch:efficientnet-b5), 2048-d", "mammo_clip_b5", "b5-model-best-epoch-7.tar", None,
                  "Hugging Face shawn24/Mammo-CLIP", "CC BY-NC-SA 4.0 (non-commercial)",
                  Pretraining(("upmc",), "mammography with radiology reports (CLIP)", "UPMC image-report pairs",
                              "mammography"),
                  _MAMMO_CLIP_INPUT, "confirmed: {'config', 'model'}; the encoder's keys under 'image_encoder.' in the "
                  "efficientnet_pytorch layout (_conv_stem, _bn0, _blocks.N, _conv_head, _bn1; no _fc), static TF "
                  "'same' padding at 456 px, average-pooled (Mammo-CLIP src/codebase/breastclip/model/modules)"),
    RegistryEntry("mammo-clip-b2", "mammo-clip", "EfficientNet-B2 image encoder (tf_efficientnetv2-detect: "
                  "efficientnet_pytorch:efficientnet-b2), 1408-d", "mammo_clip_b2", "b2-model-best-epoch-10.tar",
                  None, "Hugging Face shawn24/Mammo-CLIP", "CC BY-NC-SA 4.0 (non-commercial)",
                  Pretraining(("upmc", "vindr"), "mammography with radiology reports (CLIP)",
                              "UPMC image-report pairs; a variant adds VinDr-Mammo", "mammography"),
                  _MAMMO_CLIP_INPUT, "unconfirmed: the code maps the encoder name tf_efficientnetv2-detect to "
                  "efficientnet-b2 in the efficientnet_pytorch layout (as B5); that this release uses that name is "
                  "not confirmed: the strict load names any key that does not fit"),
    RegistryEntry("mammo-fm", "mammo-fm", "CLIP image encoder", _GENERIC_ONLY, "(two checkpoints, see the source)",
                  None,
                  "Hugging Face, batmanlab/Mammo-FM", "non-commercial academic licence",
                  Pretraining(("bu", "upmc", "embed", "mayo"), "mammography", "821,326 mammograms", "mammography"),
                  "unconfirmed", "unconfirmed: layout not confirmed from public sources; generic path only"),
    RegistryEntry("primer", "primer", "ResNet-50, 2048-d (SimCLR from RadImageNet)", _GENERIC_ONLY,
                  "(see the source)", None,
                  "Hugging Face Lab-Rasool/PRIMER", "Apache-2.0",
                  Pretraining(("cmmd",), "mammography", "CMMD (1,775 patients)", "mammography"),
                  "3 channels, 224 x 224 (unconfirmed)",
                  "unconfirmed: generic path only (architecture torchvision:resnet50 or timm:resnet50)"),
    RegistryEntry("radimagenet-resnet50", "radimagenet", "ResNet-50", _GENERIC_ONLY,
                  "RadImageNet-ResNet50 (see the source)", None,
                  "RadImageNet (radimagenet.com)", "RadImageNet terms (unconfirmed here)",
                  Pretraining(("radimagenet",), "CT, MR, ultrasound (no mammography)", "1.35M images",
                              "other medical"),
                  "3 channels, 224 x 224 (unconfirmed)", "unconfirmed: generic path only"),
)

_BY_NAME = {entry.name: entry for entry in REGISTRY}
_BY_FILE = {entry.file_name: entry for entry in REGISTRY if not entry.file_name.startswith("(")}
#: A named extractor by architecture (a preset) -> the entry of the weights it is for.
_BY_PRESET = {entry.extractors: entry for entry in REGISTRY if entry.family == "mammo-clip"}


def entry(name: str) -> RegistryEntry:
    """The entry of a registry name (KeyError naming the known ones)."""
    if name not in _BY_NAME:
        raise KeyError(f"unknown weights {name!r}; known: {sorted(_BY_NAME)}")
    return _BY_NAME[name]


def entry_for(weights: str) -> RegistryEntry | None:
    """The entry of a config's `weights` value: a torchvision spec, or a file (local or s3://) whose name is a
    known file's; None for random-init and for files the registry does not know."""
    if weights in _BY_NAME:
        return _BY_NAME[weights]
    return _BY_FILE.get(posixpath.basename(weights.rstrip("/")))


#: Pretraining of random-init weights, and of a file neither the registry nor the config describes.
NONE = Pretraining((), "none (random init)", "-", "none")
UNKNOWN = Pretraining((), "unknown", "-", "unknown")


def pretraining_of(extractor: ExtractorConfig) -> tuple[Pretraining, str]:
    """What an extractor's weights were pretrained on, and their licence: the config's statement, else the
    registry's entry for its weights (by file name, else by the preset it names), else none (random-init) or
    unknown."""
    known = entry_for(extractor.weights)
    if known is None and not extractor.weights.startswith("random-init"):
        known = _BY_PRESET.get(extractor.name)
    base = known.pretraining if known is not None else (
        NONE if extractor.weights.startswith("random-init") else UNKNOWN)
    licence = known.licence if known is not None else "-" if base is NONE else "unknown"
    if extractor.pretrained_on is None and extractor.pretraining_group is None:
        return base, licence
    stated = Pretraining(extractor.pretrained_on if extractor.pretrained_on is not None else base.collections,
                         "as the config states", "-", extractor.pretraining_group or base.group)
    return stated, licence


def rows() -> list[dict[str, str]]:
    """The registry as table rows (every field, pretraining spelled out), for `mammo-ray weights list`."""
    out = []
    for item in REGISTRY:
        row = {field.name: getattr(item, field.name) or "-" for field in fields(item) if field.name != "pretraining"}
        row.update(pretrained_on=", ".join(item.pretraining.collections), modality=item.pretraining.modality,
                   size=item.pretraining.size, group=item.pretraining.group)
        out.append(row)
    return out


def format_list() -> str:
    """`mammo-ray weights list`: one block per entry, every field on its own line."""
    blocks = []
    for row in rows():
        width = max(map(len, row))
        blocks.append("\n".join(f"{key.ljust(width)}  {value}" for key, value in row.items()))
    return "\n\n".join(blocks)
