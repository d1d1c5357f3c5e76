"""Decoding (DICOM, PNG, PGM) into grey float32 images; preprocessing lives beside it."""

from mammo_ray.imaging.decode import DecodedImage, decode_image, detect_format
from mammo_ray.imaging.dicom import SAFE_DICOM_TAGS

__all__ = ["SAFE_DICOM_TAGS", "DecodedImage", "decode_image", "detect_format"]
