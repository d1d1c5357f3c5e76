"""The sections of the study config: one pydantic type per section, the type the stages take.

Frozen and picklable: a section travels to Ray tasks and actors as it is. Each is validated in one
place (here) and never mirrored by a second class.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from mammo_ray.config.base import StrictModel
from mammo_ray.placement import NodeTypesMode

if TYPE_CHECKING:  # pragma: no cover
    from mammo_ray.imaging.transforms import ImageTransform, NYUTransform
    from mammo_ray.models.weights import WeightsSpec


#: A data source's name (a key of data.sources).
SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
#: Physical height of a synthetic image: pixel spacing = SYNTHETIC_HEIGHT_MM / rows.
SYNTHETIC_HEIGHT_MM = 300.0


class SyntheticSource(StrictModel):
    """Generate the synthetic cohort (the embedded default: no data, no network); the same settings
    always write the same bytes (see `mammo_ray.datasets.synthetic`).

    `positive_fraction` is the share of breasts (= images = positive labels) with a suspicious finding,
    BI-RADS 4a..6 (0.25 is INbreast's share); pixel values lie in [1, 2**bits_stored - 2] inside the
    breast and are 0 outside; `transfer_syntax` is Explicit VR Little Endian, RLE Lossless or JPEG 2000 Lossless.
    """

    patients: int = Field(24, ge=1, le=100_000)
    seed: int = Field(0, ge=0)
    rows: int = Field(512, ge=64, le=8192)
    columns: int | None = Field(None, ge=48, le=8192, description="None: round(0.8 * rows)")
    positive_fraction: float = Field(0.25, ge=0.0, le=1.0)
    bits_stored: int = Field(14, ge=8, le=16)
    transfer_syntax: Literal["explicit", "rle", "jpeg2000"] = "explicit"
    # Another site's images: its vendor's presentation curve and its detector's noise (defaults: none).
    contrast: float = Field(1.0, ge=0.25, le=4.0, description="tissue values v -> max * (v / max) ** contrast")
    noise: float = Field(0.0, ge=0.0, le=0.2, description="added noise, sd as a share of the value range")

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of every image."""
        return self.rows, (self.columns if self.columns is not None else round(0.8 * self.rows))

    @property
    def max_value(self) -> int:
        """Largest representable pixel value, 2**bits_stored - 1 (never reached by tissue)."""
        return (1 << self.bits_stored) - 1

    @property
    def pixel_spacing_mm(self) -> float:
        """Square pixel spacing in mm: the image is SYNTHETIC_HEIGHT_MM tall (a 24 x 30 cm detector)."""
        return SYNTHETIC_HEIGHT_MM / self.rows


class AdapterSource(StrictModel):
    """Build the manifest with a dataset adapter (mammo_ray.datasets.adapters.ADAPTERS names them all)."""

    name: Literal["inbreast", "mias", "cbis_ddsm", "csv", "rsna", "vindr", "cmmd", "dicom_folder"]
    args: dict[str, Any] = Field(default_factory=dict)
    # Paths -> pseudonymous locators (mammo_ray.privacy), keyed by `args.salt`; None: the adapter's default
    # (dicom_folder: yes, a hospital's export names folders after patients; the published collections: no).
    pseudonymise: bool | None = None
    # Where the manifest stage writes each locator's real path (CSV), for the user: outside the output.
    locations: str | None = None


class DataSource(StrictModel):
    """Exactly one of: a synthetic cohort, an existing manifest (Parquet/CSV URI), a dataset adapter."""

    synthetic: SyntheticSource | None = None
    manifest: str | None = None
    adapter: AdapterSource | None = None

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

    sources: dict[str, DataSource] | None = None

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


class S3Config(StrictModel):
    """Where S3 lives, when not in the AWS variables. Credentials never go here: environment or profile.
    None fields fall back to the environment (AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, AWS_REGION /
    AWS_DEFAULT_REGION), then to the AWS defaults; `anonymous` reads public buckets unsigned."""

    endpoint_url: str | None = None
    region: str | None = None
    anonymous: bool = False

    @classmethod
    def from_env(cls) -> S3Config:
        return cls(
            endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None,
            region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None,
        )

    def merged_with_env(self) -> S3Config:
        env = S3Config.from_env()
        return S3Config(endpoint_url=self.endpoint_url or env.endpoint_url, region=self.region or env.region,
                        anonymous=self.anonymous)


class StorageConfig(StrictModel):
    s3: S3Config = Field(default_factory=S3Config)


class RayConfig(StrictModel):
    address: str | None = Field(None, description="None: join a running cluster if there is one, else start local Ray")
    num_cpus: int | None = Field(None, ge=1)
    node_types: NodeTypesMode = Field(
        "auto", description="auto: place work on its node type (mammo_ray.placement) when such nodes are alive; "
                            "required: always (worker types that scale from zero); off: anywhere")


#: 2 GiB: far above any mammogram (a full-field DICOM is 10-60 MB), far below what would exhaust a worker.
DEFAULT_MAX_BYTES = 2 * 1024**3


class IngestConfig(StrictModel):
    """How images are read and decoded, by every image stage (ingest, embed, zero-shot).

    `max_bytes`: files larger than this are errors rows, refused from their size before being read;
    `max_pixels`: the same for the pixel count in the image header, before decoding. `batch_size` images
    are decoded per task; the manifest goes to Ray in blocks of `rows_per_block` rows (None: `block_rows`).
    A DICOM whose Modality, SOP class or BodyPartExamined says it is no mammogram is an errors row
    (mammo_ray.imaging.modality); `allow_modalities`: extra Modality values accepted, for a collection whose
    headers are known to be wrong (the SOP class of such a file is then not judged; its body part is).
    """

    batch_size: int = Field(4, ge=1, le=1024)
    rows_per_block: int | None = Field(None, ge=1, description="None: from the manifest and the cluster")
    apply_voi_lut: bool = True
    max_pixels: int = Field(120_000_000, ge=1)
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

    @property
    def allowed_modalities(self) -> tuple[str, ...]:
        """Every Modality value read as a mammogram: MG and `allow_modalities`."""
        return ("MG", *(code for code in self.allow_modalities if code != "MG"))

    def block_rows(self, images: int, cpus: float) -> int:
        """Manifest rows per Ray block: `rows_per_block`, else about four blocks per CPU (the pass's last
        blocks then keep every CPU busy), between 16 and 256 rows. Each block costs Ray Data a task or an
        actor call: on 100,000 small images, blocks of 16 rows cost 4.6 ms per image beyond the work, of 128
        rows 3.5 ms (`jobs/benchmark.py scale`). Memory does not grow with it: a block's images are
        decoded `batch_size` at a time."""
        if self.rows_per_block is not None:
            return self.rows_per_block
        return max(16, min(256, math.ceil(images / (4 * max(1.0, cpus)))))

    @property
    def decode_id(self) -> str:
        """Names the decode settings that change pixel values (the size limits only refuse files)."""
        return f"voi_lut={int(self.apply_voi_lut)}"


#: Extractor name -> (family, member): ImageNet backbones by torchvision name, NYU extractors by kind.
EXTRACTORS: dict[str, tuple[str, str]] = {
    "imagenet_resnet50": ("imagenet", "resnet50"),
    "imagenet_resnet18": ("imagenet", "resnet18"),
    "imagenet_squeezenet": ("imagenet", "squeezenet1_1"),
    "nyu_lcc": ("nyu", "lcc"),
    "nyu_avg": ("nyu", "avg"),
}
_IMAGENET_DIMS = {"resnet50": 2048, "resnet18": 512, "squeezenet1_1": 512}
_NYU_DIMS = {"global": 256, "4x4": 4096}


class ExtractorConfig(StrictModel):
    """One feature extractor (docs/design.md, "Extractors"): its weights and preprocessing.

    `input_size` applies to ImageNet extractors; `pool`, `nyu_scale` (fraction of the native NYU window
    size: 1.0 is the published 2677x1942 / 2974x1748) and `tta` (test-time augmented windows, averaged;
    0 = none) to NYU ones. `source_resolution` is the input images' resolution relative to a full-field
    mammogram (1.0, ~4000 rows; the published crop and windows are defined there); None estimates it
    per image from its height.
    """

    name: Literal[tuple(EXTRACTORS)]  # type: ignore[valid-type]
    weights: str = Field(
        "random-init:0", description="random-init:<seed>, torchvision:<arch>:<enum>, a path or s3:// URI"
    )
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    pool: Literal["global", "4x4"] = "global"
    input_size: int = Field(224, ge=32, le=2048)
    nyu_scale: float = Field(0.25, gt=0.0, le=1.0)
    source_resolution: float | None = Field(None, gt=0.0, le=4.0)
    tta: int = Field(0, ge=0, le=64)

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
        from mammo_ray.models.weights import WeightsSpec

        return WeightsSpec(self.weights, self.sha256)

    @property
    def transform(self) -> ImageTransform:
        from mammo_ray.imaging.transforms import ImageNetTransform, NYUTransform

        if self.family == "imagenet":
            return ImageNetTransform(size=self.input_size, source_resolution=self.source_resolution)
        return NYUTransform(scale=self.nyu_scale, source_resolution=self.source_resolution, n_augment=self.tta)

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
        pool = f":pool={self.pool}" if self.family == "nyu" else ""  # kept in the id so stored ids stay as they were
        return self.transform.id + pool


def _default_extractors() -> list[ExtractorConfig]:
    return [ExtractorConfig(name=name) for name in ("imagenet_resnet50", "nyu_lcc", "nyu_avg")]


class EmbedConfig(StrictModel):
    extractors: list[ExtractorConfig] = Field(default_factory=_default_extractors, min_length=1)
    batch_size: int = Field(8, ge=1, le=4096)
    max_actors: int | None = Field(
        None, ge=1, description="None: one per GPU, else one per torch_threads CPUs; never more than batches")
    num_gpus: float | None = Field(None, ge=0.0, description="per actor; None: 1 when the cluster has GPUs")
    torch_threads: int | None = Field(None, ge=1, le=1024, description="per CPU actor; None: 1")
    part_bytes: int = Field(
        128 * 2**20, ge=2**10,
        description="target size of a feature store's part files: the pass writes one per batch (a retried "
                    "batch replaces its own), then merges the small ones into files of about this size")

    def actor_count(self, cluster_gpus: float, node_cpus: Sequence[float], batches: int) -> int:
        """The inference pool's size: `max_actors`, else one actor per GPU the actors can have (each holds
        every network of the pass, so no GPU waits for another pool), else one actor per
        `actor_torch_threads` CPUs of each alive node; never more actors than the pass has batches.
        Each actor holds a copy of every network of the pass: memory grows with the count."""
        if self.max_actors is not None:
            wanted = self.max_actors
        else:
            per_actor = 1.0 if self.num_gpus is None else self.num_gpus
            if cluster_gpus > 0 and per_actor > 0:
                wanted = int(cluster_gpus // per_actor)
            else:
                wanted = sum(int(cpus // self.actor_torch_threads()) for cpus in node_cpus)
        return max(1, min(wanted, batches))

    def actor_torch_threads(self) -> int:
        """Torch threads of a CPU inference actor. Several one-thread actors beat one actor with the
        node's threads: a small batch's forward scales poorly over threads, and each actor decodes
        its own batches meanwhile (measured: `jobs/benchmark.py embed`, ResNet-50 at 224 on 2 cores:
        1 thread x 2 processes 1.44x 2 threads x 1 process)."""
        return self.torch_threads or 1

    @model_validator(mode="after")
    def _unique_names(self) -> EmbedConfig:
        # An extractor's name is its folder and its grid rows: two settings under one name would mix.
        names = [extractor.name for extractor in self.extractors]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"extractor names must be unique, {', '.join(repeated)} appear(s) more than once: "
                             "one name, one setting (run other settings in another study output)")
        return self


class ZeroShotConfig(StrictModel):
    """Zero-shot NYU inference (Figure 3): the image-wise model's own benign/malignant heads.

    `weights`: `random-init:<seed>` or the published `ImageOnly__ModeImage_weights.p` (path or s3://),
    `sha256` its expected hash. `nyu_scale`: fraction of the native NYU windows; `source_resolution`: the
    inputs' resolution relative to a full-field mammogram (None: estimated per image); `tta`: test-time
    augmented windows per image, whose probabilities are averaged (0 = one window).
    """

    weights: str = "random-init:0"
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    nyu_scale: float = Field(0.25, gt=0.0, le=1.0)
    source_resolution: float | None = Field(None, gt=0.0, le=4.0)
    tta: int = Field(0, ge=0, le=64)

    @property
    def weights_spec(self) -> WeightsSpec:
        from mammo_ray.models.weights import WeightsSpec

        return WeightsSpec(self.weights, self.sha256)

    @property
    def transform(self) -> NYUTransform:
        """Each image's own view window, `tta` augmented windows when tta > 0."""
        from mammo_ray.imaging.transforms import NYUTransform

        return NYUTransform(scale=self.nyu_scale, source_resolution=self.source_resolution, n_augment=self.tta)

    @property
    def model_id(self) -> str:
        """The image-wise model's identity: its preprocessing settings (the weights are keyed apart)."""
        source = "auto" if self.source_resolution is None else repr(float(self.source_resolution))
        return f"nyu_image_wise:nyu_scale={self.nyu_scale!r}:source={source}:tta={self.tta}"

    @property
    def preprocess_id(self) -> str:
        return self.transform.id


class ReportConfig(StrictModel):
    published: str | None = Field(None, description="CSV of the paper's published values (report.published)")

