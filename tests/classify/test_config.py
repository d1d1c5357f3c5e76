"""The grid as data: axes and settings from YAML, strict keys, stable hashes."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from mammo_ray.classify.cells import cell_settings, grid_cells
from mammo_ray.config import GridCell, GridConfig

YAML = """
extractors: [imagenet_resnet50, nyu_lcc]
selection: [lasso]
balancing: [none, smote]
classifiers: [logreg, svm_rbf]
protocols: [paper]
cv_folds: 5
lasso: {alpha: cv}
scale: {max_rows_exact: 500, policy: refuse}
trial_grouping: cell
"""


def test_every_axis_is_editable_in_yaml():
    config = GridConfig.model_validate(yaml.safe_load(YAML))
    cells = grid_cells(config)
    assert len(cells) == 2 * 1 * 2 * 2 * 1
    assert cells[0] == GridCell("imagenet_resnet50", "lasso", "none", "logreg", "paper")
    assert config.lasso.alpha == "cv" and config.scale.policy == "refuse"


def test_defaults_are_the_papers_grid_with_leak_free_first():
    config = GridConfig()
    assert config.extractors is None  # every embeddings table present
    assert len(grid_cells(config, ["a", "b", "c"])) == 3 * 2 * 2 * 3 * 2
    assert config.protocols[0] == "leak_free" and config.cv_folds == 10
    assert abs(config.test_fraction - 0.33) < 1e-9


def test_unknown_keys_and_values_are_errors_naming_the_key():
    with pytest.raises(ValidationError, match="classifers"):
        GridConfig.model_validate({"classifers": ["logreg"]})
    with pytest.raises(ValidationError, match="balancing"):
        GridConfig.model_validate({"balancing": ["adasyn"]})
    with pytest.raises(ValidationError, match="twice"):
        GridConfig.model_validate({"protocols": ["paper", "paper"]})
    with pytest.raises(ValidationError, match="alpha"):
        GridConfig.model_validate({"lasso": {"alpha": -1}})


def test_hashes_change_with_settings_and_cell_settings_name_what_matters():
    base = GridConfig()
    assert base.config_hash() == GridConfig().config_hash()
    assert base.config_hash() != GridConfig(seed=1).config_hash()
    cell = GridCell("x", "none", "smote", "svm_rbf", "leak_free")
    settings = cell_settings(base, cell)
    assert settings["smote"] == {"k_neighbors": 5} and "lasso" not in settings
    assert settings["classifier_params"] == {"C": 1.0, "gamma": "scale", "max_iter": 1_000_000}
    assert settings["standardise"] is True
