"""A night with faults, under Prefect's test harness (a real local API), against a real PostGIS and Orthanc.

Thirteen items (eight rasters, a corrupt raster, two NIfTI volumes, two DICOM series). The PACS answers
503 to its first connections, the database is down (connections closed) for its first ones, and a dask
worker process is killed (SIGKILL) while it evaluates windows. Every healthy item must complete, the
corrupt one must be reported with its message, every result must reach its target exactly once, and a
second night must do nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from segflow.synthetic import write_synthetic_scene

from .faults import SERVICE_UNAVAILABLE, FlakyProxy
from .orthanc import Orthanc, running_orthanc
from .orthanc import missing as orthanc_missing
from .postgis import Postgis, running_postgis
from .postgis import missing as postgis_missing
from .test_dicom import hu_volume, write_series

pytestmark = pytest.mark.slow
prefect_testing = pytest.importorskip("prefect.testing.utilities")
RASTERS = 8


@pytest.fixture(scope="module")
def harness() -> Iterator[None]:
    with prefect_testing.prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    if orthanc_missing():
        pytest.skip(orthanc_missing() or "")
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture(scope="module")
def postgis() -> Iterator[Postgis]:
    if postgis_missing():
        pytest.skip(postgis_missing() or "")
    with running_postgis() as server:
        yield server


def _inbox(folder: Path) -> Path:
    inbox = folder / "incoming"
    for k in range(RASTERS):
        sub = inbox / ("2026-11-29" if k % 2 else "2026-11-30")
        sub.mkdir(parents=True, exist_ok=True)
        write_synthetic_scene(sub / f"scene{k}.tif", width=160 + 8 * k, height=144, seed=k)
    good = (inbox / "2026-11-30" / "scene0.tif").read_bytes()
    (inbox / "corrupt.tif").write_bytes(good[: len(good) // 3])
    for k in range(2):
        affine = np.diag([0.9, 0.8, 2.0, 1.0])
        nib.save(nib.Nifti1Image(np.transpose(hu_volume((10, 20, 18), seed=k)), affine), inbox / f"ct{k}.nii.gz")
        write_series(inbox / f"patient{k}" / "ct", hu_volume((8, 18, 16), seed=10 + k))
    return inbox


def _table(postgis: Postgis) -> dict[str, list[int]]:
    with postgis.admin() as connection:
        rows = connection.execute("SELECT scene_id, fid FROM night ORDER BY scene_id, fid").fetchall()
    out: dict[str, list[int]] = {}
    for scene, fid in rows:
        out.setdefault(scene, []).append(fid)
    return out


def _prefect_texts() -> tuple[list[str], list[str]]:
    """The markdown artifacts "segflow-batch-report", and every log line and flow-run parameter set Prefect holds."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        logs = [log.message for log in client.read_logs()]
        artifacts = [str(a.data) for a in client.read_artifacts() if a.key == "segflow-batch-report"]
        parameters = [json.dumps(run.parameters) for run in client.read_flow_runs()]
    assert logs and parameters
    return artifacts, logs + parameters


def _night(inbox: Path, output: Path, pacs: FlakyProxy, db: FlakyProxy, postgis: Postgis) -> dict[str, Any]:
    from pipelines.batch_flow import nightly_batch_flow

    return nightly_batch_flow(inbox=str(inbox), output=str(output), workers=2, retries=4, retry_delay=0.2,
                              postgis=postgis.url("night", with_password=False, port=db.port),
                              pacs=f"dicomweb+http://127.0.0.1:{pacs.port}/dicom-web")


