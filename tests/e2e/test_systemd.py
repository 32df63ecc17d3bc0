"""procpoold under a real systemd: install, start, socket activation, reload, restart, stop, watchdog.

Every test drives the container the way an administrator would: ``make
install`` from the checkout, then ``systemctl``, ``procctl`` and ``journalctl``.
One container (booted and installed once) serves the module; each test starts
from stopped units and leaves them stopped with nothing running.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from procpoold.journal import MessageId
from tests.e2e.conftest import REPO
from tests.e2e.container import Bind, Container, booted

T = TypeVar("T")

#: Where the checkout and the wheelhouse appear in the container (read-only).
SRC = "/srv/procpool"
WHEELHOUSE = "/opt/wheelhouse"
SOCKET = "/run/procpoold/control.sock"
UNITS = ("procpoold.service", "procpoold.socket")
DROP_IN = "/etc/systemd/system/procpoold.service.d/test-hooks.conf"

#: The README's "Install as a service" targets, run in the checkout.
INSTALL = ("install", f"WHEELHOUSE={WHEELHOUSE}")
UNINSTALL = ("uninstall",)


def poll(probe: Callable[[], T], accept: Callable[[T], bool], timeout: float = 30.0, what: str = "") -> T:
    end = time.monotonic() + timeout
    while True:
        value = probe()
        if accept(value):
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}: last saw {value!r}")
        time.sleep(0.1)


def make(c: Container, *args: str) -> None:
    c.run("make", "--no-print-directory", "-C", SRC, *args, timeout=300)


@contextlib.contextmanager
def boot_and_install(wheelhouse: Path) -> Iterator[Container]:
    # /usr is the host's, read-only: /usr/local/bin (where procctl is linked) and
    # /usr/local/share/man (its man pages) get a tmpfs.
    tmpfs = ["/usr/local/bin", "/usr/local/share/man"]
    with booted([Bind(REPO, SRC), Bind(wheelhouse, WHEELHOUSE)], tmpfs=tmpfs) as c:
        print(f"container {c.name} booted in {c.boot_seconds:.2f}s")
        started = time.monotonic()
        make(c, *INSTALL)
        print(f"make install took {time.monotonic() - started:.1f}s")
        yield c


@pytest.fixture(scope="module")
def installed(wheelhouse: Path) -> Iterator[Container]:
    """A booted container with procpool installed by ``make install``."""
    with boot_and_install(wheelhouse) as c:
        yield c


def daemon_pids(c: Container) -> list[int]:
    """Pids (in the container) of every process in the service's cgroup: the daemon (root), its
    workers and its tasks (their users)."""
    out = c.sh("grep -ls 'procpoold[.]service' /proc/[0-9]*/cgroup || true").stdout
    return [int(line.split("/")[2]) for line in out.split()]


@pytest.fixture
def system(installed: Container, request: pytest.FixtureRequest) -> Iterator[Container]:
    """The installed container with both units stopped before and after the test; checks for leftovers."""
    c = installed
    stop_all(c)
    try:
        yield c
    finally:
        report = getattr(request.node, "rep_call", None)  # set by conftest.pytest_runtest_makereport
        if report is not None and report.failed:
            print(c.journal("-u", "procpoold.service", "-u", "procpoold.socket", "-n", "200"))
        c.run("rm", "-f", DROP_IN)
        c.systemctl("daemon-reload")
        stop_all(c)
        assert daemon_pids(c) == [], "processes of the service left after stopping the units"


def stop_all(c: Container) -> None:
    c.systemctl("stop", *UNITS, check=False)
    c.systemctl("reset-failed", *UNITS, check=False)
    poll(lambda: daemon_pids(c), lambda pids: not pids, what="the service's processes to exit")


def active(c: Container, unit: str = "procpoold.service") -> str:
    return c.systemctl("is-active", unit, check=False).stdout.strip()


def main_pid(c: Container) -> int:
    return int(c.show("procpoold.service", "MainPID"))


def procctl(c: Container, *args: str, check: bool = True) -> Any:
    return c.run("procctl", *args, check=check, timeout=120)


# -- the service ----------------------------------------------------------------------------------


def test_units_verify_inside_the_container(installed: Container) -> None:
    # Here ExecStart= exists, so verify checks the units exactly as installed.
    result = installed.run(
        "systemd-analyze",
        "verify",
        "--recursive-errors=no",
        *(f"/etc/systemd/system/{u}" for u in UNITS),
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    security = installed.run(
        "systemd-analyze", "security", "--threshold=20", "procpoold.service", check=False
    )
    score = re.search(r"Overall exposure level for procpoold.service: ([0-9.]+)", security.stdout)
    assert security.returncode == 0 and score, security.stdout + security.stderr
    print(f"exposure of the installed unit: {score.group(1)}")


def test_start_ping_status_journal(system: Container) -> None:
    c = system
    c.systemctl("start", "procpoold")  # returns once the daemon sent READY=1
    assert active(c) == "active"
    assert active(c, "procpoold.socket") == "active"  # pulled in by Requires=
    pid = main_pid(c)
    assert pid > 0

    assert "procpoold" in procctl(c, "ping").stdout
    status = procctl(c, "status").stdout
    assert f"pid {pid}" in status, status
    assert json.loads(procctl(c, "--json", "status").stdout)["pid"] == pid

    # It runs as root with a few capabilities, its state private in the StateDirectory.
    assert c.run("stat", "-c", "%U", f"/proc/{pid}").stdout.strip() == "root"
    caps = c.sh(f"grep CapEff /proc/{pid}/status").stdout.split()[1]
    # CAP_CHOWN 0, CAP_DAC_READ_SEARCH 2, CAP_KILL 5, CAP_SETGID 6, CAP_SETUID 7
    assert int(caps, 16) == sum(1 << n for n in (0, 2, 5, 6, 7)), caps
    assert c.run("stat", "-c", "%U %G %a", "/var/lib/procpoold").stdout.split() == ["root", "root", "700"]
    assert c.run("stat", "-c", "%a", "/var/lib/procpoold/state.db").stdout.strip() == "600"
    # The socket came from systemd (fd 3), not from the daemon.
    # Native journal records (not stderr lines caught by journald's stream transport).
    daemon_lines = poll(
        lambda: c.journal("-u", "procpoold", "-t", "procpoold", "_TRANSPORT=journal", "-o", "cat"),
        lambda text: re.search(r"\bready\b", text) is not None,
        what="the daemon's ready record in the journal",
    )
    assert "from systemd" in daemon_lines, daemon_lines
    assert c.show("procpoold.service", "StatusText"), "the daemon sent no STATUS="


def test_reload_keeps_the_daemon(system: Container) -> None:
    c = system
    c.systemctl("start", "procpoold")
    pid = main_pid(c)
    c.systemctl("reload", "procpoold")
    assert active(c) == "active"
    assert main_pid(c) == pid
    assert "procpoold" in procctl(c, "ping").stdout
    # A second reload right after the first must work too.
    c.systemctl("reload", "procpoold")
    assert (active(c), main_pid(c)) == ("active", pid)
    assert c.show("procpoold.service", "NRestarts") == "0"


def test_restart_gets_a_new_daemon(system: Container) -> None:
    c = system
    c.systemctl("start", "procpoold")
    pid = main_pid(c)
    c.systemctl("restart", "procpoold")
    assert active(c) == "active"
    new = main_pid(c)
    assert new not in (0, pid)
    assert json.loads(procctl(c, "--json", "status").stdout)["pid"] == new


def test_stop_leaves_nothing_behind(system: Container) -> None:
    c = system
    c.systemctl("start", "procpoold")
    assert "procpoold" in procctl(c, "ping").stdout
    c.systemctl("stop", "procpoold")
    assert active(c) == "inactive"
    assert c.show("procpoold.service", "Result") == "success"
    assert daemon_pids(c) == []
    shm = c.sh("ls /dev/shm | grep '^procpool-' || true").stdout.split()
    assert shm == [], f"shared memory left behind: {shm}"
    # The socket file belongs to systemd (the socket unit stays active and can start the daemon again).
    assert active(c, "procpoold.socket") == "active"
    assert c.run("stat", "-c", "%U %G %a %F", SOCKET).stdout.strip() == "root procpool 660 socket"
    # Stopping the socket unit removes the file: nothing of procpool is left in /run.
    c.systemctl("stop", "procpoold.socket")
    assert c.run("test", "-e", SOCKET, check=False).returncode == 1


def test_socket_activation(system: Container) -> None:
    c = system
    c.systemctl("start", "procpoold.socket")
    assert active(c) == "inactive"
    assert c.run("stat", "-c", "%U %G %a %F", SOCKET).stdout.strip() == "root procpool 660 socket"
    started = time.monotonic()
    assert "procpoold" in procctl(c, "ping").stdout  # the first request starts the daemon
    print(f"first ping through socket activation: {time.monotonic() - started:.2f}s")
    # The daemon answers once its socket is adopted; it reports READY (the unit turns active) once
    # its pool and journal forwarder are up, which may be a moment later.
    poll(lambda: active(c), lambda state: state == "active", what="procpoold.service to be active")
    pid = main_pid(c)
    # Stopping the service alone keeps the socket: the next request starts a new daemon.
    c.systemctl("stop", "procpoold.service")
    assert active(c) == "inactive" and active(c, "procpoold.socket") == "active"
    assert "procpoold" in procctl(c, "ping").stdout
    assert main_pid(c) not in (0, pid)


def as_user(
    c: Container, name: str, *args: str, env: dict[str, str] | None = None, check: bool = True
) -> Any:
    """Run a command as another user (setpriv: the container's /etc has no PAM setup for runuser)."""
    return c.run(
        "setpriv",
        f"--reuid={name}",
        f"--regid={name}",
        "--init-groups",
        *args,
        env={"HOME": f"/home/{name}", **(env or {})},
        check=check,
    )


def test_socket_access_is_the_procpool_group(system: Container) -> None:
    c = system
    c.systemctl("start", "procpoold")
    c.run("useradd", "--user-group", "-G", "procpool", "pp-member")
    c.run("useradd", "--user-group", "pp-stranger")
    try:
        member = as_user(c, "pp-member", "procctl", "--socket", SOCKET, "ping", check=False)
        assert member.returncode == 0, member.stderr
        stranger = as_user(
            c, "pp-stranger", "procctl", "--socket", SOCKET, "--timeout", "2", "ping", check=False
        )
        # Refused by the file mode: procctl names the socket it cannot use.
        assert stranger.returncode != 0 and SOCKET in stranger.stderr, (stranger.stdout, stranger.stderr)
    finally:
        c.run("userdel", "pp-member", check=False)
        c.run("userdel", "pp-stranger", check=False)


def test_each_users_job_runs_as_that_user(system: Container) -> None:
    """Two unprivileged users in the socket's group: each job (a command, and a call in a pool
    worker) runs with its submitter's uid and groups, sees that user's home and the real /tmp;
    neither user can touch the store or the other's job."""
    c = system
    c.systemctl("start", "procpoold")
    users = ("pp-alice", "pp-bob")
    for name in users:
        c.run("useradd", "--user-group", "--create-home", "-G", "procpool", name)
    try:
        c.run("touch", "/tmp/pp-marker")  # made outside the service: a task sees the real /tmp
        for name in users:
            uid = c.run("id", "-u", name).stdout.strip()
            groups = sorted(c.run("id", "-G", name).stdout.split())
            script = "id -u; id -G; test -e /tmp/pp-marker && echo tmp-shared; echo ok > $HOME/pp-proof"
            job = as_user(c, name, "procctl", "--socket", SOCKET, "run", "--", "sh", "-c", script)
            job_id = job.stdout.strip()
            done = as_user(c, name, "procctl", "--socket", SOCKET, "--json", "wait", job_id, check=False)
            assert json.loads(done.stdout)["status"]["job"]["state"] == "completed", done.stdout + done.stderr
            # procctl logs, as the submitter (who cannot read the system journal: the daemon's tail)
            logs = as_user(c, name, "procctl", "--socket", SOCKET, "logs", "--json", job_id).stdout
            records = [json.loads(line) for line in logs.splitlines()]
            printed = [r["message"] for r in records if r.get("stream") == "stdout"]
            seen = (printed[0], sorted(printed[1].split()), printed[2])
            assert seen == (uid, groups, "tmp-shared"), printed

            # the journal, as root: the job's output shows the same uid
            def output(job_id: str = job_id) -> list[str]:
                return c.journal(
                    "-u", "procpoold", f"PROCPOOL_JOB_ID={job_id}", "PROCPOOL_STREAM=stdout", "-o", "cat"
                ).splitlines()

            entries = poll(output, lambda lines: len(lines) >= 3, what=f"the output of job {job_id}")
            assert entries[0] == uid
            # the file the task wrote in the user's home is the user's
            proof = f"/home/{name}/pp-proof"
            assert c.run("stat", "-c", "%U", proof).stdout.strip() == name
            # the store is out of the user's reach
            for probe in (["cat", "/var/lib/procpoold/state.db"], ["ls", "/var/lib/procpoold"],
                          ["rm", "-f", "/var/lib/procpoold/state.db"]):
                refused = as_user(c, name, *probe, check=False)
                assert refused.returncode != 0, (probe, refused.stdout)
            assert c.run("test", "-s", "/var/lib/procpoold/state.db", check=False).returncode == 0
            # a call task runs in a pool worker of the submitter's own
            call = as_user(c, name, "procctl", "--socket", SOCKET, "run", "os:getuid")
            done = as_user(c, name, "procctl", "--socket", SOCKET, "--json", "wait", call.stdout.strip())
            status = json.loads(done.stdout)["status"]
            assert status["job"]["state"] == "completed", status
            assert str(status["tasks"][0]["result"]) == uid, status["tasks"][0]
        # neither user can touch the other's job; both can read it
        alice, bob = users
        started = as_user(c, alice, "procctl", "--socket", SOCKET, "run", "--", "sleep", "600")
        long_job = started.stdout.strip()
        refused = as_user(c, bob, "procctl", "--socket", SOCKET, "cancel", long_job, check=False)
        assert refused.returncode == 4 and "only its submitter" in refused.stderr, refused.stderr
        shown = as_user(c, bob, "procctl", "--socket", SOCKET, "status", long_job)
        assert alice in shown.stdout, shown.stdout
        as_user(c, alice, "procctl", "--socket", SOCKET, "cancel", long_job)
        security = c.run("systemd-analyze", "security", "procpoold.service").stdout
        score = re.search(r"Overall exposure level for procpoold.service: ([0-9.]+)", security)
        assert score and float(score.group(1)) <= 2.0, security
    finally:
        c.run("rm", "-f", "/tmp/pp-marker", check=False)
        for name in users:
            c.run("userdel", "--remove", name, check=False)


def test_watchdog_restarts_a_wedged_daemon(system: Container) -> None:
    c = system
    c.write_file(DROP_IN, "[Service]\nEnvironment=PROCPOOL_TEST_HOOKS=1\nWatchdogSec=3s\n")
    c.systemctl("daemon-reload")
    c.systemctl("start", "procpoold")
    assert c.show("procpoold.service", "WatchdogUSec") == "3s"
    pid = main_pid(c)
    # A healthy daemon pings: it outlives the watchdog timeout.
    time.sleep(4.5)
    assert (active(c), main_pid(c), c.show("procpoold.service", "NRestarts")) == ("active", pid, "0")

    c.systemctl("kill", "--kill-who=main", "-s", "SIGUSR2", "procpoold")  # the test hook wedges the loop
    poll(lambda: c.show("procpoold.service", "NRestarts"), lambda n: n == "1", what="a watchdog restart")
    poll(
        lambda: (active(c), main_pid(c)),
        lambda s: s[0] == "active" and s[1] not in (0, pid),
        what="the restarted daemon",
    )
    assert "procpoold" in procctl(c, "ping").stdout
    assert "Watchdog timeout" in c.journal("-u", "procpoold", "-o", "cat")


def test_user_units(installed: Container) -> None:
    """The per-user pair under a user's own manager (systemctl --user)."""
    c = installed
    # What PAM and logind provide on a real machine: the container's /etc starts empty.
    c.write_file(
        "/etc/pam.d/systemd-user",
        "".join(f"{kind} required pam_permit.so\n" for kind in ("auth", "account", "session")),
    )
    c.write_file(
        "/etc/systemd/system/user@.service.d/e2e.conf",
        "[Service]\nEnvironment=XDG_RUNTIME_DIR=/run/user/%i\n",
    )
    c.systemctl("daemon-reload")
    c.run("useradd", "--user-group", "--create-home", "pp-user")
    uid = c.run("id", "-u", "pp-user").stdout.strip()
    runtime = f"/run/user/{uid}"
    user_socket = f"{runtime}/procpoold/control.sock"

    def user(*args: str, check: bool = True) -> Any:
        return as_user(c, "pp-user", *args, env={"XDG_RUNTIME_DIR": runtime}, check=check)

    c.systemctl("start", f"user@{uid}.service")
    try:
        user("systemctl", "--user", "start", "procpoold.socket")
        assert c.run("stat", "-c", "%U %a %F", user_socket).stdout.strip() == "pp-user 600 socket"
        assert (
            user("systemctl", "--user", "is-active", "procpoold.service", check=False).stdout.strip()
            == "inactive"
        )
        assert "procpoold" in user("procctl", "--socket", user_socket, "ping").stdout  # activates it
        poll(  # (active once it reports READY, which may come just after its first answer)
            lambda: user("systemctl", "--user", "is-active", "procpoold.service", check=False).stdout.strip(),
            lambda state: state == "active",
            what="the user's procpoold.service to be active",
        )
        pid = user("systemctl", "--user", "show", "-p", "MainPID", "--value", "procpoold.service").stdout
        pid = pid.strip()
        assert c.run("stat", "-c", "%U", f"/proc/{pid}").stdout.strip() == "pp-user"
        user("systemctl", "--user", "stop", "procpoold.service", "procpoold.socket")
        assert c.run("test", "-e", user_socket, check=False).returncode == 1
        assert c.run("pgrep", "-u", "pp-user", "-f", "procpoold", check=False).stdout == ""
    finally:
        user("systemctl", "--user", "stop", "procpoold.service", "procpoold.socket", check=False)
        c.systemctl("stop", f"user@{uid}.service", check=False)
        c.run("userdel", "--remove", "pp-user", check=False)


# -- job trees (need the scheduler and journal fields) -----------------------------------------------


def _job_id(reply: Any) -> str:
    for candidate in (reply.get("job_id"), reply.get("id"), (reply.get("job") or {}).get("id")):
        if isinstance(candidate, str) and candidate:
            return candidate
    raise AssertionError(f"no job id in the submit reply: {reply!r}")


def test_job_tree_under_systemd(system: Container) -> None:
    c = system
    c.systemctl("start", "procpoold")
    submitted = c.sh(f"cd {SRC} && procctl --json submit examples/hello.json --wait", timeout=120)
    job = _job_id(json.loads(submitted.stdout))
    assert job in procctl(c, "status", job).stdout

    def job_entries() -> list[dict[str, Any]]:
        out = c.journal("-u", "procpoold", f"PROCPOOL_JOB_ID={job}", "-o", "json")
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    # The log writer sends records a few milliseconds after they are made: wait for the last one.
    lines = poll(
        job_entries,
        lambda entries: any(e.get("PROCPOOL_JOB_STATE") == "completed" for e in entries),
        what=f"journal entries with PROCPOOL_JOB_ID={job}",
    )
    assert all(entry["PROCPOOL_JOB_ID"] == job for entry in lines)
    # the task's own output, captured in its worker, with the task's fields
    printed = [e for e in lines if e.get("PROCPOOL_STREAM") == "stdout" and e["MESSAGE"] == "hello, procpool"]
    assert (
        printed
        and printed[0]["PROCPOOL_TASK_NAME"] == "greet"
        and printed[0]["SYSLOG_IDENTIFIER"] == "procpoold"
    )

    # Accepted work survives a reload and a restart (the state store is in /var/lib/procpoold): a job
    # that is running when they happen still completes.
    running = json.loads(c.sh("procctl --json run --retries 1 --name nap -- sleep 2").stdout)["id"]
    poll(
        lambda: json.loads(procctl(c, "--json", "status", running).stdout)["tasks"][0]["state"],
        lambda state: state == "running",
        what="the nap task to run",
    )
    c.systemctl("reload", "procpoold")
    assert job in procctl(c, "status", job).stdout
    c.systemctl("restart", "procpoold")
    assert job in procctl(c, "status", job).stdout
    assert procctl(c, "wait", running).returncode == 0  # interrupted by the restart, retried, completed


def test_a_burst_of_output_reaches_the_journal_whole(system: Container) -> None:
    # A command that writes 100,000 lines faster than the daemon reads them and exits at once: with
    # log_policy block every line must reach journald (none dropped at the exit, when the pipe and
    # the held lines are many times the log queue), and journald's rate limit must not drop them
    # (by default 10,000 per 30 s, scaled with free disk). A unit's LogRateLimitIntervalSec=0 does
    # not turn it off (journald applies its own default then): the unit sets a limit of a million
    # records a second, and the container's journald keeps its default configuration.
    c = system
    assert c.show("procpoold.service", "LogRateLimitIntervalUSec") == "1s"
    assert c.show("procpoold.service", "LogRateLimitBurst") == "1000000"
    c.systemctl("start", "procpoold")
    lines = 100_000
    reply = json.loads(c.sh(f"procctl --json --timeout 100 run --wait --name burst -- seq {lines}",
                            timeout=110).stdout)
    job = _job_id(reply)
    assert reply["tasks"][0]["state"] == "completed", reply
    assert json.loads(procctl(c, "--json", "status").stdout)["logging"]["dropped"] == 0

    def stdout_lines() -> list[str]:
        out = c.journal("-u", "procpoold", f"PROCPOOL_JOB_ID={job}", "PROCPOOL_STREAM=stdout", "-o", "cat")
        return out.splitlines()

    seen = poll(stdout_lines, lambda got: len(got) >= lines, timeout=60, what=f"{lines} lines of job {job}")
    assert seen == [str(i) for i in range(1, lines + 1)]


def test_every_attempt_of_a_big_job_is_in_the_journal(system: Container) -> None:
    # The journal keeps its promise: each attempt's start and end is one record in journald, with
    # the job, task and worker named, for every task of a 20,000-task job.
    c = system
    c.systemctl("start", "procpoold")  # with journald's default configuration: see the burst test
    tasks = 20_000
    task = {"call": "procpool.demo:checksum", "args": ["x"]}
    doc = {"name": "many", "root": {"concurrent": [task] * tasks}}
    c.write_file("/tmp/many.json", json.dumps(doc))
    job = _job_id(json.loads(c.sh("procctl --json submit /tmp/many.json").stdout))
    c.sh(f"procctl --timeout 300 wait {job} > /dev/null", timeout=320)

    def count(message_id: str) -> int:
        out = c.sh(f"journalctl -u procpoold PROCPOOL_JOB_ID={job} MESSAGE_ID={message_id} -o cat | wc -l")
        return int(out.stdout)

    ids = (MessageId.TASK_STARTED, MessageId.TASK_COMPLETED)
    counts = poll(lambda: [count(m) for m in ids], lambda got: min(got) >= tasks, timeout=120,
                  what=f"{tasks} start and completion records of job {job}")
    assert counts == [tasks, tasks]
    fields = c.journal("-u", "procpoold", f"PROCPOOL_JOB_ID={job}", f"MESSAGE_ID={ids[1]}", "-n", "1",
                       "-o", "json")
    record = json.loads(fields.splitlines()[-1])
    assert record["PROCPOOL_JOB_NAME"] == "many" and record["PROCPOOL_TASK_ID"].startswith(f"{job}.")
    assert record["PROCPOOL_WORKER_PID"].isdigit() and record["PROCPOOL_ATTEMPT"] == "1"
    assert json.loads(procctl(c, "--json", "status").stdout)["logging"]["dropped"] == 0


# -- install and uninstall -----------------------------------------------------------------------


def test_install_is_idempotent_and_uninstall_removes_it(wheelhouse: Path) -> None:
    with boot_and_install(wheelhouse) as c:
        make(c, *INSTALL)  # twice is the same as once
        c.systemctl("start", "procpoold")
        assert "procpoold" in procctl(c, "ping").stdout
        for page, heading in (("man1/procctl.1", "procctl submit"), ("man8/procpoold.8", "--state-dir")):
            shown = c.run("man", "-P", "cat", "-l", f"/usr/local/share/man/{page}",
                          env={"MANWIDTH": "200"}).stdout
            assert heading in shown, f"{page}: {shown[:500]}"
        make(c, *UNINSTALL)
        assert active(c) != "active" and active(c, "procpoold.socket") != "active"
        assert daemon_pids(c) == []
        for path in (
            "/opt/procpoold",
            "/usr/local/bin/procctl",
            "/usr/local/share/man/man1/procctl.1",
            "/usr/local/share/man/man8/procpoold.8",
            "/etc/sysusers.d/procpool.conf",
            *(f"/etc/systemd/{kind}/{u}" for kind in ("system", "user") for u in UNITS),
            SOCKET,
        ):
            assert c.run("test", "-e", path, check=False).returncode == 1, f"{path} left behind"
        assert c.run("test", "-d", "/var/lib/procpoold", check=False).returncode == 0  # state is kept
        make(c, *UNINSTALL)  # twice is fine too
        make(c, "uninstall", "PURGE=1")
        assert c.run("test", "-e", "/var/lib/procpoold", check=False).returncode == 1
