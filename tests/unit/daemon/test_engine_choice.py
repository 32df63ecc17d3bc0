"""Choosing engines: the ``engine`` and ``dask_scheduler`` settings, the composition of the engine
list, "local" (a task's way back to this daemon's own engine of its kind) and the job-level
``engine`` field, with their errors at the JSON path of the field to fix."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from procpool.cli import render
from procpool.contract.status import JobStatus
from procpool.contract.tree import TreeError, parse_job
from procpoold import app
from procpoold.config import Config, ConfigError, dask_address_problem, load
from procpoold.core import status
from procpoold.core.jobs import Job
from procpoold.engines.registry import Engines, RouteError
from procpoold.loop import EventLoop
from procpoold.scheduler import Scheduler
from tests.support.inline_engine import InlineEngine
from tests.unit.contract.test_status_columns import through_the_wire
from tests.unit.daemon.test_scheduler import RecordingExecutor

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

ADD = "tests.support.tasks:add"


def engine(name: str, kinds: set[str], slots: int = 10) -> RecordingExecutor:
    e = RecordingExecutor(slots)
    e.name = name  # type: ignore[misc]
    e.kinds = frozenset(kinds)  # type: ignore[misc]
    return e


# -- settings ------------------------------------------------------------------------------------


def test_the_engine_settings_come_from_the_file_and_the_command_line(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[procpoold]\nengine = "dask"\ndask-scheduler = "tcp://10.0.0.5:8786"\n')
    c = load(cfg, {})
    assert (c.engine, c.dask_scheduler) == ("dask", "tcp://10.0.0.5:8786")
    c = load(cfg, {"engine": "local", "dask_scheduler": "tls://[fe80::1]:8786"})
    assert (c.engine, c.dask_scheduler) == ("local", "tls://[fe80::1]:8786")
    assert (Config().engine, Config().dask_scheduler) == ("local", None)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('engine = "dask"', 'engine = "dask" needs dask_scheduler'),
        ('engine = "remote"', 'engine must be "local" or "dask", got \'remote\''),
        ("engine = 1", "engine must be a string"),
        ('dask_scheduler = "10.0.0.5:8786"', "dask_scheduler must be an address such as"),
        ('dask_scheduler = "inproc://10.0.0.5:8786"', "dask_scheduler must use one of the schemes tcp, tls"),
        ('dask_scheduler = "tcp://host:99999"', "dask_scheduler must have a port from 1 to 65535"),
        ('dask_scheduler = "tcp://host:0"', "dask_scheduler must have a port"),
        ('dask_scheduler = "tcp://host"', "dask_scheduler must be an address"),
        ('dask_scheduler = "tcp://a b:1"', "dask_scheduler must be an address"),
        ("dask_scheduler = 8786", "dask_scheduler must be a string"),
        ('dask_scheduler = "tcp://h\\u0000x:1"', "dask_scheduler must not contain a NUL byte"),
        (f'dask_scheduler = "tcp://{"h" * 254}:1"', "dask_scheduler must be an address"),  # (DNS: 253)
    ],
)
def test_bad_engine_settings_name_the_key(tmp_path: Path, text: str, fragment: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(text + "\n")
    with pytest.raises(ConfigError, match=fragment) as caught:
        load(cfg, {})
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 400


def test_dask_addresses() -> None:
    for good in ("tcp://10.0.0.5:8786", "tls://sched.example.org:8786", "ws://h:1", "wss://[::1]:443"):
        assert dask_address_problem(good) is None, good
    for bad in ("", "tcp://", "udp://h:1", "TCP://h:1", "tcp://h:1/path", "tcp://h:-1", "x" * 1000):
        assert dask_address_problem(bad) is not None, bad
    assert len(dask_address_problem("tcp://" + "h" * 1000) or "") < 300  # a long value is cut


# -- composition ---------------------------------------------------------------------------------


class FakeDask(RecordingExecutor):
    """Stands for the Dask engine (its module is not imported by these tests)."""

    name = "dask"
    kinds = frozenset({"call", "cmd"})
    made: list[tuple[str, float, int]] = []

    def __init__(self, scheduler: str, *, kill_grace: float, max_result_bytes: int) -> None:
        super().__init__(4)
        FakeDask.made.append((scheduler, kill_grace, max_result_bytes))


@pytest.fixture
def fake_dask(monkeypatch: pytest.MonkeyPatch) -> type[FakeDask]:
    module = types.ModuleType("procpoold.engines.dask")
    module.DaskExecutor = FakeDask  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "procpoold.engines.dask", module)
    FakeDask.made = []
    return FakeDask


def test_without_a_dask_scheduler_the_daemon_has_its_two_local_engines(fake_dask: type[FakeDask]) -> None:
    engines = app._engines(Config(workers=1), None)
    assert [e.name for e in engines.all()] == ["pool", "commands"]
    assert engines.defaults == {"call": "pool", "cmd": "commands"} and not fake_dask.made


def test_a_dask_scheduler_adds_the_dask_engine_after_the_local_ones(fake_dask: type[FakeDask]) -> None:
    config = Config(workers=1, kill_grace=2.5, dask_scheduler="tcp://10.0.0.5:8786", max_result_bytes=4096)
    engines = app._engines(config, None)
    assert [e.name for e in engines.all()] == ["pool", "commands", "dask"]
    assert fake_dask.made == [("tcp://10.0.0.5:8786", 2.5, 4096)]  # the pool's result limit too
    assert engines.defaults == {"call": "pool", "cmd": "commands"}  # engine = "local": opt in per job
    engines = app._engines(Config(workers=1, engine="dask", dask_scheduler="tcp://h:8786"), None)
    assert engines.defaults == {"call": "dask", "cmd": "dask"}
    assert engines.local == {"call": "pool", "cmd": "commands"}


# -- routing: "local" and the job's engine -------------------------------------------------------


Four = tuple[Engines, RecordingExecutor, RecordingExecutor, RecordingExecutor]


def three(defaults: dict[str, str] | None = None) -> Four:
    """The two local engines and a remote one that runs both kinds (as the Dask engine does)."""
    pool, commands = engine("pool", {"call"}), engine("commands", {"cmd"})
    remote = engine("dask", {"call", "cmd"})
    return Engines([pool, commands, remote], defaults=defaults), pool, commands, remote


def test_local_is_the_first_registered_engine_of_the_kind_whatever_the_defaults() -> None:
    engines, pool, commands, remote = three(defaults={"call": "dask", "cmd": "dask"})
    assert engines.route("call") is remote and engines.route("cmd") is remote
    assert engines.route("call", "local") is pool and engines.route("cmd", "local") is commands
    assert engines.local == {"call": "pool", "cmd": "commands"}
    only_calls = Engines([engine("pool", {"call"})])
    with pytest.raises(RouteError, match="no engine of this daemon runs 'cmd' tasks"):
        only_calls.route("cmd", "local")
    with pytest.raises(ValueError, match="may not be named 'local'"):
        Engines([engine("local", {"call"})])


def test_the_job_engine_is_the_engine_of_every_task_that_names_none() -> None:
    spec = parse_job({"name": "j", "engine": "dask", "root": {"sequential": [
        {"call": ADD},  # (the parser's short cut for plain call tasks)
        {"call": ADD, "args": [1, 2]},
        {"cmd": ["true"], "engine": "local"},
        {"concurrent": [{"call": ADD, "name": "deep"}]},
    ]}})
    assert spec.engine == "dask"
    assert [t.engine for t in spec.tasks] == ["dask", "dask", "local", "dask"]
    old = parse_job({"name": "j", "root": {"sequential": [{"call": ADD}, {"cmd": ["true"]}]}})
    assert old.engine is None and [t.engine for t in old.tasks] == [None, None]  # as stored before


def test_a_job_with_engine_fields_runs_where_they_say() -> None:
    loop = EventLoop()
    engines, pool, commands, remote = three(defaults={"call": "dask", "cmd": "dask"})
    scheduler = Scheduler(loop, engines)
    scheduler.submit({"name": "j", "root": {"concurrent": [
        {"name": "a", "call": ADD},
        {"name": "b", "call": ADD, "engine": "local"},
        {"name": "c", "cmd": ["true"], "engine": "local"},
        {"name": "d", "cmd": ["true"]},
    ]}})
    scheduler.submit({"name": "k", "engine": "local", "root": {"concurrent": [
        {"name": "e", "call": ADD},
        {"name": "f", "cmd": ["true"], "engine": "dask"},
    ]}})
    for _ in range(3):
        loop.run_once(0)
    assert sorted(s.task_name for s in remote.submitted) == ["a", "d", "f"]
    assert sorted(s.task_name for s in pool.submitted) == ["b", "e"]
    assert [s.task_name for s in commands.submitted] == ["c"]
    loop.close()


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"engine": "ray", "root": {"call": ADD}}, r"^engine: no engine named 'ray' \(this daemon has: "),
        ({"engine": "ray", "root": {"call": ADD, "engine": "local"}}, r"^engine: no engine named 'ray'"),
        ({"root": {"call": ADD, "engine": "ray"}}, r"^root\.engine: no engine named 'ray'"),
        (
            {"engine": "pool", "root": {"sequential": [{"call": ADD}, {"cmd": ["true"]}]}},
            r"^root\.sequential\[1\]: the engine 'pool' does not run 'cmd' tasks \(the job's engine\)",
        ),
        (
            {"engine": "dask", "root": {"sequential": [{"call": ADD}, {"cmd": ["true"], "engine": "pool"}]}},
            r"^root\.sequential\[1\]\.engine: the engine 'pool' does not run 'cmd' tasks$",
        ),
    ],
)
def test_an_engine_this_daemon_cannot_use_is_refused_at_the_path_to_fix(
    doc: dict[str, Any], message: str
) -> None:
    loop = EventLoop()
    scheduler = Scheduler(loop, three()[0])
    with pytest.raises(TreeError, match=message):
        scheduler.submit({"name": "j", **doc})
    assert not scheduler.jobs
    loop.close()


def test_the_job_engine_is_checked_as_a_name() -> None:
    with pytest.raises(TreeError, match=r"^engine: must be a string"):
        parse_job({"engine": 3, "root": {"call": ADD}})
    with pytest.raises(TreeError, match=r"^engine: invalid name"):
        parse_job({"engine": "no spaces", "root": {"call": ADD}})


def test_local_routes_to_the_inline_engine_when_it_is_registered_first() -> None:
    inline, commands = InlineEngine(), engine("commands", {"cmd"})
    engines = Engines([inline, commands])
    assert engines.route("call", "local") is inline and engines.route("cmd", "local") is commands


# -- the status --------------------------------------------------------------------------------


def test_the_status_shows_each_task_s_engine_and_procctl_only_when_not_all_local() -> None:
    loop = EventLoop()
    scheduler = Scheduler(loop, three()[0])
    mixed, _ = scheduler.submit({"name": "mixed", "root": {"sequential": [
        {"name": "a", "call": ADD},
        {"name": "b", "cmd": ["true"], "engine": "dask"},
        {"name": "c", "cmd": ["true"], "engine": "local"},
    ]}})
    plain, _ = scheduler.submit({"name": "plain", "engine": "local", "root": {"sequential": [
        {"name": "d", "call": ADD}, {"name": "e", "cmd": ["true"], "engine": "commands"},
    ]}})
    full = status.full(mixed)
    assert [t["engine"] for t in full["tasks"]] == ["pool", "dask", "commands"]
    assert (full["job"]["engines"], full["job"]["all_local"]) == (["commands", "dask", "pool"], False)
    shown = render.job_tree(full, 0.0)
    assert "  engines: commands, dask, pool" in shown.splitlines()
    tasks = [line.split() for line in shown.splitlines() if line.startswith(("├", "└"))]
    assert [(words[2], words[4:6]) for words in tasks] == [
        ("a", ["on", "pool"]), ("b", ["on", "dask"]), ("c", ["on", "commands"])], shown
    full = status.full(plain)
    assert [t["engine"] for t in full["tasks"]] == ["pool", "commands"] and full["job"]["all_local"]
    shown = render.job_tree(full, 0.0)
    assert "engines" not in shown and " on " not in shown  # as before engines had names
    assert status.task_reply(mixed, 1)["task"]["engine"] == "dask"
    assert status.columns_page(mixed, 0)["job"]["all_local"] is False
    loop.close()


def test_with_dask_the_default_every_task_left_to_it_is_shown_on_it() -> None:
    loop = EventLoop()
    scheduler = Scheduler(loop, three(defaults={"call": "dask", "cmd": "dask"})[0])
    job, _ = scheduler.submit({"name": "j", "root": {"concurrent": [
        {"name": "a", "call": ADD}, {"name": "b", "call": ADD, "engine": "local"}]}})
    full = status.full(job)
    assert [t["engine"] for t in full["tasks"]] == ["dask", "pool"] and not full["job"]["all_local"]
    loop.close()


def test_a_job_without_the_daemon_s_engines_shows_the_engines_its_tasks_name() -> None:
    spec = parse_job({"root": {"sequential": [{"call": ADD}, {"call": ADD, "engine": "x"}]}})
    job = Job("1", spec, {}, 0.0)
    full = status.full(job)
    assert [t["engine"] for t in full["tasks"]] == [None, "x"] and full["job"]["engines"] == ["x"]


def test_the_columnar_status_sends_the_engine_with_the_name_of_a_job_not_all_local() -> None:
    loop = EventLoop()
    engines = three()[0]
    scheduler = Scheduler(loop, engines)
    tasks = [{"name": f"t{i}", "call": ADD, "engine": "dask" if i % 2 else "local"} for i in range(150)]
    job, _ = scheduler.submit({"name": "big", "root": {"concurrent": tasks}})
    plain, _ = scheduler.submit({"name": "plain", "root": {"concurrent": tasks[::2]}})
    loop.run_once(0)
    wire = through_the_wire(status.columns_page(job, 0))
    decoded = JobStatus.decode(wire)
    running = [decoded.task(i) for i in decoded.indices("running")]
    assert running and all(row.engine == ("dask" if row.index % 2 else "pool") for row in running)
    assert "engine" not in wire["sparse"] or set(decoded.sparse["engine"]) == set(decoded.sparse["name"])
    shown = render.job_summary(decoded, 0.0).splitlines()
    assert "  engines: dask, pool" in shown
    rows = [line.split() for line in shown if line.split()[2:3] == ["running"]]
    assert rows and all(words[3:5] in (["on", "dask"], ["on", "pool"]) for words in rows), shown
    wire = through_the_wire(status.columns_page(plain, 0))
    assert "engine" not in wire["sparse"] and wire["job"]["all_local"] is True
    shown = render.job_summary(JobStatus.decode(wire), 0.0)
    assert "engines" not in shown and " on " not in shown
    delta = status.changes_page(job, "")  # a reset: the whole page, engines included
    assert "engine" in delta["sparse"]
    loop.close()
