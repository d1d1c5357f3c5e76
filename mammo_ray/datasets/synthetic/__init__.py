"""A deterministic synthetic screening cohort: DICOM MG files plus their manifest.

The study's embedded default (no network, no data) and the fixture of most tests: four views per patient,
a BI-RADS per breast (`positive_fraction` of breasts suspicious), "for presentation" images with findings
that follow the BI-RADS. The same spec writes byte-identical files, and an image does not depend on which
others are generated. What it makes and why: docs/design.md, "Synthetic cohort".

Public API (all importable from here): `generate_cohort`, `generate_image`, `synthetic_dicom_bytes`,
`cohort_plan`, `image_name`; what to generate is the config section `mammo_ray.config.SyntheticSource`
(re-exported here). One concern per module: ``spec`` (shared constants, keyed generators), ``plan``
(identifiers, the BI-RADS of every breast), ``anatomy`` (a breast and its finding), ``phantom`` (one
image's pixels), ``dicom`` (one image as a DICOM Part-10 file), ``cohort`` (every file and the manifest).
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
