"""Security: token auth on the local quick start, credentials never logged or written, no PHI in any output.

One whole study runs as `ray job submit` would run it (its own process, its own local Ray with its logs
under a folder of ours), its output on S3 (moto), with credentials and DICOM PHI no output may contain; then every
byte it wrote (S3 objects, Parquet contents and metadata decoded, Ray logs, its stdout/stderr) is scanned.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from mammo_ray import storage
from mammo_ray.datasets.synthetic import SyntheticSource, generate_cohort

REPO = Path(__file__).resolve().parent.parent
#: The study's own credentials: moto takes any; no output may ever show them.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIAMAMMORAYLEAKCHECK7",
               "AWS_SECRET_ACCESS_KEY": "mR-secret/never+written/4aZ9qLx"}
#: What a clinical DICOM carries and no output may show.
PHI = {"PatientName": "Doe^Jane^Quartermaine", "PatientBirthDate": "19230405", "AccessionNumber": "ACC-PHI-99812",
       "InstitutionName": "Saint Phi Memorial Hospital", "PatientID": "MRN-PHI-556677",
       "ReferringPhysicianName": "Watson^Irene", "InstitutionAddress": "221B Phi Street"}


#: The pseudonymisation salt of the PACS export: no output may show it either.
SALT = {"salt": "pacs-export-salt-7Qm2xVw9Lk4Zr8"}
#: Patients of the export (4 images each).
PATIENTS = 8  # the fewest whose leak_free folds (2, inner 2) fit: the study exports a model package


def _with_phi(path: str, patient: str) -> bytes:
    """A synthetic DICOM as a clinical export writes it: every PHI tag set, PatientID the MRN (one per patient)."""
    import pydicom

    dataset = pydicom.dcmread(path)
    for keyword, value in PHI.items():
        setattr(dataset, keyword, value)
    dataset.PatientID = f"{PHI['PatientID']}-{patient}"
    out = Path(path).with_suffix(".phi.dcm")
    dataset.save_as(out)
    return out.read_bytes()


def _pacs_path(patient: str, index: int) -> str:
    """A PACS-style export's path: the folder named after the patient (name, birth date, MRN), the file after the
    exam (accession number, institution)."""
    folder = f"{PHI['PatientName']}_{PHI['PatientBirthDate']}_{PHI['PatientID']}-{patient}"
    return f"{folder}/{PHI['AccessionNumber']}_{PHI['InstitutionName']}_{index:03d}.dcm"


def _readable_text(name: str, data: bytes) -> list[bytes]:
    """The bytes of a file as stored, plus, for Parquet (compressed), every value and its metadata decoded, and
    for a model package's pipeline (a zip), its members."""
    views = [data]
    if name.endswith(".skops"):  # a zip: every member decompressed
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            views += [archive.read(member) for member in archive.namelist()]
    if name.endswith(".parquet"):
        table = pq.read_table(pa.BufferReader(data)) if data[:4] == b"PAR1" else None
        if table is not None:
            views.append(str(table.schema.metadata or {}).encode())
            views += [str(column.to_pylist()).encode() for column in table.columns]
    return views


