"""prefect.yaml and ``segflow serve``: the committed deployments load and check out; a served cron schedule runs.

The slow tests start a real ``prefect server start`` (a temporary PREFECT_HOME, a free port): the
server of Prefect's test harness is an ephemeral one, which never runs the scheduler service (Prefect
3.8.8 registers the scheduler only in non-ephemeral servers, and the harness forces
``PREFECT__SERVER_EPHEMERAL=1``), so under it a cron schedule never creates a run.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import rasterio

from segflow.errors import ConfigError

from .helpers import free_port

pytest.importorskip("prefect")

from segflow.deployments import (
    build_deployments,
    find_passwords,
    load_flow,
    read_project,
)

REPO = Path(__file__).resolve().parents[1]
PREFECT_YAML = REPO / "prefect.yaml"
BIN = Path(sys.executable).parent


# ---- the committed prefect.yaml ------------------------------------------------------------------


def test_committed_file_declares_the_nightly_batch_and_tile_infer() -> None:
    project = read_project(PREFECT_YAML)
    by_name = {d.name: d for d in project.deployments}
    assert set(by_name) == {"nightly-batch", "tile-infer"}
    nightly, tile = by_name["nightly-batch"], by_name["tile-infer"]
    assert nightly.entrypoint == "pipelines/batch_flow.py:nightly_batch_flow"
    assert [(s.cron, s.timezone, s.active) for s in nightly.schedules] == [("0 2 * * *", "UTC", True)]
    assert nightly.parameters == {"inbox": "/data/incoming", "output": "/data/segflow"}
    assert tile.entrypoint == "pipelines/tile_infer_flow.py:tile_infer_flow"
    assert tile.schedules == [] and tile.parameters == {}
    # prefect deploy needs a work pool on each deployment
    assert {d.work_pool["name"] for d in project.deployments if d.work_pool} == {"segflow"}
    assert all(d.work_pool for d in project.deployments)


def test_committed_file_pulls_no_code_from_the_network() -> None:
    raw = PREFECT_YAML.read_text()
    assert "git_clone" not in raw and "pull_from_remote_storage" not in raw
    doc = read_project(PREFECT_YAML)
    assert doc.root == REPO


def test_every_entrypoint_loads_from_any_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # entrypoints are relative to the file's folder, not the cwd
    built = {d.name: d for d in build_deployments(PREFECT_YAML)}
    assert built["nightly-batch"].flow_name == "segflow-nightly-batch"
    assert built["tile-infer"].flow_name == "segflow-tile-infer"
    assert built["nightly-batch"].parameters == {"inbox": "/data/incoming", "output": "/data/segflow"}
    [schedule] = built["nightly-batch"].schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone, schedule.active) == ("0 2 * * *", "UTC", True)
    assert built["tile-infer"].schedules == []
    assert built["nightly-batch"].work_pool_name is None  # served deployments need no pool


def test_schedules_fire_when_the_scheduler_computes() -> None:
    """The server's own schedule arithmetic gives 02:00 UTC every day for the nightly batch."""
    from prefect.server.schemas.schedules import CronSchedule

    [nightly] = [d for d in read_project(PREFECT_YAML).deployments if d.schedules]
    for s in nightly.schedules:
        assert s.cron is not None
        sched = CronSchedule(cron=s.cron, timezone=s.timezone)
        dates = asyncio.run(sched.get_dates(n=3, start=datetime(2024, 3, 30, 2, 0, 1, tzinfo=UTC)))
        # across the EU daylight-saving change (31 March): UTC does not move
        assert [d.astimezone(UTC).replace(tzinfo=None) for d in dates] == [
            datetime(2024, 3, 31, 2), datetime(2024, 4, 1, 2), datetime(2024, 4, 2, 2)]


def test_parameters_are_the_flows_own() -> None:
    project = read_project(PREFECT_YAML)
    for spec in project.deployments:
        flow = load_flow(spec, project.root)
        accepted = inspect.signature(flow.fn).parameters
        assert set(spec.parameters) <= set(accepted), spec.name
        for s in spec.schedules:
            required = {n for n, p in accepted.items() if p.default is inspect.Parameter.empty}
            assert required <= set(spec.parameters) | set(s.parameters), spec.name


def test_no_parameter_holds_a_password() -> None:
    project = read_project(PREFECT_YAML)
    for spec in project.deployments:
        assert list(find_passwords(spec.parameters)) == [], spec.name
        for s in spec.schedules:
            assert list(find_passwords(s.parameters)) == [], spec.name