def test_a_night_with_faults_completes_every_healthy_item_and_delivers_each_exactly_once(
        harness: None, orthanc: Orthanc, postgis: Postgis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inbox, output = _inbox(tmp_path), tmp_path / "segflow"
    killed = tmp_path / "worker-killed"
    monkeypatch.setenv("PGPASSWORD", postgis.password)
    monkeypatch.setenv("SEGFLOW_FAILPOINT", "evaluate:2")  # the second evaluation of some worker process...
    monkeypatch.setenv("SEGFLOW_FAILPOINT_ONCE", str(killed))  # ...of the first process to get there, once
    # refusals that only the flow's retries of transient failures get through (a delivery tries once per
    # attempt; with 4 retries no delivery can meet more refusals than it has attempts)
    with FlakyProxy(orthanc.http_port, fail_first=2, answer=SERVICE_UNAVAILABLE) as pacs, \
            FlakyProxy(postgis.port, fail_first=4) as db:
        report = _night(inbox, output, pacs, db, postgis)
        assert killed.exists()  # a worker really died mid-run
        assert pacs.failed == 2 and db.failed == 4  # both targets really refused
        items = {i["name"]: i for i in report["items"]}
        assert len(items) == RASTERS + 5
        bad = items.pop("corrupt.tif")
        assert bad["status"] == "failed" and bad["exit_code"] == 2 and bad["attempts"] == 1
        assert "corrupt.tif" in bad["error"] and "truncated or corrupt" in bad["error"]
        assert {i["status"] for i in items.values()} == {"computed"}, {n: i["error"] for n, i in items.items()}
        rasters = {n for n, i in items.items() if i["kind"] == "raster"}
        dicoms = {n for n, i in items.items() if i["kind"] == "dicom"}
        assert len(rasters) == RASTERS and dicoms == {"patient0__ct", "patient1__ct"}
        for name in rasters | dicoms:
            target = "postgis" if name in rasters else "pacs"
            assert items[name]["deliveries"][target]["status"] == "confirmed", items[name]["deliveries"]
        # PostGIS: each scene's rows are its polygons, written once
        table = _table(postgis)
        assert set(table) == rasters
        for name in rasters:
            receipt = json.loads((output / name / "postgis.json").read_text())
            assert len(table[name]) == receipt["rows"] == items[name]["deliveries"]["postgis"]["count"]
            assert items[name]["classes"] and sum(c["objects"] for c in items[name]["classes"].values()) == \
                receipt["rows"]
        # the PACS: both SEG objects stored and found by Orthanc's own API, one STOW request each
        uids = {json.loads((output / n / "pacs.json").read_text())["instances"][0] for n in dicoms}
        assert uids <= set(orthanc.instances())
        stows = pacs.counted
        assert stows == 2
        # the report, beside the outputs and as Prefect saw it
        md = (output / "report.md").read_text()
        assert f"| corrupt.tif | {inbox / 'corrupt.tif'} | failed |" in md and "truncated or corrupt" in md
        assert json.loads((output / "report.json").read_text())["counts"] == {
            "computed": RASTERS + 4, "failed": 1, "deliveries confirmed": RASTERS + 2}
        assert sum(items[n]["deliveries"]["postgis"]["attempts"] for n in rasters) == RASTERS + 4  # each refusal
        assert sum(items[n]["deliveries"]["pacs"]["attempts"] for n in dicoms) == 2 + 2  # cost one retry
        # no secret anywhere: outputs, reports, run.json, receipts, Prefect's logs, artifacts and parameters
        texts = [p.read_text() for p in output.rglob("*") if p.suffix in (".json", ".md")]
        artifacts, prefect = _prefect_texts()
        assert any("| corrupt.tif |" in a and "| failed |" in a for a in artifacts)  # the report, as an artifact
        texts += artifacts + prefect
        assert not [t[:200] for t in texts if postgis.password in t]

        # the next night: nothing to do, nothing sent again
        monkeypatch.delenv("SEGFLOW_FAILPOINT")
        again = _night(inbox, output, pacs, db, postgis)
        statuses = {i["name"]: i["status"] for i in again["items"]}
        assert statuses.pop("corrupt.tif") == "failed"
        assert set(statuses.values()) == {"unchanged"}
        assert all(i["chunks_computed"] == 0 and i["windows_evaluated"] == 0 for i in again["items"])
        assert pacs.counted == stows and _table(postgis) == table


def test_a_delivery_that_failed_is_retried_the_next_night_without_computing_again(
        harness: None, postgis: Postgis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.batch_flow import nightly_batch_flow

    inbox, output = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    write_synthetic_scene(inbox / "a.tif", width=150, height=130, seed=3)
    monkeypatch.setenv("PGPASSWORD", postgis.password)
    with FlakyProxy(postgis.port, fail_first=10**6) as down:
        url = postgis.url("retry_night", with_password=False, port=down.port)
        first = nightly_batch_flow(inbox=str(inbox), output=str(output), postgis=url, retries=1, retry_delay=0.1)
    (item,) = first["items"]
    assert item["status"] == "computed" and item["deliveries"]["postgis"]["status"] == "failed"
    assert item["deliveries"]["postgis"]["attempts"] == 2  # the first and one retry, each one connection
    assert down.connections == 2
    assert "PostGIS" in item["deliveries"]["postgis"]["error"] and not (output / "a.tif" / "postgis.json").exists()
    assert "a.tif" in (output / "report.md").read_text().split("## Failures")[1]
    monkeypatch.delenv("PGPASSWORD")  # the next night reads the password from a Prefect Secret block
    from prefect.blocks.system import Secret

    Secret(value=postgis.password).save("night-db", overwrite=True)
    with FlakyProxy(postgis.port) as up:
        url = postgis.url("retry_night", with_password=False, port=up.port) + "&secret=night-db"
        second = nightly_batch_flow(inbox=str(inbox), output=str(output), postgis=url)
    (item,) = second["items"]
    assert item["status"] == "unchanged" and item["chunks_computed"] == 0
    assert item["deliveries"]["postgis"]["status"] == "confirmed" and item["deliveries"]["postgis"]["count"] > 0


def test_segflow_batch_runs_the_flow_and_exits_7_when_an_item_failed(harness: None, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from segflow.cli import main

    inbox, output = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    write_synthetic_scene(inbox / "good.tif", width=120, height=100, seed=1)
    (inbox / "empty.tif").write_bytes(b"")
    assert main(["batch", "--inbox", str(inbox), "-o", str(output), "--retry-delay", "0"]) == 7
    out, err = capsys.readouterr()
    assert "2 item(s): 1 computed, 1 failed" in out
    assert err.splitlines()[-1] == (f"segflow: error: 1 item(s) failed or were not delivered (empty.tif); see "
                                    f"{output / 'report.md'}")
    assert "Traceback" not in err  # the failed item is one line in Prefect's log, not a traceback
    (inbox / "empty.tif").unlink()
    assert main(["batch", "--inbox", str(inbox), "-o", str(output), "--quiet"]) == 0
    assert json.loads((output / "report.json").read_text())["counts"] == {"unchanged": 1}
    assert main(["batch", "--inbox", str(tmp_path / "nowhere"), "-o", str(output)]) == 2
    assert "inbox" in capsys.readouterr().err.splitlines()[-1]
