"""The sections of the study config: one pydantic type per section, the type the stages take.

Frozen and picklable: a section travels to Ray tasks and actors as it is. Each is validated in one
place (here) and never mirrored by a second class.
"""

from __future__ import annotations

import re
from typing import Any, Literal, get_args

from pydantic import Field, field_validator, model_validator

from mammo_ray.config.base import StrictModel
from mammo_ray.placement import NodeTypesMode
from mammo_ray.s3_settings import S3Config
from mammo_ray.vocabulary import PRETRAINING_GROUPS

#: A data source's name (a key of data.sources).
SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class SyntheticSource(StrictModel):
    """Generate the synthetic cohort (the embedded default: no data, no network); the same settings
    always write the same bytes (see `mammo_ray.datasets.synthetic`).

    `positive_fraction` is the share of breasts (= images = positive labels) with a suspicious finding,
    BI-RADS 4a..6 (0.25 is INbreast's share); pixel values lie in [1, 2**bits_stored - 2] inside the
    breast and are 0 outside; `transfer_syntax` is Explicit VR Little Endian, RLE Lossless or JPEG 2000 Lossless.
    """

    patients: int = Field(24, ge=1, le=100_000, description="patients in the synthetic cohort")
    seed: int = Field(0, ge=0, description="seed of the cohort: the same settings always write the same bytes")
    rows: int = Field(512, ge=64, le=8192, description="image height in pixels")
    columns: int | None = Field(None, ge=48, le=8192, description="None: round(0.8 * rows)")
    positive_fraction: float = Field(
        0.25, ge=0.0, le=1.0, description="share of breasts (= images = positive labels) with a suspicious finding, "
                                          "BI-RADS 4a..6 (0.25 is INbreast's share)")
    bits_stored: int = Field(14, ge=8, le=16, description="DICOM BitsStored: pixel values lie in "
                                                         "[1, 2**bits_stored - 2] inside the breast and are 0 outside")
    transfer_syntax: Literal["explicit", "rle", "jpeg2000"] = Field(
        "explicit", description="explicit (Explicit VR Little Endian), rle (RLE Lossless) or jpeg2000 "
                                "(JPEG 2000 Lossless)")
    # Another site's images: its vendor's presentation curve and its detector's noise (defaults: none).
    contrast: float = Field(1.0, ge=0.25, le=4.0, description="tissue values v -> max * (v / max) ** contrast")
    noise: float = Field(0.0, ge=0.0, le=0.2, description="added noise, sd as a share of the value range")


class AdapterSource(StrictModel):
    """Build the manifest with a dataset adapter (mammo_ray.datasets.adapters.ADAPTERS names them all)."""

    name: Literal["inbreast", "mias", "cbis_ddsm", "csv", "rsna", "vindr", "cmmd", "dicom_folder"] = Field(
        description="the dataset adapter that builds the manifest")
    args: dict[str, Any] = Field(
        default_factory=dict, description="the adapter's arguments by name (a missing or unknown one is refused); "
                                          "args.salt keys the pseudonymisation")
    # Paths -> pseudonymous locators (mammo_ray.privacy), keyed by `args.salt`; None: the adapter's default
    # (dicom_folder: yes, a hospital's export names folders after patients; the published collections: no).
    pseudonymise: bool | None = Field(
        None, description="replace every image path by a locator, pseudo://<dataset>/<16 hex><ext> (salted sha256 "
                          "of the path, keyed by args.salt); None: the adapter's default (true for dicom_folder, "
                          "else false)")
    # Where the manifest stage writes each locator's real path (CSV), for the user: outside the output.
    locations: str | None = Field(
        None, description="a CSV (image_id, locator, uri) the manifest stage writes: the only place the real paths "
                          "of a pseudonymised collection are written; refused inside the output; None: not written")


class DataSource(StrictModel):
    """Exactly one of: a synthetic cohort, an existing manifest (Parquet/CSV URI), a dataset adapter."""

    synthetic: SyntheticSource | None = Field(
        None, description="generate the synthetic cohort (under <output>/cohort); exactly one source is set")
    manifest: str | None = Field(None, description="URI of an existing manifest (Parquet or CSV)")
    adapter: AdapterSource | None = Field(None, description="build the manifest with a dataset adapter")

    @model_validator(mode="after")
    def _exactly_one_source(self) -> DataSource:
        chosen = [name for name in self._choices() if getattr(self, name) is not None]
        if len(chosen) != 1:
            raise ValueError(f"set exactly one of {', '.join(self._choices())} (got {chosen or 'none'})")
        return self

    @staticmethod
    def _choices() -> tuple[str, ...]:
        return ("synthetic", "manifest", "adapter")


