"""The PostGIS writer against a real PostgreSQL + PostGIS server (tests/postgis.py starts one)."""

from __future__ import annotations

import logging
import math
import re
import socket
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pyogrio
import pytest
import shapely

from segflow.errors import ConfigError, DeliveryError, OutputError, SegflowWarning
from segflow.features import FIELDS, FeatureBatch, LayerInfo
from segflow.io.postgis import PostgisTarget, check_target, redact, write_postgis

from .postgis import PLAIN_DATABASE, Postgis, missing, one_line, running_postgis


@pytest.fixture(scope="session")
def server() -> Iterator[Postgis]:
    reason = missing()
    if reason:
        pytest.skip(reason)
    with running_postgis() as running:
        yield running


@pytest.fixture
def table(request: pytest.FixtureRequest) -> str:
    """A table name of its own for each test (the server is shared by the session)."""
    return re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:50]


@pytest.fixture(autouse=True)
def _no_pgpassword(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)


def _polygon(rng: np.random.Generator, x: float, y: float) -> shapely.Polygon:
    """A valid polygon near (x, y): a star-shaped ring, with a square hole for about half of them."""
    count = int(rng.integers(6, 14))  # gaps of at most 90°: every edge stays 2.1 from the centre, outside the hole
    angles = (np.arange(count) + rng.uniform(0, 0.5, count)) * 2 * math.pi / count
    radii = rng.uniform(3.0, 5.0, count)
    shell = np.column_stack([x + radii * np.cos(angles), y + radii * np.sin(angles)])
    holes = [[(x - 1, y - 1), (x + 1, y - 1), (x + 1, y + 1), (x - 1, y + 1)]] if rng.random() < 0.5 else []
    polygon = shapely.Polygon(shell, holes)
    assert polygon.is_valid
    return polygon


