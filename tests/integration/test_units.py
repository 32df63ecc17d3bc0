"""The shipped unit files: systemd accepts them, they are hardened, and they agree with the code.

``systemd-analyze verify`` checks that ExecStart= exists, and the installed
path (/opt/procpoold/venv/bin/procpoold) only exists after ``make install``. So
here it runs on a copy whose ExecStart= points at this environment's own
``procpoold`` (every other line unchanged); the e2e tier verifies the units
exactly as installed, inside the container. ``verify`` exits 0 on unknown keys
and bad values, so the checks use ``--recursive-errors=no`` *and* require empty
output; a deliberately broken copy proves the check can fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from procpool.contract.paths import SOCKET_NAME

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
INSTALLED_EXEC = "/opt/procpoold/venv/bin/procpoold"
SOCKET = f"/run/procpoold/{SOCKET_NAME}"

Unit = dict[str, dict[str, list[str]]]


def parse(path: Path) -> Unit:
    """Sections -> key -> every value assigned (systemd allows repeated keys)."""
    unit: Unit = defaultdict(lambda: defaultdict(list))
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        unit[section][key.strip()].append(value.strip())
    return unit


def one(unit: Unit, section: str, key: str) -> str:
    values = unit[section][key]
    assert len(values) == 1, f"[{section}] {key}= is set {len(values)} times: {values}"
    return values[0]


def analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze not found (Debian package: systemd)")
        pytest.skip("systemd-analyze not found")
    return tool


def local_exec() -> str:
    """An executable standing in for the installed procpoold: this environment's own, if any."""
    candidate = Path(sys.prefix) / "bin" / "procpoold"
    if candidate.exists():
        return str(candidate)
    true = shutil.which("true")
    assert true is not None
    return true


def copy_units(dest: Path, folder: Path, replace: tuple[str, str] | None = None) -> list[Path]:
    copies = []
    for name in ("procpoold.service", "procpoold.socket"):
        text = (folder / name).read_text().replace(INSTALLED_EXEC, local_exec())
        if replace:
            text = text.replace(*replace)
        (dest / name).write_text(text)
        copies.append(dest / name)
    return copies


