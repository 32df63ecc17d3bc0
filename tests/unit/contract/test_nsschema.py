"""The namespace's types: ``namespace_schema`` parsing (hostile ones too), value checks, the
daemon's check of namespace updates, and the typed view of ``procpool.task.namespace(cls)``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from procpool import task
from procpool.contract import nsschema
from procpool.contract.errors import ProcpoolError
from procpool.contract.nsschema import MAX_DEPTH, MAX_NODES, SchemaError, parse_schema
from procpool.contract.tree import TreeError, json_schema, parse_job
from procpoold.core import namespace

pytestmark = pytest.mark.unit

SCHEMA = {
    "count": "int",
    "names": "list[str]",
    "best": "float?",
    "point": {"x": "float", "y": "float"},
    "points": [{"x": "int"}],
    "by_host": "dict[str, int]",
    "blob": "bytes",
    "flag": "bool",
    "maybe": {"?": True, "n": "int"},
    "extra": "any",
}


def job(**fields: Any) -> dict[str, Any]:
    return {"root": {"cmd": ["true"]}, **fields}


def tree_error(doc: dict[str, Any]) -> str:
    with pytest.raises(TreeError) as info:
        parse_job(doc)
    return str(info.value)


# -- parsing -------------------------------------------------------------------------------------


def test_a_schema_parses_into_types() -> None:
    s = parse_schema(SCHEMA)
    assert {k: t.describe() for k, t in s.fields.items()} == {
        "count": "int",
        "names": "list[str]",
        "best": "float?",
        "point": "record",
        "points": "list[record]",
        "by_host": "dict[str, int]",
        "blob": "bytes",
        "flag": "bool",
        "maybe": "record?",
        "extra": "any",
    }
    assert s.rest is None
    assert parse_schema({"*": "int?"}).rest == nsschema.Scalar("int", nullable=True)
    assert parse_schema({"a": " dict[ str , list[ int? ] ]? "}).fields["a"].describe() == (
        "dict[str, list[int?]]?"
    )


def test_the_job_keeps_its_parsed_schema() -> None:
    spec = parse_job(job(namespace_schema={"n": "int"}, namespace={"n": 3}))
    assert spec.namespace_schema == parse_schema({"n": "int"})
    assert parse_job(job()).namespace_schema is None


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"count": "integer"}, 'namespace_schema.count: unknown type \'integer\' (did you mean "int"?)'),
        ({"a": "list[int"}, "namespace_schema.a: missing ] in type 'list[int'"),
        ({"a": "list[int]]"}, "namespace_schema.a: unexpected ']' in type 'list[int]]'"),
        ({"a": "dict[int, str]"}, "namespace_schema.a: a dict's keys are strings: write dict[str, T]"),
        ({"a": "int??"}, "namespace_schema.a: unexpected '?'"),
        ({"a": ""}, "namespace_schema.a: unknown type ''"),
        ({"a": []}, "namespace_schema.a: an array type holds exactly one type (its items'), got 0"),
        ({"a": ["int", "str"]},
            "namespace_schema.a: an array type holds exactly one type (its items'), got 2"),
        ({"a": 5}, "namespace_schema.a: a type is a string, an object or an array of one type, got int"),
        ({"a": None}, "namespace_schema.a: a type is a string, an object or an array of one type, got null"),
        ({"a": {"b": [{"c": "strr?"}]}}, "namespace_schema.a.b[0].c: unknown type 'strr' (did you mean"),
        ({"1x": "int"}, "namespace_schema: invalid field name '1x': use letters, digits and _"),
        ({"a-b": "int"}, "namespace_schema: invalid field name 'a-b'"),
        ({"x" * 65: "int"}, "namespace_schema: invalid field name 'xxxxxxxx"),
        ({"": "int"}, "namespace_schema: invalid field name ''"),
        ({"?": True}, 'namespace_schema: the namespace itself cannot be null'),
        ({"a": {"?": "yes"}}, 'namespace_schema.a["?"]: must be true or false, got str'),
        ({"*": "nope"}, 'namespace_schema["*"]: unknown type \'nope\''),
        ({"a": "x" * 201}, "namespace_schema.a: a type of 201 characters; at most 200 are allowed"),
    ],
)
def test_bad_schemas_are_refused_with_their_json_path(schema: Any, message: str) -> None:
    assert tree_error(job(namespace_schema=schema)).startswith(message)


def test_a_schema_must_be_an_object() -> None:
    assert tree_error(job(namespace_schema=["int"])) == (
        "namespace_schema: must be an object of field names and types, got list"
    )


def test_deep_nesting_is_refused_at_the_limit() -> None:
    ok: Any = "int"
    for _ in range(MAX_DEPTH):
        ok = {"a": ok}
    parse_schema(ok)
    deep: Any = "int"
    for _ in range(10_000):  # far deeper than the recursion limit: refused before it descends
        deep = {"a": deep}
    message = tree_error(job(namespace_schema=deep))
    assert message.startswith("namespace_schema" + ".a" * (MAX_DEPTH + 1) + ": types nested deeper than")
    nested_lists = "list[" * 60 + "int" + "]" * 60  # 423 characters: too long already
    assert "at most 200" in tree_error(job(namespace_schema={"a": nested_lists}))
    nested_lists = "list[" * 30 + "int" + "]" * 30
    assert "types nested deeper than 16 levels" in tree_error(job(namespace_schema={"a": nested_lists}))
    arrays: Any = "int"
    for _ in range(40):
        arrays = [arrays]
    assert "types nested deeper than 16 levels" in tree_error(job(namespace_schema={"a": arrays}))


def test_a_huge_schema_is_refused() -> None:
    huge = {f"f{i}": "int" for i in range(100_000)}
    assert tree_error(job(namespace_schema=huge)).endswith(
        f"the schema has more than {MAX_NODES} types, the most allowed"
    )
    parse_schema({f"f{i}": "int" for i in range(MAX_NODES - 1)})  # the top record counts one


def test_a_huge_field_name_is_shown_shortened() -> None:
    message = tree_error(job(namespace_schema={"x" * 1_000_000: "int"}))
    assert len(message) < 300 and "invalid field name" in message


# -- initial values ------------------------------------------------------------------------------


GOOD = {
    "count": 0,
    "names": ["a"],
    "best": None,
    "point": {"x": 1, "y": 2.5},  # an int where float is declared: JSON has one kind of number
    "points": [{"x": 1}, {}],  # a record's fields may be absent
    "by_host": {"h1": 3},
    "flag": False,
    "maybe": None,
    "extra": {"anything": [1, "x", None]},
}


def test_initial_values_that_fit_are_accepted() -> None:
    assert parse_job(job(namespace_schema=SCHEMA, namespace=GOOD)).namespace == GOOD


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"count": "1"}, "namespace.count: the namespace_schema declares int, got str"),
        ({"count": True}, "namespace.count: the namespace_schema declares int, got bool"),
        ({"count": 1.0}, "namespace.count: the namespace_schema declares int, got float"),
        ({"count": None}, "namespace.count: the namespace_schema declares int, got null"),
        ({"flag": 1}, "namespace.flag: the namespace_schema declares bool, got int"),
        ({"best": "high"}, "namespace.best: the namespace_schema declares float?, got str"),
        ({"names": ["a", 3]}, "namespace.names[1]: the namespace_schema declares str, got int"),
        ({"names": "a"}, "namespace.names: the namespace_schema declares list[str], got str"),
        ({"point": {"x": "s"}}, "namespace.point.x: the namespace_schema declares float, got str"),
        ({"point": {"z": 1}}, "namespace.point.z: not declared in the namespace_schema"),
        ({"point": None}, "namespace.point: the namespace_schema declares record, got null"),
        ({"points": [{"x": 1}, {"x": 1.5}]},
            "namespace.points[1].x: the namespace_schema declares int, got float"),
        ({"by_host": {"h": "x"}}, "namespace.by_host['h']: the namespace_schema declares int, got str"),
        ({"undeclared": 1}, "namespace.undeclared: not declared in the namespace_schema"),
        ({"blob": "text"}, "namespace.blob: the namespace_schema declares bytes, got str"),
    ],
)
def test_initial_values_that_break_the_schema_name_their_path(values: dict[str, Any], message: str) -> None:
    assert tree_error(job(namespace_schema=SCHEMA, namespace=values)) == message


def test_a_rest_type_admits_keys_not_listed() -> None:
    parse_job(job(namespace_schema={"n": "int", "*": "str"}, namespace={"n": 1, "other": "x"}))
    assert tree_error(job(namespace_schema={"n": "int", "*": "str"}, namespace={"other": 1})) == (
        "namespace.other: the namespace_schema declares str, got int"
    )


def test_the_json_schema_describes_namespace_schema() -> None:
    generated = json_schema()
    assert generated["properties"]["namespace_schema"]["$ref"] == "#/$defs/nsrecord"
    assert {"nstype", "nsrecord"} <= set(generated["$defs"])
    with open(nsschema.__file__.replace("nsschema.py", "jobtree.schema.json")) as f:
        assert json.load(f) == generated, "run make schema"


# -- the daemon's check of updates ---------------------------------------------------------------


def apply(ns: dict[str, Any], op: str, **args: Any) -> Any:
    return namespace.apply(ns, op, args, namespace.Sizes(ns, 1 << 20), parse_schema(SCHEMA))


@pytest.mark.parametrize(
    ("op", "args", "message"),
    [
        ("set", {"key": "count", "value": "x"}, "set of 'count': declared int, got str"),
        ("set", {"key": "count", "value": True}, "set of 'count': declared int, got bool"),
        ("set", {"key": "point", "value": {"x": "s"}}, "set of 'point': point.x is declared float, got str"),
        ("set", {"key": "point", "value": {"q": 1}}, "set of 'point': point.q is not declared, got int"),
        ("set", {"key": "nope", "value": 1},
            "set of 'nope': the key is not declared in the namespace_schema"),
        ("cas", {"key": "count", "expected": 0, "value": "x"}, "cas of 'count': declared int, got str"),
        ("incr", {"key": "count", "by": 0.5}, "incr of 'count': declared int, got an increment of float"),
        ("incr", {"key": "names", "by": 1}, "incr of 'names': declared list[str], not a number"),
        ("append", {"key": "names", "value": 1},
            "append to 'names': declared str (the items of list[str]), got int"),
        ("append", {"key": "points", "value": {"x": "a"}},
            "append to 'points': the item.x is declared int, got str"),
        ("append", {"key": "count", "value": 1}, "append to 'count': declared int, not a list"),
    ],
)
def test_the_daemon_refuses_an_update_that_breaks_the_schema(
    op: str, args: dict[str, Any], message: str
) -> None:
    ns: dict[str, Any] = {"count": 0, "names": []}
    before = json.dumps(ns)
    with pytest.raises(ProcpoolError) as info:
        apply(ns, op, **args)
    assert info.value.message == f"namespace: {message} (the job's namespace_schema)"
    assert json.dumps(ns) == before  # nothing changed


def test_the_daemon_applies_updates_that_fit_the_schema() -> None:
    ns: dict[str, Any] = {}
    assert apply(ns, "incr", key="count") == 1
    assert apply(ns, "incr", key="best", by=0.5) == 0.5  # (best is float?: absent counts as 0)
    assert apply(ns, "append", key="names", value="a") == 1
    assert apply(ns, "append", key="points", value={"x": 2}) == 1
    apply(ns, "set", key="maybe", value=None)
    apply(ns, "set", key="extra", value=[1, {"x": None}])
    assert apply(ns, "cas", key="count", expected=1, value=5) is True
    assert apply(ns, "delete", key="count") is True  # a declared key may be absent
    assert apply(ns, "get", key="undeclared") is None  # reads are not checked
    assert ns == {"best": 0.5, "names": ["a"], "points": [{"x": 2}], "maybe": None, "extra": [1, {"x": None}]}


def test_keys_that_are_not_strings_are_refused() -> None:
    # (JSON has none; msgpack from a worker may)
    schema = parse_schema({"m": "dict[str, int]", "r": {"a": "int", "*": "int"}})
    assert nsschema.mismatch(schema.fields["m"], {1: 1}) == ("[1]", "a str key", "int")
    assert nsschema.mismatch(schema.fields["r"], {b"a": 1}) == ("[b'a']", "a str key", "bytes")
    with pytest.raises(ProcpoolError, match="set of 'r': r\\[1\\] is declared a str key, got int"):
        namespace.apply({}, "set", {"key": "r", "value": {1: 2}}, None, schema)


def test_an_untyped_namespace_is_unchanged() -> None:
    ns: dict[str, Any] = {}
    namespace.apply(ns, "set", {"key": "count", "value": "anything"})
    assert ns == {"count": "anything"}


# -- the typed view ------------------------------------------------------------------------------


@dataclass
class Point:
    x: float
    y: float = 0.0


@dataclass
class State:
    count: int = 0
    names: list[str] = field(default_factory=list)
    best: float | None = None
    point: Point | None = None
    points: list[Point] = field(default_factory=list)
    by_host: dict[str, int] = field(default_factory=dict)
    extra: Any = None


@dataclass
class Tree:
    children: list[Tree]


class FakeDaemon:
    """A channel that applies namespace operations as the daemon does (and counts round trips)."""

    def __init__(self, ns: dict[str, Any], schema: dict[str, Any] | None = None) -> None:
        self.ns = ns
        self.schema = parse_schema(schema) if schema is not None else None
        self.ops: list[str] = []

    def request(self, op: str, args: dict[str, Any]) -> Any:
        assert op == "ns"
        args = dict(args)
        ns_op = args.pop("op")
        self.ops.append(ns_op)
        return namespace.apply(self.ns, ns_op, args, None, self.schema)

    def send(self, op: str, args: dict[str, Any]) -> None:
        raise AssertionError(op)


@pytest.fixture
def daemon_ns() -> Any:
    channel = FakeDaemon({})
    task._install(channel, {"job_id": "1", "task_id": "1.0", "task_name": "t", "attempt": 1})
    yield channel
    task._clear()


def test_typed_reads_come_from_one_snapshot_with_defaults(daemon_ns: FakeDaemon) -> None:
    daemon_ns.ns.update(
        {"count": 3, "best": 2, "point": {"x": 1}, "points": [{"x": 1, "y": 2}], "other": "x"}
    )
    view = task.namespace(State)
    assert view.count == 3 and type(view.count) is int
    assert view.best == 2.0 and type(view.best) is float  # int widened to float, as documented
    assert view.point == Point(1.0, 0.0) and type(view.point.x) is float
    assert view.points == [Point(1.0, 2.0)]
    assert view.names == [] and view.by_host == {} and view.extra is None  # defaults
    assert daemon_ns.ops == ["snapshot"]  # attribute reads: one round trip for all of them
    daemon_ns.ns["count"] = 4  # another task's change: the snapshot does not see it...
    assert view.count == 3
    assert view.get("count") == 4  # ...a live read does
    assert view.snapshot() == State(4, [], 2.0, Point(1.0), [Point(1.0, 2.0)], {}, None)
    assert view.count == 4
    assert daemon_ns.ops == ["snapshot", "get", "snapshot"]


def test_updates_are_the_atomic_operations_and_drop_the_snapshot(daemon_ns: FakeDaemon) -> None:
    view = task.namespace(State)
    assert view.count == 0
    assert view.incr("count") == 1
    assert view.count == 1  # read after one's own write
    view.set("point", Point(2.0, 3.0))
    assert daemon_ns.ns["point"] == {"x": 2.0, "y": 3.0}
    assert view.append("points", Point(1.0)) == 1
    assert view.append("names", "a") == 1
    assert view.cas("best", None, 0.5) is True
    assert view.incr("best", 1) == 1.5
    assert view.delete("count") is True
    assert view.count == 0
    assert daemon_ns.ops == ["snapshot", "incr", "snapshot", "set", "append", "append", "cas", "incr",
                             "delete", "snapshot"]


@pytest.mark.parametrize(
    ("stored", "message"),
    [
        ({"count": "3"}, "namespace field count is declared int (by State), got str"),
        ({"count": True}, "namespace field count is declared int (by State), got bool"),
        ({"count": 3.0}, "namespace field count is declared int (by State), got float"),
        ({"names": ["a", 1]}, "namespace field names[1] is declared str (by State), got int"),
        ({"point": {"x": "1"}}, "namespace field point.x is declared float (by State), got str"),
        ({"point": {"y": 1.0}},
            "namespace field point.x is declared float (by State), got nothing (missing)"),
        ({"point": {"x": 1.0, "z": 1}}, "namespace field point.z is not declared (by State), got int"),
        ({"by_host": {"h": None}}, "namespace field by_host['h'] is declared int (by State), got null"),
    ],
)
def test_a_wrong_type_in_the_namespace_is_a_task_error_naming_the_field(
    daemon_ns: FakeDaemon, stored: dict[str, Any], message: str
) -> None:
    daemon_ns.ns.update(stored)
    name = next(iter(stored))
    view = task.namespace(State)
    with pytest.raises(task.NamespaceTypeError) as info:
        getattr(view, name)
    assert str(info.value) == message
    assert info.value.field.startswith(name)
    with pytest.raises(task.NamespaceTypeError):
        view.snapshot()
    with pytest.raises(task.NamespaceTypeError):
        view.get(name)


def test_cas_of_a_float_field_matches_an_int_stored(daemon_ns: FakeDaemon) -> None:
    daemon_ns.ns["best"] = 2  # a JSON 2, or the sum of int increments
    view = task.namespace(State)
    assert view.best == 2.0
    assert view.cas("best", 3.0, 4.0) is False  # no match, as float nor as int
    assert daemon_ns.ops == ["snapshot", "cas", "cas"]
    assert view.cas("best", view.get("best"), 2.5) is True
    assert daemon_ns.ns["best"] == 2.5
    assert view.cas("best", 2.5, 3.5) is True  # one round trip when the first try matches
    assert daemon_ns.ops == ["snapshot", "cas", "cas", "get", "cas", "cas", "cas"]
    daemon_ns.ns["count"] = 2
    assert view.cas("count", 2.0, 3) is False  # an int field: compared exactly
    assert daemon_ns.ns["count"] == 2


def test_cas_of_a_field_not_set_matches_its_default(daemon_ns: FakeDaemon) -> None:
    view = task.namespace(State)
    assert view.count == 0  # not set: its default
    assert view.cas("count", 0, 5) is True  # tried as 0, then as "not set"
    assert daemon_ns.ns == {"count": 5}
    assert view.cas("count", 0, 6) is False  # set now: neither 0 nor "not set"
    assert view.cas("names", [], ["a"]) is True
    assert view.cas("best", None, 1.5) is True  # the default is None: one try
    assert daemon_ns.ops == ["snapshot", "cas", "cas", "cas", "cas", "cas", "cas", "cas"]
    assert daemon_ns.ns == {"count": 5, "names": ["a"], "best": 1.5}


def test_a_wrong_type_is_refused_before_it_is_sent(daemon_ns: FakeDaemon) -> None:
    view = task.namespace(State)
    cases: list[tuple[Any, str]] = [
        (lambda: view.set("count", "3"), "namespace field count is declared int (by State), got str"),
        (lambda: view.set("count", True), "namespace field count is declared int (by State), got bool"),
        (lambda: view.incr("count", 0.5), "namespace field count is declared int (by State), got float"),
        (lambda: view.incr("names"),
            "namespace field names is declared list[str] (by State), got an increment"),
        (lambda: view.append("names", 1), "namespace field names[] is declared str (by State), got int"),
        (lambda: view.append("count", 1), "namespace field count is declared int (by State), got an append"),
        (lambda: view.set("point", {"x": "a"}),
            "namespace field point.x is declared float (by State), got str"),
        (lambda: view.cas("best", None, "x"), "namespace field best is declared float? (by State), got str"),
    ]
    for call, message in cases:
        with pytest.raises(task.NamespaceTypeError) as info:
            call()
        assert str(info.value).startswith(message)
    assert daemon_ns.ops == [] and daemon_ns.ns == {}
    with pytest.raises(AttributeError, match="State has no field 'nope'"):
        view.set("nope", 1)
    with pytest.raises(AttributeError, match="State has no field 'nope'"):
        _ = view.nope


def test_the_error_pickles() -> None:
    import pickle

    error = task.NamespaceTypeError("count", "int", "str", "State")
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), str(copy), copy.field, copy.expected, copy.got) == (
        task.NamespaceTypeError, str(error), "count", "int", "str"
    )


def test_a_required_field_that_is_not_set(daemon_ns: FakeDaemon) -> None:
    @dataclass
    class Needs:
        must: int

    with pytest.raises(task.NamespaceTypeError, match=r"must is declared int .*got nothing"):
        _ = task.namespace(Needs).must


def test_unsupported_annotations_are_named() -> None:
    @dataclass
    class Bad:
        ok: int
        when: set[int]

    with pytest.raises(TypeError, match=r"Bad\.when: a namespace field may be"):
        nsschema.from_dataclass(Bad)
    with pytest.raises(TypeError, match="needs a dataclass"):
        nsschema.from_dataclass(dict)

    @dataclass
    class Unknown:
        where: NotDefinedAnywhere  # type: ignore[name-defined]  # noqa: F821

    with pytest.raises(TypeError, match=r"Unknown: its annotations cannot be resolved: name 'NotDefined"):
        nsschema.from_dataclass(Unknown)

    with pytest.raises(TypeError, match="nested deeper than 16 levels"):
        nsschema.from_dataclass(Tree)  # (it refers to itself)


def test_fields_outside_init_are_not_namespace_keys(daemon_ns: FakeDaemon) -> None:
    @dataclass
    class Derived:
        n: int = 0
        double: int = field(init=False, default=0)

        def __post_init__(self) -> None:
            self.double = 2 * self.n

    daemon_ns.ns.update({"n": 4, "double": "not read"})
    assert task.namespace(Derived).snapshot().double == 8
    assert set(nsschema.from_dataclass(Derived).fields) == {"n"}


def test_the_untyped_api_still_works(daemon_ns: FakeDaemon) -> None:
    ns = task.namespace()
    assert ns.incr("n") == 1 and ns.get("n") == 1
    ns.set("count", "no schema: anything goes")
    assert ns.snapshot() == {"n": 1, "count": "no schema: anything goes"}


def test_outside_a_task_the_typed_view_raises() -> None:
    task._clear()
    with pytest.raises(task.NotInTask):
        task.namespace(State)


def test_a_view_checks_a_schema_refusal_from_the_daemon() -> None:
    """The daemon's check stands on its own: a view of a dataclass that disagrees with the tree's
    schema gets the daemon's refusal, naming the key."""
    channel = FakeDaemon({}, {"count": "int", "best": "int?"})
    task._install(channel, {"job_id": "1", "task_id": "1.0", "task_name": "t", "attempt": 1})
    try:
        with pytest.raises(ProcpoolError, match="set of 'best': declared int\\?, got float"):
            task.namespace(State).set("best", 0.5)
        with pytest.raises(ProcpoolError, match="set of 'names': the key is not declared"):
            task.namespace(State).set("names", ["x"])
    finally:
        task._clear()


def test_schema_errors_carry_their_path() -> None:
    with pytest.raises(SchemaError) as info:
        parse_schema({"a": {"b": "nope"}})
    assert info.value.path == "namespace_schema.a.b"
