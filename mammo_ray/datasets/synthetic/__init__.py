"""A deterministic synthetic screening cohort: DICOM MG files plus their manifest.

This is the study's embedded default (it needs no network and no data) and the fixture of most
tests, so it is small and fast: the default cohort (24 patients x 4 views at 512 rows) is written in
a few seconds on two cores.

What it makes
-------------
Every patient has one screening exam with four images, L-CC, R-CC, L-MLO and R-MLO. Each breast
has one BI-RADS category shared by its two views. Negative breasts are BI-RADS 1, 2 or 3 (INbreast
proportions: 2 is the most common), suspicious ones 4a, 4b, 4c, 5 or 6. ``positive_fraction`` is
the share of *breasts* (hence of images, hence of positive labels) with a suspicious finding, 0.25
by default as in INbreast (100 of 410 images). Suspicious breasts go to distinct patients while
there are enough of them, so with the default half of the patients have one suspicious breast.

Images follow the expectations (docs/design.md, "Input images") of a "for presentation" mammogram: MONOCHROME2, zero
background (exactly 0 outside the breast, every breast pixel >= 1), the chest wall on the image
edge (column 0 for left breasts, the last column for right breasts, which are mirror images), a
half-elliptic outline in CC, a longer, tilted outline with a brighter pectoral muscle in the top
chest-wall corner in MLO, smooth fibroglandular texture converging on the nipple, a darker periphery
and a skin line. Findings follow the BI-RADS category (the table is in `anatomy`).

The intensity of tissue is mapped through a soft (tanh) tone curve, so nothing saturates at the
maximum value: a classifier has to see the lesion, not a clipped artefact.

Determinism: every random draw comes from a generator keyed by (seed, purpose, patient, breast,
view), so an image does not depend on which other images are generated, the same spec writes
byte-identical files, and a breast's finding sits at the same place whatever its BI-RADS.

Public API: :func:`generate_cohort`, :func:`generate_image`,
:func:`synthetic_dicom_bytes`, :func:`cohort_plan`, :func:`image_name`, all importable from here. What to
generate is the config section :class:`mammo_ray.config.SyntheticSource` (re-exported here).

Layout, one concern per module:

- ``spec``: the shared constants (views, laterality and view codes) and the keyed generators;
- ``plan``: identifiers and the BI-RADS of every breast (`cohort_plan`, `image_name`);
- ``anatomy``: the random shape and composition of a breast and its finding;
- ``phantom``: rendering the pixels of one image (`generate_image`);
- ``dicom``: one image as a DICOM Part-10 file (`synthetic_dicom_bytes`);
- ``cohort``: every file and the manifest on storage (`generate_cohort`).
"""

from mammo_ray.config.sections import SyntheticSource
from mammo_ray.datasets.synthetic.cohort import generate_cohort
from mammo_ray.datasets.synthetic.dicom import synthetic_dicom_bytes
from mammo_ray.datasets.synthetic.phantom import generate_image
from mammo_ray.datasets.synthetic.plan import DATASET_NAME, cohort_plan, image_name
from mammo_ray.datasets.synthetic.spec import VIEWS

__all__ = [
    "DATASET_NAME",
    "VIEWS",
    "SyntheticSource",
    "cohort_plan",
    "generate_cohort",
    "generate_image",
    "image_name",
    "synthetic_dicom_bytes",
]
