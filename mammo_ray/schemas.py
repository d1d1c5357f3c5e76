"""The schemas of the study's tables (docs/design.md, "Data contracts"), and the content keys feature stores
are keyed by. Paths, provenance and digests are in `mammo_ray/tables.py`.

Every column carries its meaning as field metadata under b"description" (`column`): the README's table
reference is built from it, and each Parquet file keeps it beside its columns.
"""

from __future__ import annotations

import pyarrow as pa


def column(name: str, type_: pa.DataType, description: str, *, nullable: bool = True) -> pa.Field:
    """A schema field whose metadata b"description" says what the column holds."""
    return pa.field(name, type_, nullable=nullable, metadata={b"description": description.encode()})


MANIFEST_SCHEMA = pa.schema(
    [
        column("image_id", pa.string(), "stable identifier of the image, unique in the manifest", nullable=False),
        column("uri", pa.string(), "where the image's bytes are: a local path, an s3:// URI or a pseudonymous "
               "locator", nullable=False),
        column("dataset", pa.string(), "the collection or data source the image comes from", nullable=False),
        column("patient_id", pa.string(), "pseudonymous patient key; folds and splits group on it",
               nullable=False),
        column("exam_id", pa.string(), "the exam the image belongs to; null: not given"),
        column("laterality", pa.string(), "the breast's side: L or R; null: unknown"),
        column("view", pa.string(), "the view: CC, MLO or other; null: unknown"),
        column("birads", pa.string(), "BI-RADS category, normalised: one of 0 1 2 3 4 4a 4b 4c 5 6; null: not given"),
        column("label", pa.int8(), "binary task target, 0 or 1: from BI-RADS (1 2 3: 0; 4 4a 4b 4c 5 6: 1) or "
               "from pathology, as the collection's adapter says; null: no label (e.g. BI-RADS 0 or missing), "
               "left out of the grid and the binary fine-tuning task"),
        column("pathology", pa.string(), "normal, benign or malignant where the collection gives it; null "
               "elsewhere"),
        # Subgroup columns (null where the collection does not say): breast density A-D, acquisition
        # site, and the device ("Manufacturer ModelName" from the header, or the collection's machine id).
        column("density", pa.string(), "breast density as the BI-RADS category A-D (collections' 1-4 mapped to "
               "A-D); null: not given"),
        column("site", pa.string(), "acquisition site, free text (a subgroup column); null: not given"),
        column("device", pa.string(), "acquisition device: 'Manufacturer ModelName' from the DICOM header, or the "
               "collection's machine id (a subgroup column); null: not given"),
    ]
)
MANIFEST_COLUMNS: list[str] = MANIFEST_SCHEMA.names
#: The manifest columns an image stage's output depends on (labels, patients and BI-RADS do not change pixels).
IMAGE_COLUMNS: tuple[str, ...] = ("image_id", "uri", "laterality", "view")

ERRORS_SCHEMA = pa.schema(
    [
        column("image_id", pa.string(), "the manifest image that could not be read or prepared"),
        column("uri", pa.string(), "the image's uri as the manifest gives it (a pseudonymous locator where paths "
               "carry identifiers)"),
        column("stage", pa.string(), "the stage or output that failed on the image, e.g. ingest, "
               "embed-<extractor>, zero_shot, heatmaps", nullable=False),
        column("error_type", pa.string(), "the exception's class name, e.g. DecodeError", nullable=False),
        column("message", pa.string(), "what went wrong with this image, in words", nullable=False),
    ]
)