def test_commented_postgis_example_names_a_secret_block_not_a_password() -> None:
    from segflow.io.postgis import PostgisTarget

    [line] = [ln for ln in PREFECT_YAML.read_text().splitlines() if re.match(r"\s*#\s*postgis:", ln)]
    url = line.split("postgis:", 1)[1].strip()
    assert list(find_passwords({"postgis": url})) == []
    target = PostgisTarget.parse(url)
    assert target.secret == "segflow-postgis"
    assert "table=objects" in url


# ---- checks, each one ConfigError line ---------------------------------------------------------------


FLOW_SOURCE = '''
from prefect import flow

@flow(name="toy")
def toy(inbox: str, output: str, batch: int = 16, postgis: str | None = None) -> str:
    return inbox

def not_a_flow(x: int) -> int:
    return x
'''


def _project(tmp_path: Path, deployment: str, *, source: str = FLOW_SOURCE) -> Path:
    (tmp_path / "flows").mkdir(exist_ok=True)
    (tmp_path / "flows" / "toy.py").write_text(source)
    path = tmp_path / "prefect.yaml"
    path.write_text("pull: []\ndeployments:\n" + deployment)
    return path


GOOD = '''  - name: toy-nightly
    entrypoint: flows/toy.py:toy
    schedules:
      - cron: "0 2 * * *"
        timezone: UTC
    parameters:
      inbox: /in
      output: /out
'''


def test_a_good_toy_project_builds(tmp_path: Path) -> None:
    [d] = build_deployments(_project(tmp_path, GOOD))
    assert (d.name, d.flow_name, d.parameters) == ("toy-nightly", "toy", {"inbox": "/in", "output": "/out"})


def test_environment_placeholders_are_filled_as_prefect_deploy_does(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGFLOW_TEST_INBOX", "/mnt/inbox")
    [d] = build_deployments(_project(tmp_path, GOOD.replace("inbox: /in", "inbox: '{{ $SEGFLOW_TEST_INBOX }}'")))
    assert d.parameters["inbox"] == "/mnt/inbox"


@pytest.mark.parametrize(("change", "needles"), [
    pytest.param(("", "oops: [unclosed"), ["not valid YAML", "line"], id="malformed-yaml"),
    pytest.param(("flows/toy.py:toy", "flows/missing.py:toy"), ["flows/missing.py", "does not exist"],
                 id="missing-entrypoint-file"),
    pytest.param(("flows/toy.py:toy", "flows/toy.py:nope"), ["'nope' not found"], id="missing-function"),
    pytest.param(("flows/toy.py:toy", "flows/toy.py:not_a_flow"), ["not a flow"], id="not-a-flow"),
    pytest.param(("flows/toy.py:toy", "flows/toy.py"), ["path/to/file.py:flow_function"], id="no-function"),
    pytest.param(('"0 2 * * *"', '"0 25 * * *"'), ["Invalid cron string", "0 25 * * *", "minute hour"],
                 id="bad-cron"),
    pytest.param(('"0 2 * * *"', '"0 2 * *"'), ["Invalid cron string"], id="four-field-cron"),
    pytest.param(("timezone: UTC", "timezone: Mars/Olympus"), ["time zone 'Mars/Olympus'"], id="bad-timezone"),
    pytest.param(("output: /out", "output: /out\n      outbox: /x"), ["no parameter 'outbox'", "inbox, output"],
                 id="unknown-parameter"),
    pytest.param(("      output: /out\n", ""), ["lacks parameter 'output'"], id="scheduled-without-required"),
    pytest.param(("output: /out", "output: /out\n      batch: many"), ["batch"], id="wrong-type"),
    pytest.param(("output: /out", "output: /out\n      postgis: postgresql://u:hunter2@db/gis?table=t"),
                 ["password in parameter 'postgis'", "Secret block"], id="password-in-url"),
    pytest.param(("output: /out", "output: /out\n      postgis: postgresql://u@db/gis?password=hunter2"),
                 ["password in parameter 'postgis'"], id="password-in-query"),
    pytest.param(("        timezone: UTC", "        timezone: UTC\n        parameters: {db_password: hunter2}"),
                 ["password in parameter 'db_password'"], id="password-in-schedule-parameters"),
    pytest.param(("    entrypoint:", "    work_queue: q\n    entrypoint:"), ["work_queue", "unknown key"],
                 id="unknown-key"),
    pytest.param(('cron: "0 2 * * *"', 'rrule: "FREQ=DAILY"'), ["schedules.0", "rrule"], id="unsupported-rrule"),
    pytest.param(("timezone: UTC", "timezone: UTC\n        interval: 60"), ["exactly one of cron or interval"],
                 id="cron-and-interval"),
])
def test_bad_project_is_one_config_error(tmp_path: Path, change: tuple[str, str], needles: list[str]) -> None:
    old, new = change
    text = GOOD + new if old == "" else GOOD.replace(old, new)
    assert text != GOOD
    with pytest.raises(ConfigError) as info:
        build_deployments(_project(tmp_path, text))
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    assert "hunter2" not in message


def test_missing_file_and_duplicate_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'.*nothing\.yaml' does not exist; give the project's prefect\.yaml"):
        read_project(tmp_path / "nothing.yaml")
    with pytest.raises(ConfigError, match="names deployment 'toy-nightly' twice"):
        read_project(_project(tmp_path, GOOD + GOOD))
    (tmp_path / "list.yaml").write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping with a 'deployments' list, got list"):
        read_project(tmp_path / "list.yaml")


def test_an_on_demand_deployment_may_leave_required_parameters_to_the_run(tmp_path: Path) -> None:
    text = "  - name: toy-once\n    entrypoint: flows/toy.py:toy\n    parameters: {batch: 4}\n"
    [d] = build_deployments(_project(tmp_path, text))
    assert d.schedules == [] and d.parameters == {"batch": 4}


def test_interval_schedules_are_kept(tmp_path: Path) -> None:
    text = GOOD.replace('cron: "0 2 * * *"', "interval: 3600")
    [d] = build_deployments(_project(tmp_path, text))
    [s] = d.schedules
    assert s.schedule.interval.total_seconds() == 3600 and s.schedule.timezone == "UTC"


def test_find_passwords() -> None:
    params: dict[str, Any] = {
        "postgis": "postgresql://segflow@db/gis?table=objects&secret=segflow-postgis",
        "pacs": "dicomweb+http://orthanc:pw@pacs:8042/dicom-web",
        "nested": {"targets": ["postgresql://a@b/c", "postgresql://a@b/c?sslmode=require&password=x"]},
        "api_passwd": "x",
        "password": None,
        "inbox": "/data/p@ss:word",
    }
    assert sorted(find_passwords(params)) == ["api_passwd", "nested.targets[1]", "pacs"]


# ---- the CLI -------------------------------------------------------------------------------------------------


def _segflow(*args: str, env: dict[str, str] | None = None,
             cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "segflow"), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})}, cwd=cwd)


