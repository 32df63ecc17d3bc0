"""The ready queue (priority, FIFO, no starvation) and namespace operations."""

from __future__ import annotations

import pytest

from procpool.contract.errors import ProcpoolError
from procpoold.core import namespace
from procpoold.core.queue import ReadyQueue


def drain(q: ReadyQueue[str]) -> list[str]:
    out = []
    while (item := q.pop()) is not None:
        out.append(item)
    return out


def test_higher_priority_first_fifo_within_priority() -> None:
    q: ReadyQueue[str] = ReadyQueue(aging=30)
    for i, (name, prio) in enumerate(
        [
            ("n1", "normal"),
            ("b1", "batch"),
            ("c1", "critical"),
            ("n2", "normal"),
            ("h1", "high"),
            ("c2", "critical"),
        ]
    ):
        q.push(name, prio, now=100 + i * 0.001)
    assert drain(q) == ["c1", "c2", "h1", "n1", "n2", "b1"]


def test_no_starvation_under_a_steady_high_priority_stream() -> None:
    q: ReadyQueue[str] = ReadyQueue(aging=30)
    q.push("low", "batch", now=0)
    popped = []
    # one critical task arrives every second, and one slot frees every second
    for second in range(1, 500):
        q.push(f"c{second}", "critical", now=second)
        popped.append(q.pop())
        if "low" in popped:
            break
    # batch is 4 levels below critical: it waits at most 4 * aging seconds
    assert "low" in popped and len(popped) <= 4 * 30 + 1


def test_discard_is_lazy_and_exact() -> None:
    q: ReadyQueue[str] = ReadyQueue()
    q.push("a", "normal", 0)
    q.push("b", "normal", 1)
    q.discard("a")
    assert "a" not in q and len(q) == 1
    assert drain(q) == ["b"]


def test_items_pushed_together_keep_their_order_and_priority() -> None:
    q: ReadyQueue[str] = ReadyQueue(aging=30)
    q.push_many(["n1", "n2", "n3"], "normal", now=0)
    q.push_many(["c1", "c2"], "critical", now=1)
    q.push("b1", "batch", now=0)
    assert len(q) == 6 and "n2" in q
    assert q.pop() == "c1"
    q.push_many(["h1"], "high", now=2)
    assert drain(q) == ["c2", "h1", "n1", "n2", "n3", "b1"]
    assert len(q) == 0 and q.pop() is None


def test_an_item_pushed_again_or_discarded_is_skipped_where_it_was() -> None:
    q: ReadyQueue[str] = ReadyQueue(aging=30)
    q.push_many(["a", "b", "c", "d"], "normal", now=0)
    q.discard("b")
    q.push("c", "critical", now=5)  # e.g. ready again with another priority: its old place is dead
    assert len(q) == 3
    assert drain(q) == ["c", "a", "d"]


def test_namespace_operations() -> None:
    ns: dict[str, object] = {}
    assert namespace.apply(ns, "incr", {"key": "n"}) == 1
    assert namespace.apply(ns, "incr", {"key": "n", "by": 4}) == 5
    assert namespace.apply(ns, "append", {"key": "l", "value": "x"}) == 1
    assert namespace.apply(ns, "cas", {"key": "n", "expected": 5, "value": 6}) is True
    assert namespace.apply(ns, "cas", {"key": "n", "expected": 5, "value": 7}) is False
    assert namespace.apply(ns, "cas", {"key": "new", "expected": None, "value": 1}) is True
    assert namespace.apply(ns, "get", {"key": "missing", "default": 3}) == 3
    namespace.apply(ns, "set", {"key": "s", "value": {"a": [1]}})
    assert namespace.apply(ns, "delete", {"key": "s"}) is True
    assert namespace.apply(ns, "delete", {"key": "s"}) is False
    assert namespace.apply(ns, "snapshot", {}) == {"n": 6, "l": ["x"], "new": 1}


@pytest.mark.parametrize(
    ("op", "args", "fragment"),
    [
        ("explode", {}, "unknown operation"),
        ("get", {"key": 1}, "key must be a string"),
        ("incr", {"key": "s", "by": "x"}, "must be numbers"),
        ("get", {"key": "a", "bogus": 1}, "unknown argument"),
    ],
)
def test_namespace_errors(op: str, args: dict[str, object], fragment: str) -> None:
    with pytest.raises(ProcpoolError, match=fragment):
        namespace.apply({"s": "text"}, op, args)


def test_append_to_a_non_list_is_refused() -> None:
    with pytest.raises(ProcpoolError, match="not a list"):
        namespace.apply({"s": "text"}, "append", {"key": "s", "value": 1})