#: ingest/images.parquet: what decoding found in each image (laterality / view: the manifest's, else the file's tags).
IMAGES_SCHEMA = pa.schema(
    [
        column("image_id", pa.string(), "the manifest image", nullable=False),
        column("uri", pa.string(), "the image's uri as the manifest gives it", nullable=False),
        column("laterality", pa.string(), "L or R: the manifest's, else the file's own tags; null: neither says"),
        column("view", pa.string(), "CC, MLO or other: the manifest's, else the file's own tags; null: neither "
               "says"),
        column("height", pa.int32(), "rows of the decoded image, in pixels"),
        column("width", pa.int32(), "columns of the decoded image, in pixels"),
        column("content_sha256", pa.string(), "sha256 (hex) of the image file's bytes"),
        column("intensity_max", pa.float32(), "highest pixel value of the decoded image (DICOM: after the "
               "modality LUT, the optional VOI LUT or window and the shift that makes the darkest value 0)"),
        column("breast_fraction", pa.float32(), "share (0-1) of the decoded image's pixels above 0, the "
               "background being exactly 0"),
    ]
)
#: What a stored model output depends on. `laterality` / `view` are the manifest's values the
#: preprocessing was given ('' when unknown, or when the model ignores orientation): with the content
#: they fix what the preprocessing saw (a file's own tags are part of its content).
FEATURE_KEY_COLUMNS: tuple[str, ...] = ("content_sha256", "laterality", "view", "model_id", "weights_id",
                                        "preprocess_id")
#: The part of the key that comes from the image.
CONTENT_KEY_COLUMNS: tuple[str, ...] = ("content_sha256", "laterality", "view")



#: What each column of a feature key means.
_FEATURE_KEY_DOCS: dict[str, str] = {
    "content_sha256": "sha256 (hex) of the image file's bytes",
    "laterality": "the manifest's laterality (L or R) the preprocessing was given; '' when unknown or when the "
    "model ignores orientation",
    "view": "the manifest's view (CC, MLO or other) the preprocessing was given; '' when unknown or when the model "
    "ignores orientation",
    "model_id": "the model's identity: its name and every setting that changes its output (e.g. input_size; "
    "pool, nyu_scale, tta; source_resolution; the heatmaps' stride)",
    "weights_id": "the model's weights: sha256 of the weight file, random-init:<seed>, or none where no network "
    "runs (thumbnails)",
    "preprocess_id": "the preprocessing, its version and settings, and the decode settings",
}
_FEATURE_KEY_FIELDS = [column(name, pa.string(), _FEATURE_KEY_DOCS[name], nullable=False)
                       for name in FEATURE_KEY_COLUMNS]


#: Every image output records what its preprocessing left of the breast: the share of the model input (the NYU
#: window, the ImageNet square) the breast covers (mean over test-time windows; null for tables not made from
#: images). The report summarises it.
BREAST_SHARE_FIELD = column("breast_share", pa.float32(), "share (0-1) of the model input (the NYU window, the "
                            "ImageNet square, the heatmaps' crop) the breast covers, mean over test-time windows; "
                            "null: the table was not made from images (synthetic)", nullable=True)


def embeddings_schema(dim: int) -> pa.Schema:
    """embeddings/<extractor>/features/: the key, the vector and the breast's share of the input."""
    return pa.schema([*_FEATURE_KEY_FIELDS,
                      column("embedding", pa.list_(pa.float32(), dim), f"the extractor's feature vector of the "
                             f"image: {dim} float32 values", nullable=False),
                      BREAST_SHARE_FIELD])


ZERO_SHOT_SCHEMA = pa.schema(
    [
        *_FEATURE_KEY_FIELDS,
        column("p_benign", pa.float32(), "the NYU image-wise model's probability (0-1) of a benign finding, from the "
               "head of the image's side and view (other or unknown view: the CC head); tta: mean over windows",
               nullable=False),
        column("p_malignant", pa.float32(), "the NYU image-wise model's probability (0-1) of a malignant finding, "
               "from the head of the image's side and view (other or unknown view: the CC head); tta: mean over "
               "windows", nullable=False),
        BREAST_SHARE_FIELD,
    ]
)

#: heatmaps/features/: per image the patch classifier's probabilities, one per patch of the grid over its crop
#: (row-major; docs/design.md, "Heatmaps"), which with the crop's size and the stride draw both heatmaps.
HEATMAPS_SCHEMA = pa.schema(
    [
        *_FEATURE_KEY_FIELDS,
        column("crop_height", pa.int32(), "rows of the oriented breast crop the patch classifier ran over, in "
               "pixels at heatmaps.scale (1.0: NYU's native resolution)", nullable=False),
        column("crop_width", pa.int32(), "columns of the oriented breast crop the patch classifier ran over, in "
               "pixels at heatmaps.scale (1.0: NYU's native resolution)", nullable=False),
        column("stride", pa.int32(), "pixels between the starts of neighbouring 256 x 256 patches (plus one patch "
               "flush with the far edge where the strides miss it)", nullable=False),
        column("malignant", pa.list_(pa.float32()), "the patch classifier's malignant probability (0-1) of each "
               "patch of the grid over the crop, row-major", nullable=False),
        column("benign", pa.list_(pa.float32()), "the patch classifier's benign probability (0-1) of each patch of "
               "the grid over the crop, row-major", nullable=False),
        BREAST_SHARE_FIELD,
    ]
)

