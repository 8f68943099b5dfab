"""A real Orthanc PACS for tests: started on free ports with a temporary storage folder, stopped after.

HTTP answers only local clients (``RemoteAccessAllowed`` false). Orthanc 1.10 cannot bind its
DICOM port to one address, so it accepts stores and queries only from the registered modality
``SEGFLOW`` at 127.0.0.1 (``DicomCheckModalityHost``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .helpers import free_port

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def missing() -> str | None:
    """Why Orthanc cannot run here, or None."""
    if shutil.which("Orthanc") is None:
        return "Orthanc is not installed (Debian package orthanc; scripts/setup.sh installs it as root)"
    if not PLUGIN.exists():
        return "Orthanc's DICOMweb plugin is not installed (Debian package orthanc-dicomweb)"
    return None


@dataclass(frozen=True)
class Orthanc:
    http_port: int
    dicom_port: int
    aet: str = "ORTHANC"

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"dicomweb+http://127.0.0.1:{self.http_port}/dicom-web"

    @property
    def dimse(self) -> str:
        return f"dimse://{self.aet}@127.0.0.1:{self.dicom_port}"

    def instances(self) -> list[str]:
        """SOP Instance UIDs stored, from Orthanc's own REST API (not DICOMweb)."""
        with urllib.request.urlopen(f"{self.rest}/instances?expand", timeout=10) as answer:
            return sorted(i["MainDicomTags"]["SOPInstanceUID"] for i in json.load(answer))


@contextmanager
def running_orthanc(folder: Path, users: dict[str, str] | None = None) -> Iterator[Orthanc]:
    """Orthanc on free ports; with ``users``, its HTTP API (DICOMweb included) asks for HTTP Basic logins."""
    folder.mkdir(parents=True, exist_ok=True)
    server = Orthanc(free_port(), free_port())
    config = {
        "Name": "segflow-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
        "HttpPort": server.http_port, "DicomPort": server.dicom_port, "DicomAet": server.aet,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": bool(users), "RegisteredUsers": users or {},
        "DicomCheckCalledAet": True, "DicomCheckModalityHost": True,
        "DicomAlwaysAllowStore": False, "DicomAlwaysAllowFind": False, "DicomAlwaysAllowEcho": False,
        "DicomModalities": {"segflow": ["SEGFLOW", "127.0.0.1", 11112]},
        "Plugins": [str(PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "wb")  # closed below, after the process
    process = subprocess.Popen(["Orthanc", str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{server.rest}/system", timeout=2):
                    break
            except urllib.error.HTTPError:  # it answers: up (a 401 when it asks for a login)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"Orthanc did not start: {(folder / 'orthanc.log').read_text()[-2000:]}") from None
                time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
