"""A real PostgreSQL + PostGIS server for tests: a fresh cluster on a free port, stopped and deleted after.

``initdb`` writes the cluster into a new temporary folder; ``postgres`` listens on 127.0.0.1 (password
authentication, SCRAM) and on a unix socket in that folder (trust, used only by the fixture's
administrator connections). PostgreSQL refuses to run as root, so when the tests run as root the
server runs as the ``postgres`` user (or ``nobody``) and the folder is handed to it.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .helpers import free_port

USER = "segflow"
DATABASE = "segflow"
PLAIN_DATABASE = "plain"  # without the PostGIS extension
ADMIN = "admin"


def _installation() -> tuple[Path, Path] | None:
    """(bin folder, extension folder) of the newest PostgreSQL server installed the Debian way."""
    found = []
    for bindir in Path("/usr/lib/postgresql").glob("*/bin"):
        if (bindir / "initdb").exists() and (bindir / "postgres").exists() and bindir.parent.name.isdigit():
            found.append((int(bindir.parent.name), bindir))
    if not found:
        return None
    version, bindir = max(found)
    return bindir, Path(f"/usr/share/postgresql/{version}/extension")


def missing() -> str | None:
    """Why a PostGIS server cannot run here, or None."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]')"
    found = _installation()
    if found is None:
        return "the PostgreSQL server is not installed (Debian package postgresql-15; scripts/setup.sh installs it)"
    if not (found[1] / "postgis.control").exists():
        return (f"the PostGIS extension is not installed in {found[1]} (Debian package postgresql-15-postgis-3; "
                "scripts/setup.sh installs it as root)")
    return None


@dataclass(frozen=True)
class Postgis:
    port: int
    password: str
    socket_dir: str
    host: str = "127.0.0.1"
    user: str = USER
    dbname: str = DATABASE

    def url(self, table: str, *, password: str | None = None, with_password: bool = True,
            dbname: str | None = None, port: int | None = None) -> str:
        """A segflow PostGIS URL for ``table`` (the password percent-encoded, as a URL needs it)."""
        secret = self.password if password is None else password
        auth = f"{self.user}:{quote(secret, safe='')}" if with_password else self.user
        return f"postgresql://{auth}@{self.host}:{port or self.port}/{dbname or self.dbname}?table={table}"

    def admin(self, dbname: str | None = None) -> Any:
        """A psycopg connection as the cluster's superuser (unix socket, autocommit), for checks and set-up."""
        import psycopg

        return psycopg.connect(host=self.socket_dir, port=self.port, user=ADMIN, dbname=dbname or self.dbname,
                               autocommit=True)


def _server_user() -> tuple[int, int] | None:
    """(uid, gid) to run the server as when we are root, else None (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    raise RuntimeError("running as root and there is neither a 'postgres' nor a 'nobody' user to run PostgreSQL as")


@contextmanager
def running_postgis() -> Iterator[Postgis]:
    """Start a fresh cluster with a test user, a PostGIS database and a plain one; stop and delete it after."""
    import psycopg
    from psycopg import sql

    found = _installation()
    assert found is not None, missing()
    bindir = found[0]
    owner = _server_user()
    folder = Path(tempfile.mkdtemp(prefix="segflow-postgis-"))
    as_owner: dict[str, Any] = {}
    if owner is not None:
        os.chown(folder, *owner)
        as_owner = {"user": owner[0], "group": owner[1], "extra_groups": []}
    admin_password = secrets.token_hex(16)
    pwfile = folder / "admin-password"
    pwfile.write_text(admin_password)
    if owner is not None:
        os.chown(pwfile, *owner)
    data, sockets, log_path = folder / "data", folder / "sockets", folder / "postgres.log"
    sockets.mkdir()
    if owner is not None:
        os.chown(sockets, *owner)
    init = subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", ADMIN, f"--pwfile={pwfile}",
                           "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale",
                           "--no-sync"], capture_output=True, text=True, cwd=folder, **as_owner)
    process: subprocess.Popen[bytes] | None = None
    log = open(log_path, "wb")  # closed below, after the process
    try:
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stderr[-2000:]}")
        port = free_port()
        process = subprocess.Popen(
            [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-c", "listen_addresses=127.0.0.1",
             "-c", f"unix_socket_directories={sockets}", "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "full_page_writes=off", "-c", "max_connections=40"],
            stdout=log, stderr=subprocess.STDOUT, cwd=folder, **as_owner)
        # A password with characters a URL must percent-encode, so the tests cover the decoding.
        server = Postgis(port=port, password=f"p@ss:w/rd %{secrets.token_hex(6)}", socket_dir=str(sockets))
        deadline = time.monotonic() + 60
        while True:
            try:
                connection = server.admin("postgres")
                break
            except psycopg.OperationalError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL did not start: {log_path.read_text()[-2000:]}") from None
                time.sleep(0.2)
        with connection:
            connection.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(USER), sql.Literal(server.password)))
            for name in (DATABASE, PLAIN_DATABASE):
                connection.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(name), sql.Identifier(USER)))
        with server.admin(DATABASE) as connection:
            connection.execute("CREATE EXTENSION postgis")
        yield server
    finally:
        if process is not None:
            process.send_signal(signal.SIGINT)  # "fast" shutdown: does not wait for clients to disconnect
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


def one_line(message: str) -> bool:
    """True when ``message`` is a single non-empty line."""
    return bool(message) and re.search(r"[\r\n]", message) is None