def verify(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([analyze(), *args], cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


# -- systemd's own checks -------------------------------------------------------------------------


def test_security_exposure_is_at_most_2_0() -> None:
    result = subprocess.run(
        [analyze(), "security", "--offline=yes", "--threshold=20", str(UNITS / "procpoold.service")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    score = re.search(r"Overall exposure level for procpoold.service: ([0-9.]+)", result.stdout)
    assert score and float(score.group(1)) <= 2.0, result.stdout
    print(f"exposure: {score.group(1)}")


def test_verify_system_units(tmp_path: Path) -> None:
    copies = copy_units(tmp_path, UNITS)
    result = verify("verify", "--recursive-errors=no", *(p.name for p in copies), cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_verify_user_units(tmp_path: Path) -> None:
    runtime = tmp_path / "runtime"  # a user manager needs a runtime dir, even offline
    runtime.mkdir(mode=0o700)
    copies = copy_units(tmp_path, UNITS / "user")
    result = verify("--user", "verify", "--recursive-errors=no", *(p.name for p in copies), cwd=tmp_path,
                    env={"XDG_RUNTIME_DIR": str(runtime)})
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_verify_catches_a_typo(tmp_path: Path) -> None:
    copies = copy_units(tmp_path, UNITS, replace=("ProtectSystem=", "ProtectSytem="))
    result = verify("verify", "--recursive-errors=no", *(p.name for p in copies), cwd=tmp_path)
    assert result.returncode != 0 or result.stderr
    assert "ProtectSytem" in result.stderr


# -- what the units say ---------------------------------------------------------------------------

HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "tmpfs",
    "BindPaths": "-/home",
    "ReadWritePaths": "-/home -/tmp -/var/tmp",
    "PrivateTmp": "no",
    "PrivateDevices": "yes",
    "PrivateNetwork": "yes",
    "RestrictAddressFamilies": "AF_UNIX",
    "SystemCallFilter": "@system-service",
    "SystemCallArchitectures": "native",
    "MemoryDenyWriteExecute": "yes",
    "CapabilityBoundingSet": "CAP_SETUID CAP_SETGID CAP_KILL CAP_CHOWN CAP_DAC_READ_SEARCH",
    "AmbientCapabilities": "",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "ProtectProc": "default",
    "ProcSubset": "pid",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "UMask": "0077",
    "LimitNOFILE": "65536",
}


def test_service_is_hardened() -> None:
    unit = parse(UNITS / "procpoold.service")
    for key, value in HARDENING.items():
        assert unit["Service"][key] == [value], f"{key}= should be exactly {value!r}"
    # libzmq's I/O thread needs @resources (sched_setscheduler): it must never be subtracted.
    assert not any("~" in v and "@resources" in v for v in unit["Service"]["SystemCallFilter"])
    # Real peer credentials on the control socket need the host's uids: no user namespace.
    assert "PrivateUsers" not in unit["Service"]


def test_service_lifecycle_settings() -> None:
    unit = parse(UNITS / "procpoold.service")
    service = unit["Service"]
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"
    assert one(unit, "Service", "Restart") == "on-failure"
    assert one(unit, "Service", "KillMode") == "mixed"
    assert one(unit, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    # Root (to run each job as its submitter), with the capabilities above only.
    assert "User" not in service and "Group" not in service and "DynamicUser" not in service
    assert one(unit, "Service", "StateDirectory") == "procpoold"
    assert one(unit, "Service", "StateDirectoryMode") == "0700"
    assert _seconds(one(unit, "Service", "WatchdogSec")) > 0
    # Longer than the daemon's default drain (30 s) plus its kill grace (5 s).
    assert _seconds(one(unit, "Service", "TimeoutStopSec")) > 35
    argv = one(unit, "Service", "ExecStart").split()
    assert argv[0] == INSTALLED_EXEC
    assert argv[argv.index("--socket") + 1] == SOCKET
    assert argv[argv.index("--group") + 1] == "procpool"
    # The socket is always systemd's: the service pulls its socket unit in.
    assert unit["Unit"]["Requires"] == ["procpoold.socket"] and unit["Unit"]["After"] == ["procpoold.socket"]
    # A RuntimeDirectory would be removed on stop, and the socket file in it.
    assert "RuntimeDirectory" not in service
    # journald's default rate limit would drop a busy job tree's records; a per-unit limit of 0
    # means journald's default, so the unit sets one no job tree reaches.
    assert one(unit, "Service", "LogRateLimitIntervalSec") == "1s"
    assert int(one(unit, "Service", "LogRateLimitBurst")) >= 1_000_000


def test_socket_unit() -> None:
    unit = parse(UNITS / "procpoold.socket")
    assert one(unit, "Socket", "ListenStream") == SOCKET
    assert one(unit, "Socket", "SocketMode") == "0660"
    assert one(unit, "Socket", "SocketGroup") == "procpool"
    assert one(unit, "Socket", "SocketUser") == "root"
    assert one(unit, "Install", "WantedBy") == "sockets.target"


def test_user_units() -> None:
    service = parse(UNITS / "user" / "procpoold.service")
    socket = parse(UNITS / "user" / "procpoold.socket")
    assert one(socket, "Socket", "ListenStream") == "%t/procpoold/control.sock"
    assert one(socket, "Socket", "SocketMode") == "0600"
    argv = one(service, "Service", "ExecStart").split()
    assert argv[0] == INSTALLED_EXEC and argv[argv.index("--socket") + 1] == "%t/procpoold/control.sock"
    assert one(service, "Service", "Type") == "notify"
    assert "User" not in service["Service"]
    assert one(service, "Service", "LogRateLimitIntervalSec") == "1s"
    assert int(one(service, "Service", "LogRateLimitBurst")) >= 1_000_000


def test_sysusers_entry() -> None:
    lines = [line.split() for line in (UNITS / "sysusers.d" / "procpool.conf").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert len(lines) == 1
    assert lines[0] == ["g", "procpool", "-"]  # the socket's group; the daemon itself is root


def test_install_script_and_make_targets() -> None:
    script = UNITS / "install.sh"
    assert subprocess.run(["sh", "-n", str(script)], capture_output=True).returncode == 0
    assert "set -eu" in script.read_text()
    makefile = (REPO / "Makefile").read_text()
    for target in ("install", "uninstall"):
        assert re.search(rf"^{target}:", makefile, re.M), f"no {target} target"
        assert re.search(rf"systemd/install\.sh {target}$", makefile, re.M)


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, f"unexpected time span {value!r}"
    return int(match.group(1)) * (60 if match.group(2) == "min" else 1)


# -- the Dask engine's drop-in (make install DASK=1) ----------------------------------------------

DASK_DROP_IN = UNITS / "dask.conf"
CONFIG = "/etc/procpoold/procpoold.toml"
#: What the drop-in may change: the daemon's config file, and the network for the Dask client.
DASK_KEYS = {"ExecStart", "PrivateNetwork", "RestrictAddressFamilies", "IPAddressAllow", "ProcSubset"}


def test_dask_drop_in_opens_only_the_network() -> None:
    base = parse(UNITS / "procpoold.service")
    drop_in = parse(DASK_DROP_IN)
    assert set(drop_in) == {"Service"} and set(drop_in["Service"]) == DASK_KEYS
    # The unit's own command line (kept in step with it) plus the config file that names the scheduler.
    assert drop_in["Service"]["ExecStart"] == ["", f"{one(base, 'Service', 'ExecStart')} --config {CONFIG}"]
    assert one(drop_in, "Service", "PrivateNetwork") == "no"
    assert one(drop_in, "Service", "RestrictAddressFamilies") == "AF_UNIX AF_INET AF_INET6"
    # IPAddressDeny=any stays: the allow list is what may be reached (a reset would allow everything).
    assert one(base, "Service", "IPAddressDeny") == "any"
    assert one(drop_in, "Service", "IPAddressAllow") == "localhost"
    assert one(drop_in, "Service", "ProcSubset") == "all"  # distributed reads /proc/meminfo on import


def merged_unit(dest: Path) -> Path:
    """procpoold.service with the drop-in's lines appended to its [Service] section, as systemd reads
    them (a key set twice: the later value wins; an empty ExecStart= resets the list)."""
    text = (UNITS / "procpoold.service").read_text()
    service, install = text.split("[Install]")
    extra = DASK_DROP_IN.read_text().replace("[Service]", "")
    merged = dest / "procpoold.service"
    merged.write_text(f"{service}\n{extra}\n[Install]{install}".replace(INSTALLED_EXEC, local_exec()))
    return merged


def test_dask_drop_in_keeps_the_exposure_at_most_3_0(tmp_path: Path) -> None:
    merged = merged_unit(tmp_path)
    result = subprocess.run([analyze(), "security", "--offline=yes", "--threshold=30", str(merged)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    score = re.search(r"Overall exposure level for procpoold.service: ([0-9.]+)", result.stdout)
    assert score and float(score.group(1)) <= 3.0, result.stdout
    print(f"exposure with the Dask drop-in: {score.group(1)}")
    (tmp_path / "procpoold.socket").write_text((UNITS / "procpoold.socket").read_text())
    checked = verify("verify", "--recursive-errors=no", "procpoold.service", "procpoold.socket", cwd=tmp_path)
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", "")


def test_shipped_config_file_loads_and_names_the_dask_settings(tmp_path: Path) -> None:
    from procpoold.config import load

    template = (UNITS / "procpoold.toml").read_text()
    shipped = tmp_path / "shipped.toml"
    shipped.write_text(template)
    config = load(shipped, {})  # all commented out: the defaults
    assert (config.engine, config.dask_scheduler) == ("local", None)
    # Uncommented, its lines are what the drop-in's comments promise.
    enabled = tmp_path / "enabled.toml"
    enabled.write_text(template.replace("#dask_scheduler", "dask_scheduler").replace("#engine", "engine"))
    config = load(enabled, {})
    assert (config.engine, config.dask_scheduler) == ("dask", "tcp://127.0.0.1:8786")