class DataConfig(DataSource):
    """One source (synthetic, manifest or adapter), or `sources`: several named ones (sites, collections),
    each a source of its own. With sources, the manifest holds them all: `dataset` is the source's name and
    image, patient and exam ids are prefixed with it (`<source>/...`), so two sources never share an id; a
    source that names no site gets its name as `site`. grid.external evaluates across them."""

    sources: dict[str, DataSource] | None = Field(
        None, description="two or more named sources, {site_a: {synthetic or manifest or adapter: ...}, ...}: one "
                          "manifest of them all, dataset = the source, ids prefixed <source>/")

    @staticmethod
    def _choices() -> tuple[str, ...]:
        return ("synthetic", "manifest", "adapter", "sources")

    @model_validator(mode="after")
    def _source_names(self) -> DataConfig:
        # A name becomes a path part (cohort/<name>) and the prefix of every id: only letters, digits and
        # '_', '.', '-' (no separator, ':', '%', control character), starting with a letter or digit, no '..'.
        for name in self.sources or {}:
            if not SOURCE_NAME.fullmatch(name) or ".." in name:
                raise ValueError(f"data.sources: {name!r} is not a source name (letters, digits, '_', '.', '-', "
                                 "starting with a letter or digit, no '..')")
        if self.sources is not None and len(self.sources) < 2:
            raise ValueError("data.sources lists two or more sources (one source: use synthetic, manifest or "
                             "adapter)")
        return self


class StorageConfig(StrictModel):
    s3: S3Config = Field(
        default_factory=S3Config, description="where S3 lives (endpoint_url, region, anonymous); credentials only "
                                              "from the environment or an instance profile")


class RayConfig(StrictModel):
    address: str | None = Field(None, description="None: join a running cluster if there is one, else start local Ray")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray; None: all")
    node_types: NodeTypesMode = Field(
        "auto", description="auto: place work on its node type (mammo_ray.placement) when such nodes are alive; "
                            "required: always (worker types that scale from zero); off: anywhere")


#: 2 GiB: far above any mammogram (a full-field DICOM is 10-60 MB), far below what would exhaust a worker.
DEFAULT_MAX_BYTES = 2 * 1024**3


