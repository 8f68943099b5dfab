"""Write vector features into a PostGIS table: one transaction per scene, streamed with COPY.

The target is a URL: ``postgresql://user[:password]@host[:port]/database?table=[schema.]name``.
The password comes from the URL, else from the Prefect Secret block named by ``&secret=block-name``,
else from ``PGPASSWORD`` (else libpq's own sources, such as ``~/.pgpass``). Other query parameters
are libpq connection parameters (``sslmode=require``, ``connect_timeout=5``...). Anything shown to a
user (``str``/``repr`` of a target, every error message, the log) shows the URL with the password
replaced by ``***`` (:func:`redact`).

Table layout: the columns of :attr:`LayerInfo.fields` (int32 → integer, int64 → bigint, float64 →
double precision, str → text), ``geom geometry(Polygon, SRID)`` with SRID = the scene's EPSG code
(0 without one) holding coordinates (x, y) in the scene's CRS, plus a ``fid`` identity primary key, a
GiST index on ``geom`` and a b-tree index on ``scene_id``. Several scenes share one table: writing a
scene deletes that scene's rows and inserts the new ones in one transaction, so re-running a scene
replaces its rows; the transaction commits only once ``count(*)`` of the scene equals the number of
features written. Creating the PostGIS extension is the database administrator's job.

Errors: a server down, refusing, timing out or refusing the login → :class:`DeliveryError` (connecting
is retried with a growing pause, a refused login is not); a database without PostGIS, an existing table
that does not fit the features, or a statement the server refuses → :class:`OutputError`.
"""

from __future__ import annotations

import logging
import os
import re
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import numpy as np
import psycopg
import shapely
from psycopg import sql

from ..errors import ConfigError, DeliveryError, OutputError, SegflowWarning
from ..features import FIELDS, FeatureBatch, LayerInfo

__all__ = ["PostgisTarget", "check_target", "redact", "write_postgis"]

log = logging.getLogger(__name__)

_USAGE = "write it as postgresql://user[:password]@host[:port]/database?table=[schema.]name"
_SQL_TYPES = {"int32": "integer", "int64": "bigint", "float64": "double precision", "str": "text"}
_SHAPELY_TYPE_IDS = {"Point": 0, "LineString": 1, "Polygon": 3, "MultiPoint": 4, "MultiLineString": 5,
                     "MultiPolygon": 6}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^?#]*)@")  # up to the last '@' before the query
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)
# libpq's connection failures carry no SQLSTATE: these words mean the server answered and said no
_REFUSED = re.compile(r"authentication failed|no password supplied|password is required|does not exist|"
                      r"pg_hba\.conf|permission denied|not permitted to log in|SSL .*required", re.IGNORECASE)


def redact(url: str) -> str:
    """``url`` with the password (in the user part or a ``password=`` parameter) replaced by ``***``."""

    def hide(match: re.Match[str]) -> str:
        user, colon, _ = match.group(2).partition(":")
        return f"{match.group(1)}{user}{':***' if colon else ''}@"

    return _QUERY_PASSWORD.sub(r"\1***", _USERINFO.sub(hide, url, count=1))


def _one_line(exc: BaseException, *secrets: str | None) -> str:
    """The message of ``exc`` on one line, without any of ``secrets``."""
    text = " ".join(str(exc).split())
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text[:300]


