"""Delivery to a real Orthanc PACS by DICOMweb (STOW-RS + QIDO-RS) and DIMSE (C-STORE + C-FIND)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from segflow.errors import ConfigError, DeliveryError
from segflow.io.pacs import PacsTarget, deliver, parse_pacs

from .orthanc import Orthanc, missing, running_orthanc


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    reason = missing()
    if reason:
        pytest.skip(reason)
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


def _instance(folder: Path, name: str) -> Path:
    """A real CT image (pydicom's test file) with fresh UIDs, so each test stores a new instance."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = folder / name
    ds.save_as(path)
    return path


@pytest.mark.parametrize("protocol", ["dicomweb", "dimse"])
def test_delivery_is_confirmed_by_a_query(protocol: str, orthanc: Orthanc, tmp_path: Path) -> None:
    paths = [_instance(tmp_path, f"{i}.dcm") for i in range(2)]
    target = parse_pacs(orthanc.dicomweb if protocol == "dicomweb" else orthanc.dimse + "?calling=SEGFLOW")
    uids = deliver(paths, target)
    assert uids == [str(pydicom.dcmread(p).SOPInstanceUID) for p in paths]
    assert set(uids) <= set(orthanc.instances())  # Orthanc's own REST API agrees


def test_a_store_that_is_not_found_afterwards_is_a_failure(orthanc: Orthanc, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A 200 answer alone is not proof: here the PACS 'loses' the instance (the query looks for another)."""
    path = _instance(tmp_path, "a.dcm")
    import segflow.io.pacs as pacs

    real = pacs._dicomweb

    def losing(target: PacsTarget, timeout: float):  # type: ignore[no-untyped-def]
        send, find = real(target, timeout)

        def lost(ds):  # type: ignore[no-untyped-def]
            ds = ds.copy()
            ds.SOPInstanceUID = generate_uid()
            return find(ds)

        return send, lost

    monkeypatch.setattr(pacs, "_dicomweb", losing)
    with pytest.raises(DeliveryError, match=r"cannot confirm the stored instance\(s\) .* not found by a query"):
        deliver([path], parse_pacs(orthanc.dicomweb), attempts=2, pause=0.01)


def test_an_unknown_calling_ae_is_refused_without_retrying(orthanc: Orthanc, tmp_path: Path) -> None:
    path = _instance(tmp_path, "a.dcm")
    with pytest.raises(DeliveryError, match=r"refused store .*association rejected .*'STRANGER'"):
        deliver([path], parse_pacs(orthanc.dimse + "?calling=STRANGER"), attempts=3, pause=5.0)


def _closed_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("scheme", ["dicomweb+http://127.0.0.1:{port}/dicom-web", "dimse://PACS@127.0.0.1:{port}"])
def test_a_pacs_that_is_down_is_one_line_after_retries(scheme: str, tmp_path: Path) -> None:
    path = _instance(tmp_path, "a.dcm")
    target = parse_pacs(scheme.format(port=_closed_port()))
    with pytest.raises(DeliveryError) as info:
        deliver([path], target, attempts=2, pause=0.01, timeout=2)
    message = str(info.value)
    assert "after 2 attempts" in message and "the local outputs are complete" in message
    assert "\n" not in message
    assert DeliveryError.exit_code == 6


@pytest.mark.parametrize("text, expected", [
    ("dicomweb+http://pacs:8042/dicom-web/", PacsTarget("dicomweb", url="http://pacs:8042/dicom-web")),
    ("dicomweb+https://pacs/dw", PacsTarget("dicomweb", url="https://pacs/dw")),
    ("dimse://ORTHANC@pacs:4242", PacsTarget("dimse", aet="ORTHANC", host="pacs", port=4242)),
    ("dimse://ORTHANC@pacs:4242?calling=ME", PacsTarget("dimse", aet="ORTHANC", host="pacs", port=4242, calling="ME")),
])
def test_parse_pacs(text: str, expected: PacsTarget) -> None:
    assert parse_pacs(text) == expected


@pytest.mark.parametrize("text", ["http://pacs/dicom-web", "dimse://pacs:4242", "dimse://A@pacs", "dicomweb+http://",
                                  "dimse://AVERYLONGAETITLE17@pacs:1"])
def test_parse_pacs_refuses(text: str) -> None:
    with pytest.raises(ConfigError, match=r"--pacs|AE title"):
        parse_pacs(text)


def test_a_confirmed_delivery_is_not_repeated(orthanc: Orthanc, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import segflow.io.pacs as pacs

    path = _instance(tmp_path, "seg.dcm")
    target = parse_pacs(orthanc.dicomweb)
    first = pacs.deliver_once([path], target, tmp_path / "pacs.json")
    assert set(first) <= set(orthanc.instances())

    def no_second_send(*args: object, **kw: object) -> list[str]:
        raise AssertionError("sent again")

    monkeypatch.setattr(pacs, "deliver", no_second_send)
    assert pacs.deliver_once([path], target, tmp_path / "pacs.json") == first
    path.write_bytes(path.read_bytes() + b"\0\0")  # another file: sent again
    with pytest.raises(AssertionError, match="sent again"):
        pacs.deliver_once([path], target, tmp_path / "pacs.json")


def test_pacs_for_a_raster_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from segflow.cli import main
    from segflow.synthetic import write_synthetic_scene

    scene = write_synthetic_scene(tmp_path / "s.tif", width=64, height=64, seed=1).path
    code = main(["run", "tile-infer", "-q", "--input", str(scene), "--output", str(tmp_path / "o"),
                 "--pacs", "dicomweb+http://127.0.0.1:1/dicom-web"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "made only for a DICOM series input" in err[0], err
    assert not (tmp_path / "o").exists()


def test_a_dicom_series_is_segmented_and_its_seg_stored_at_the_pacs(orthanc: Orthanc, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's workflow end to end: a folder of two series, --series, --pacs, confirmed by a query."""
    import json

    from segflow.cli import main

    from .test_dicom import hu_volume, write_series

    files = write_series(tmp_path / "study" / "a", hu_volume(seed=1), description="arterial", seed=1)
    write_series(tmp_path / "study" / "b", hu_volume((7, 24, 20), seed=2), description="venous", seed=2)
    series = str(pydicom.dcmread(files[0]["path"]).SeriesInstanceUID)
    out = tmp_path / "out"
    args = ["run", "tile-infer", "--input", str(tmp_path / "study"), "--series", series, "--output", str(out),
            "--model", "ct-tissue", "--pacs", orthanc.dicomweb]
    assert main(args) == 0, capsys.readouterr().err
    summary = capsys.readouterr().out
    assert "1 instance(s) stored at the PACS (confirmed)" in summary
    seg = pydicom.dcmread(out / "seg.dcm")
    assert seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series
    assert str(seg.SOPInstanceUID) in orthanc.instances()
    receipt = json.loads((out / "pacs.json").read_text())
    assert receipt["instances"] == [str(seg.SOPInstanceUID)] and receipt["target"].startswith("http://127.0.0.1")
    assert main(args) == 0  # finished and delivered: nothing computed, nothing sent again
    assert "0 windows evaluated" in capsys.readouterr().out


@pytest.fixture(scope="module")
def guarded_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    reason = missing()
    if reason:
        pytest.skip(reason)
    with running_orthanc(tmp_path_factory.mktemp("orthanc-auth"), users={"segflow": "pacs-pw-7"}) as server:
        yield server


def test_dicomweb_with_a_login_takes_the_password_from_the_environment_and_never_shows_it(
        guarded_orthanc: Orthanc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _instance(tmp_path, "a.dcm")
    address = guarded_orthanc.dicomweb.replace("://", "://segflow@")
    with pytest.raises(DeliveryError, match="HTTP 401") as refused:  # no password: the PACS says no, at once
        deliver([path], parse_pacs(address), attempts=3, pause=5.0)
    assert not refused.value.transient
    monkeypatch.setenv("SEGFLOW_PACS_PASSWORD", "wrong-pw")
    with pytest.raises(DeliveryError) as wrong:
        deliver([path], parse_pacs(address))
    assert "wrong-pw" not in str(wrong.value) and "SEGFLOW_PACS_PASSWORD" in str(wrong.value)
    monkeypatch.setenv("SEGFLOW_PACS_PASSWORD", "pacs-pw-7")
    target = parse_pacs(address)
    assert str(target) == address.removeprefix("dicomweb+") and "pacs-pw-7" not in repr(target)
    assert deliver([path], target) == [str(pydicom.dcmread(path).SOPInstanceUID)]
    inline = parse_pacs(address.replace("segflow@", "segflow:pacs-pw-7@"))  # or in the address (command line)
    assert inline.password() == "pacs-pw-7" and "pacs-pw-7" not in str(inline) + repr(inline)
    with pytest.raises(ConfigError, match="both a password and secret=") as both:
        parse_pacs(address.replace("segflow@", "segflow:pacs-pw-7@") + "?secret=pacs")
    assert "pacs-pw-7" not in str(both.value)