def test_cli_refuses_a_missing_file_and_a_missing_server(tmp_path: Path) -> None:
    done = _segflow("serve", "--file", str(tmp_path / "none.yaml"))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"segflow: error: deployment file '{tmp_path / 'none.yaml'}' does not "
                                        "exist; give the project's prefect.yaml with --file"]
    done = _segflow("serve", env={"PREFECT_API_URL": "", "PREFECT_HOME": str(tmp_path)}, cwd=REPO)
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith("segflow: error: no Prefect server to schedule the runs: start one (prefect server "
                           "start) and set PREFECT_API_URL"), line
    done = _segflow("serve", "--file", str(PREFECT_YAML),
                    env={"PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api", "PREFECT_HOME": str(tmp_path)})
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert "does not answer" in line and "ConnectError" in line, line


def test_cli_limit_must_be_positive(tmp_path: Path) -> None:
    done = _segflow("serve", "--limit", "0")
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1
    assert "--limit" in done.stderr


# ---- a real server: the scheduler creates the run, segflow serve executes it ------------------------------------


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """``prefect server start`` on a free port with a temporary PREFECT_HOME; the env to talk to it."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_UI_ENABLED": "false"}
    log = (home / "server.log").open("w")
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port),
                               "--no-ui", "--scheduler"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"prefect server did not start: {(home / 'server.log').read_text()[-2000:]}")
            time.sleep(1)
        yield {k: v for k, v in env.items() if k.startswith("PREFECT")}
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _flow_runs(env: dict[str, str], deployment: str) -> dict[str, Any]:
    """Whether ``deployment`` (``flow/name``) is paused and its flow runs, as the server reports them.

    Raises prefect's ObjectNotFound while the deployment is not registered.
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}), get_client(sync_client=True) as c:
        d = c.read_deployment_by_name(deployment)
        runs = [r for r in c.read_flow_runs() if r.deployment_id == d.id]
        return {"paused": d.paused, "runs": [
            {"state": r.state_type.value if r.state_type else None, "auto_scheduled": r.auto_scheduled,
             "created_by": r.created_by.type if r.created_by else None, "parameters": r.parameters,
             "expected_start": r.expected_start_time} for r in runs]}