#: thumbnails/<family>/features/: per image its network input shrunk for the eye (channel 0, or the mean of an
#: ImageNet input's three), grey levels 0-255 row-major, for the report's contact sheet.
THUMBNAILS_SCHEMA = pa.schema(
    [
        *_FEATURE_KEY_FIELDS,
        column("thumb_height", pa.int32(), "rows of the thumbnail, in pixels", nullable=False),
        column("thumb_width", pa.int32(), "columns of the thumbnail, in pixels", nullable=False),
        column("pixels", pa.list_(pa.uint8()), "the network input shrunk for the eye (channel 0, or the mean of an "
               "ImageNet input's three): grey levels 0-255, row-major, thumb_height x thumb_width values",
               nullable=False),
        BREAST_SHARE_FIELD,
    ]
)

#: _index.parquet of a model output: one row per manifest image of the stage's last run.
INDEX_SCHEMA = pa.schema(
    [
        column("image_id", pa.string(), "a manifest image of the stage's last run", nullable=False),
        column("content_sha256", pa.string(), "sha256 (hex) of the image file's bytes: the content its output is "
               "stored under; null: the file could not be read"),
        column("status", pa.string(), "ok, or error (a row of the stage's errors table)", nullable=False),
    ]
)

#: The cell columns grid.parquet and grid_predictions.parquet share.
_CELL_DOCS: dict[str, str] = {
    "extractor": "the extractor whose embeddings the cell classifies ('a+b': the features of several side by side)",
    "protocol": "paper (the published procedure, leaks included) or leak_free",
    "selection": "feature selection: none or lasso; selected: the nested choice of the best cell inside each "
    "training fold (leak_free, oof)",
    "balancing": "class balancing: none or smote; selected: the nested choice of the best cell",
    "classifier": "svm_linear, svm_rbf or logreg; selected: the nested choice of the best cell",
}
_CELL_FIELDS = [column(name, pa.string(), description, nullable=False) for name, description in _CELL_DOCS.items()]