@dataclass(frozen=True)
class PostgisTarget:
    """A PostGIS table to write to: libpq connection parameters, the table, where the password comes from.

    Build it with :meth:`parse`. ``str()`` and ``repr()`` never show the password.
    """

    url: str = field(repr=False)
    table: str
    schema: str | None = None
    secret: str | None = None  # name of a Prefect Secret block holding the password
    params: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # libpq keywords, password included

    @classmethod
    def parse(cls, url: str) -> PostgisTarget:
        """Parse a PostGIS URL; raise :class:`ConfigError` (one line, password hidden) for anything else."""
        shown = redact(url)
        parts = urlsplit(url.strip())
        if parts.scheme not in ("postgresql", "postgres") or not parts.netloc:
            raise ConfigError(f"{shown!r} is not a PostGIS address; {_USAGE}")
        userinfo = _USERINFO.match(url.strip())
        if userinfo and parts.netloc.rpartition("@")[0] != userinfo.group(2):
            raise ConfigError(f"the user or password in {shown!r} has a '/', '?' or '#' that is not "
                              "percent-encoded; write it as %2F, %3F, %23 (or put the password in PGPASSWORD)")
        try:
            port = parts.port
        except ValueError:
            raise ConfigError(f"the port in {shown!r} is not a number from 1 to 65535; {_USAGE}") from None
        database = unquote(parts.path.lstrip("/"))
        if not database or "/" in database:
            raise ConfigError(f"{shown!r} names no database; {_USAGE}")
        params: dict[str, str] = {"dbname": database}
        if parts.hostname:
            params["host"] = unquote(parts.hostname)
        if port is not None:
            params["port"] = str(port)
        if parts.username:
            params["user"] = unquote(parts.username)
        if parts.password is not None:
            params["password"] = unquote(parts.password)
        query: dict[str, str] = {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key in query:
                raise ConfigError(f"{shown!r} gives {key}= twice; give it once")
            query[key] = value
        if "password" in query:
            raise ConfigError(f"{shown!r} has a password= parameter; put the password in the user part "
                              "(postgresql://user:password@host/database), in PGPASSWORD or in a Prefect Secret "
                              "block named by secret=")
        table_text = query.pop("table", "")
        secret = query.pop("secret", None)
        if not table_text:
            raise ConfigError(f"{shown!r} names no table; {_USAGE}")
        names = table_text.split(".")
        if len(names) > 2 or not all(_IDENTIFIER.fullmatch(name) for name in names):
            raise ConfigError(f"table {table_text!r} in {shown!r} is not a table name: use table=name or "
                              "table=schema.name, each of letters, digits and _ (not starting with a digit, "
                              "at most 63 characters)")
        if secret is not None and ("password" in params or not secret):
            raise ConfigError(f"{shown!r} gives both a password and secret= (or an empty secret=); give one")
        params.update(query)
        try:
            psycopg.conninfo.make_conninfo("", **params)  # rejects unknown libpq parameters
        except psycopg.ProgrammingError as exc:
            raise ConfigError(f"{shown!r}: {_one_line(exc, params.get('password'))}; {_USAGE}, other "
                              "parameters must be libpq connection parameters") from None
        schema, table = (names[0], names[1]) if len(names) == 2 else (None, names[0])
        return cls(url=url, table=table, schema=schema, secret=secret, params=tuple(params.items()))

    def __str__(self) -> str:
        return redact(self.url)

    def __repr__(self) -> str:
        return f"PostgisTarget({redact(self.url)!r})"

    @property
    def identifier(self) -> sql.Identifier:
        """The table, quoted (``"schema"."name"`` or ``"name"``): names keep their case."""
        return sql.Identifier(self.schema, self.table) if self.schema else sql.Identifier(self.table)

    @property
    def table_name(self) -> str:
        return f"{self.schema}.{self.table}" if self.schema else self.table

    def password(self) -> str | None:
        """The password: from the URL, else the Prefect Secret block, else ``PGPASSWORD``, else None."""
        given = dict(self.params).get("password")
        if given is not None:
            return given
        if self.secret is not None:
            from .secrets import load_secret

            return load_secret(self.secret, str(self))
        return os.environ.get("PGPASSWORD")


def _connect(target: PostgisTarget, attempts: int, pause: float, timeout: float) -> psycopg.Connection[Any]:
    """An autocommit connection; connection failures are retried ``attempts`` times, refused logins are not."""
    password = target.password()
    params = dict(target.params)
    if password is not None:
        params["password"] = password
    params.setdefault("connect_timeout", str(max(1, round(timeout))))
    params.setdefault("application_name", "segflow")
    conninfo = psycopg.conninfo.make_conninfo("", **params)
    reason = "no answer"
    for attempt in range(attempts):
        try:
            return psycopg.connect(conninfo, autocommit=True)
        except psycopg.OperationalError as exc:
            reason = _one_line(exc, password)
            if _REFUSED.search(reason):
                raise DeliveryError(f"PostGIS at {target} refused the connection ({reason}); check the user, "
                                    "password (URL, secret= or PGPASSWORD) and database name",
                                    transient=False) from None
            if attempt + 1 < attempts:
                delay = pause * 2**attempt
                log.info("PostGIS at %s not reachable (%s); trying again in %.1f s", target, reason, delay)
                time.sleep(delay)
    raise DeliveryError(f"cannot connect to PostGIS at {target} after {attempts} attempt(s) ({reason}); check "
                        "that the server is running and reachable, then run again")


def _column_types(info: LayerInfo, srid: int) -> dict[str, str]:
    """Column → SQL type as PostgreSQL's ``format_type`` writes it, ``geom`` last."""
    if info.geometry_type not in _SHAPELY_TYPE_IDS:
        raise ValueError(f"geometry type {info.geometry_type!r} is not one of {sorted(_SHAPELY_TYPE_IDS)}")
    types: dict[str, str] = {}
    for name, kind in info.fields:
        if kind not in _SQL_TYPES:
            raise ValueError(f"field {name!r} has type {kind!r}, not one of {sorted(_SQL_TYPES)}")
        types[name] = _SQL_TYPES[kind]
    if types.get("scene_id") != "text" or "geom" in types or "fid" in types:
        raise ValueError("the fields must include scene_id (str) and must not be named geom or fid")
    types["geom"] = f"geometry({info.geometry_type},{srid})" if srid else f"geometry({info.geometry_type})"
    return types


def _inspect(connection: psycopg.Connection[Any], target: PostgisTarget, wanted: dict[str, str],
             check_srid: bool) -> bool:
    """Check PostGIS, the schema, the table's columns and privileges; return whether the table exists.

    Raises :class:`OutputError` (one line) for whatever does not fit. ``wanted``: column → type as
    ``format_type`` writes it (other columns may exist); ``check_srid``: compare the SRID of ``geom`` too.
    """
    where = f"PostGIS at {target}"
    if connection.execute("SELECT 1 FROM pg_extension WHERE extname = 'postgis'").fetchone() is None:
        raise OutputError(f"the database of {where} has no PostGIS extension; its administrator must run "
                          "CREATE EXTENSION postgis in it")
    schema = target.schema or connection.execute("SELECT current_schema()").fetchone()[0]  # type: ignore[index]
    if schema is None or connection.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s",
                                            [schema]).fetchone() is None:
        raise OutputError(f"{where}: schema {schema!r} does not exist (or the search_path names none); create "
                          "it or name an existing one in table=schema.name")
    name = target.identifier.as_string(connection)
    row = connection.execute("SELECT relkind::text FROM pg_class WHERE oid = to_regclass(%s)", [name]).fetchone()
    if row is None:
        if not connection.execute("SELECT has_schema_privilege(%s, 'CREATE')", [schema]).fetchone()[0]:  # type: ignore[index]
            raise OutputError(f"{where}: table {target.table_name} does not exist and the user may not create "
                              f"tables in schema {schema!r}; create the table or grant CREATE on the schema")
        return False
    if row[0] not in ("r", "p"):
        raise OutputError(f"{where}: {target.table_name} is not a table (relkind {row[0]!r}); name a table")
    if not connection.execute("SELECT has_table_privilege(to_regclass(%s), 'SELECT, INSERT, DELETE')",
                              [name]).fetchone()[0]:  # type: ignore[index]
        raise OutputError(f"{where}: the user may not SELECT, INSERT and DELETE in table {target.table_name}; "
                          "grant these privileges")
    have = dict(connection.execute(
        "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped", [name]).fetchall())
    differences = [f"no column {column}" if column not in have else f"{column} is {have[column]}, not {kind}"
                   for column, kind in wanted.items() if not _fits(column, have.get(column), kind, check_srid)]
    if differences:
        raise OutputError(f"{where}: existing table {target.table_name} does not fit the features: "
                          f"{'; '.join(differences)}; write to another table or drop this one")
    return True


