"""Deliver DICOM objects to a PACS and prove they are stored there.

Two protocols, named by the target string a user passes as ``--pacs``:

- ``dicomweb+http://host:8042/dicom-web`` (or ``dicomweb+https://...``): STOW-RS, then a
  QIDO-RS search for each SOP Instance UID (dicomweb-client);
- ``dimse://AET@host:4242`` (optionally ``dimse://AET@host:4242?calling=SEGFLOW``): C-STORE,
  then a C-FIND at IMAGE level for each SOP Instance UID (pynetdicom).

A success answer to the store is not proof (a PACS may accept and then drop an object it
cannot index), so :func:`deliver` only returns once a query finds every instance. A PACS that
is down, times out or answers with a transient failure is retried with a growing pause; one
that refuses the object (an HTTP 4xx, a DIMSE failure status) is not. Every failure ends in
one :class:`~segflow.errors.DeliveryError` line naming the target and what it answered. The
local outputs are published before delivery starts and are never touched by it.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from ..errors import ConfigError, DeliveryError

__all__ = ["PASSWORD_VARIABLE", "PacsTarget", "deliver", "deliver_once", "parse_pacs"]

T = TypeVar("T")
_USAGE = "use dicomweb+http://[user@]host:port/dicom-web or dimse://AET@host:port"
PASSWORD_VARIABLE = "SEGFLOW_PACS_PASSWORD"


@dataclass(frozen=True)
class PacsTarget:
    """Where to deliver: a DICOMweb base URL (with an HTTP Basic user), or a DIMSE peer (called AE title, host,
    port, calling AE title). ``str()`` never shows a password."""

    protocol: str  # "dicomweb" or "dimse"
    url: str = ""  # without user or password
    aet: str = ""
    host: str = ""
    port: int = 0
    calling: str = "SEGFLOW"
    user: str = ""  # DICOMweb: HTTP Basic authentication
    given_password: str | None = field(default=None, repr=False)  # from the URL
    secret: str | None = None  # name of a Prefect Secret block holding the password

    def __str__(self) -> str:
        if self.protocol == "dimse":
            return f"dimse://{self.aet}@{self.host}:{self.port}"
        if not self.user:
            return self.url
        scheme, _, rest = self.url.partition("://")
        return f"{scheme}://{self.user}@{rest}"

    def password(self) -> str | None:
        """The DICOMweb password: from the URL, else the Prefect Secret block, else ``SEGFLOW_PACS_PASSWORD``."""
        if self.given_password is not None:
            return self.given_password
        if self.secret is not None:
            from .secrets import load_secret

            return load_secret(self.secret, str(self))
        return os.environ.get(PASSWORD_VARIABLE)


def parse_pacs(text: str) -> PacsTarget:
    """Parse a ``--pacs`` value; raise :class:`ConfigError` (one line, password hidden) for anything else."""
    parts = urlsplit(text.strip())
    shown = _hide_password(text.strip())
    if parts.scheme in ("dicomweb+http", "dicomweb+https"):
        if not parts.hostname:
            raise ConfigError(f"--pacs {shown!r} has no host; {_USAGE}")
        query = parse_qs(parts.query)
        unknown = sorted(set(query) - {"secret"})
        if unknown:
            raise ConfigError(f"--pacs {shown!r}: unknown parameter {unknown[0]}=; only secret=BLOCK is understood")
        secret = query.get("secret", [None])[0]
        if secret is not None and parts.password is not None:
            raise ConfigError(f"--pacs {shown!r} gives both a password and secret=; give one")
        location = parts.netloc.rpartition("@")[2]
        url = f"{parts.scheme.split('+', 1)[1]}://{location}{parts.path}".rstrip("/")
        return PacsTarget("dicomweb", url=url, user=unquote(parts.username or ""),
                          given_password=None if parts.password is None else unquote(parts.password), secret=secret)
    if parts.scheme == "dimse":
        aet, host, port = unquote(parts.username or ""), parts.hostname, None
        try:
            port = parts.port
        except ValueError:
            pass
        if not aet or not host or not port:
            raise ConfigError(f"--pacs {text!r} must name the AE title, host and port; {_USAGE}")
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(query) - {"calling"})
        if unknown:
            raise ConfigError(f"--pacs {text!r}: unknown parameter {unknown[0]}=; only calling=AET is understood")
        calling = query.get("calling", ["SEGFLOW"])[0]
        for title in (aet, calling):
            if not 1 <= len(title) <= 16 or "\\" in title:
                raise ConfigError(f"AE title {title!r} in --pacs must be 1 to 16 characters without backslashes")
        return PacsTarget("dimse", aet=aet, host=host, port=port, calling=calling)
    raise ConfigError(f"--pacs {shown!r} is not a PACS address; {_USAGE}")


def _hide_password(text: str) -> str:
    parts = urlsplit(text)
    if parts.password is None:
        return text
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username}:***@{host}").geturl()


class _Refused(Exception):
    """The PACS answered and said no: retrying will not help."""


def _retrying(action: Callable[[], T], target: PacsTarget, what: str, attempts: int, pause: float) -> T:
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            return action()
        except _Refused as exc:
            raise DeliveryError(f"{target} refused {what}: {exc}; the local outputs are complete",
                                transient=False) from None
        except Exception as exc:  # network errors of requests / pynetdicom: transient, retried
            last = exc
            if attempt + 1 < attempts:
                time.sleep(pause * 2**attempt)
    reason = _reason(last) if last else "no answer"
    raise DeliveryError(f"cannot {what} at {target} after {attempts} attempts ({reason}); check that the PACS is "
                        "running and reachable, then run again (the local outputs are complete)")


def _reason(exc: BaseException) -> str:
    """A short reason for a network failure: the OS error inside a client library's long message, if any."""
    text = " ".join(str(exc).split())
    errno = re.search(r"\[Errno -?\d+\] [^'\")\]]+", text)
    if errno:
        return errno.group(0).strip()
    return text if len(text) <= 200 else text[:200].rsplit(" ", 1)[0] + " ..."