GRID_SCHEMA = pa.schema(
    [
        *_CELL_FIELDS,
        column("status", pa.string(), "ok, or failed (the cell's error says why)", nullable=False),
        column("error", pa.string(), "'<ErrorType>: <message>' of a failed cell; null: ok"),
        column("n_rows", pa.int64(), "labelled images of the current manifest embedded by the extractor",
               nullable=False),
        column("n_positive", pa.int64(), "positive (label 1) images among n_rows", nullable=False),
        column("n_dropped_unlabelled", pa.int64(), "embedded images of the manifest without a label (not used)",
               nullable=False),
        column("n_train", pa.int64(), "held-out evaluation: rows of the training split (paper + smote: synthetic "
               "rows included); oof: rows each outer fold trains on"),
        column("n_test", pa.int64(), "held-out evaluation: rows of the test split (paper + smote: synthetic rows "
               "included); oof: every row"),
        column("n_features_in", pa.int64(), "features of the table (the extractor's dimension; 'a+b': the sum)"),
        column("n_features", pa.int64(), "features the classifier saw: kept by Lasso in the final fit (oof: median "
               "over outer folds), all of them without selection"),
        column("cv_folds", pa.int64(), "folds of the CV behind cv_* (oof: grid.oof.folds, the outer folds; else "
               "grid.cv_folds)"),
        column("cv_balanced_accuracy_mean", pa.float64(), "mean of cv_fold_scores (0-1)"),
        column("cv_balanced_accuracy_std", pa.float64(), "population standard deviation of cv_fold_scores"),
        column("cv_fold_scores", pa.list_(pa.float64()), "balanced accuracy (0-1) of each CV fold at the "
               "classifier's own rule (score > 0); oof: of each outer fold of every repeat"),
        column("threshold", pa.float64(), "decision threshold on the score: 0 for paper; leak_free: best balanced "
               "accuracy on out-of-fold training scores (oof: median of the outer folds' own thresholds)"),
        column("accuracy", pa.float64(), "held-out accuracy (0-1) at the threshold (oof: each outer fold's own, "
               "chosen by inner folds of its training rows; mean over repeats)"),
        column("balanced_accuracy", pa.float64(), "held-out balanced accuracy (0-1) at the threshold (oof: each "
               "outer fold's own, chosen by inner folds of its training rows; mean over repeats)"),
        column("auc", pa.float64(), "held-out ROC AUC of the decision scores (oof: mean over repeats of the pooled "
               "out-of-fold AUC)"),
        column("auc_ci_low", pa.float64(), "lower end of auc's percentile bootstrap interval (grid.ci_level), "
               "resampling patients (leak_free) or rows (paper); see interval"),
        column("auc_ci_high", pa.float64(), "upper end of auc's percentile bootstrap interval (grid.ci_level), "
               "resampling patients (leak_free) or rows (paper); see interval"),
        column("precision", pa.float64(), "held-out precision (0-1) at the threshold (oof: each outer fold's own; "
               "mean over repeats)"),
        column("recall", pa.float64(), "held-out recall (sensitivity, 0-1) at the threshold (oof: each outer "
               "fold's own; mean over repeats)"),
        column("specificity", pa.float64(), "held-out specificity (0-1) at the threshold (oof: each outer fold's "
               "own; mean over repeats)"),
        column("brier", pa.float64(), "oof: Brier score of probabilities from the calibration (oof.calibration: "
               "platt or isotonic) fitted on each outer fold's inner scores, mean over repeats; null otherwise"),
        column("n_breasts", pa.int64(), "oof: breasts scored (patient, exam, side; an image without a side is a "
               "breast of its own); null otherwise"),
        column("auc_breast", pa.float64(), "oof: AUC over breasts (a breast's score the mean of its views' "
               "scores, its label the highest), mean over repeats; null otherwise"),
        column("auc_breast_ci_low", pa.float64(), "oof: lower end of auc_breast's patient-bootstrap percentile "
               "interval (grid.ci_level); null otherwise"),
        column("auc_breast_ci_high", pa.float64(), "oof: upper end of auc_breast's patient-bootstrap percentile "
               "interval (grid.ci_level); null otherwise"),
        column("n_exams", pa.int64(), "oof: exams scored (patient, exam); null otherwise"),
        column("auc_exam", pa.float64(), "oof: AUC over exams (an exam's score the highest of its breasts', its "
               "label the highest), mean over repeats; null otherwise"),
        column("evaluation", pa.string(), "leak_free: oof (repeated patient-grouped K-fold: every image scored once "
               "per repeat, metrics per repeat then averaged) or holdout; paper: holdout", nullable=False),
        column("oof_repeats", pa.int64(), "oof: repeats of the patient-grouped K-fold; null for holdout"),
        column("interval", pa.string(), "what the AUC interval resamples: patient bootstrap or image bootstrap "
               "(paper: test rows, synthetic SMOTE rows included)"),
        column("first_repeat_auc", pa.float64(), "the AUC the permutation null is compared with, the one the "
               "reruns' procedure gives on the real labels (holdout: auc; oof: its first repeat's)"),
        column("permutations", pa.int64(), "label permutations between patients whose negative-control rerun gave "
               "an AUC (sequential control: the reruns its decision took); 0: no control ran", nullable=False),
        column("null_auc_mean", pa.float64(), "mean of the negative control's null AUCs; null: none"),
        column("null_auc_q95", pa.float64(), "95th percentile of the negative control's null AUCs; null: none"),
        column("permutation_p", pa.float64(), "one-sided permutation p of first_repeat_auc: (1 + null AUCs >= it) "
               "/ (1 + null AUCs); stopped after 10 at or above it: 10 / null AUCs; null: no negative control"),
        column("null_aucs", pa.list_(pa.float64()), "the AUC of each negative-control rerun of the protocol on "
               "labels permuted between patients (NaN: the rerun failed)"),
        column("control_seconds", pa.float64(), "seconds of the permutation control, its wall time shared equally "
               "among the cells it reran"),
        column("scale_path", pa.string(), "'exact', or the scalable estimator that replaced an exact kernel SVM "
               "(above grid.scale.max_rows_exact rows)"),
        column("weights_ids", pa.list_(pa.string()), "weights of the extractor(s) that made the embeddings (sha256 "
               "of the weight file, or random-init:<seed>)"),
        column("classifier_seconds", pa.float64(), "seconds in this cell's own fits (fits shared with other cells "
               "not counted)"),
        column("unconverged_fits", pa.int64(), "classifier fits (evaluation and permutation control) stopped at "
               "their max_iter (grid.classifier_params.<classifier>.max_iter) with a ConvergenceWarning"),
        column("cell_config", pa.string(), "every setting of the cell as JSON (the selected rows: with the cells "
               "chosen)", nullable=False),
        column("cell_hash", pa.string(), "16 hex digits of a sha256 of the cell's settings; joins "
               "grid_predictions", nullable=False),
        column("config_hash", pa.string(), "16 hex digits of a sha256 of the whole grid config", nullable=False),
    ]
)