@pytest.mark.slow
def test_served_cron_schedule_creates_and_runs_the_nightly_batch(prefect_server: dict[str, str],
                                                                 tmp_path: Path) -> None:
    from prefect.exceptions import ObjectNotFound

    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    done = _segflow("sample-scene", str(inbox / "a.tif"), "--width", "200", "--height", "200")
    assert done.returncode == 0, done.stderr
    (tmp_path / "tmp.yaml").write_text(f"""deployments:
  - name: every-minute
    entrypoint: {REPO / "pipelines" / "batch_flow.py"}:nightly_batch_flow
    schedules:
      - cron: "* * * * *"
        timezone: UTC
    parameters:
      inbox: {inbox}
      output: {out}
      device: cpu
""")
    log = (tmp_path / "serve.log").open("w")
    env = {**os.environ, **prefect_server, "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    t0 = time.monotonic()
    serve = subprocess.Popen([str(BIN / "segflow"), "serve", "--file", "tmp.yaml"], cwd=tmp_path, env=env,
                             stdout=log, stderr=subprocess.STDOUT)
    try:
        completed: list[dict[str, Any]] = []
        while not completed:
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() - t0 < 150, ("no scheduled run completed within 150 s; segflow serve's log: "
                                                 + (tmp_path / "serve.log").read_text()[-3000:])
            time.sleep(3)
            try:
                runs = _flow_runs(prefect_server, "segflow-nightly-batch/every-minute")["runs"]
            except ObjectNotFound:  # not registered yet
                continue
            completed = [r for r in runs if r["state"] == "COMPLETED"]
        waited = time.monotonic() - t0
        [run] = completed[:1]
        # the server's scheduler made it: auto-scheduled, created by the schedule, at a whole minute
        assert run["auto_scheduled"] is True and run["created_by"] == "SCHEDULE"
        assert run["expected_start"].second == 0 and run["expected_start"].microsecond == 0
        assert run["parameters"] == {"inbox": str(inbox), "output": str(out), "device": "cpu"}
        with rasterio.open(out / "a.tif" / "labels.tif") as ds:
            assert (ds.width, ds.height) == (200, 200)
        report = json.loads((out / "report.json").read_text())
        assert [(i["name"], i["status"]) for i in report["items"]][:1] == [("a.tif", "computed")]
        assert "a.tif" in (out / "report.md").read_text()
        print(f"scheduled run completed {waited:.0f} s after segflow serve started")
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            code = serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()
            raise
        finally:
            log.close()
    text = (tmp_path / "serve.log").read_text()
    assert code == 0, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert "the deployments' schedules are paused" in text
    assert _flow_runs(prefect_server, "segflow-nightly-batch/every-minute")["paused"] is True


@pytest.mark.slow
def test_prefect_deploy_all_accepts_the_committed_file(prefect_server: dict[str, str], tmp_path: Path) -> None:
    env = {**os.environ, **prefect_server}
    done = subprocess.run([str(BIN / "prefect"), "work-pool", "create", "segflow", "--type", "process"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    before = PREFECT_YAML.read_text()
    done = subprocess.run([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert PREFECT_YAML.read_text() == before
    script = """
import json
from prefect.client.orchestration import get_client
with get_client(sync_client=True) as c:
    print(json.dumps({d.name: {"pool": d.work_pool_name, "pull": d.pull_steps, "parameters": d.parameters,
                               "entrypoint": d.entrypoint,
                               "schedules": [[s.schedule.cron, s.schedule.timezone, s.active] for s in d.schedules]}
                      for d in c.read_deployments()}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    deployed = json.loads(done.stdout.strip().splitlines()[-1])
    pull = [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
    assert deployed["nightly-batch"] == {
        "pool": "segflow", "pull": pull, "parameters": {"inbox": "/data/incoming", "output": "/data/segflow"},
        "entrypoint": "pipelines/batch_flow.py:nightly_batch_flow", "schedules": [["0 2 * * *", "UTC", True]]}
    assert deployed["tile-infer"] == {"pool": "segflow", "pull": pull, "parameters": {},
                                      "entrypoint": "pipelines/tile_infer_flow.py:tile_infer_flow", "schedules": []}
