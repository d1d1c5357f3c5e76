"""Is this DICOM a mammogram? Judged from three header tags, before any pixel is decoded.

A CT, MR or chest radiograph among the mammograms would otherwise be decoded, embedded and classified
like one. Only a header that positively says something else refuses an image: many research collections
strip these tags, and an absent (or empty) tag says nothing.

- Modality: MG, or one of the extra values a study accepts (`ingest.allow_modalities`, for a collection
  whose headers are known to be wrong).
- SOPClassUID: a breast imaging class (Digital Mammography, Breast Projection, Breast Tomosynthesis), or a
  generic projection / capture class (CR, DX, Secondary Capture: CBIS-DDSM's mammograms are Secondary
  Captures with Modality MG) when Modality is MG or absent. Any other class pydicom's UID dictionary
  knows (CT Image Storage, MR Image Storage...) refuses; a private or unknown UID says nothing. With a
  Modality the study accepts explicitly the SOP class is not judged: it follows the modality, and the
  study vouches for those files.
- BodyPartExamined: BREAST (any spelling holding BREAST or MAMM, e.g. 'LEFT BREAST', 'MAMMA').
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from pydicom import uid as dicom_uid
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID

from mammo_ray.errors import DecodeError

MAMMOGRAPHY_MODALITY = "MG"
#: The header tags the check reads (a header parse limited to them is cheap: no pixel, no other value).
MODALITY_TAGS: tuple[str, ...] = ("Modality", "SOPClassUID", "BodyPartExamined")


def allowed_modalities(extra: Iterable[str] = ()) -> tuple[str, ...]:
    """Every Modality value read as a mammogram: MG and a study's `extra` ones (`ingest.allow_modalities`)."""
    return (MAMMOGRAPHY_MODALITY, *(code for code in extra if code != MAMMOGRAPHY_MODALITY))

BREAST_SOP_CLASSES: frozenset[str] = frozenset({
    dicom_uid.DigitalMammographyXRayImageStorageForPresentation,
    dicom_uid.DigitalMammographyXRayImageStorageForProcessing,
    dicom_uid.BreastProjectionXRayImageStorageForPresentation,
    dicom_uid.BreastProjectionXRayImageStorageForProcessing,
    dicom_uid.BreastTomosynthesisImageStorage,  # multi-frame: refused later, for that reason
})
#: Classes of any projection radiograph or screen capture: a mammogram only when Modality says MG (or nothing).
GENERIC_SOP_CLASSES: frozenset[str] = frozenset({
    dicom_uid.ComputedRadiographyImageStorage,
    dicom_uid.DigitalXRayImageStorageForPresentation,
    dicom_uid.DigitalXRayImageStorageForProcessing,
    dicom_uid.SecondaryCaptureImageStorage,
    dicom_uid.MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    dicom_uid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
})
_BREAST_WORDS = ("BREAST", "MAMM")


def _value(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None or isinstance(value, bytes):
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(item).strip() for item in value)
    return str(value).strip()


def _known_other_sop_class(sop_class: str) -> UID | None:
    """The SOP class when pydicom's dictionary names it and it is no mammography or generic image class."""
    if not sop_class or sop_class in BREAST_SOP_CLASSES or sop_class in GENERIC_SOP_CLASSES:
        return None
    uid = UID(sop_class)
    return uid if uid.type == "SOP Class" else None  # a private or unknown UID says nothing


def non_mammogram_tags(ds: Dataset, allowed_modalities: Collection[str] = (MAMMOGRAPHY_MODALITY,)) -> list[str]:
    """What in the header of `ds` says it is not a mammogram ('Modality CT', 'SOP class CT Image Storage',
    'BodyPartExamined CHEST'); empty when nothing does. `allowed_modalities`: Modality values accepted."""
    modality = _value(ds, "Modality").upper()
    found = []
    if modality and modality not in allowed_modalities:
        found.append(f"Modality {modality}")
    if not modality or modality == MAMMOGRAPHY_MODALITY or modality not in allowed_modalities:
        other = _known_other_sop_class(_value(ds, "SOPClassUID"))
        if other is not None:
            found.append(f"SOP class {other.name}")
    body_part = _value(ds, "BodyPartExamined")
    if body_part and not any(word in body_part.upper() for word in _BREAST_WORDS):
        found.append(f"BodyPartExamined {body_part}")
    return found


def check_mammogram(ds: Dataset, uri: str, allowed_modalities: Collection[str] = (MAMMOGRAPHY_MODALITY,)) -> None:
    """Raise DecodeError(uri, 'not a mammogram: ...') when the header of `ds` says it is something else."""
    found = non_mammogram_tags(ds, allowed_modalities)
    if found:
        extra = sorted(set(allowed_modalities) - {MAMMOGRAPHY_MODALITY})
        accepted = f"Modality MG{' or ' + ', '.join(extra) if extra else ''} (ingest.allow_modalities adds others)"
        raise DecodeError(uri, f"not a mammogram: {', '.join(found)}; accepted: {accepted}, a mammography "
                               "SOP class, BodyPartExamined BREAST, or these tags absent")
