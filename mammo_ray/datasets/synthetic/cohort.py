"""The cohort on storage: every image's DICOM file and the manifest (`generate_cohort`)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pandas as pd

from mammo_ray import storage
from mammo_ray.config.sections import SyntheticSource
from mammo_ray.datasets.manifest import label_from_birads, write_manifest
from mammo_ray.datasets.synthetic.anatomy import density_category, draw_breast
from mammo_ray.datasets.synthetic.dicom import SYNTHETIC_DEVICE, synthetic_dicom_bytes
from mammo_ray.datasets.synthetic.phantom import generate_image
from mammo_ray.datasets.synthetic.plan import DATASET_NAME, ID_PREFIX, cohort_plan, image_name, patient_code
from mammo_ray.datasets.synthetic.spec import VIEWS


def _write_image(out_images: str, spec: SyntheticSource, plan: dict[tuple[int, str], str],
                 task: tuple[int, str, str]) -> dict[str, object]:
    """Render, encode and write one image; returns its manifest record."""
    patient_index, laterality, view = task
    patient_id = f"{ID_PREFIX}/{patient_code(patient_index)}"
    exam_id = f"{patient_id}_E1"
    birads = plan[(patient_index, laterality)]
    pixels = generate_image(patient_index, laterality, view, birads, spec)  # type: ignore[arg-type]
    data = synthetic_dicom_bytes(
        pixels, patient_id=patient_id, exam_id=exam_id, laterality=laterality,  # type: ignore[arg-type]
        view=view, spec=spec,  # type: ignore[arg-type]
    )
    name = image_name(patient_index, laterality, view)
    uri = storage.join(out_images, f"{name}.dcm")
    storage.write_bytes(uri, data)
    return {
        "image_id": f"{ID_PREFIX}/{name}",
        "uri": uri,
        "dataset": DATASET_NAME,
        "patient_id": patient_id,
        "exam_id": exam_id,
        "laterality": laterality,
        "view": view,
        "birads": birads,
        "label": label_from_birads(birads),
        "pathology": None,
        "density": density_category(draw_breast(spec.seed, patient_index, laterality)),
        "site": None,  # one cohort is no site; data.sources names each source's
        "device": SYNTHETIC_DEVICE,
    }


def generate_cohort(
    out_uri: str, spec: SyntheticSource = SyntheticSource(), workers: int | None = None
) -> pd.DataFrame:
    """Write the cohort under `out_uri` (a local folder or s3:// prefix) and return its manifest.

    Files: ``<out>/images/P0007_L_CC.dcm`` ... (4 per patient) and ``<out>/manifest.parquet``
    (the validated manifest of docs/design.md, "Manifest"; rows in patient order then L-CC, R-CC, L-MLO, R-MLO).
    Identifiers: patient_id 'synth/P0007', exam_id 'synth/P0007_E1', image_id 'synth/P0007_L_CC',
    dataset 'synthetic', uri the full URI of the written file; label from the BI-RADS, pathology null.

    `workers` threads render and write images (numpy, the FFT and I/O release the GIL); None uses
    up to 2 (the core count if smaller). The output does not depend on it: every image has its own
    keyed random generator. Existing files of the same names are overwritten atomically.
    """
    if workers is None:
        workers = max(1, min(2, os.cpu_count() or 1))
    plan = cohort_plan(spec)
    out_images = storage.join(out_uri, "images")
    tasks = [(patient, laterality, view) for patient in range(spec.patients) for laterality, view in VIEWS]
    if workers <= 1:
        records = [_write_image(out_images, spec, plan, task) for task in tasks]
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mammo-ray-synth") as pool:
            records = list(pool.map(lambda task: _write_image(out_images, spec, plan, task), tasks))
    frame = pd.DataFrame.from_records(records)
    return write_manifest(frame, storage.join(out_uri, "manifest.parquet"))
