"""Published values to print beside ours: the paper's Table 1 and Table 2, from a small CSV the user gives.

`report.published` points at a CSV in long format, one value per row (the paper's own values ship as
`jobs/configs/paper_tables.csv`; docs/design.md, "The paper's numbers", records how they were made):

    table,extractor,selection,balancing,classifier,model,pretrained_on,task,metric,value
    2,nyu_avg,lasso,smote,svm_linear,,,,accuracy,0.80
    1,,,,,resnet50,imagenet,binary,accuracy,0.70

Table 2 rows name a grid cell (extractor, selection, balancing, classifier: our names) and one of
TABLE2_METRICS; the paper's numbers come from its own (leaky) procedure, so the report sets them beside
our `paper` protocol. Table 1 rows name a fine-tuned (model, pretrained_on, task), for the NYU model its
view head (`variant`), and one of TABLE1_METRICS; they sit beside our last training stage of that model.
Every problem is a ConfigError naming `report.published`, raised before the study starts.
"""

from __future__ import annotations

import io

import pandas as pd

from mammo_ray import storage
from mammo_ray.errors import ConfigError, StorageError

KEY = "report.published"
TABLE1_KEYS: tuple[str, ...] = ("model", "pretrained_on", "task")
#: Optional: the NYU model's fine-tuned view head (l_cc, r_cc, l_mlo, r_mlo) of a Table 1 row; empty elsewhere.
VARIANT = "variant"
#: What a Table 1 row is matched on: the model, its view head and the task. Our run's weights may differ from
#: the paper's (random-init here, ImageNet there): the published value still sits beside it, both weights named.
TABLE1_MATCH: tuple[str, ...] = ("model", VARIANT, "task")
TABLE2_KEYS: tuple[str, ...] = ("extractor", "selection", "balancing", "classifier")
TABLE1_METRICS: tuple[str, ...] = ("accuracy", "auroc", "precision", "recall")
TABLE2_METRICS: tuple[str, ...] = ("accuracy", "cv_balanced_accuracy_mean", "cv_balanced_accuracy_std", "auc",
                                   "n_features")
COLUMNS: tuple[str, ...] = ("table", *TABLE2_KEYS, *TABLE1_KEYS, "metric", "value")


def read_published(uri: str) -> pd.DataFrame:
    """The published values at `uri`, checked: every row names its table's keys and a known metric."""
    try:
        frame = pd.read_csv(io.BytesIO(storage.read_bytes(uri)), dtype=str, keep_default_na=False)
    except StorageError as error:
        raise ConfigError(KEY, str(error)) from None
    except (ValueError, pd.errors.ParserError) as error:
        raise ConfigError(KEY, f"{uri} is not a CSV: {error}") from None
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ConfigError(KEY, f"{uri}: missing column(s) {missing}; expected {list(COLUMNS)}")
    problems = []
    for index, row in frame.iterrows():
        where = f"{uri} row {index + 2}"  # + header, 1-based
        keys, metrics = {"1": (TABLE1_KEYS, TABLE1_METRICS), "2": (TABLE2_KEYS, TABLE2_METRICS)}.get(
            row["table"].strip(), ((), ()))
        if not keys:
            problems.append(f"{where}: table {row['table']!r} is not 1 or 2")
            continue
        empty = [k for k in keys if not row[k].strip()]
        if empty:
            problems.append(f"{where}: table {row['table']} needs {', '.join(empty)}")
        if row["metric"] not in metrics:
            problems.append(f"{where}: metric {row['metric']!r} is not one of {', '.join(metrics)}")
        try:
            float(row["value"])
        except ValueError:
            problems.append(f"{where}: value {row['value']!r} is not a number")
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise ConfigError(KEY, "; ".join(problems[:10]) + more)
    frame["value"] = frame["value"].astype(float)
    frame["table"] = frame["table"].str.strip()
    if VARIANT not in frame.columns:
        frame[VARIANT] = ""
    return frame


def beside(ours: pd.DataFrame, published: pd.DataFrame | None, table: str) -> pd.DataFrame:
    """`ours` with a `<metric> (published)` column per published metric of `table`, matched on its keys.

    Table 1 matches on (model, variant, task) and adds `pretrained_on (published)`, so a run with other
    weights than the paper's still shows the paper's number and says what each used; a NYU run sits beside
    the published row of its own view head.
    """
    if published is None:
        return ours
    keys = list(TABLE1_MATCH if table == "1" else TABLE2_KEYS)
    rows = published[published["table"] == table].copy()
    if rows.empty:
        return ours
    rows["column"] = [f"{metric} (published)" for metric in rows["metric"]]
    wide = rows.pivot_table(index=keys, columns="column", values="value", aggfunc="first")
    if table == "1":
        weights = rows.groupby(keys)["pretrained_on"].agg(lambda values: ", ".join(sorted(set(values))))
        wide.insert(0, "pretrained_on (published)", weights)
    return ours.merge(wide.reset_index(), on=keys, how="left")