GRID_PREDICTIONS_SCHEMA = pa.schema(
    [
        *_CELL_FIELDS,
        column("row", pa.int64(), "the row's index into the data the cell's split was made on: the extractor's "
               "labelled images sorted by image_id (paper + smote: rows from n_rows on are synthetic)",
               nullable=False),
        column("repeat", pa.int64(), "oof: the repeat the score comes from; holdout: 0", nullable=False),
        column("image_id", pa.string(), "the image of the row; null: a synthetic SMOTE row (paper protocol)"),
        column("target", pa.int8(), "the row's label, 0 or 1", nullable=False),
        column("score", pa.float64(), "the classifier's decision score of the row, held out (oof: out of fold); "
               "AUCs and thresholds are computed on it", nullable=False),
        column("probability", pa.float64(), "oof: the score as a probability (0-1) by the calibration "
               "(oof.calibration) fitted inside the training folds; null: not calibrated (holdout, selected rows)"),
        column("cell_hash", pa.string(), "the cell's hash, as in grid.parquet", nullable=False),
    ]
)

#: comparisons.parquet: extractors compared pairwise on the same images (classify.comparisons).
COMPARISONS_SCHEMA = pa.schema(
    [
        column("a", pa.string(), "the first scorer: an extractor; in finetune_vs_frozen a fine-tuned network "
               "(finetuned:<model>[/<variant>], ' (best)': the run with the best validation AUROC)",
               nullable=False),
        column("b", pa.string(), "the second scorer: an extractor; in finetune_vs_frozen the fine-tuned network's "
               "frozen features (' (best)': the frozen extractor with the best AUC on these images)",
               nullable=False),
        column("selection", pa.string(), "the selection of the pre-specified pipeline (grid.compare) whose leak_free "
               "out-of-fold scores are compared; selected: the nested choice", nullable=False),
        column("balancing", pa.string(), "the balancing of the pre-specified pipeline (grid.compare); selected: the "
               "nested choice", nullable=False),
        column("classifier", pa.string(), "the classifier of the pre-specified pipeline (grid.compare); selected: "
               "the nested choice", nullable=False),
        column("n_images", pa.int64(), "images both sides scored, the ones compared", nullable=False),
        column("n_positive", pa.int64(), "positive (label 1) images among n_images", nullable=False),
        column("auc_a", pa.float64(), "ROC AUC of a on the compared images, mean over the out-of-fold repeats"),
        column("auc_b", pa.float64(), "ROC AUC of b on the compared images, mean over the out-of-fold repeats"),
        column("difference", pa.float64(), "auc_a - auc_b"),
        column("ci_low", pa.float64(), "lower end of the difference's patient-cluster bootstrap percentile interval "
               "(grid.ci_level; each resample averages the repeats)"),
        column("ci_high", pa.float64(), "upper end of the difference's patient-cluster bootstrap percentile "
               "interval (grid.ci_level; each resample averages the repeats)"),
        column("delong_p", pa.float64(), "two-sided paired DeLong p-value on each image's repeat-mean score "
               "(assumes independent images: optimistic with several images per patient)"),
        column("holm_p", pa.float64(), "delong_p Holm-adjusted over all the comparisons of the table"),
    ]
)