def _launch(s3_endpoint: str) -> dict:
    """Write a PACS-style DICOM export (PHI in headers, folder and file names) on the local disk and start the
    whole study on it as a Ray job runs it, its output on S3: its own process, its own local Ray with its logs
    under a folder of ours, the dicom_folder adapter. Returns what `_collect` needs."""
    import boto3
    import pydicom

    work = Path(tempfile.mkdtemp(prefix="/tmp/mr-sec-"))  # short: Ray's unix sockets live under it
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="security-study")
    root, output = str(work / "store"), "s3://security-study/out"
    cohort = generate_cohort(str(work / "cohort"), SyntheticSource(patients=PATIENTS, rows=96, positive_fraction=0.5))
    labels = []
    for index, row in enumerate(cohort.itertuples(index=False)):
        data = _with_phi(row.uri, row.patient_id.rsplit("/", 1)[-1])
        storage.write_bytes(f"{root}/export/{_pacs_path(row.patient_id.rsplit('/', 1)[-1], index)}", data)
        labels.append({"SOPInstanceUID": str(pydicom.dcmread(row.uri).SOPInstanceUID), "label": row.label})
    storage.write_bytes(f"{root}/labels.csv", pd.DataFrame(labels).to_csv(index=False).encode())
    config = work / "study.yaml"
    # Small but whole: every stage runs and writes its tables and the report (the scan needs their bytes,
    # not their statistical power).
    config.write_text(yaml.safe_dump({
        "name": "security", "output": output,
        "data": {"adapter": {"name": "dicom_folder", "locations": str(work / "locations.csv"), "args": {
            "images_uri": f"{root}/export", "dataset": "pacs", "labels_uri": f"{root}/labels.csv", **SALT}}},
        "ray": {"num_cpus": 2},
        "embed": {"extractors": [{"name": "imagenet_resnet18", "input_size": 32}]},
        "zero_shot": {"nyu_scale": 0.125},
        "grid": {"cv_folds": 2, "bootstrap": 10, "classifiers": ["logreg"], "selection": ["none"],
                 "permutations": 2, "oof": {"repeats": 1, "folds": 2, "threshold_folds": 2},
                 "compare": {"balancing": "none"}},
        "finetune": {"models": [{"name": "small_cnn"}], "tasks": ["binary"],
                     "stages": [{"name": "all", "size": 32, "epochs": 1}], "cpus_per_worker": 0.5,
                     "data_cpus": 0.5},
    }))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(CREDENTIALS)
    env["RAY_TMPDIR"] = str(work / "ray")  # the run's Ray logs land here, to be scanned too
    with open(work / "stdout", "wb") as stdout, open(work / "stderr", "wb") as stderr:
        process = subprocess.Popen([sys.executable, "jobs/full_study.py", "--config", str(config)], cwd=REPO,
                                   env=env, stdout=stdout, stderr=stderr, start_new_session=True)
    return {"work": work, "root": root, "output": output, "process": process}


def _collect(run: dict) -> dict[str, list[bytes]]:
    """Wait for a launched study; {where: [its bytes, decoded views]} of every output file, Ray log and console
    stream, the inputs and the user's locations file."""
    work, root, process = run["work"], run["root"], run["process"]
    process.wait(timeout=1200)
    stdout, stderr = (work / "stdout").read_bytes(), (work / "stderr").read_bytes()
    assert process.returncode == 0, stderr[-3000:].decode(errors="replace")
    found: dict[str, list[bytes]] = {"stdout": [stdout], "stderr": [stderr]}
    for uri in storage.list_files(run["output"]):
        found[uri] = _readable_text(uri, storage.read_bytes(uri))
    for path in (work / "ray").rglob("*"):
        if path.is_file() and not path.is_symlink():
            found[str(path)] = [path.read_bytes()]
    found["<inputs>"] = [storage.read_bytes(storage.list_files(f"{root}/export")[0]),
                         storage.list_files(f"{root}/export")[0].encode()]
    found["<locations>"] = [(work / "locations.csv").read_bytes()]
    return found


@pytest.fixture(scope="module")
def scanned_run(s3_endpoint: str) -> Iterator[dict[str, list[bytes]]]:
    """The whole study on a PACS-style DICOM export on the local disk read with the dicom_folder adapter, its
    output on S3, run as a Ray job runs it; {where: [its bytes, decoded views]} of every output file, Ray log and
    console stream. (One study: the scan reads what the writers wrote, which is the same on either store.)"""
    run = _launch(s3_endpoint)
    try:
        yield _collect(run)
    finally:
        if run["process"].poll() is None:
            os.killpg(run["process"].pid, signal.SIGKILL)
            run["process"].wait()
        shutil.rmtree(run["work"], ignore_errors=True)


def _outputs(found: dict[str, list[bytes]]) -> dict[str, list[bytes]]:
    """What the study wrote or printed (the inputs and the user's own locations file left out)."""
    return {where: views for where, views in found.items() if not where.startswith("<")}


def _leaks(found: dict[str, list[bytes]], secrets: dict[str, str]) -> list[str]:
    return [f"{name} in {where}" for where, views in found.items() for name, secret in secrets.items()
            if any(secret.encode() in view for view in views)]