def _fits(column: str, have: str | None, want: str, check_srid: bool) -> bool:
    if have is None or check_srid or column != "geom":
        return have == want
    return have.partition(",")[0].rstrip(")") == want.partition(",")[0].rstrip(")")  # "geometry(Polygon"


def check_target(target: PostgisTarget, info: LayerInfo | None = None, *, attempts: int = 3, pause: float = 1.0,
                 timeout: float = 10.0) -> None:
    """Fail fast, before a run: connect, check PostGIS, and check the table if it exists.

    With ``info`` the existing table must fit its fields, geometry type and SRID; without it, the
    default fields (:data:`~segflow.features.FIELDS`) and Polygon, any SRID. A few catalogue queries.
    """
    wanted = _column_types(info or LayerInfo(crs_wkt=None, epsg=None, scene_id="", fields=FIELDS),
                           (info.epsg or 0) if info else 0)
    with _connect(target, attempts, pause, timeout) as connection:
        try:
            _inspect(connection, target, wanted, check_srid=info is not None)
        except psycopg.Error as exc:
            raise _failure(exc, target, "check") from None


def _failure(exc: psycopg.Error, target: PostgisTarget, what: str) -> Exception:
    reason = _one_line(exc, dict(target.params).get("password"), os.environ.get("PGPASSWORD"))
    state = exc.sqlstate or ""
    if isinstance(exc, psycopg.OperationalError) and (not state or state.startswith("08") or state.startswith("57")):
        # no SQLSTATE: the connection broke; 08: connection exception; 57: shut down, cancelled, timed out
        committed = "; nothing of this scene was committed" if what == "write" else ""
        return DeliveryError(f"lost PostGIS at {target} during the {what} ({reason}){committed}; run again")
    return OutputError(f"PostGIS at {target} refused the {what} of table {target.table_name}: {reason}")


