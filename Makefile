# Two commands for a newcomer: `make study` (the embedded demo) and `make test`. Both set up .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup study test clean

setup: $(STAMP)

# uv installs what pip would, several times faster (torch's CUDA wheels are most of the bytes); it does not read
# pip's configuration, so this machine's extra indexes and constraints are handed to it.
PIP_INDEXES := $(shell $(PYTHON) -m pip config get global.extra-index-url 2>/dev/null)
PIP_CONSTRAINTS := $(shell $(PYTHON) -m pip config get global.constraint 2>/dev/null)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python --index-strategy unsafe-best-match \
		$(addprefix --extra-index-url ,$(PIP_INDEXES)) $(addprefix --constraint ,$(PIP_CONSTRAINTS)) -e '.[test]'
	touch $(STAMP)

study: setup
	$(BIN)/python jobs/full_study.py

# The tests run as three pytest processes at once, each with its log printed at the end: a whole study leaves a
# core idle much of the time (process and Ray start-up, waits on workers), which the others fill.
# - the tests that start no Ray (tests/conftest.py refuses Ray there: MAMMO_RAY_TESTS_WITHOUT_RAY);
# - RAY_TESTS_FIRST, about half of the Ray tests' time, with a Ray of its own;
# - everything else (a new test file lands here), with a Ray of its own.
# Each Ray group has its own RAY_TMPDIR: a ray.init() without an address joins the cluster named in that folder's
# ray_current_cluster (the multi-node tests' cluster writes one), so the groups never meet each other's Ray.
RAYLESS_TESTS := tests/classify tests/datasets tests/imaging tests/models tests/deploy \
	tests/training/test_augment.py tests/training/test_checkpoint.py tests/training/test_metrics.py \
	tests/training/test_models.py tests/training/test_splits.py \
	tests/test_pass_plan.py tests/test_report_finetune.py tests/test_report_markdown.py \
	tests/test_report_preprocessing.py tests/test_storage.py tests/test_verdict.py \
	tests/test_config.py tests/test_house.py tests/test_refusals.py tests/test_compare.py \
	tests/test_source_counts.py tests/test_faults.py tests/test_benchmarks.py tests/test_transfer.py
RAY_TESTS_FIRST := tests/test_crash_resume.py tests/test_multinode.py tests/test_finetune.py tests/test_image_pass.py \
	tests/test_study.py tests/test_memory_bounds.py tests/test_output_lock.py tests/test_output_layout.py
PYTEST := $(BIN)/python -m pytest

test: setup
	$(BIN)/python -m ruff check mammo_ray tests jobs
	$(BIN)/lint-imports
	@rm -f .tests-*.log; \
	MAMMO_RAY_TESTS_WITHOUT_RAY=1 $(PYTEST) $(RAYLESS_TESTS) > .tests-without-ray.log 2>&1 & rayless=$$!; \
	RAY_TMPDIR=$$(mktemp -d /tmp/mr-ray-XXXX) $(PYTEST) $(RAY_TESTS_FIRST) > .tests-ray-first.log 2>&1 & first=$$!; \
	RAY_TMPDIR=$$(mktemp -d /tmp/mr-ray-XXXX) $(PYTEST) $(addprefix --ignore=,$(RAYLESS_TESTS) $(RAY_TESTS_FIRST)); status=$$?; \
	wait $$first || status=1; wait $$rayless || status=1; \
	for log in .tests-ray-first.log .tests-without-ray.log; do echo "--- $$log:"; cat $$log; done; exit $$status

clean:
	rm -rf $(VENV) output .pytest_cache
