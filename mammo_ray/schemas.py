"""The schemas of the study's tables (docs/design.md, "Data contracts"), and the content keys feature stores
are keyed by. Paths, provenance and digests are in `mammo_ray/tables.py`.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("patient_id", pa.string(), nullable=False),
        pa.field("exam_id", pa.string()),
        pa.field("laterality", pa.string()),
        pa.field("view", pa.string()),
        pa.field("birads", pa.string()),
        pa.field("label", pa.int8()),
        pa.field("pathology", pa.string()),
        # Subgroup columns (null where the collection does not say): breast density A-D, acquisition
        # site, and the device ("Manufacturer ModelName" from the header, or the collection's machine id).
        pa.field("density", pa.string()),
        pa.field("site", pa.string()),
        pa.field("device", pa.string()),
    ]
)
MANIFEST_COLUMNS: list[str] = MANIFEST_SCHEMA.names
#: The manifest columns an image stage's output depends on (labels, patients and BI-RADS do not change pixels).
IMAGE_COLUMNS: tuple[str, ...] = ("image_id", "uri", "laterality", "view")

ERRORS_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string()),
        pa.field("uri", pa.string()),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("error_type", pa.string(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
    ]
)

#: ingest/images.parquet: what decoding found in each image (laterality / view: the manifest's, else the file's tags).
IMAGES_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("laterality", pa.string()),
        pa.field("view", pa.string()),
        pa.field("height", pa.int32()),
        pa.field("width", pa.int32()),
        pa.field("content_sha256", pa.string()),
        pa.field("intensity_max", pa.float32()),
        pa.field("breast_fraction", pa.float32()),
    ]
)

#: What a stored model output depends on. `laterality` / `view` are the manifest's values the
#: preprocessing was given ('' when unknown, or when the model ignores orientation): with the content
#: they fix what the preprocessing saw (a file's own tags are part of its content).
FEATURE_KEY_COLUMNS: tuple[str, ...] = ("content_sha256", "laterality", "view", "model_id", "weights_id",
                                        "preprocess_id")
#: The part of the key that comes from the image.
CONTENT_KEY_COLUMNS: tuple[str, ...] = ("content_sha256", "laterality", "view")



def content_key(content_sha256: str, laterality: object, view: object, orientation: bool) -> str:
    """The image part of a feature key as one string: the bytes and, for models whose preprocessing flips
    and windows by side and view (`orientation`), the manifest's laterality and view."""
    if not orientation:
        return content_sha256
    return f"{content_sha256}|{orientation_hint(laterality)}|{orientation_hint(view)}"


def content_keys(content_sha256: pd.Series, laterality: pd.Series, view: pd.Series, orientation: bool) -> pd.Series:
    """`content_key` of whole columns at once (readers join 100,000s of rows on it)."""
    sha = content_sha256.astype("string")
    if not orientation:
        return sha
    hints = [column.astype("string").fillna("") for column in (laterality, view)]
    return sha.str.cat(hints, sep="|")


def _is_null(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and value != value)


def orientation_hint(value: object) -> str:
    """A manifest laterality or view as stored in a feature key: '' when unknown."""
    return "" if _is_null(value) else str(value)


_FEATURE_KEY_FIELDS = [pa.field(name, pa.string(), nullable=False) for name in FEATURE_KEY_COLUMNS]


#: Every image output records what its preprocessing left of the breast: the share of the model input (the NYU
#: window, the ImageNet square) the breast covers (mean over test-time windows; null for tables not made from
#: images). The report summarises it.
BREAST_SHARE_FIELD = pa.field("breast_share", pa.float32(), nullable=True)


def embeddings_schema(dim: int) -> pa.Schema:
    """embeddings/<extractor>/features/: the key, the vector and the breast's share of the input."""
    return pa.schema([*_FEATURE_KEY_FIELDS, pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
                      BREAST_SHARE_FIELD])


