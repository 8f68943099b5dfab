"""segflow's Prefect deployments, read from the project's ``prefect.yaml``, built and served.

The same file serves both ways of running them: ``prefect deploy --all`` (a work pool and a worker)
and :func:`serve` (``segflow serve``: one long-running process that registers the deployments, lets
the Prefect server's scheduler create their runs and executes them). This module reads the part of
the file a deployment needs (``deployments:`` with ``name``, ``entrypoint``, ``parameters``,
``schedules``...), checks it against the flows it names and builds Prefect ``RunnerDeployment``
objects; Prefect's own keys (``pull``, ``work_pool``...) are left to ``prefect deploy``.

Checked before anything is registered, each failure one :class:`~segflow.errors.ConfigError` line:
the file exists and is YAML of the right shape; every entrypoint (a path relative to the file's
folder, ``path/to/flow.py:function``) exists and is a Prefect flow; every schedule is a valid cron
(or interval) in a valid IANA time zone; every parameter is one of the flow's; a scheduled
deployment's parameters are complete and of the flow's types; no parameter holds a password (Prefect
stores and shows parameters: passwords go to a Secret block or the environment).

Prefect is imported only when a flow is loaded or served (it is the optional ``flows`` extra).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.deployments.runner import RunnerDeployment

__all__ = [
    "DeploymentSpec",
    "ProjectFile",
    "ScheduleSpec",
    "build_deployments",
    "check_api",
    "find_passwords",
    "load_flow",
    "read_project",
    "serve",
]

_PASSWORD_KEY = re.compile(r"passw(or)?d|pwd", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"[?&;]password=", re.IGNORECASE)


class ScheduleSpec(BaseModel):
    """One schedule of a deployment, as ``prefect deploy`` reads it: ``cron`` or ``interval`` (seconds)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cron: str | None = None
    interval: float | None = Field(default=None, gt=0)
    timezone: str | None = None
    day_or: bool = True
    active: bool = True
    parameters: dict[str, Any] = Field(default_factory=dict)
    slug: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> ScheduleSpec:
        if (self.cron is None) == (self.interval is None):
            raise ValueError("give exactly one of cron or interval (seconds)")
        return self


class DeploymentSpec(BaseModel):
    """One entry of ``deployments:``. ``work_pool`` is for ``prefect deploy``; :func:`serve` needs none."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    entrypoint: str = Field(pattern=r"^.+\.py:[A-Za-z_][\w.]*$")
    description: str | None = None
    version: str | None = None
    tags: list[str] = Field(default_factory=list)
    parameters: dict[str, Any] = Field(default_factory=dict)
    schedules: list[ScheduleSpec] = Field(default_factory=list)
    concurrency_limit: int | None = Field(default=None, ge=1)
    enforce_parameter_schema: bool = True
    work_pool: dict[str, Any] | None = None


class ProjectFile(BaseModel):
    """A ``prefect.yaml``: its ``deployments``; every other top-level key is Prefect's (``pull``, ``build``...)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    deployments: list[DeploymentSpec] = Field(min_length=1)


@dataclass(frozen=True)
class Project:
    """The deployments of a ``prefect.yaml`` and the folder its entrypoints are relative to."""

    path: Path
    root: Path
    deployments: tuple[DeploymentSpec, ...]


def read_project(path: str | os.PathLike[str]) -> Project:
    """Read and check the shape of the project file at ``path`` (no flow is loaded).

    ``{{ $NAME }}`` placeholders are replaced by environment variables, as ``prefect deploy`` does.
    """
    _require_prefect()
    from prefect.utilities.templating import apply_values

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"deployment file {str(file)!r} does not exist; give the project's prefect.yaml "
                          "with --file")
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"deployment file {str(file)!r} is not valid YAML{at}: {problem}; fix the file") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"deployment file {str(file)!r} must be a mapping with a 'deployments' list, "
                          f"got {type(raw).__name__}")
    try:
        project = ProjectFile.model_validate(apply_values(raw, dict(os.environ), remove_notset=False))
    except ValidationError as exc:
        raise ConfigError(f"deployment file {str(file)!r}: {_first_error(exc, raw)}") from None
    names = [d.name for d in project.deployments]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"deployment file {str(file)!r} names deployment {dup!r} twice; give each a unique name")
    for spec in project.deployments:
        found = [*find_passwords(spec.parameters)]
        for schedule in spec.schedules:
            found += find_passwords(schedule.parameters)
        if found:
            raise ConfigError(f"deployment {spec.name!r} has a password in parameter {found[0]!r}, which Prefect "
                              "would store and show; put it in a Prefect Secret block (&secret=NAME) or in the "
                              "environment (PGPASSWORD)")
    return Project(path=file, root=file.resolve().parent, deployments=tuple(project.deployments))


def _require_prefect() -> None:
    try:
        import prefect  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"Prefect deployments need Prefect ({exc}); install segflow[flows]") from None