def _batch(scene: str, start: int, count: int, *, seed: int = 0, run_id: str = "run-1") -> FeatureBatch:
    rng = np.random.default_rng(seed + start)
    batch = FeatureBatch()
    for number in range(start, start + count):
        polygon = _polygon(rng, 500_000.0 + 20.0 * (number % 100), 4_000_000.0 + 20.0 * (number // 100))
        batch.append(polygon, instance_id=number + 2**40, class_id=number % 3, class_name=f"class\t{number % 3}\\é",
                     kind="thing" if number % 2 else "stuff", area=polygon.area, area_px=int(polygon.area * 4),
                     perimeter=polygon.length, mean_score=math.nan if number % 5 == 0 else rng.uniform(),
                     scene_id=scene, model="demo", model_version="1.0", run_id=run_id)
    return batch


def _rows(server: Postgis, table: str, scene: str) -> list[tuple[Any, ...]]:
    names = ", ".join(name for name, _ in FIELDS)
    with server.admin() as connection:
        return list(connection.execute(
            f"SELECT {names}, ST_SRID(geom), GeometryType(geom), ST_Area(geom), ST_AsBinary(geom) FROM {table} "
            "WHERE scene_id = %s ORDER BY instance_id", [scene]).fetchall())


def _count(server: Postgis, table: str, scene: str | None = None) -> int:
    with server.admin() as connection:
        if scene is None:
            return int(connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        return int(connection.execute(f"SELECT count(*) FROM {table} WHERE scene_id = %s", [scene]).fetchone()[0])


def test_rows_arrive_with_srid_type_and_values(server: Postgis, table: str) -> None:
    batches = [_batch("scene-a", 0, 40), _batch("scene-a", 40, 25), _batch("scene-a", 65, 0), _batch("scene-a", 65, 7)]
    target = PostgisTarget.parse(server.url(table))
    assert write_postgis(target, LayerInfo(crs_wkt="PROJCS[...]", epsg=32633, scene_id="scene-a"), batches) == 72
    rows = _rows(server, table, "scene-a")
    assert len(rows) == 72
    expected = [(geometry, {name: batch.columns[name][i] for name, _ in FIELDS})
                for batch in batches for i, geometry in enumerate(batch.geometry)]
    for row, (geometry, values) in zip(rows, expected, strict=True):
        for (name, _), value in zip(FIELDS, row, strict=False):
            if isinstance(values[name], float) and math.isnan(values[name]):
                assert math.isnan(value), name
            else:
                assert value == values[name], name
        srid, kind, area, wkb = row[len(FIELDS):]
        assert (srid, kind) == (32633, "POLYGON")
        stored = shapely.from_wkb(bytes(wkb))
        assert stored.equals_exact(geometry, tolerance=0)
        assert len(stored.interiors) == len(geometry.interiors)
        assert area == pytest.approx(geometry.area, rel=1e-12)
    with server.admin() as connection:
        column = connection.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                                    "WHERE attrelid = %s::regclass AND attname = 'geom'", [table]).fetchone()[0]
    assert column == "geometry(Polygon,32633)"


def test_the_table_has_a_spatial_index_the_planner_uses(server: Postgis, table: str) -> None:
    write_postgis(PostgisTarget.parse(server.url(table)), LayerInfo(None, 32633, "s"), [_batch("s", 0, 50)])
    with server.admin() as connection:
        methods = connection.execute(
            "SELECT am.amname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_am am ON am.oid = c.relam "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
            "WHERE i.indrelid = %s::regclass AND a.attname = 'geom'", [table]).fetchall()
        assert methods == [("gist",)]
        connection.execute("SET enable_seqscan = off")
        plan = " ".join(row[0] for row in connection.execute(
            f"EXPLAIN SELECT count(*) FROM {table} WHERE geom && ST_MakeEnvelope(500000, 4000000, 500050, 4000050, "
            "32633)").fetchall())
    assert f"{table}_geom_idx" in plan


def test_rerunning_a_scene_replaces_its_rows_and_another_scene_adds(server: Postgis, table: str) -> None:
    target = PostgisTarget.parse(server.url(table))
    info = LayerInfo(None, 32633, "a")
    assert write_postgis(target, info, [_batch("a", 0, 30, run_id="first")]) == 30
    assert write_postgis(target, info, [_batch("a", 0, 30, run_id="second")]) == 30
    assert _count(server, table) == 30
    assert {row[FIELDS.index(("run_id", "str"))] for row in _rows(server, table, "a")} == {"second"}
    assert write_postgis(target, LayerInfo(None, 32633, "b"), [_batch("b", 0, 12)]) == 12
    assert (_count(server, table), _count(server, table, "a"), _count(server, table, "b")) == (42, 30, 12)
    assert write_postgis(target, info, []) == 0  # a scene without objects leaves no rows of it
    assert (_count(server, table, "a"), _count(server, table, "b")) == (0, 12)


def test_a_table_with_another_srid_is_refused_in_one_line(server: Postgis, table: str) -> None:
    target = PostgisTarget.parse(server.url(table))
    write_postgis(target, LayerInfo(None, 4326, "a"), [_batch("a", 0, 5)])
    with pytest.raises(OutputError) as error:
        write_postgis(target, LayerInfo(None, 32633, "b"), [_batch("b", 0, 5)])
    message = str(error.value)
    assert one_line(message) and table in message
    assert "geom is geometry(Polygon,4326), not geometry(Polygon,32633)" in message
    assert server.password not in message and "***" in message
    assert _count(server, table) == 5
    with pytest.raises(OutputError, match="geometry\\(Polygon,4326\\)"):
        check_target(target, LayerInfo(None, 32633, "b"))
    check_target(target, LayerInfo(None, 4326, "b"))
    check_target(target)  # without a scene: any SRID


def test_a_table_without_the_columns_is_refused(server: Postgis, table: str) -> None:
    with server.admin() as connection:
        connection.execute(f"CREATE TABLE {table} (scene_id text, area integer, geom geometry(Polygon, 32633))")
    target = PostgisTarget.parse(server.url(table))
    with pytest.raises(OutputError, match=f"the user may not SELECT, INSERT and DELETE in table {table}; grant"):
        check_target(target)  # the administrator's table
    with server.admin() as connection:
        connection.execute(f"GRANT SELECT, INSERT, DELETE ON {table} TO segflow")
    for attempt in (lambda: check_target(target),
                    lambda: write_postgis(target, LayerInfo(None, 32633, "a"), [_batch("a", 0, 3)])):
        with pytest.raises(OutputError) as error:
            attempt()
        message = str(error.value)
        assert one_line(message) and f"existing table {table} does not fit" in message
        assert "no column instance_id" in message and "area is integer, not double precision" in message
    assert _count(server, table) == 0


def test_a_database_without_postgis_is_named(server: Postgis, table: str) -> None:
    target = PostgisTarget.parse(server.url(table, dbname=PLAIN_DATABASE))
    for attempt in (lambda: check_target(target),
                    lambda: write_postgis(target, LayerInfo(None, None, "a"), [_batch("a", 0, 3)])):
        with pytest.raises(OutputError, match="has no PostGIS extension; its administrator must run CREATE EXTENSION"):
            attempt()


def test_a_schema_qualified_table_keeps_its_case(server: Postgis) -> None:
    with server.admin() as connection:
        connection.execute("CREATE SCHEMA vectors AUTHORIZATION segflow")
    target = PostgisTarget.parse(server.url("vectors.Objects"))
    assert write_postgis(target, LayerInfo(None, 3857, "a"), [_batch("a", 0, 4)]) == 4
    assert _count(server, 'vectors."Objects"') == 4
    with pytest.raises(OutputError, match="schema 'missing' does not exist"):
        check_target(PostgisTarget.parse(server.url("missing.objects")))


def test_a_wrong_password_is_a_delivery_error_without_retries(server: Postgis, table: str,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "Wr0ng-Secret-Passw0rd"
    target = PostgisTarget.parse(server.url(table, password=wrong))
    started = time.monotonic()
    with pytest.raises(DeliveryError) as error:
        write_postgis(target, LayerInfo(None, None, "a"), [_batch("a", 0, 3)], attempts=3, pause=5.0)
    assert time.monotonic() - started < 4.0  # refused logins are not retried
    message = str(error.value)
    assert one_line(message) and "password authentication failed" in message and "***" in message
    assert wrong not in message and wrong not in caplog.text and wrong not in repr(target)


def test_a_server_down_is_a_delivery_error_after_retries(server: Postgis, table: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with running_postgis() as other:  # started, then stopped: nothing listens on its port any more
        pass
    target = PostgisTarget.parse(server.url(table, port=other.port))
    with pytest.raises(DeliveryError) as error:
        write_postgis(target, LayerInfo(None, None, "a"), [_batch("a", 0, 3)], attempts=3, pause=0.05)
    message = str(error.value)
    assert one_line(message) and "after 3 attempt(s)" in message and "Connection refused" in message
    assert server.password not in message and server.password not in caplog.text
    assert len([r for r in caplog.records if "trying again" in r.getMessage()]) == 2
    with pytest.raises(DeliveryError, match="after 1 attempt"):
        check_target(target, attempts=1)


def test_the_password_can_come_from_pgpassword(server: Postgis, table: str, monkeypatch: pytest.MonkeyPatch) -> None:
    target = PostgisTarget.parse(server.url(table, with_password=False))
    with pytest.raises(DeliveryError, match=r"refused the connection .*password"):
        check_target(target)
    monkeypatch.setenv("PGPASSWORD", server.password)
    assert write_postgis(target, LayerInfo(None, None, "a"), [_batch("a", 0, 6)]) == 6
    assert _count(server, table, "a") == 6


def test_rows_that_do_not_arrive_roll_the_scene_back(server: Postgis, table: str) -> None:
    """A trigger that drops every second row: the count check refuses to commit, the old rows stay."""
    target = PostgisTarget.parse(server.url(table))
    info = LayerInfo(None, 32633, "a")
    write_postgis(target, info, [_batch("a", 0, 10, run_id="old")])
    with server.admin() as connection:
        connection.execute(f"CREATE FUNCTION {table}_drop() RETURNS trigger LANGUAGE plpgsql AS "
                           "$$ BEGIN IF NEW.instance_id % 2 = 0 THEN RETURN NULL; END IF; RETURN NEW; END $$")
        connection.execute(f"CREATE TRIGGER dropper BEFORE INSERT ON {table} FOR EACH ROW "
                           f"EXECUTE FUNCTION {table}_drop()")
    with pytest.raises(OutputError, match=r"holds 5 rows of scene 'a' after writing 10 .*rolled back") as error:
        write_postgis(target, info, [_batch("a", 0, 10, run_id="new")])
    assert one_line(str(error.value))
    assert {row[FIELDS.index(("run_id", "str"))] for row in _rows(server, table, "a")} == {"old"}
    assert _count(server, table) == 10


def test_a_failing_stream_changes_nothing(server: Postgis, table: str) -> None:
    target = PostgisTarget.parse(server.url(table))
    info = LayerInfo(None, 32633, "a")
    write_postgis(target, info, [_batch("a", 0, 10, run_id="old")])

    def failing() -> Iterator[FeatureBatch]:
        yield _batch("a", 0, 100, run_id="new")
        raise RuntimeError("vectorizer failed")

    with pytest.raises(RuntimeError, match="vectorizer failed"):
        write_postgis(target, info, failing())
    wrong = _batch("a", 0, 3)
    wrong.geometry[1] = shapely.MultiPolygon([wrong.geometry[1]])
    with pytest.raises(ValueError, match="feature 1: MultiPolygon, not a Polygon"):
        write_postgis(target, info, [_batch("a", 0, 10), wrong])
    with pytest.raises(ValueError, match="rows of another scene"):
        write_postgis(target, info, [_batch("b", 0, 10)])
    assert _count(server, table) == 10
    assert {row[FIELDS.index(("run_id", "str"))] for row in _rows(server, table, "a")} == {"old"}


def test_a_crs_without_epsg_code_is_written_with_srid_0_and_a_warning(server: Postgis, table: str) -> None:
    with pytest.warns(SegflowWarning, match="CRS without an EPSG code.*SRID 0"):
        write_postgis(PostgisTarget.parse(server.url(table)), LayerInfo("LOCAL_CS[...]", None, "a"),
                      [_batch("a", 0, 3)])
    assert {row[len(FIELDS)] for row in _rows(server, table, "a")} == {0}


def _stream(batches: int, size: int) -> Iterator[FeatureBatch]:
    """``batches`` batches of ``size`` squares, made column-wise (fast, also under tracemalloc)."""
    for number in range(batches):
        ids = np.arange(number * size, (number + 1) * size)
        x, y = 10.0 * (ids % 1000), 10.0 * (ids // 1000)
        polygons = shapely.box(x, y, x + 5, y + 5)
        columns: dict[str, list[Any]] = {
            "instance_id": ids.tolist(), "class_id": (ids % 3).tolist(), "class_name": ["building"] * size,
            "kind": ["thing"] * size, "area": [25.0] * size, "area_px": [100] * size, "perimeter": [20.0] * size,
            "mean_score": np.linspace(0, 1, size).tolist(), "scene_id": ["big"] * size, "model": ["demo"] * size,
            "model_version": ["1.0"] * size, "run_id": [f"run-{number}"] * size}
        yield FeatureBatch(geometry=list(polygons), columns=columns)


def test_many_batches_are_streamed_with_bounded_memory(server: Postgis, table: str) -> None:
    target = PostgisTarget.parse(server.url(table))
    info = LayerInfo(None, 32633, "big")
    write_postgis(target, info, _stream(1, 100))  # first use: caches, the table
    tracemalloc.start()
    try:
        everything = list(_stream(50, 1000))
        total = tracemalloc.get_traced_memory()[0]  # what holding all 50 000 features costs
        del everything
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        assert write_postgis(target, info, _stream(50, 1000)) == 50_000
        peak50 = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        assert write_postgis(target, info, _stream(5, 1000)) == 5_000
        peak5 = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    print(f"holding 50 000 features: {total / 1e6:.1f} MB; peak writing 50 batches {peak50 / 1e6:.2f} MB, "
          f"5 batches {peak5 / 1e6:.2f} MB")
    assert peak50 < total / 8, (peak50, total)
    assert peak50 < 1.5 * peak5 + 1_000_000, (peak50, peak5)  # does not grow with the number of batches
    assert _count(server, table, "big") == 5_000


@pytest.mark.parametrize("url, message", [
    ("postgresql://u:pw@h/db", "names no table"),
    ("postgresql://u:pw@h/db?table=", "names no table"),
    ("postgresql://u:pw@h?table=t", "names no database"),
    ("postgresql://u:pw@h:99999/db?table=t", "port"),
    ("postgresql://u:pw@h/db?table=a.b.c", "is not a table name"),
    ("postgresql://u:pw@h/db?table=t;drop%20table%20x", "is not a table name"),
    ("postgresql://u:pw@h/db?table=1t", "is not a table name"),
    ("postgresql://u:pw@h/db?table=t&password=pw", "has a password= parameter"),
    ("postgresql://u:pw@h/db?table=t&secret=block", "both a password and secret="),
    ("postgresql://u:pw@h/db?table=t&colour=blue", "libpq connection parameters"),
    ("postgresql://u:pw@h/db?table=t&table=u", "twice"),
    ("postgresql://u:p/w@h/db?table=t", "percent-encoded"),
    ("mysql://u:pw@h/db?table=t", "not a PostGIS address"),
])
def test_bad_urls_are_refused_in_one_line_without_the_password(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        PostgisTarget.parse(url)
    assert one_line(str(error.value)) and "pw" not in str(error.value) and "p/w" not in str(error.value)
    assert "table=[schema.]name" in str(error.value) or message != "names no table"


def test_a_url_is_parsed_and_shown_without_its_password() -> None:
    target = PostgisTarget.parse("postgresql://seg%40user:s%3Ac%2Fr%40t@db.example:5433/gis?table=vec.objects"
                                 "&sslmode=require")
    assert (target.schema, target.table, target.table_name, target.secret) == ("vec", "objects", "vec.objects", None)
    assert dict(target.params) == {"dbname": "gis", "host": "db.example", "port": "5433", "user": "seg@user",
                                   "password": "s:c/r@t", "sslmode": "require"}
    assert target.password() == "s:c/r@t"
    shown = "postgresql://seg%40user:***@db.example:5433/gis?table=vec.objects&sslmode=require"
    assert str(target) == shown and repr(target) == f"PostgisTarget({shown!r})"
    assert "s%3Ac" not in repr(target) and "s:c/r@t" not in repr(target)
    assert redact("postgresql://u:p@ss@h/db?table=t") == "postgresql://u:***@h/db?table=t"
    assert redact("postgresql://u@h/db?password=x&table=t") == "postgresql://u@h/db?password=***&table=t"
    assert redact("postgresql://h/db?table=t") == "postgresql://h/db?table=t"


def test_the_password_comes_from_pgpassword_or_a_secret_block(monkeypatch: pytest.MonkeyPatch) -> None:
    target = PostgisTarget.parse("postgresql://u@h/db?table=t")
    assert target.password() is None
    monkeypatch.setenv("PGPASSWORD", "from-env")
    assert target.password() == "from-env"
    assert PostgisTarget.parse("postgresql://u:url@h/db?table=t").password() == "url"
    named = PostgisTarget.parse("postgresql://u@h/db?table=t&secret=segflow-no-such-block")
    assert named.secret == "segflow-no-such-block" and "secret" not in dict(named.params)


@pytest.mark.slow
def test_the_password_can_come_from_a_prefect_secret_block(server: Postgis, table: str) -> None:
    prefect_testing = pytest.importorskip("prefect.testing.utilities")
    from prefect.blocks.system import Secret

    with prefect_testing.prefect_test_harness(server_startup_timeout=120):
        secret: Any = Secret(value=server.password)  # type: ignore[arg-type]  # pydantic makes a SecretStr of it
        secret.save("segflow-postgis-test", overwrite=True)
        target = PostgisTarget.parse(server.url(table, with_password=False) + "&secret=segflow-postgis-test")
        assert write_postgis(target, LayerInfo(None, None, "a"), [_batch("a", 0, 4)]) == 4
        with pytest.raises(ConfigError, match="cannot load the Prefect Secret block 'segflow-no-such-block'") as error:
            check_target(PostgisTarget.parse(server.url(table, with_password=False) + "&secret=segflow-no-such-block"))
        assert one_line(str(error.value))
    assert _count(server, table, "a") == 4


def test_a_server_that_does_not_answer_times_out(server: Postgis, table: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections, never speaks
        target = PostgisTarget.parse(server.url(table, port=silent.getsockname()[1]))
        started = time.monotonic()
        with pytest.raises(DeliveryError, match=r"after 2 attempt.*timeout") as error:
            check_target(target, attempts=2, pause=0.01, timeout=2)
    assert 3.5 < time.monotonic() - started < 15
    assert one_line(str(error.value)) and server.password not in str(error.value)


def test_a_secret_block_without_prefect_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prefect.blocks.system", None)  # what an installation without prefect has
    target = PostgisTarget.parse("postgresql://u@h/db?table=t&secret=block")
    with pytest.raises(ConfigError, match="names the Prefect Secret block 'block' but prefect is not installed"):
        target.password()


def test_a_connection_lost_while_writing_is_a_delivery_error_and_changes_nothing(server: Postgis, table: str) -> None:
    target = PostgisTarget.parse(server.url(table))
    info = LayerInfo(None, 32633, "a")
    write_postgis(target, info, [_batch("a", 0, 10, run_id="old")])

    def interrupted() -> Iterator[FeatureBatch]:
        yield _batch("a", 0, 100, run_id="new")
        with server.admin() as connection:  # the administrator ends segflow's session in the middle of the COPY
            ended = connection.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                       "WHERE application_name = 'segflow' AND usename = 'segflow'").fetchall()
        assert ended == [(True,)]
        yield _batch("a", 100, 100, run_id="new")

    with pytest.raises(DeliveryError, match=r"lost PostGIS at .* during the write .*nothing of this scene was committed"
                       ) as error:
        write_postgis(target, info, interrupted())
    assert one_line(str(error.value)) and server.password not in str(error.value)
    assert {row[FIELDS.index(("run_id", "str"))] for row in _rows(server, table, "a")} == {"old"}


def _segflow(scene: Path, out: Path, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "segflow", "run", "tile-infer", "-i", str(scene), "-o", str(out),
                           "--model", "spectral-landcover", "--postgis", url, "--min-area", "300"],
                          capture_output=True, text=True, timeout=600)


def test_tile_infer_delivers_the_published_polygons_once_per_scene(server: Postgis, table: str,
                                                                   tmp_path: Path) -> None:
    from segflow.synthetic import write_synthetic_scene

    scene = tmp_path / "T33UVP.tif"
    write_synthetic_scene(scene, width=300, height=260, seed=4)
    url = server.url(table)
    done = _segflow(scene, tmp_path / "out", url)
    assert done.returncode == 0, done.stderr
    published = pyogrio.read_dataframe(tmp_path / "out" / "instances.gpkg")
    assert len(published) > 5 and f"{len(published)} polygon(s) in PostGIS (confirmed)" in done.stdout
    with server.admin() as db:
        rows = db.execute(f'SELECT count(*), min(ST_SRID(geom)), sum(ST_Area(geom)), min(scene_id) FROM "{table}"'
                          ).fetchone()
    assert rows[0] == len(published) and rows[1] == 32633 and rows[3] == "T33UVP"
    assert rows[2] == pytest.approx(published.geometry.area.sum(), rel=1e-9)
    again = _segflow(scene, tmp_path / "out", url)  # outputs up to date: delivered again, rows replaced
    assert again.returncode == 0, again.stderr
    with server.admin() as db:
        assert db.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0] == len(published)
    seen = done.stdout + done.stderr + again.stdout + again.stderr + (tmp_path / "out" / "run.json").read_text()
    assert server.password not in seen and quote(server.password, safe="") not in seen


def test_tile_infer_with_the_database_down_keeps_its_outputs_and_exits_6(server: Postgis, table: str,
                                                                         tmp_path: Path) -> None:
    from segflow.synthetic import write_synthetic_scene

    scene = tmp_path / "s.tif"
    write_synthetic_scene(scene, width=200, height=180, seed=5)
    with running_postgis() as other:  # started, then stopped: nothing listens on its port any more
        pass
    done = _segflow(scene, tmp_path / "out", server.url(table, port=other.port))
    assert done.returncode == 6, done.stderr
    assert one_line(done.stderr.strip()) and server.password not in done.stderr
    assert (tmp_path / "out" / "instances.gpkg").exists() and (tmp_path / "out" / "labels.tif").exists()