def write_postgis(target: PostgisTarget, info: LayerInfo, batches: Iterable[FeatureBatch], *, attempts: int = 3,
                  pause: float = 1.0, timeout: float = 10.0) -> int:
    """Replace the rows of scene ``info.scene_id`` in the target table by ``batches``; return the row count.

    The table is created if it does not exist (its own short transaction). The scene's rows are
    deleted and the batches streamed in with COPY in one transaction, holding one batch at a time;
    it commits only when the table holds exactly the rows written for the scene, else nothing changes.
    Geometries must be shapely geometries of ``info.geometry_type`` in the scene's CRS.
    """
    srid = info.epsg or 0
    if info.crs_wkt is not None and info.epsg is None:
        warnings.warn(f"scene {info.scene_id!r} has a CRS without an EPSG code: its rows in {target} get SRID 0 "
                      "(no CRS); reproject the scene to an EPSG CRS to keep it", SegflowWarning, stacklevel=2)
    wanted = _column_types(info, srid)
    names = [name for name, _ in info.fields]
    with _connect(target, attempts, pause, timeout) as connection:
        what = "check"
        try:
            with connection.transaction():
                # check-then-create by one writer at a time: two writers creating the same table would collide
                connection.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                                   [f"segflow-table:{target.table_name}"])
                if not _inspect(connection, target, wanted, check_srid=True):
                    what = "creation"
                    _create(connection, target, wanted)
            what = "write"
            with connection.transaction():
                connection.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                                   [f"segflow-scene:{target.table_name}:{info.scene_id}"])
                connection.execute(sql.SQL("DELETE FROM {} WHERE scene_id = %s").format(target.identifier),
                                   [info.scene_id])
                written = _copy(connection, target, info, names, batches, srid)
                stored = connection.execute(sql.SQL("SELECT count(*) FROM {} WHERE scene_id = %s").format(
                    target.identifier), [info.scene_id]).fetchone()[0]  # type: ignore[index]
                if stored != written:
                    raise OutputError(f"PostGIS at {target}: table {target.table_name} holds {stored} rows of scene "
                                      f"{info.scene_id!r} after writing {written} (a trigger, rule or concurrent "
                                      "writer?); rolled back, nothing changed")
        except psycopg.Error as exc:
            raise _failure(exc, target, what) from None
    log.info("wrote %d rows of scene %r to %s", written, info.scene_id, target)
    return written


def _create(connection: psycopg.Connection[Any], target: PostgisTarget, types: dict[str, str]) -> None:
    columns: list[sql.Composable] = [sql.SQL("fid bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")]
    columns += [sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(kind)) for name, kind in types.items()]
    connection.execute(sql.SQL("CREATE TABLE {} ({})").format(target.identifier, sql.SQL(", ").join(columns)))
    for column, method in (("geom", "gist"), ("scene_id", "btree")):
        index = sql.Identifier(f"{target.table[:50]}_{column}_idx")
        connection.execute(sql.SQL("CREATE INDEX {} ON {} USING {} ({})").format(
            index, target.identifier, sql.SQL(method), sql.Identifier(column)))


_COPY_TYPES = {"int32": "int4", "int64": "int8", "float64": "float8", "str": "text"}


def _copy(connection: psycopg.Connection[Any], target: PostgisTarget, info: LayerInfo, names: list[str],
          batches: Iterable[FeatureBatch], srid: int) -> int:
    """Stream the batches with one binary COPY, geometry as EWKB (with the SRID); return the rows sent."""
    type_id = _SHAPELY_TYPE_IDS[info.geometry_type]
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        target.identifier, sql.SQL(", ").join(sql.Identifier(name) for name in [*names, "geom"]))
    written = 0
    with connection.cursor() as cursor, cursor.copy(statement) as copy:
        # geometry_recv reads (E)WKB: the geometry travels as the raw bytes a bytea would
        copy.set_types([_COPY_TYPES[kind] for _, kind in info.fields] + ["bytea"])
        for number, batch in enumerate(batches):
            geometry = shapely.set_srid(_geometries(batch, number, type_id, info.geometry_type), srid)
            columns = [batch.columns[name] for name in names]
            if any(len(column) != len(geometry) for column in columns):
                raise ValueError(f"batch {number}: the columns and the geometries differ in length")
            if any(value != info.scene_id for value in batch.columns["scene_id"]):
                raise ValueError(f"batch {number} holds rows of another scene than {info.scene_id!r}")
            wkb = shapely.to_wkb(geometry, include_srid=bool(srid))
            for row in zip(*columns, wkb, strict=True):
                copy.write_row(row)
            written += len(geometry)
    return written


def _geometries(batch: FeatureBatch, number: int, type_id: int, type_name: str) -> np.ndarray[Any, Any]:
    """The batch's geometries as an array, each checked to be of the layer's type."""
    geoms = np.asarray(batch.geometry, dtype=object)
    ids = shapely.get_type_id(geoms)
    if len(geoms) and (ids != type_id).any():
        bad = int(np.flatnonzero(ids != type_id)[0])
        raise ValueError(f"batch {number}, feature {bad}: {type(geoms[bad]).__name__}, not a {type_name}")
    return geoms