ZERO_SHOT_SCHEMA = pa.schema(
    [
        *_FEATURE_KEY_FIELDS,
        pa.field("p_benign", pa.float32(), nullable=False),
        pa.field("p_malignant", pa.float32(), nullable=False),
        BREAST_SHARE_FIELD,
    ]
)

#: heatmaps/features/: per image the patch classifier's probabilities, one per patch of the grid over its crop
#: (row-major; docs/design.md, "Heatmaps"), which with the crop's size and the stride draw both heatmaps.
HEATMAPS_SCHEMA = pa.schema(
    [
        *_FEATURE_KEY_FIELDS,
        pa.field("crop_height", pa.int32(), nullable=False),
        pa.field("crop_width", pa.int32(), nullable=False),
        pa.field("stride", pa.int32(), nullable=False),
        pa.field("malignant", pa.list_(pa.float32()), nullable=False),
        pa.field("benign", pa.list_(pa.float32()), nullable=False),
        BREAST_SHARE_FIELD,
    ]
)

#: thumbnails/<family>/features/: per image its network input shrunk for the eye (channel 0, or the mean of an
#: ImageNet input's three), grey levels 0-255 row-major, for the report's contact sheet.
THUMBNAILS_SCHEMA = pa.schema(
    [
        *_FEATURE_KEY_FIELDS,
        pa.field("thumb_height", pa.int32(), nullable=False),
        pa.field("thumb_width", pa.int32(), nullable=False),
        pa.field("pixels", pa.list_(pa.uint8()), nullable=False),
        BREAST_SHARE_FIELD,
    ]
)

#: _index.parquet of a model output: one row per manifest image of the stage's last run.
INDEX_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("content_sha256", pa.string()),  # null: the file could not be read
        pa.field("status", pa.string(), nullable=False),  # 'ok', or 'error' (a row of the stage's errors table)
    ]
)