#: What names one fine-tuned network on one task in the finetune tables (a row per training stage of it).
FINETUNE_RUN_KEYS: tuple[str, ...] = ("model", "variant", "pretrained_on", "task")

#: The columns the finetune tables share.
_FINETUNE_DOCS: dict[str, str] = {
    "model": "the network: resnet50, resnet18, squeezenet1_1, nyu or small_cnn (the from-scratch baseline)",
    "pretrained_on": "what its starting weights were trained on: imagenet, nyu, or none (random init)",
    "variant": "the NYU view head the run starts from (l_cc, r_cc, l_mlo or r_mlo); '' for other models",
    "task": "binary (the manifest label) or birads (the BI-RADS category itself)",
    "stage": "the stage's name in the schedule (finetune.stages)",
    "protocol": "held-out split: patient (about finetune.val_fraction of the patients, with all their images) or "
    "paper (the paper's image-level split)",
}


def _finetune_column(name: str) -> pa.Field:
    return column(name, pa.string(), _FINETUNE_DOCS[name], nullable=False)


def _metric_columns(metric: str, meaning: str) -> list[pa.Field]:
    """A validation metric and the ends of its patient-cluster bootstrap interval."""
    interval = (f"{metric}'s percentile interval under a patient-cluster bootstrap of the validation images "
                "(finetune.bootstrap, finetune.ci_level); null: undefined, or no bootstrap")
    return [column(metric, pa.float64(), meaning),
            column(f"{metric}_ci_low", pa.float64(), f"lower end of {interval}"),
            column(f"{metric}_ci_high", pa.float64(), f"upper end of {interval}")]


FINETUNE_SCHEMA = pa.schema(
    [
        _finetune_column("model"),
        _finetune_column("pretrained_on"),
        _finetune_column("variant"),  # the NYU view head (l_cc ... r_mlo); '' elsewhere
        _finetune_column("task"),
        _finetune_column("stage"),
        column("stage_index", pa.int32(), "the stage's position in finetune.stages, from 0 (small_cnn skips the "
               "head-only stages)", nullable=False),
        column("train", pa.string(), "what trained: head (the head alone, the rest frozen) or all (every "
               "parameter)", nullable=False),
        column("image_size", pa.int32(), "input size in pixels: ImageNet inputs size x size, NYU windows scaled to "
               "size rows", nullable=False),
        column("epochs", pa.int32(), "the stage's completed epochs in its final checkpoint (a resumed run's "
               "earlier epochs included)", nullable=False),
        # Each metric, then its interval under a patient-cluster bootstrap (finetune.bootstrap, .ci_level).
        *_metric_columns("accuracy", "validation accuracy (0-1) of the final checkpoint's argmax predictions"),
        *_metric_columns("auroc", "validation AUROC of the final checkpoint: binary, of the class-1 probability; "
                         "birads, one-vs-rest macro over the classes with positives and negatives; null: one class"),
        *_metric_columns("precision", "validation precision (0-1) of the argmax predictions: binary, of class 1; "
                         "birads, macro over the classes present (zero_division 0)"),
        *_metric_columns("recall", "validation recall (0-1) of the argmax predictions: binary, of class 1; birads, "
                         "macro over the classes present (zero_division 0)"),
        column("n_train", pa.int64(), "images in the training split", nullable=False),
        column("n_val", pa.int64(), "validation images predicted (an unreadable one is in the errors table "
               "instead)", nullable=False),
        _finetune_column("protocol"),
        column("classes", pa.list_(pa.string()), "the task's classes in target order: '0', '1' for binary; the "
               "BI-RADS categories present, in BI-RADS order, for birads", nullable=False),
        column("checkpoint_uri", pa.string(), "the stage's final checkpoint: a local path or an s3:// URI",
               nullable=False),
        column("weights_id", pa.string(), "the weights the run started from: sha256 of the weight file, or "
               "random-init:<seed>", nullable=False),
        column("run_name", pa.string(), "the Ray Train run name, <finetune.name>-<model>[-<variant>]-"
               "<pretrained_on>-<task>-<protocol>-<stage>; the same name resumes", nullable=False),
        column("config_hash", pa.string(), "16 hex digits of a sha256 of the finetune config", nullable=False),
    ]
)