class IngestConfig(StrictModel):
    """How images are read and decoded, by every image stage (ingest, embed, zero-shot).

    `max_bytes`: files larger than this are errors rows, refused from their size before being read;
    `max_pixels`: the same for the pixel count in the image header, before decoding. `batch_size` images
    are decoded per task; the manifest goes to Ray in blocks of `rows_per_block` rows (None:
    `mammo_ray.image_stream.block_rows`).
    A DICOM whose Modality, SOP class or BodyPartExamined says it is no mammogram is an errors row
    (mammo_ray.imaging.modality); `allow_modalities`: extra Modality values accepted, for a collection whose
    headers are known to be wrong (the SOP class of such a file is then not judged; its body part is).
    """

    batch_size: int = Field(4, ge=1, le=1024, description="images decoded per task")
    rows_per_block: int | None = Field(None, ge=1, description="None: from the manifest and the cluster")
    apply_voi_lut: bool = Field(True, description="apply the DICOM VOI LUT / window")
    max_pixels: int = Field(120_000_000, ge=1, description="larger images (in pixels) are errors rows, refused from "
                                                           "their header before decoding")
    max_bytes: int = Field(DEFAULT_MAX_BYTES, ge=1, description="larger files are errors rows, refused unread")
    allow_modalities: tuple[str, ...] = Field((), description="Modality values accepted besides MG, e.g. [DX]")

    @field_validator("allow_modalities")
    @classmethod
    def _modality_codes(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        # DICOM code strings: upper case, digits, space, underscore, at most 16 characters. Sorted, so that
        # the stages' fingerprints do not depend on the order they are listed in.
        codes = sorted({value.strip().upper() for value in values})
        bad = [code for code in codes if not (code and len(code) <= 16 and code.isascii()
                                               and code.replace(" ", "").replace("_", "").isalnum())]
        if bad:
            raise ValueError(f"allow_modalities: {bad} are not DICOM Modality codes (e.g. DX, CR)")
        return tuple(codes)


#: The extractors a study may name (`mammo_ray.models.catalogue.EXTRACTORS` says what each one is).
ExtractorName = Literal["imagenet_resnet50", "imagenet_resnet18", "imagenet_squeezenet", "nyu_lcc", "nyu_avg",
                        "nyu_lcc_heatmaps", "nyu_avg_heatmaps"]

#: Extractors by architecture the product names (docs/design.md, "Extractors by architecture"): a published image
#: encoder's architecture, checkpoint layout and input convention, filled in where the config leaves them out.
#: The weights file stays the user's (`weights:`); the weights registry (`mammo-ray weights list`) says where each
#: comes from, its licence and what it was pretrained on.
_MAMMO_CLIP_INPUT: dict[str, Any] = {
    "checkpoint_key": "model", "key_prefix": "image_encoder.", "channels": 3, "mean": (0.3089,) * 3,
    "std": (0.2505,) * 3, "input_size": 1520, "input_width": 912}
ARCHITECTURE_PRESETS: dict[str, dict[str, Any]] = {
    "mammo_clip_b5": {"architecture": "efficientnet_pytorch:efficientnet-b5", **_MAMMO_CLIP_INPUT},
    "mammo_clip_b2": {"architecture": "efficientnet_pytorch:efficientnet-b2", **_MAMMO_CLIP_INPUT},
}


class NYUInputConfig(StrictModel):
    """The weights and the NYU input settings an extractor and the zero-shot model share (docs/design.md,
    "Preprocessing"): `nyu_scale` is the fraction of the native NYU window size (1.0 is the published
    2677x1942 / 2974x1748), `tta` the test-time augmented windows per image, averaged (0 = none), and
    `source_resolution` the input images' resolution relative to a full-field mammogram (1.0, ~4000 rows;
    the published crop and windows are defined there); None estimates it per image from its height.
    """

    weights: str = Field(
        "random-init:0", description="random-init:<seed>, torchvision:<arch>:<enum>, a path or s3:// URI"
    )
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$",
                               description="expected sha256 of the weights file (hex); None: not verified")
    nyu_scale: float = Field(0.25, gt=0.0, le=1.0, description="NYU window size as a fraction of the published "
                                                               "2677x1942 (CC) / 2974x1748 (MLO)")
    source_resolution: float | None = Field(
        None, gt=0.0, le=4.0, description="the images' resolution relative to a ~4000-row full-field mammogram (e.g. "
                                          "0.25 for a 4x downsampled export); None: estimated per image from its "
                                          "height")
    tta: int = Field(0, ge=0, le=64, description="test-time augmented NYU windows per image, averaged; 0: none")