GRID_SCHEMA = pa.schema(
    [
        pa.field("extractor", pa.string(), nullable=False),
        pa.field("protocol", pa.string(), nullable=False),
        pa.field("selection", pa.string(), nullable=False),
        pa.field("balancing", pa.string(), nullable=False),
        pa.field("classifier", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("n_rows", pa.int64(), nullable=False),
        pa.field("n_positive", pa.int64(), nullable=False),
        pa.field("n_dropped_unlabelled", pa.int64(), nullable=False),
        pa.field("n_train", pa.int64()),
        pa.field("n_test", pa.int64()),
        pa.field("n_features_in", pa.int64()),
        pa.field("n_features", pa.int64()),
        pa.field("cv_folds", pa.int64()),
        pa.field("cv_balanced_accuracy_mean", pa.float64()),
        pa.field("cv_balanced_accuracy_std", pa.float64()),
        pa.field("cv_fold_scores", pa.list_(pa.float64())),
        pa.field("threshold", pa.float64()),
        pa.field("accuracy", pa.float64()),
        pa.field("balanced_accuracy", pa.float64()),
        pa.field("auc", pa.float64()),
        pa.field("auc_ci_low", pa.float64()),
        pa.field("auc_ci_high", pa.float64()),
        pa.field("precision", pa.float64()),
        pa.field("recall", pa.float64()),
        pa.field("specificity", pa.float64()),
        pa.field("brier", pa.float64()),
        pa.field("n_breasts", pa.int64()),
        pa.field("auc_breast", pa.float64()),
        pa.field("auc_breast_ci_low", pa.float64()),
        pa.field("auc_breast_ci_high", pa.float64()),
        pa.field("n_exams", pa.int64()),
        pa.field("auc_exam", pa.float64()),
        pa.field("evaluation", pa.string(), nullable=False),
        pa.field("oof_repeats", pa.int64()),
        pa.field("interval", pa.string()),
        pa.field("first_repeat_auc", pa.float64()),
        pa.field("permutations", pa.int64(), nullable=False),
        pa.field("null_auc_mean", pa.float64()),
        pa.field("null_auc_q95", pa.float64()),
        pa.field("permutation_p", pa.float64()),
        pa.field("null_aucs", pa.list_(pa.float64())),
        pa.field("control_seconds", pa.float64()),
        pa.field("scale_path", pa.string()),
        pa.field("weights_ids", pa.list_(pa.string())),
        pa.field("classifier_seconds", pa.float64()),
        pa.field("unconverged_fits", pa.int64()),
        pa.field("cell_config", pa.string(), nullable=False),
        pa.field("cell_hash", pa.string(), nullable=False),
        pa.field("config_hash", pa.string(), nullable=False),
    ]
)

#: What each column of grid.parquet means (also written into the file's provenance).
GRID_COLUMNS_DOC = {
    "extractor/protocol/selection/balancing/classifier": "the cell",
    "status, error": "'ok', or 'failed' with '<ErrorType>: <message>'",
    "n_rows, n_positive": "labelled images of the current manifest embedded by the extractor, positives among them",
    "n_dropped_unlabelled": "embedded images of the manifest without a label (not used)",
    "n_train, n_test": "held-out split sizes (paper+smote: synthetic rows included); oof: rows each outer fold "
    "trains on, and every row",
    "evaluation, oof_repeats": "leak_free: 'oof' (repeated patient-grouped K-fold: every image scored once per "
    "repeat, metrics per repeat then averaged) or 'holdout'; paper: 'holdout'",
    "n_features_in, n_features": "features of the table / kept by Lasso in the final fit",
    "cv_*": "balanced accuracy of each CV fold (classifier's own rule, score > 0), mean, population std; "
    "oof: of each outer fold of every repeat; cv_folds: the folds of that CV (oof: grid.oof.folds)",
    "threshold": "held-out decision threshold: 0 for paper, best balanced accuracy on out-of-fold "
    "training scores for leak_free",
    "accuracy, balanced_accuracy, precision, recall, specificity": "held-out, at the threshold (oof: each "
    "outer fold's own, chosen by inner folds of its training rows)",
    "auc, auc_ci_low, auc_ci_high, interval": "held-out ROC AUC (oof: mean over repeats of the pooled "
    "out-of-fold AUC) and its percentile bootstrap interval, resampling patients (leak_free) or rows (paper)",
    "first_repeat_auc, permutations, null_*, permutation_p": "the negative control: the protocol rerun on "
    "label permutations between patients; the null AUCs, their mean and 95th percentile, and the one-sided "
    "p of first_repeat_auc (the AUC the reruns' procedure gives on the real labels)",
    "control_seconds": "time of this cell's share of the permutation control",
    "n_breasts, auc_breast*, n_exams, auc_exam": "oof: AUC over breasts (mean of a breast's views' scores, the "
    "highest label) with its patient-bootstrap interval, and over exams (the highest of an exam's breasts)",
    "brier": "oof: Brier score of probabilities from the calibration (cell_config oof.calibration: Platt or "
    "isotonic) fitted on each outer fold's inner scores (never on the images it maps), mean over repeats",
    "scale_path": "'exact', or the scalable estimator that replaced an exact kernel SVM",
    "weights_ids": "weights of the extractor that made the embeddings",
    "classifier_seconds": "time in this cell's own fits (fits shared with other cells not counted)",
    "unconverged_fits": "classifier fits (evaluation and permutation control) stopped at their max_iter "
    "(grid.classifier_params.<classifier>.max_iter) with a ConvergenceWarning",
    "cell_config, cell_hash": "every setting of the cell (JSON) and its hash",
    "config_hash": "hash of the whole grid config",
}

GRID_PREDICTIONS_SCHEMA = pa.schema(
    [
        pa.field("extractor", pa.string(), nullable=False),
        pa.field("protocol", pa.string(), nullable=False),
        pa.field("selection", pa.string(), nullable=False),
        pa.field("balancing", pa.string(), nullable=False),
        pa.field("classifier", pa.string(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
        pa.field("repeat", pa.int64(), nullable=False),  # oof: the repeat; holdout: 0
        pa.field("image_id", pa.string()),  # null: a synthetic SMOTE row (paper protocol)
        pa.field("target", pa.int8(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("probability", pa.float64()),  # oof: calibrated inside the training folds
        pa.field("cell_hash", pa.string(), nullable=False),
    ]
)

#: comparisons.parquet: extractors compared pairwise on the same images (classify.comparisons).
COMPARISONS_SCHEMA = pa.schema(
    [
        pa.field("a", pa.string(), nullable=False),
        pa.field("b", pa.string(), nullable=False),
        pa.field("selection", pa.string(), nullable=False),
        pa.field("balancing", pa.string(), nullable=False),
        pa.field("classifier", pa.string(), nullable=False),
        pa.field("n_images", pa.int64(), nullable=False),
        pa.field("n_positive", pa.int64(), nullable=False),
        pa.field("auc_a", pa.float64()),
        pa.field("auc_b", pa.float64()),
        pa.field("difference", pa.float64()),  # auc_a - auc_b
        pa.field("ci_low", pa.float64()),  # patient-cluster bootstrap interval of the difference
        pa.field("ci_high", pa.float64()),
        pa.field("delong_p", pa.float64()),  # paired DeLong, two-sided
        pa.field("holm_p", pa.float64()),  # Holm-adjusted over the comparisons of the table
    ]
)

#: What names one fine-tuned network on one task in the finetune tables (a row per training stage of it).
FINETUNE_RUN_KEYS: tuple[str, ...] = ("model", "variant", "pretrained_on", "task")

FINETUNE_SCHEMA = pa.schema(
    [
        pa.field("model", pa.string(), nullable=False),
        pa.field("pretrained_on", pa.string(), nullable=False),
        pa.field("variant", pa.string(), nullable=False),  # the NYU view head (l_cc ... r_mlo); '' elsewhere
        pa.field("task", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("stage_index", pa.int32(), nullable=False),
        pa.field("train", pa.string(), nullable=False),
        pa.field("image_size", pa.int32(), nullable=False),
        pa.field("epochs", pa.int32(), nullable=False),
        # Each metric, then its interval under a patient-cluster bootstrap (finetune.bootstrap, .ci_level).
        pa.field("accuracy", pa.float64()),
        pa.field("accuracy_ci_low", pa.float64()),
        pa.field("accuracy_ci_high", pa.float64()),
        pa.field("auroc", pa.float64()),
        pa.field("auroc_ci_low", pa.float64()),
        pa.field("auroc_ci_high", pa.float64()),
        pa.field("precision", pa.float64()),
        pa.field("precision_ci_low", pa.float64()),
        pa.field("precision_ci_high", pa.float64()),
        pa.field("recall", pa.float64()),
        pa.field("recall_ci_low", pa.float64()),
        pa.field("recall_ci_high", pa.float64()),
        pa.field("n_train", pa.int64(), nullable=False),
        pa.field("n_val", pa.int64(), nullable=False),
        pa.field("protocol", pa.string(), nullable=False),
        pa.field("classes", pa.list_(pa.string()), nullable=False),
        pa.field("checkpoint_uri", pa.string(), nullable=False),
        pa.field("weights_id", pa.string(), nullable=False),
        pa.field("run_name", pa.string(), nullable=False),
        pa.field("config_hash", pa.string(), nullable=False),
    ]
)

FINETUNE_PREDICTIONS_SCHEMA = pa.schema(
    [
        pa.field("model", pa.string(), nullable=False),
        pa.field("pretrained_on", pa.string(), nullable=False),
        pa.field("variant", pa.string(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("protocol", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("patient_id", pa.string(), nullable=False),
        pa.field("target", pa.int64(), nullable=False),
        pa.field("prediction", pa.int64(), nullable=False),
        pa.field("probabilities", pa.list_(pa.float32()), nullable=False),
    ]
)
