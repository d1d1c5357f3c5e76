"""The schemas of the model packages' tables: the study's full-fit predictions of its own images and
`mammo-ray score`'s scores (the other tables' are in `mammo_ray/schemas.py`)."""

from __future__ import annotations

import pyarrow as pa

from mammo_ray import schemas
from mammo_ray.schemas import column

_PACKAGE = column("package", pa.string(), "the model package's name (its folder under models/)", nullable=False)
_SCORE = column("score", pa.float64(), "the pipeline's decision score", nullable=False)
_PROBABILITY = column("probability", pa.float64(), "the calibrated probability of the positive class (the map "
                      "fitted on the study's out-of-fold scores)", nullable=False)
_FLAG = column("flag", pa.bool_(), "score at or above the package's threshold (chosen on the study's out-of-fold "
               "scores)", nullable=False)

#: results/model_predictions.parquet: each exported package's full-fit predictions of the study's labelled images.
MODEL_PREDICTIONS_SCHEMA = pa.schema([
    _PACKAGE,
    column("image_id", pa.string(), "the manifest image", nullable=False),
    _SCORE, _PROBABILITY, _FLAG,
])

#: scores.parquet (`mammo-ray score`): one row per image, breast and exam of the scored collection.
SCORES_SCHEMA = pa.schema([
    column("package_id", pa.string(), "the id of the package that scored (package.json's package_id)",
           nullable=False),
    column("level", pa.string(), "image, breast (its images' scores and probabilities aggregated: score.breast, mean "
           "by default) or exam (its breasts': score.exam, max by default)", nullable=False),
    column("unit", pa.string(), "the image id; the breast as patient/exam/side; the exam as patient/exam",
           nullable=False),
    column("patient_id", pa.string(), "the manifest's pseudonymous patient key", nullable=False),
    column("exam_id", pa.string(), "the exam; null: not given"),
    column("laterality", pa.string(), "L or R (images and breasts); null: unknown or an exam"),
    column("view", pa.string(), "the image's view; null for breasts and exams"),
    column("images", pa.int64(), "images behind the row", nullable=False),
    _SCORE, _PROBABILITY, _FLAG,
    column("shift_distance", pa.float64(), "images: root mean square of the embedding standardised by the "
           "training images' mean and sd (about 1 for a training-like image); null for breasts and exams"),
])


#: networks/<package>/ under a scoring output (`mammo-ray score` with a network package): the feature store of the
#: network's probability per image content.
NETWORK_OUTPUTS_SCHEMA = pa.schema([
    *(schemas.ZERO_SHOT_SCHEMA.field(name) for name in schemas.FEATURE_KEY_COLUMNS),
    column("probability", pa.float32(), "the fine-tuned network's softmax probability of the positive class",
           nullable=False),
    schemas.BREAST_SHARE_FIELD,
])

__all__ = ["MODEL_PREDICTIONS_SCHEMA", "NETWORK_OUTPUTS_SCHEMA", "SCORES_SCHEMA"]