def deliver(paths: Sequence[Path], target: PacsTarget, *, attempts: int = 3, pause: float = 1.0,
            timeout: float = 30.0) -> list[str]:
    """Store the DICOM files ``paths`` at ``target`` and confirm each by a query; return their SOP Instance UIDs."""
    import pydicom

    datasets = [pydicom.dcmread(p) for p in paths]
    send, find = (_dicomweb if target.protocol == "dicomweb" else _dimse)(target, timeout)
    _retrying(lambda: send(datasets), target, f"store {len(datasets)} instance(s)", attempts, pause)
    uids = [str(ds.SOPInstanceUID) for ds in datasets]

    def confirm() -> None:
        missing = [ds.SOPInstanceUID for ds in datasets if not find(ds)]
        if missing:
            raise RuntimeError(f"{len(missing)} of {len(datasets)} instance(s) not found by a query after storing, "
                               f"e.g. {missing[0]}")

    _retrying(confirm, target, "confirm the stored instance(s)", attempts, pause)
    return uids


Send = Callable[[list[Any]], None]
Find = Callable[[Any], bool]


def _dicomweb(target: PacsTarget, timeout: float) -> tuple[Send, Find]:
    from dicomweb_client.api import DICOMwebClient
    from requests.exceptions import HTTPError

    session = None
    if target.user:
        from dicomweb_client.session_utils import create_session_from_user_pass

        session = create_session_from_user_pass(target.user, target.password() or "")
    client = DICOMwebClient(url=target.url, timeout=timeout, session=session)
    client.set_http_retry_params(retry=False)  # deliver() retries, with its own pauses and one message

    def send(datasets: list[Any]) -> None:
        try:
            answer = client.store_instances(datasets)
        except HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status in (401, 403):
                raise _Refused(f"HTTP {status}, the login: check the user in the address and the password "
                               f"(secret= or {PASSWORD_VARIABLE})") from None
            if 400 <= status < 500 and status not in (408, 429):
                raise _Refused(f"HTTP {status}") from None
            raise
        failed = answer.get("FailedSOPSequence") if answer is not None else None
        if failed:
            reasons = sorted({str(getattr(item, "FailureReason", "?")) for item in failed})
            raise _Refused(f"{len(failed)} instance(s) failed, reason {', '.join(reasons)}")

    def find(ds: Any) -> bool:
        found = client.search_for_instances(study_instance_uid=str(ds.StudyInstanceUID),
                                            series_instance_uid=str(ds.SeriesInstanceUID),
                                            search_filters={"SOPInstanceUID": str(ds.SOPInstanceUID)})
        return any(item.get("00080018", {}).get("Value", [None])[0] == str(ds.SOPInstanceUID) for item in found)

    return send, find


def _dimse(target: PacsTarget, timeout: float) -> tuple[Send, Find]:
    from pydicom.dataset import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

    def associate(contexts: Sequence[str]) -> Any:
        ae = AE(ae_title=target.calling)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
        for context in contexts:
            ae.add_requested_context(context)
        assoc = ae.associate(target.host, target.port, ae_title=target.aet)
        if assoc.is_rejected:
            raise _Refused(f"association rejected (calling AE {target.calling!r}; is it allowed there?)")
        if not assoc.is_established:
            raise ConnectionError("no association (connection refused, aborted or timed out)")
        return assoc

    def send(datasets: list[Any]) -> None:
        assoc = associate(sorted({str(ds.SOPClassUID) for ds in datasets}))
        try:
            for ds in datasets:
                status = assoc.send_c_store(ds)
                code = getattr(status, "Status", None)
                if code is None:
                    raise ConnectionError("no C-STORE response")
                if code not in (0x0000, 0xB000, 0xB007, 0xB006):  # success or warnings
                    raise _Refused(f"C-STORE status 0x{code:04X} for {ds.SOPInstanceUID}")
        finally:
            assoc.release()

    def find(ds: Any) -> bool:
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = ds.StudyInstanceUID
        query.SeriesInstanceUID = ds.SeriesInstanceUID
        query.SOPInstanceUID = ds.SOPInstanceUID
        assoc = associate([StudyRootQueryRetrieveInformationModelFind])
        try:
            found = False
            for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
                code = getattr(status, "Status", None)
                if code is None:
                    raise ConnectionError("no C-FIND response")
                if code in (0xFF00, 0xFF01):  # pending: a match (its identifier may be missing or another's)
                    found = found or (identifier is not None
                                      and str(identifier.get("SOPInstanceUID", "")) == str(ds.SOPInstanceUID))
                elif code != 0x0000:
                    raise _Refused(f"C-FIND status 0x{code:04X}")
            return found
        finally:
            assoc.release()

    return send, find


def deliver_once(paths: Sequence[Path], target: PacsTarget, receipt: Path, **options: Any) -> list[str]:
    """:func:`deliver` unless ``receipt`` (JSON) shows these very files already confirmed at ``target``.

    The receipt is written atomically after a confirmed delivery: a re-run of a finished run
    does not send again, and a run whose delivery failed sends on the next attempt.
    """
    from .receipt import file_digests, read_receipt, write_receipt

    files = file_digests(paths)
    done = read_receipt(receipt, str(target), files)
    if done is not None and isinstance(done.get("instances"), list):
        return [str(uid) for uid in done["instances"]]
    uids = deliver(paths, target, **options)
    write_receipt(receipt, str(target), files, instances=uids)
    return uids
