"""PACS delivery's parts without a server: the --pacs address, retries and their pauses, the reasons shown, and
the DICOMweb and DIMSE answers (statuses, failures, queries) through stand-ins for the client libraries."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from requests import Response
from requests.exceptions import HTTPError

from segflow.errors import ConfigError, DeliveryError
from segflow.io import pacs
from segflow.io.pacs import PASSWORD_VARIABLE, PacsTarget, deliver, parse_pacs

USAGE = "use dicomweb+http://[user@]host:port/dicom-web or dimse://AET@host:port"


# ---- the address ---------------------------------------------------------------------------------------------

def test_dicomweb_addresses() -> None:
    target = parse_pacs("  dicomweb+https://ann:p%40ss@pacs.example:8443/orthanc/dicom-web/ ")
    assert target == PacsTarget("dicomweb", url="https://pacs.example:8443/orthanc/dicom-web", user="ann",
                                given_password="p@ss")
    assert str(target) == "https://ann@pacs.example:8443/orthanc/dicom-web" and "p@ss" not in repr(target)
    assert parse_pacs("dicomweb+http://h%C3%A9l%C3%A8ne@pacs/dw").user == "hélène"
    target = parse_pacs("dicomweb+http://ann@pacs:8042/dicom-web?secret=pacs-login")
    assert (target.user, target.given_password, target.secret) == ("ann", None, "pacs-login")
    assert str(target) == "http://ann@pacs:8042/dicom-web"
    assert str(parse_pacs("dicomweb+http://pacs:8042/dicom-web")) == "http://pacs:8042/dicom-web"
    assert parse_pacs("dicomweb+http://ann:@pacs/dw").given_password == ""  # an empty password is a password


def test_dimse_addresses() -> None:
    target = parse_pacs("dimse://ORTHANC@pacs.example:4242?calling=SEGFLOW_TEST")
    assert target == PacsTarget("dimse", aet="ORTHANC", host="pacs.example", port=4242, calling="SEGFLOW_TEST")
    assert str(target) == "dimse://ORTHANC@pacs.example:4242"
    assert parse_pacs("dimse://A@h:1").calling == "SEGFLOW"
    assert parse_pacs("dimse://ABCDEFGHIJKLMNOP@h:104").aet == "ABCDEFGHIJKLMNOP"  # 16 characters: the most
    assert parse_pacs("dimse://A@h:104?calling=ABCDEFGHIJKLMNOP").calling == "ABCDEFGHIJKLMNOP"
    assert parse_pacs("dimse://MY%20PACS@h:104?calling=MY%20SIDE") == PacsTarget(  # percent-encoded, as URLs are
        "dimse", aet="MY PACS", host="h", port=104, calling="MY SIDE")


@pytest.mark.parametrize("text, message", [
    ("dicomweb+http:///dicom-web", "--pacs 'dicomweb+http:///dicom-web' has no host; " + USAGE),
    ("dicomweb+http://ann:secret-pw@/dw", "--pacs 'dicomweb+http://ann:***@/dw' has no host; " + USAGE),
    ("dicomweb+http://pacs/dw?secret=a&user=b", "--pacs 'dicomweb+http://pacs/dw?secret=a&user=b': unknown "
                                                "parameter user=; only secret=BLOCK is understood"),
    ("dicomweb+http://pacs/dw?zz=1&aa=2", "--pacs 'dicomweb+http://pacs/dw?zz=1&aa=2': unknown parameter aa=; "
                                          "only secret=BLOCK is understood"),
    ("dicomweb+http://ann:secret-pw@pacs/dw?secret=s", "--pacs 'dicomweb+http://ann:***@pacs/dw?secret=s' gives both "
                                                       "a password and secret=; give one"),
    ("dimse://pacs:4242", "--pacs 'dimse://pacs:4242' must name the AE title, host and port; " + USAGE),
    ("dimse://A@:4242", "--pacs 'dimse://A@:4242' must name the AE title, host and port; " + USAGE),
    ("dimse://A@pacs", "--pacs 'dimse://A@pacs' must name the AE title, host and port; " + USAGE),
    ("dimse://A@pacs:port", "--pacs 'dimse://A@pacs:port' must name the AE title, host and port; " + USAGE),
    ("dimse://A@pacs:99999", "--pacs 'dimse://A@pacs:99999' must name the AE title, host and port; " + USAGE),
    ("dimse://A@pacs:0", "--pacs 'dimse://A@pacs:0' must name the AE title, host and port; " + USAGE),
    ("dimse://ABCDEFGHIJKLMNOPQ@h:1", "AE title 'ABCDEFGHIJKLMNOPQ' in --pacs must be 1 to 16 characters without "
                                      "backslashes"),
    ("dimse://A%5CB@h:1", "AE title 'A\\\\B' in --pacs must be 1 to 16 characters without backslashes"),
    ("dimse://A@h:1?callng=ME", "--pacs 'dimse://A@h:1?callng=ME': unknown parameter callng=; only calling=AET is "
                                "understood"),
    ("dimse://A@h:1?calling=", "AE title '' in --pacs must be 1 to 16 characters without backslashes"),
    ("dimse://A@h:1?calling=ABCDEFGHIJKLMNOPQ", "AE title 'ABCDEFGHIJKLMNOPQ' in --pacs must be 1 to 16 characters "
                                                "without backslashes"),
    ("dimse://A@h:1?calling=X%5CY", "AE title 'X\\\\Y' in --pacs must be 1 to 16 characters without backslashes"),
    ("http://ann:secret-pw@pacs/dicom-web", "--pacs 'http://ann:***@pacs/dicom-web' is not a PACS address; " + USAGE),
    ("pacs", "--pacs 'pacs' is not a PACS address; " + USAGE),
])
def test_bad_addresses_are_refused_in_one_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_pacs(text)
    assert str(info.value) == message


def test_a_backslash_in_an_ae_title_is_refused() -> None:
    with pytest.raises(ConfigError, match="without backslashes"):
        parse_pacs("dimse://A\\B@h:1")


def test_the_password_comes_from_the_address_a_secret_block_or_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import segflow.io.secrets as secrets

    asked: list[tuple[str, str]] = []

    def load(name: str, what: str) -> str:
        asked.append((name, what))
        return "from-block"

    monkeypatch.setattr(secrets, "load_secret", load)
    monkeypatch.setenv(PASSWORD_VARIABLE, "from-env")
    assert parse_pacs("dicomweb+http://ann:given@pacs/dw").password() == "given"
    assert parse_pacs("dicomweb+http://ann@pacs/dw?secret=blk").password() == "from-block"
    assert asked == [("blk", "http://ann@pacs/dw")]
    assert parse_pacs("dicomweb+http://ann@pacs/dw").password() == "from-env"
    assert parse_pacs("dicomweb+http://ann:@pacs/dw").password() == ""
    monkeypatch.delenv(PASSWORD_VARIABLE)
    assert parse_pacs("dicomweb+http://ann@pacs/dw").password() is None
    assert PASSWORD_VARIABLE == "SEGFLOW_PACS_PASSWORD"


def test_hide_password() -> None:
    assert pacs._hide_password("dicomweb+http://ann:pw@pacs:80/dw?secret=x") == "dicomweb+http://ann:***@pacs:80/dw?secret=x"
    assert pacs._hide_password("dicomweb+http://ann@pacs/dw") == "dicomweb+http://ann@pacs/dw"
    assert pacs._hide_password("dicomweb+http://:pw@pacs/dw") == "dicomweb+http://:***@pacs/dw"


# ---- retries, pauses and reasons -----------------------------------------------------------------------------

@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(pacs.time, "sleep", slept.append)
    return slept


TARGET = PacsTarget("dimse", aet="PACS", host="h", port=104)


def test_a_transient_failure_is_retried_with_doubling_pauses(pauses: list[float]) -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OSError("[Errno 111] Connection refused")
        return "stored"

    assert pacs._retrying(flaky, TARGET, "store 1 instance(s)", 3, 0.5) == "stored"
    assert len(calls) == 3 and pauses == [0.5, 1.0]


def test_retries_end_in_one_delivery_error_with_the_last_reason(pauses: list[float]) -> None:
    reasons = iter(["first", "[Errno 110] Connection timed out')) and more"])

    def down() -> None:
        raise ConnectionError(next(reasons))

    with pytest.raises(DeliveryError) as info:
        pacs._retrying(down, TARGET, "store 2 instance(s)", 2, 3.0)
    assert str(info.value) == ("cannot store 2 instance(s) at dimse://PACS@h:104 after 2 attempts ([Errno 110] "
                               "Connection timed out); check that the PACS is running and reachable, then run again "
                               "(the local outputs are complete)")
    assert info.value.transient and pauses == [3.0]  # no pause after the last attempt
    assert info.value.__cause__ is None


def test_no_attempt_is_no_answer(pauses: list[float]) -> None:
    with pytest.raises(DeliveryError, match=r"after 0 attempts \(no answer\)"):
        pacs._retrying(lambda: None, TARGET, "store", 0, 1.0)
    assert pauses == []


def test_a_refusal_is_not_retried(pauses: list[float]) -> None:
    calls: list[int] = []

    def refuses() -> None:
        calls.append(1)
        raise pacs._Refused("HTTP 400")

    with pytest.raises(DeliveryError) as info:
        pacs._retrying(refuses, TARGET, "store 1 instance(s)", 5, 1.0)
    assert str(info.value) == "dimse://PACS@h:104 refused store 1 instance(s): HTTP 400; the local outputs are complete"
    assert not info.value.transient and calls == [1] and pauses == []
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_reason_of_a_network_failure() -> None:
    wrapped = ConnectionError("HTTPConnectionPool(host='x', port=1): Max retries exceeded (Caused by "
                              "NewConnectionError('<urllib3.connection.HTTPConnection>: Failed to establish a new "
                              "connection: [Errno 111] Connection refused'))")
    assert pacs._reason(wrapped) == "[Errno 111] Connection refused"
    assert pacs._reason(OSError("[Errno -2] Name or service not known")) == "[Errno -2] Name or service not known"
    assert pacs._reason(OSError("a\n  short\treason ")) == "a short reason"
    long = " ".join(f"word{i}" for i in range(60))  # 409 characters
    got = pacs._reason(RuntimeError(long))
    assert got == long[:200].rsplit(" ", 1)[0] + " ..." and got[:-4].split()[-1] == "word29"  # at the last space
    exact = "x" * 200
    assert pacs._reason(RuntimeError(exact)) == exact
    assert pacs._reason(RuntimeError("y" * 201)) == "y" * 200 + " ..."  # no space to cut at


# ---- deliver, with stand-in protocols ------------------------------------------------------------------------

def instance(folder: Path, name: str) -> Path:
    ds = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(folder / name)
    return folder / name


def test_deliver_stores_then_confirms_each_instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    pauses: list[float]) -> None:
    paths = [instance(tmp_path, "a.dcm"), instance(tmp_path, "b.dcm")]
    uids = [str(pydicom.dcmread(p).SOPInstanceUID) for p in paths]
    sent: list[list[str]] = []
    queries: list[str] = []
    late = {uids[1]: 1}  # the PACS indexes b after the first query: confirmed on the second attempt

    def protocol(target: PacsTarget, timeout: float) -> tuple[Any, Any]:
        assert target is TARGET and timeout == 7.5

        def send(datasets: list[Any]) -> None:
            sent.append([str(ds.SOPInstanceUID) for ds in datasets])

        def find(ds: Any) -> bool:
            uid = str(ds.SOPInstanceUID)
            queries.append(uid)
            if late.get(uid):
                late[uid] -= 1
                return False
            return uid in sent[-1]

        return send, find

    monkeypatch.setattr(pacs, "_dimse", protocol)
    assert deliver(paths, TARGET, attempts=2, pause=0.25, timeout=7.5) == uids
    assert sent == [uids] and queries == [uids[0], uids[1], uids[0], uids[1]] and pauses == [0.25]
    late.update({uids[0]: 5, uids[1]: 5})
    with pytest.raises(DeliveryError) as info:
        deliver(paths, TARGET, attempts=2, pause=0.25, timeout=7.5)
    assert str(info.value) == (f"cannot confirm the stored instance(s) at {TARGET} after 2 attempts (2 of 2 "
                               f"instance(s) not found by a query after storing, e.g. {uids[0]}); check that the "
                               "PACS is running and reachable, then run again (the local outputs are complete)")


def test_deliver_uses_dicomweb_for_a_dicomweb_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    used: list[str] = []

    def fake(name: str) -> Any:
        def protocol(target: PacsTarget, timeout: float) -> tuple[Any, Any]:
            used.append(name)
            return (lambda datasets: None), (lambda ds: True)
        return protocol

    monkeypatch.setattr(pacs, "_dicomweb", fake("dicomweb"))
    monkeypatch.setattr(pacs, "_dimse", fake("dimse"))
    path = instance(tmp_path, "a.dcm")
    deliver([path], parse_pacs("dicomweb+http://pacs/dw"))
    deliver([path], TARGET)
    assert used == ["dicomweb", "dimse"]


# ---- DICOMweb answers ----------------------------------------------------------------------------------------

class FakeWebClient:
    made: ClassVar[list[FakeWebClient]] = []
    answer: ClassVar[Any] = None
    status: ClassVar[int | None] = None
    found: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, url: str, timeout: float, session: Any = None) -> None:
        self.url, self.timeout, self.session = url, timeout, session
        self.retry: bool | None = None
        self.searches: list[dict[str, Any]] = []
        FakeWebClient.made.append(self)

    def set_http_retry_params(self, retry: bool) -> None:
        self.retry = retry

    def store_instances(self, datasets: list[Any]) -> Any:
        if self.status is not None:
            response = Response()
            response.status_code = self.status
            raise HTTPError(f"{self.status} error", response=response if self.status else None)
        return self.answer

    def search_for_instances(self, **query: Any) -> list[dict[str, Any]]:
        self.searches.append(query)
        return self.found


@pytest.fixture
def web(monkeypatch: pytest.MonkeyPatch) -> type[FakeWebClient]:
    import dicomweb_client.api

    monkeypatch.setattr(dicomweb_client.api, "DICOMwebClient", FakeWebClient)
    FakeWebClient.made, FakeWebClient.answer, FakeWebClient.status, FakeWebClient.found = [], None, None, []
    return FakeWebClient


def web_dataset() -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = "1.2.3", "1.2.3.4", "1.2.3.4.5"
    return ds


def test_dicomweb_client_settings_and_login(web: type[FakeWebClient], monkeypatch: pytest.MonkeyPatch) -> None:
    pacs._dicomweb(parse_pacs("dicomweb+http://pacs:8042/dicom-web"), 12.5)
    client = web.made[-1]
    assert (client.url, client.timeout, client.session, client.retry) == ("http://pacs:8042/dicom-web", 12.5, None,
                                                                          False)
    pacs._dicomweb(parse_pacs("dicomweb+http://ann:pw@pacs/dw"), 1)
    assert web.made[-1].session.auth == ("ann", "pw")
    monkeypatch.delenv(PASSWORD_VARIABLE, raising=False)
    pacs._dicomweb(parse_pacs("dicomweb+http://ann@pacs/dw"), 1)
    assert web.made[-1].session.auth == ("ann", "")


@pytest.mark.parametrize("status, refused", [
    (401, "HTTP 401, the login: check the user in the address and the password (secret= or SEGFLOW_PACS_PASSWORD)"),
    (403, "HTTP 403, the login: check the user in the address and the password (secret= or SEGFLOW_PACS_PASSWORD)"),
    (400, "HTTP 400"), (404, "HTTP 404"), (413, "HTTP 413"), (499, "HTTP 499"),
    (408, None), (429, None), (500, None), (503, None), (399, None),
])
def test_dicomweb_http_statuses(web: type[FakeWebClient], status: int, refused: str | None) -> None:
    send, _ = pacs._dicomweb(parse_pacs("dicomweb+http://pacs/dw"), 1)
    web.status = status
    if refused is None:
        with pytest.raises(HTTPError):  # transient: deliver retries it
            send([web_dataset()])
    else:
        with pytest.raises(pacs._Refused) as info:
            send([web_dataset()])
        assert str(info.value) == refused and info.value.__cause__ is None


def test_dicomweb_failed_instances_are_a_refusal(web: type[FakeWebClient]) -> None:
    send, _ = pacs._dicomweb(parse_pacs("dicomweb+http://pacs/dw"), 1)
    answer = Dataset()
    failures = []
    for reason in (272, 49442, 272):
        item = Dataset()
        item.FailureReason = reason
        failures.append(item)
    failures.append(Dataset())  # without a reason
    answer.FailedSOPSequence = failures
    web.answer = answer
    with pytest.raises(pacs._Refused) as info:
        send([web_dataset()])
    assert str(info.value) == "4 instance(s) failed, reason 272, 49442, ?"
    web.answer = Dataset()  # no failures: stored
    send([web_dataset()])
    web.answer = None
    send([web_dataset()])


def test_dicomweb_find_matches_the_instance(web: type[FakeWebClient]) -> None:
    _, find = pacs._dicomweb(parse_pacs("dicomweb+http://pacs/dw"), 1)
    ds = web_dataset()
    web.found = [{"00080018": {"vr": "UI", "Value": ["9.9"]}}, {"00080018": {"vr": "UI", "Value": ["1.2.3.4.5"]}}]
    assert find(ds)
    assert web.made[-1].searches == [{"study_instance_uid": "1.2.3", "series_instance_uid": "1.2.3.4",
                                      "search_filters": {"SOPInstanceUID": "1.2.3.4.5"}}]
    misses: list[list[dict[str, Any]]] = [[], [{"00080018": {"vr": "UI", "Value": ["9.9"]}}],
                                          [{"00080018": {"vr": "UI"}}], [{}]]
    for found in misses:
        web.found = found
        assert not find(ds)


# ---- DIMSE answers -------------------------------------------------------------------------------------------

class FakeAssociation:
    def __init__(self, ae: FakeAE, rejected: bool, established: bool) -> None:
        self.ae, self.is_rejected, self.is_established = ae, rejected, established
        self.released = False
        self.stored: list[str] = []
        self.queries: list[Dataset] = []

    def send_c_store(self, ds: Any) -> Any:
        self.stored.append(str(ds.SOPInstanceUID))
        code = self.ae.store_codes.pop(0)
        return Dataset() if code is None else SimpleNamespace(Status=code)

    def send_c_find(self, query: Dataset, model: Any) -> Any:
        self.queries.append(query)
        yield from self.ae.find_answers

    def release(self) -> None:
        self.released = True


class FakeAE:
    made: ClassVar[list[FakeAE]] = []
    rejected: ClassVar[bool] = False
    established: ClassVar[bool] = True
    store_codes: ClassVar[list[int | None]] = []
    find_answers: ClassVar[list[tuple[Any, Any]]] = []

    def __init__(self, ae_title: str) -> None:
        self.ae_title = ae_title
        self.contexts: list[str] = []
        self.calls: list[tuple[str, int, str]] = []
        self.associations: list[FakeAssociation] = []
        self.acse_timeout = self.dimse_timeout = self.network_timeout = None
        FakeAE.made.append(self)

    def add_requested_context(self, context: Any) -> None:
        self.contexts.append(str(context))

    def associate(self, host: str, port: int, ae_title: str) -> FakeAssociation:
        self.calls.append((host, port, ae_title))
        self.associations.append(FakeAssociation(self, self.rejected, self.established))
        return self.associations[-1]


@pytest.fixture
def dimse(monkeypatch: pytest.MonkeyPatch) -> type[FakeAE]:
    import pynetdicom

    monkeypatch.setattr(pynetdicom, "AE", FakeAE)
    FakeAE.made, FakeAE.rejected, FakeAE.established, FakeAE.store_codes, FakeAE.find_answers = [], False, True, [], []
    return FakeAE


def dimse_datasets(n: int) -> list[Dataset]:
    out = []
    for i in range(n):
        ds = web_dataset()
        ds.SOPInstanceUID = f"1.2.3.4.{i}"
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4" if i % 2 else "1.2.840.10008.5.1.4.1.1.2"
        out.append(ds)
    return out


def test_dimse_store_association_and_statuses(dimse: type[FakeAE]) -> None:
    target = parse_pacs("dimse://ORTHANC@pacs:4242?calling=ME")
    send, _ = pacs._dimse(target, 9.0)
    dimse.store_codes = [0x0000, 0xB000, 0xB007, 0xB006]
    send(dimse_datasets(4))
    ae = dimse.made[-1]
    assert ae.ae_title == "ME" and ae.calls == [("pacs", 4242, "ORTHANC")]
    assert (ae.acse_timeout, ae.dimse_timeout, ae.network_timeout) == (9.0, 9.0, 9.0)
    assert ae.contexts == ["1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.66.4"]  # each class once, sorted
    association = ae.associations[-1]
    assert association.stored == ["1.2.3.4.0", "1.2.3.4.1", "1.2.3.4.2", "1.2.3.4.3"] and association.released


@pytest.mark.parametrize("code, error, message", [
    (0xA700, pacs._Refused, "C-STORE status 0xA700 for 1.2.3.4.1"),
    (0xC000, pacs._Refused, "C-STORE status 0xC000 for 1.2.3.4.1"),
    (0x0001, pacs._Refused, "C-STORE status 0x0001 for 1.2.3.4.1"),
    (None, ConnectionError, "no C-STORE response"),
])
def test_dimse_store_failures(dimse: type[FakeAE], code: int | None, error: type[Exception], message: str) -> None:
    send, _ = pacs._dimse(TARGET, 1.0)
    dimse.store_codes = [0x0000, code, 0x0000]
    with pytest.raises(error) as info:
        send(dimse_datasets(3))
    assert str(info.value) == message
    association = dimse.made[-1].associations[-1]
    assert association.stored == ["1.2.3.4.0", "1.2.3.4.1"] and association.released


def test_dimse_association_refused_or_not_made(dimse: type[FakeAE]) -> None:
    send, _ = pacs._dimse(parse_pacs("dimse://PACS@h:104?calling=WHO"), 1.0)
    dimse.rejected = True
    with pytest.raises(pacs._Refused) as info:
        send(dimse_datasets(1))
    assert str(info.value) == "association rejected (calling AE 'WHO'; is it allowed there?)"
    dimse.rejected, dimse.established = False, False
    with pytest.raises(ConnectionError) as down:
        send(dimse_datasets(1))
    assert str(down.value) == "no association (connection refused, aborted or timed out)"
    assert not isinstance(down.value, pacs._Refused)


def identifier(uid: str) -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID = uid
    return ds


def test_dimse_find_queries_one_instance_at_image_level(dimse: type[FakeAE]) -> None:
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

    _, find = pacs._dimse(TARGET, 1.0)
    ds = dimse_datasets(1)[0]
    dimse.find_answers = [(SimpleNamespace(Status=0xFF00), identifier("9.9")),
                          (SimpleNamespace(Status=0xFF01), identifier("1.2.3.4.0")),
                          (SimpleNamespace(Status=0xFF00), identifier("8.8")),
                          (SimpleNamespace(Status=0x0000), None)]
    assert find(ds)
    ae = dimse.made[-1]
    assert ae.contexts == [str(StudyRootQueryRetrieveInformationModelFind)]
    association = ae.associations[-1]
    (query,) = association.queries
    assert query.QueryRetrieveLevel == "IMAGE"
    assert (query.StudyInstanceUID, query.SeriesInstanceUID, query.SOPInstanceUID) == ("1.2.3", "1.2.3.4", "1.2.3.4.0")
    assert association.released
    for answers in ([(SimpleNamespace(Status=0x0000), None)],
                    [(SimpleNamespace(Status=0xFF00), identifier("9.9")), (SimpleNamespace(Status=0x0000), None)],
                    [(SimpleNamespace(Status=0xFF00), None), (SimpleNamespace(Status=0x0000), None)],
                    [(SimpleNamespace(Status=0xFF00), Dataset()), (SimpleNamespace(Status=0x0000), None)]):
        dimse.find_answers = answers
        assert not find(ds)


@pytest.mark.parametrize("answer, error, message", [
    (SimpleNamespace(Status=0xA700), pacs._Refused, "C-FIND status 0xA700"),
    (SimpleNamespace(Status=0xFE00), pacs._Refused, "C-FIND status 0xFE00"),
    (Dataset(), ConnectionError, "no C-FIND response"),
])
def test_dimse_find_failures(dimse: type[FakeAE], answer: Any, error: type[Exception], message: str) -> None:
    _, find = pacs._dimse(TARGET, 1.0)
    dimse.find_answers = [(answer, None)]
    with pytest.raises(error) as info:
        find(dimse_datasets(1)[0])
    assert str(info.value) == message and dimse.made[-1].associations[-1].released
