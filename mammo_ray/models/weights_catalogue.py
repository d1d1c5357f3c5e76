"""The published weight files a study may name, where they are downloaded from, and how to get them.

The NYU checkpoints (fetch names ``nyu-image-wise``, ``nyu-view-wise``, and for the heatmaps ``nyu-patch`` and
``nyu-image-heatmaps``) and the torchvision ImageNet files
(fetch name = the spec, e.g. ``torchvision:resnet50:IMAGENET1K_V2``). A torchvision file is read from the
torch hub cache (``$TORCH_HOME/hub/checkpoints/<basename of its URL>``); when a file is absent the hints here
name it, its URL and how to get it onto a machine without internet (``mammo-ray weights fetch --to URI``,
then point the config at the copy), and always offer ``random-init:<seed>``, which needs no file.

torchvision is imported lazily, so that importing this module (e.g. to check a config) is cheap.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlparse

from mammo_ray.models.weights import TORCHVISION_PREFIX, WeightsError

NYU_BASE_URL = "https://github.com/nyukat/breast_cancer_classifier/raw/master/models"
NYU_IMAGE_WISE_FILE = "ImageOnly__ModeImage_weights.p"
NYU_VIEW_WISE_FILE = "sample_image_model.p"
NYU_PATCH_FILE = "sample_patch_model.p"  # the patch classifier behind the heatmaps
NYU_IMAGE_HEATMAPS_FILE = "ImageHeatmaps__ModeImage_weights.p"  # the image+heatmaps image-wise model
NYU_IMAGE_WISE_URL = f"{NYU_BASE_URL}/{NYU_IMAGE_WISE_FILE}"
NYU_VIEW_WISE_URL = f"{NYU_BASE_URL}/{NYU_VIEW_WISE_FILE}"
#: Fetch names of the NYU files -> file name in the repository's models/ folder.
NYU_FILES: dict[str, str] = {
    "nyu-image-wise": NYU_IMAGE_WISE_FILE,
    "nyu-view-wise": NYU_VIEW_WISE_FILE,
    "nyu-patch": NYU_PATCH_FILE,
    "nyu-image-heatmaps": NYU_IMAGE_HEATMAPS_FILE,
}
#: Where torchvision's ImageNet files live (the weights enums' URLs all start with this).
TORCHVISION_BASE_URL = "https://download.pytorch.org/models"
#: The torchvision specs a study may use (fetch names are the spec strings themselves).
TORCHVISION_SPECS: tuple[str, ...] = (
    "torchvision:resnet50:IMAGENET1K_V1",
    "torchvision:resnet50:IMAGENET1K_V2",
    "torchvision:resnet18:IMAGENET1K_V1",
    "torchvision:squeezenet1_1:IMAGENET1K_V1",
)
#: What `mammo-ray weights fetch` downloads when no names are given.
DEFAULT_FETCH_NAMES: tuple[str, ...] = (*NYU_FILES, *TORCHVISION_SPECS)

#: The command that copies published files where a study can read them; hints append the fetch names.
FETCH_HINT = "mammo-ray weights fetch --to URI"


@dataclass(frozen=True)
class KnownWeightsFile:
    """A published weight file: fetch name, file name and download URL."""

    name: str
    file_name: str
    url: str


def known_weights_file(
    name: str, *, nyu_base_url: str = NYU_BASE_URL, torchvision_base_url: str | None = None
) -> KnownWeightsFile:
    """The published file behind a fetch name: ``nyu-image-wise``, ``nyu-view-wise`` or a torchvision spec.

    The base URLs can be replaced (a mirror, or a test server); a torchvision file keeps its file name.
    """
    if name in NYU_FILES:
        file_name = NYU_FILES[name]
        return KnownWeightsFile(name, file_name, f"{nyu_base_url.rstrip('/')}/{file_name}")
    if name.startswith(TORCHVISION_PREFIX):
        _arch, _enum, url, file_name = torchvision_entry(name)
        if torchvision_base_url is not None:
            url = f"{torchvision_base_url.rstrip('/')}/{file_name}"
        return KnownWeightsFile(name, file_name, url)
    known = ", ".join((*NYU_FILES, "torchvision:<ARCH>:<WEIGHTS>"))
    raise WeightsError(name, f"unknown published weights name (known: {known})")



def torchvision_entry(source: str) -> tuple[str, str, str, str]:
    """'torchvision:ARCH:NAME' -> (arch, enum name, url, file name), validated against torchvision."""
    parts = source.split(":")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise WeightsError(
            source, "expected torchvision:<ARCH>:<WEIGHTS>, e.g. torchvision:resnet50:IMAGENET1K_V2"
        )
    _, arch, enum_name = parts
    from torchvision.models import get_model_weights

    try:
        enum_cls = get_model_weights(arch)
    except (ValueError, KeyError) as error:
        raise WeightsError(source, f"torchvision has no model {arch!r}") from error
    try:
        entry = enum_cls[enum_name]
    except KeyError:
        names = ", ".join(enum_cls.__members__)
        raise WeightsError(source, f"{enum_cls.__name__} has no {enum_name!r} (available: {names})") from None
    file_name = posixpath.basename(urlparse(entry.url).path)
    return arch, enum_name, entry.url, file_name


def torchvision_cache_path(file_name: str) -> str:
    """Where torch hub keeps a downloaded file: $TORCH_HOME/hub/checkpoints/<file_name>."""
    import torch.hub

    return os.path.join(torch.hub.get_dir(), "checkpoints", file_name)


#: The end of every missing-file hint: a study can always run without the file, from a seeded init.
RANDOM_INIT_HINT = (
    "or write `random-init:<seed>` (e.g. random-init:0) to run offline from a seeded random init: no file needed"
)


def fetch_name_for(file_name: str) -> str | None:
    """The name `mammo-ray weights fetch` takes to download `file_name` (e.g. ImageOnly__ModeImage_weights.p
    -> nyu-image-wise), or None for a file it does not know: the command refuses file names."""
    for name, nyu_file in NYU_FILES.items():
        if nyu_file == file_name:
            return name
    for spec in TORCHVISION_SPECS:
        try:
            if torchvision_entry(spec)[3] == file_name:
                return spec
        except (WeightsError, ImportError):  # no torchvision here: no torchvision name to suggest
            return None
    return None


def weights_file_of(source: str) -> tuple[str, str | None]:
    """(file name, fetch name or None) of a weights source: a torchvision spec or a file path/URI."""
    if source.startswith(TORCHVISION_PREFIX):
        try:
            return torchvision_entry(source)[3], source
        except (WeightsError, ImportError):
            return source, None
    file_name = posixpath.basename(urlparse(source).path if "://" in source else source) or source
    return file_name, fetch_name_for(file_name)


def missing_files_hint(files: Mapping[str, str | None], url: str | None = None) -> str:
    """How to get missing weight files, given file name -> its fetch name (None: not a published file).

    One `mammo-ray weights fetch` command names every fetchable file (the command takes fetch names,
    not file names); the random-init alternative, which needs no file, is always offered.
    """
    fetchable = {file_name: name for file_name, name in files.items() if name}
    unknown = [file_name for file_name, name in files.items() if not name]
    parts = []
    if fetchable:
        names = " ".join(dict.fromkeys(fetchable.values()))
        first = next(iter(fetchable))
        source = f" from {url}" if url else ""
        written = f"writes it to URI/{first}" if len(fetchable) == 1 else "writes each to URI/<file name>"
        parts.append(
            f"on a machine with internet run `{FETCH_HINT} {names}` (it downloads {', '.join(fetchable)}{source} "
            f"once and {written}), then point the config's weights at "
            f"{'that copy' if len(fetchable) == 1 else 'the copies'} "
            f"(e.g. s3://bucket/weights/{first})"
        )
    if unknown:
        parts.append(
            f"{', '.join(unknown)}: not a published file `{FETCH_HINT}` knows (it fetches "
            f"{', '.join(DEFAULT_FETCH_NAMES)}); copy it where the workers can read it and point the config's "
            "weights at the copy"
        )
    return "; ".join([*parts, RANDOM_INIT_HINT])