class ExtractorConfig(NYUInputConfig):
    """One feature extractor (docs/design.md, "Extractors"): its weights and preprocessing.

    `input_size` applies to ImageNet extractors; `pool`, `nyu_scale` and `tta` to NYU ones;
    `source_resolution` to both. `nyu_lcc_heatmaps` / `nyu_avg_heatmaps` are the NYU extractors of the
    image+heatmaps model (weights: `ImageHeatmaps__ModeImage_weights.p`), whose inputs add the image's benign and
    malignant heatmaps (the `heatmaps` section, which must be enabled) cut with the image's window.
    """

    name: str = Field(description="one of ExtractorName or ARCHITECTURE_PRESETS, or a name of your own for an "
                                  "extractor by `architecture`")
    pool: Literal["global", "4x4"] = Field(
        "global", description="NYU extractors: global (average pooling, 256-d) or 4x4 (the paper's 4096-d vector)")
    input_size: int = Field(224, ge=32, le=2048, description="rows of an ImageNet-style input (and columns, unless "
                                                             "input_width)")
    input_width: int | None = Field(None, ge=32, le=2048, description="columns of a non-square input (extractors by "
                                                                      "architecture); None: square")
    # Any backbone by architecture (docs/design.md, "Extractors by architecture"): a torchvision classification
    # model or a timm model by name, its pooled penultimate features, with a weights file (.pth, .safetensors, or
    # a checkpoint dict: `checkpoint_key` names the sub-dict, `key_prefix` is stripped from its keys) and the
    # input convention (channels, mean, std of the [0, 1] intensities; None: the architecture's defaults).
    architecture: str | None = Field(None, pattern=r"^(torchvision|timm|efficientnet_pytorch):[A-Za-z0-9_.\-]+$",
                                     description="torchvision:<model>, timm:<model> or "
                                                 "efficientnet_pytorch:efficientnet-b<N>")
    checkpoint_key: str | None = Field(
        None, min_length=1, description="the sub-dict of a checkpoint dict holding the weights (dotted); None: the "
                                        "file's state dict, or the one under model or state_dict")
    key_prefix: str | None = Field(None, min_length=1, description="stripped from the weights' keys (keys without it "
                                                                   "are ignored); None: keys as they are")
    channels: int | None = Field(None, ge=1, le=4, description="input channels, the grey image replicated (timm "
                                                               "only; the others take 3); None: the architecture's")
    mean: tuple[float, ...] | None = Field(
        None, min_length=1, max_length=4, description="per-channel mean subtracted from the [0, 1] intensities; None: "
                                                      "the architecture's (timm's pretrained config, else ImageNet's)")
    std: tuple[float, ...] | None = Field(
        None, min_length=1, max_length=4, description="per-channel std the [0, 1] intensities are divided by; None: "
                                                      "the architecture's (timm's pretrained config, else ImageNet's)")
    # What the weights were pretrained on, for a file the weights registry does not know (or to correct it):
    # collection names as the adapters name them (cmmd, vindr, inbreast, ...) and the group the paper's first
    # question compares. A study whose data is among them is refused unless `pretraining_acknowledged`, and then
    # the report says its rows are not external.
    pretrained_on: tuple[str, ...] | None = Field(
        None, description="collections the weights were pretrained on, as the adapters name them (cmmd, vindr, "
                          "inbreast, ...); None: the weights registry's entry, else none (random-init) or unknown")
    pretraining_group: str | None = Field(
        None, description="pretraining group the paper's first question compares: mammography, other medical, "
                          "natural images, none or unknown; None: the weights registry's entry")
    pretraining_acknowledged: bool = Field(
        False, description="accept an extractor pretrained on a collection the study reads (else refused before any "
                           "work); the report then marks its rows as not external")

    @field_validator("pretrained_on")
    @classmethod
    def _collection_names(cls, values: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if values is None else tuple(sorted({value.strip().lower() for value in values}))

    @field_validator("pretraining_group")
    @classmethod
    def _known_group(cls, value: str | None) -> str | None:
        if value is not None and value not in PRETRAINING_GROUPS:
            raise ValueError(f"pretraining_group {value!r}: one of {list(PRETRAINING_GROUPS)}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        """A preset's settings, where the config does not state them."""
        if not isinstance(data, dict) or data.get("name") not in ARCHITECTURE_PRESETS:
            return data
        preset = ARCHITECTURE_PRESETS[data["name"]]
        if data.get("architecture") not in (None, preset["architecture"]):
            raise ValueError(f"extractor {data['name']!r} is {preset['architecture']}: an extractor of another "
                             "architecture takes a name of its own")
        return {**preset, **{key: value for key, value in data.items() if value is not None}}

    @model_validator(mode="after")
    def _named_by_catalogue_or_architecture(self) -> ExtractorConfig:
        known = get_args(ExtractorName)
        if self.architecture is None:
            if self.name not in known:
                raise ValueError(f"extractor {self.name!r}: not one of {list(known)}; an extractor of your own "
                                 "names its `architecture` (torchvision:<model> or timm:<model>)")
            generic = [field for field in ("checkpoint_key", "key_prefix", "channels", "mean", "std", "input_width")
                       if getattr(self, field) is not None]
            if generic:
                raise ValueError(f"extractor {self.name!r}: {generic} apply to extractors by `architecture` only")
            return self
        if self.name in known or not SOURCE_NAME.fullmatch(self.name) or ".." in self.name:  # presets pass
            raise ValueError(f"extractor {self.name!r} by architecture: give it a name of your own (letters, digits, "
                             f"'_', '.', '-'), not one of {list(known)}")
        if not self.architecture.startswith("timm:") and self.channels not in (None, 3):
            raise ValueError(f"extractor {self.name!r}: {self.architecture.split(':')[0]} models take 3 channels "
                             "(timm models take `channels`)")
        if self.std is not None and not all(value > 0 for value in self.std):
            raise ValueError(f"extractor {self.name!r}: std must be positive, got {self.std}")
        return self


def _default_extractors() -> list[ExtractorConfig]:
    return [ExtractorConfig(name=name) for name in ("imagenet_resnet50", "nyu_lcc", "nyu_avg")]


class EmbedConfig(StrictModel):
    """The extractors and the inference pool of the image pass (sized by `mammo_ray.stages.pass_plan`)."""

    extractors: list[ExtractorConfig] = Field(
        default_factory=_default_extractors, min_length=1,
        description="the feature extractors, names unique: built-in names, presets of published encoders, or any "
                    "backbone by architecture")
    batch_size: int = Field(8, ge=1, le=4096, description="images per inference batch (fixed)")
    max_actors: int | None = Field(
        None, ge=1, description="None: one per GPU, else one per torch_threads CPUs; never more than batches")
    num_gpus: float | None = Field(None, ge=0.0, description="per actor; None: 1 when the cluster has GPUs")
    torch_threads: int | None = Field(None, ge=1, le=1024, description="per CPU actor; None: 1")
    part_bytes: int = Field(
        128 * 2**20, ge=2**10,
        description="target size of a feature store's part files: the pass writes one per batch (a retried "
                    "batch replaces its own), then merges the small ones into files of about this size")

    @model_validator(mode="after")
    def _unique_names(self) -> EmbedConfig:
        # An extractor's name is its folder and its grid rows: two settings under one name would mix.
        names = [extractor.name for extractor in self.extractors]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"extractor names must be unique, {', '.join(repeated)} appear(s) more than once: "
                             "one name, one setting (run other settings in another study output)")
        return self


class ZeroShotConfig(NYUInputConfig):
    """Zero-shot NYU inference (Figure 3): the image-wise model's own benign/malignant heads.

    `weights`: `random-init:<seed>` or the published `ImageOnly__ModeImage_weights.p` (path or s3://),
    `sha256` its expected hash; the window settings as an NYU extractor's. `heatmaps_weights`: also run the
    image+heatmaps model (`random-init:<seed>` or `ImageHeatmaps__ModeImage_weights.p`) with the same windows, on
    the heatmaps of the `heatmaps` section (which must be enabled); None: the image-only model alone.
    """

    heatmaps_weights: str | None = Field(
        None, description="None, random-init:<seed>, or ImageHeatmaps__ModeImage_weights.p (path or s3://)")
    heatmaps_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$",
                                        description="expected sha256 of heatmaps_weights (hex); None: not verified")


