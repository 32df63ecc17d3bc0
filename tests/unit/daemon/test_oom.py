"""Finding and reading the cgroup's count of OOM kills (procpoold.oom), on made-up trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from procpoold.oom import OomCounter

pytestmark = pytest.mark.unit


def tree(tmp_path: Path, proc_cgroup: str, files: dict[str, str]) -> OomCounter:
    (tmp_path / "cgroup").write_text(proc_cgroup)
    for rel, text in files.items():
        path = tmp_path / "sys" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return OomCounter(str(tmp_path / "cgroup"), str(tmp_path / "sys"))


V2_EVENTS = "low 0\nhigh 0\nmax 4\noom 2\noom_kill {}\noom_group_kill 0\n"
V1_CONTROL = "oom_kill_disable 0\nunder_oom 0\noom_kill {}\n"


@pytest.mark.parametrize(
    ("proc_cgroup", "rel", "text"),
    [
        ("0::/system.slice/procpoold.service\n", "system.slice/procpoold.service/memory.events", V2_EVENTS),
        # hybrid, memory controller in v1 (this kind of machine): the v1 file
        ("12:pids:/\n4:memory:/system.slice/procpoold.service\n1:name=systemd:/x\n0::/x\n",
         "memory/system.slice/procpoold.service/memory.oom_control", V1_CONTROL),
        # hybrid, unified hierarchy with the memory controller
        ("1:name=systemd:/x\n0::/system.slice/p.service\n", "unified/system.slice/p.service/memory.events",
         V2_EVENTS),
    ],
)
def test_each_kill_counted_answers_one_sigkill(tmp_path: Path, proc_cgroup: str, rel: str, text: str) -> None:
    counter = tree(tmp_path, proc_cgroup, {rel: text.format(5)})
    assert counter.path == str(tmp_path / "sys" / rel)
    assert counter.consume() is False  # nothing since the start: that SIGKILL came from someone
    (tmp_path / "sys" / rel).write_text(text.format(7))  # two kills
    assert [counter.consume(), counter.consume(), counter.consume()] == [True, True, False]


def test_without_a_memory_controller_the_answer_is_unknown(tmp_path: Path) -> None:
    counter = tree(tmp_path, "0::/a\n", {"a/cgroup.procs": ""})
    assert counter.path is None and counter.consume() is None
    gone = tree(tmp_path, "0::/b\n", {"b/memory.events": V2_EVENTS.format(1)})
    (tmp_path / "sys" / "b" / "memory.events").unlink()  # the cgroup went away
    assert gone.consume() is None
    assert OomCounter(str(tmp_path / "no-such-file")).consume() is None
