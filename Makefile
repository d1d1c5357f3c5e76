# Two commands for a newcomer: `make study` (the embedded demo) and `make test`. Both set up .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup study test clean

setup: $(STAMP)

# uv installs what pip would, several times faster (torch's CUDA wheels are most of the bytes); it does not read
# pip's configuration, so this machine's extra indexes and constraints are handed to it. --compile-bytecode as pip
# does: without .pyc files every process (each Ray worker) compiles torch's Python again when it imports it.
PIP_INDEXES := $(shell $(PYTHON) -m pip config get global.extra-index-url 2>/dev/null)
PIP_CONSTRAINTS := $(shell $(PYTHON) -m pip config get global.constraint 2>/dev/null)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python --index-strategy unsafe-best-match \
		$(addprefix --extra-index-url ,$(PIP_INDEXES)) $(addprefix --constraint ,$(PIP_CONSTRAINTS)) -e '.[test]'
	touch $(STAMP)

study: setup
	$(BIN)/python jobs/full_study.py

# The tests that start no Ray run in a second pytest beside the Ray tests, its log printed at the end: the Ray tests
# leave a core idle part of the time (process and Ray start-up, waits on workers), which these fill. tests/conftest.py
# refuses Ray in that run (MAMMO_RAY_TESTS_WITHOUT_RAY). Two Ray test processes at once were slower than one: the
# Ray tests keep both cores busy most of the time, and two clusters' workers contend.
RAYLESS_TESTS := tests/classify tests/datasets tests/imaging tests/models tests/deploy \
	tests/training/test_augment.py tests/training/test_checkpoint.py tests/training/test_metrics.py \
	tests/training/test_models.py tests/training/test_splits.py \
	tests/test_pass_plan.py tests/test_report_finetune.py tests/test_report_markdown.py \
	tests/test_report_preprocessing.py tests/test_storage.py tests/test_verdict.py \
	tests/test_config.py tests/test_house.py tests/test_refusals.py tests/test_compare.py \
	tests/test_source_counts.py tests/test_faults.py tests/test_benchmarks.py tests/test_transfer.py \
	tests/test_heatmap_figure.py tests/test_cli_help.py tests/test_readme_reference.py tests/test_progress.py tests/test_study_plan.py tests/test_report_figures.py tests/test_packages.py
PYTEST := $(BIN)/python -m pytest

test: setup
	$(BIN)/python -m ruff check mammo_ray tests jobs
	$(BIN)/lint-imports
	@rm -f .tests-*.log; \
	MAMMO_RAY_TESTS_WITHOUT_RAY=1 $(PYTEST) $(RAYLESS_TESTS) > .tests-without-ray.log 2>&1 & rayless=$$!; \
	$(PYTEST) --durations=25 $(addprefix --ignore=,$(RAYLESS_TESTS)); status=$$?; \
	wait $$rayless || status=1; \
	echo "--- the tests without Ray (run beside the others):"; cat .tests-without-ray.log; exit $$status

clean:
	rm -rf $(VENV) output .pytest_cache