@pytest.mark.slow
def test_the_run_wrote_every_stage_and_its_logs(scanned_run):
    outputs = [w for w in scanned_run if "/out/" in w]
    for table in ("manifest.parquet", "ingest/images.parquet", "embeddings/", "zero_shot/", "results/grid.parquet",
                  "results/finetune", "models/", "pipeline.skops", "card.md", "network.safetensors",
                  "report/report.html", "report/provenance.json"):
        assert any(table in uri for uri in outputs), table
    assert sum(1 for w in scanned_run if "/logs/" in w) > 5  # the run's Ray logs were scanned
    # The inputs did carry the PHI, in the header and the path: every image the study read holds all of it.
    assert _leaks({"input": scanned_run["<inputs>"]}, PHI) == [f"{name} in input" for name in PHI]
    # ... and the user's own locations file (outside the output) maps every locator back to its file.
    locations = pd.read_csv(io.BytesIO(scanned_run["<locations>"][0]))
    assert len(locations) == 4 * PATIENTS and locations["locator"].str.match(r"^pseudo://pacs/[0-9a-f]{16}\.dcm$").all()
    manifest = pq.read_table(pa.BufferReader(next(v[0] for w, v in scanned_run.items()
                                                  if w.endswith("out/manifest.parquet")))).to_pandas()
    assert sorted(manifest["uri"]) == sorted(locations["locator"])


@pytest.mark.slow
def test_no_credential_in_any_output_or_log(scanned_run):
    assert _leaks(_outputs(scanned_run), SALT) == []
    assert _leaks(scanned_run, CREDENTIALS) == []


@pytest.mark.slow
def test_no_phi_in_any_output_or_log(scanned_run):
    assert _leaks(_outputs(scanned_run), PHI) == []


@pytest.mark.slow
def test_the_ray_token_is_in_no_output_or_log(scanned_run):
    token = (Path.home() / ".ray" / "auth_token").read_text().strip()
    assert len(token) >= 32
    assert _leaks(scanned_run, {"ray token": token}) == []


def test_the_scan_finds_what_it_looks_for():
    """A leak would be seen: the checks above are not vacuous."""
    found = {"x.parquet": [b"...Doe^Jane^Quartermaine..."], "log": [CREDENTIALS["AWS_SECRET_ACCESS_KEY"].encode()]}
    assert _leaks(found, PHI) == ["PatientName in x.parquet"]
    assert _leaks(found, CREDENTIALS) == ["AWS_SECRET_ACCESS_KEY in log"]


def test_the_local_quick_start_runs_ray_with_token_auth_and_refuses_a_client_without_it(tmp_path):
    script = """
import os, subprocess, sys
from mammo_ray.ray_setup import ensure_ray
from mammo_ray.study import demo_config
import ray
from ray._raylet import AuthenticationMode, get_authentication_mode
config = demo_config()
ensure_ray(config.model_copy(update={"ray": config.ray.model_copy(update={"num_cpus": 1})}))
print("mode", get_authentication_mode() == AuthenticationMode.TOKEN, flush=True)
address = ray.get_runtime_context().gcs_address
stranger = {**os.environ, "HOME": os.environ["STRANGER_HOME"], "RAY_AUTH_MODE": "token"}
joined = subprocess.run([sys.executable, "-c", f"import ray; ray.init(address='{address}')"], env=stranger,
                        capture_output=True, text=True, timeout=120)
print("stranger", joined.returncode, "AuthenticationError" in joined.stderr, flush=True)
ray.shutdown()
"""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    env["HOME"] = str(tmp_path / "home")  # a fresh home: Ray must make the token itself
    env["STRANGER_HOME"] = str(tmp_path / "stranger")
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="/tmp/mr-auth-")
    try:
        run = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=300, check=False)
    finally:
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "mode True" in run.stdout and "stranger 1 True" in run.stdout
    assert (tmp_path / "home" / ".ray" / "auth_token").exists()


def test_a_study_asked_to_run_ray_without_auth_refuses_before_any_work(tmp_path):
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({"output": str(tmp_path / "out"), "data": {"synthetic": {"patients": 1}}}))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "disabled"
    run = subprocess.run([sys.executable, "jobs/full_study.py", "--config", str(config), "--stages", "manifest",
                          "ingest"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 2 and "config ray: RAY_AUTH_MODE=disabled" in run.stderr
    assert not (tmp_path / "out").exists()