def _first_error(exc: ValidationError, raw: Mapping[str, Any]) -> str:
    """The first validation error as ``deployment 'NAME' key: message`` (names rather than list indices)."""
    err = exc.errors()[0]
    loc = list(err["loc"])
    where = ""
    if len(loc) >= 2 and loc[0] == "deployments" and isinstance(loc[1], int):
        entries = raw.get("deployments") or []
        entry = entries[loc[1]] if loc[1] < len(entries) else None
        name = entry.get("name") if isinstance(entry, dict) else None
        where = f"deployment {name!r}" if name else f"deployment #{loc[1] + 1}"
        loc = loc[2:]
    path = ".".join(str(p) for p in loc)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key, which segflow serve does not understand; remove it"
    elif err["type"] == "string_pattern_mismatch":
        msg = f"must be path/to/file.py:flow_function, got {err['input']!r}"
    return " ".join(p for p in (where, path + ":" if path else "", msg) if p)


def find_passwords(value: Any, where: str = "") -> Iterator[str]:
    """The places (``key.subkey``) in a parameter tree whose value is or holds a password.

    A password is a URL with a password in its user part (``scheme://user:pw@host``), a URL query
    ``password=`` (libpq's keyword), or any non-empty value under a key named like ``password``.
    Names of Secret blocks (``&secret=NAME``) are not passwords.
    """
    if isinstance(value, Mapping):
        for key, item in value.items():
            place = f"{where}.{key}" if where else str(key)
            if _PASSWORD_KEY.search(str(key)) and item not in (None, ""):
                yield place
            else:
                yield from find_passwords(item, place)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from find_passwords(item, f"{where}[{i}]")
    elif isinstance(value, str):
        try:
            has_password = urlsplit(value.strip()).password is not None
        except ValueError:
            has_password = False
        if has_password or _QUERY_PASSWORD.search(value):
            yield where or "(value)"


def load_flow(spec: DeploymentSpec, root: Path) -> Flow[..., Any]:
    """The Prefect flow at ``spec.entrypoint``, its file relative to ``root``; checks the parameters against it."""
    from prefect.exceptions import MissingFlowError, ScriptError
    from prefect.flows import load_flow_from_entrypoint

    file, func = spec.entrypoint.rsplit(":", 1)
    script = root / file
    if not script.is_file():
        raise ConfigError(f"deployment {spec.name!r}: entrypoint file {str(script)!r} does not exist; "
                          f"entrypoints are relative to {str(root)!r}, the deployment file's folder")
    try:
        flow: Flow[..., Any] = load_flow_from_entrypoint(f"{script}:{func}", use_placeholder_flow=False)
    except MissingFlowError as exc:
        raise ConfigError(f"deployment {spec.name!r}: entrypoint {spec.entrypoint!r}: "
                          f"{' '.join(str(exc).split())}") from None
    except ScriptError as exc:
        cause = exc.user_exc
        raise ConfigError(f"deployment {spec.name!r}: entrypoint {spec.entrypoint!r} fails to import: "
                          f"{type(cause).__name__}: {' '.join(str(cause).split())}") from None
    _check_parameters(spec, flow)
    return flow


def _check_parameters(spec: DeploymentSpec, flow: Flow[..., Any]) -> None:
    """Parameter names are the flow's; a scheduled deployment's complete set validates against its types."""
    import inspect

    from prefect.exceptions import ParameterTypeError

    accepted = inspect.signature(flow.fn).parameters
    for params in [spec.parameters, *(s.parameters for s in spec.schedules)]:
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            raise ConfigError(f"deployment {spec.name!r}: {flow.name} has no parameter {unknown[0]!r}; "
                              f"it takes {', '.join(accepted)}")
    for schedule in spec.schedules:
        params = {**spec.parameters, **schedule.parameters}
        missing = [n for n, p in accepted.items() if p.default is inspect.Parameter.empty and n not in params]
        if missing:
            raise ConfigError(f"deployment {spec.name!r} is scheduled but lacks parameter {missing[0]!r} "
                              f"of {flow.name}; give it under parameters")
        flows_logger = logging.getLogger("prefect.flows")
        level = flows_logger.level
        flows_logger.setLevel(logging.CRITICAL)  # it logs the whole error too; the ConfigError is the one line
        try:
            flow.validate_parameters(params)
        except ParameterTypeError as exc:
            text = " ".join(str(exc).split()).replace("Flow run received invalid parameters: - ", "")
            raise ConfigError(f"deployment {spec.name!r}: a parameter does not fit {flow.name}: {text}") from None
        finally:
            flows_logger.setLevel(level)