class HeatmapsConfig(StrictModel):
    """The NYU patch classifier's benign and malignant heatmaps (docs/design.md, "Heatmaps"), an output of the
    image pass when `enabled`. `weights`: `random-init:<seed>` or the published `sample_patch_model.p` (path or
    s3://), `sha256` its expected hash. `stride`: pixels between patches (the published 70; a coarser stride
    costs fewer patches, about (70 / stride)^2 as many). `scale`: the crop's resolution relative to a
    full-field mammogram, where the classifier was trained (1.0; lower is a cheaper, coarser approximation).
    `batch_size`: patches per forward."""

    enabled: bool = Field(False, description="compute the benign and malignant heatmaps in the image pass (the "
                                             "image+heatmaps model needs them)")
    weights: str = Field("random-init:0", description="random-init:<seed>, or sample_patch_model.p (path or s3://)")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$",
                               description="expected sha256 of the weights file (hex); None: not verified")
    stride: int = Field(70, ge=8, le=256, description="pixels between 256 x 256 patches (the published 70); a "
                                                      "coarser stride costs about (70 / stride)^2 as many patches")
    scale: float = Field(1.0, gt=0.0, le=1.0, description="the crop's resolution relative to a full-field mammogram, "
                                                          "where the classifier was trained (lower: cheaper, coarser)")
    source_resolution: float | None = Field(
        None, gt=0.0, le=4.0, description="the images' resolution relative to a ~4000-row full-field mammogram; "
                                          "None: estimated per image from its height")
    batch_size: int = Field(32, ge=1, le=4096, description="patches per forward pass")
    figure_images: list[str] | None = Field(
        None, description="image ids of the report's Figure 2; None: the highest-BI-RADS image of each view; "
                          "[]: no figure (it shows the images' pixels)")


class ScoreConfig(StrictModel):
    """`mammo-ray score`: how a scoring run's breast and exam rows aggregate its image rows."""

    breast: Literal["mean", "max"] = Field(
        "mean", description="a breast's score and probability from its images': mean (as the grid's breast level) "
                            "or max")
    exam: Literal["max", "mean"] = Field(
        "max", description="an exam's score and probability from its breasts': max (as the grid's exam level) or mean")


class ReportConfig(StrictModel):
    published: str | None = Field(None, description="CSV of the paper's published values, printed beside the "
                                                     "study's (format: mammo_ray/report/published.py); None: none")
    contact_sheet: int | None = Field(
        64, ge=0, description="images on the preprocessing contact sheet (each one's NYU window and ImageNet input "
                              "as thumbnails, grouped by view and side), spread over the manifest; None: all; "
                              "0: no sheet (it shows the images' pixels)")