FINETUNE_PREDICTIONS_SCHEMA = pa.schema(
    [
        _finetune_column("model"),
        _finetune_column("pretrained_on"),
        _finetune_column("variant"),
        _finetune_column("task"),
        _finetune_column("protocol"),
        _finetune_column("stage"),
        column("image_id", pa.string(), "a validation image", nullable=False),
        column("patient_id", pa.string(), "the image's patient (the bootstrap resamples patients)", nullable=False),
        column("target", pa.int64(), "the true class, an index into the run's classes", nullable=False),
        column("prediction", pa.int64(), "the predicted class, the argmax of probabilities", nullable=False),
        column("probabilities", pa.list_(pa.float32()), "the final checkpoint's probability (0-1) of each class, "
               "in the order of classes", nullable=False),
    ]
)


#: results/external.parquet (grid.external): every leak_free pipeline fitted on one source, scored on another.
EXTERNAL_SCHEMA = pa.schema([
    column("extractor", pa.string(), "the extractor whose embeddings the pipeline read", nullable=False),
    column("train", pa.string(), "the source (data.sources) every fit used, its choices by CV inside it",
           nullable=False),
    column("test", pa.string(), "the source it was scored on, once", nullable=False),
    column("selection", pa.string(), "feature selection of the pipeline: none or lasso", nullable=False),
    column("balancing", pa.string(), "class balancing of the pipeline: none or smote", nullable=False),
    column("classifier", pa.string(), "the classifier: svm_linear, svm_rbf or logreg", nullable=False),
    column("status", pa.string(), "'ok', or 'failed' (see error)", nullable=False),
    column("error", pa.string(), "why the row failed ('<ErrorType>: <message>' or the unusable source); null: ok"),
    column("n_train", pa.int64(), "labelled images of the train source", nullable=False),
    column("n_train_positive", pa.int64(), "positives among them", nullable=False),
    column("n_test", pa.int64(), "labelled images of the test source", nullable=False),
    column("n_test_positive", pa.int64(), "positives among them", nullable=False),
    column("internal_auc", pa.float64(), "the internal estimate: leak_free CV AUC inside the train source"),
    column("internal_ci_low", pa.float64(), "its bootstrap interval's low end (patients resampled)"),
    column("internal_ci_high", pa.float64(), "its bootstrap interval's high end"),
    column("external_auc", pa.float64(), "AUC on the test source of the pipeline fitted on all of train; null: failed"),
    column("external_ci_low", pa.float64(), "its patient-bootstrap interval's low end"),
    column("external_ci_high", pa.float64(), "its patient-bootstrap interval's high end"),
    column("drop", pa.float64(), "internal_auc - external_auc: how much the internal estimate overstated"),
])

#: results/subgroups.parquet: the pre-specified pipelines' out-of-fold AUC per subgroup.
SUBGROUPS_SCHEMA = pa.schema([
    column("extractor", pa.string(), "the extractor whose embeddings the pipeline read", nullable=False),
    column("selection", pa.string(), "feature selection of the pipeline ('selected': the nested choice)",
           nullable=False),
    column("balancing", pa.string(), "class balancing of the pipeline ('selected': the nested choice)",
           nullable=False),
    column("classifier", pa.string(), "the classifier ('selected': the nested choice)", nullable=False),
    column("subgroup", pa.string(), "the manifest column the subgroup is of: view, laterality, density, "
           "birads_group, site or device", nullable=False),
    column("value", pa.string(), "its value (e.g. CC, L, B, 4-6, a site or device name)", nullable=False),
    column("n_images", pa.int64(), "labelled images in the subgroup", nullable=False),
    column("n_patients", pa.int64(), "patients they belong to", nullable=False),
    column("n_positive", pa.int64(), "positives among the images", nullable=False),
    column("auc", pa.float64(), "leak_free out-of-fold AUC over the subgroup's images (mean over repeats); null: "
           "one class only"),
    column("ci_low", pa.float64(), "patient-cluster bootstrap interval's low end"),
    column("ci_high", pa.float64(), "patient-cluster bootstrap interval's high end"),
    column("small", pa.bool_(), "fewer than 30 images or fewer than 5 of either class: shown, not to be read as a "
           "difference", nullable=False),
])