def _schedule(spec: DeploymentSpec, schedule: ScheduleSpec) -> Any:
    """A Prefect schedule object from ``schedule``; the cron and time zone checked by Prefect's validators."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from prefect.schedules import Cron, Interval

    if schedule.timezone is not None:
        try:
            ZoneInfo(schedule.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"deployment {spec.name!r}: time zone {schedule.timezone!r} is unknown; give an "
                              "IANA name such as UTC or Europe/Berlin") from None
    if schedule.interval is not None:
        return Interval(timedelta(seconds=schedule.interval), timezone=schedule.timezone, active=schedule.active,
                        parameters=schedule.parameters, slug=schedule.slug)
    assert schedule.cron is not None
    try:
        return Cron(schedule.cron, timezone=schedule.timezone, day_or=schedule.day_or, active=schedule.active,
                    parameters=schedule.parameters, slug=schedule.slug)
    except ValueError as exc:
        raise ConfigError(f"deployment {spec.name!r}: {' '.join(str(exc).split())}; give five fields: minute hour "
                          "day-of-month month day-of-week, e.g. \"0 2 * * *\"") from None


def build_deployments(path: str | os.PathLike[str]) -> list[RunnerDeployment]:
    """Every deployment of the project file at ``path``, checked, as Prefect ``RunnerDeployment`` objects.

    Each is ``flow.to_deployment(...)`` of its entrypoint's flow with the file's name, description,
    tags, version, parameters and schedules; the work pool is not used (served deployments need none).
    """
    project = read_project(path)
    built = []
    for spec in project.deployments:
        flow = load_flow(spec, project.root)
        schedules = [_schedule(spec, s) for s in spec.schedules]
        deployment = flow.to_deployment(name=spec.name, description=spec.description, tags=list(spec.tags),
                                        version=spec.version, parameters=dict(spec.parameters),
                                        schedules=schedules, concurrency_limit=spec.concurrency_limit,
                                        enforce_parameter_schema=spec.enforce_parameter_schema)
        built.append(cast("RunnerDeployment", deployment))  # typed as maybe-awaitable; sync here
    return built


def check_api() -> str:
    """The URL of the Prefect server to serve against, which answers; ConfigError if none is set or it is down.

    A temporary server (what Prefect starts when PREFECT_API_URL is unset) does not run the scheduler
    service, so cron schedules would never create a run: serving needs a real server.
    """
    _require_prefect()
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise ConfigError("no Prefect server to schedule the runs: start one (prefect server start) and set "
                          "PREFECT_API_URL=http://127.0.0.1:4200/api; a temporary server never creates "
                          "scheduled runs")
    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
    if problem is not None:
        raise ConfigError(f"the Prefect server at {url} does not answer ({type(problem).__name__}: "
                          f"{' '.join(str(problem).split())[:200]}); start it (prefect server start) or fix "
                          "PREFECT_API_URL")
    return str(url)


def serve(deployments: Sequence[RunnerDeployment], *, limit: int | None = None) -> None:
    """Register ``deployments`` with the Prefect server and execute their runs until SIGINT or SIGTERM.

    Blocks. The server's scheduler creates each scheduled run; this process polls for due runs
    (every ``PREFECT_RUNNER_POLL_FREQUENCY`` seconds, default 10) and executes each in a subprocess,
    at most ``limit`` at a time (None: no limit). On SIGINT (Ctrl-C) or SIGTERM it shuts down as
    Prefect's ``Runner.astop`` does: runs in progress are cancelled (state Cancelled, their processes
    killed; the next batch continues where they stopped), then the deployments' schedules are paused,
    so no runs pile up while nothing serves them (serving again resumes them); then it returns.

    This is ``prefect.serve`` with one change: in Prefect 3.8.8 its SIGTERM handler calls the runner's
    ``stop()`` without awaiting it and exits mid-loop (a traceback, runs left Running on the server
    forever), and Ctrl-C leaves running runs Running too; here both signals take the ``astop`` path.
    """
    import asyncio

    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")
    asyncio.run(_serve(list(deployments), limit))


async def _serve(deployments: list[RunnerDeployment], limit: int | None) -> None:
    import asyncio
    import signal
    import threading

    from prefect.runner import Runner

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    class _Runner(Runner):
        def handle_sigterm(self, *args: Any, **kwargs: Any) -> None:  # Runner.start installs it for SIGTERM
            loop.call_soon_threadsafe(stop.set)

    runner = _Runner(limit=limit, pause_on_shutdown=True)
    for deployment in deployments:
        await runner.aadd_deployment(deployment)
    main_thread = threading.current_thread() is threading.main_thread()  # signals reach only the main thread
    if main_thread:
        loop.add_signal_handler(signal.SIGINT, stop.set)
    try:
        started = asyncio.ensure_future(runner.start())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({started, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if main_thread:
            loop.remove_signal_handler(signal.SIGINT)  # a second Ctrl-C interrupts the shutdown itself
        stopping.cancel()
        if not started.done():
            if runner.started:
                await runner.astop()  # cancels runs in progress, then the polling loops; start() returns
            else:
                started.cancel()
        try:
            await started
        except asyncio.CancelledError:
            if not stop.is_set():
                raise
    finally:
        if main_thread:
            loop.remove_signal_handler(signal.SIGINT)
