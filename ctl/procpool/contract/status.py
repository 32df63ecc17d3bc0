"""The shapes of the replies both sides share, and the columnar job status (format 2).

The daemon builds these replies (``procpoold.core.status``) and the client reads them; the
TypedDicts say which keys each reply has, the columnar codec says how a job's tasks travel.
Imports only the standard library (and the contract's states).

A job's status comes in one of two *views* (the ``view`` argument of ``status``, ``wait`` and
``submit``):

``full`` (format 1, the default on the wire)
    one map per task (:class:`TaskStatus`), in pages of ``status_page_size`` tasks.

``columns`` (format 2)
    the tasks of a page as columns: one state code per task (its index in
    :data:`~procpool.contract.states.TASK_STATES`), the attempt counts as little-endian uint32,
    start and end times as little-endian float64 (NaN: none), and *sparse* columns (result,
    error, exit_code, progress, reason, retry_at, tail, name) holding only the tasks where the
    value is set, each as ``[indices as little-endian uint32, values]``: about 21 bytes per task
    plus what is set. ``name`` is sent for every task that is not pending, ready or completed
    (or reports progress), so a summary of the tasks worth showing needs nothing more. The
    ``groups`` (first page only) give each group's ``children`` as ``[kind, first index,
    count]`` runs of consecutive indices. :class:`JobStatus` decodes it without a map per
    task; :meth:`JobStatus.task` gives one task's row on demand.
"""

from __future__ import annotations

import math
import re
import sys
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, NotRequired, TypedDict

from procpool.contract.states import TASK_STATE_CODES, TASK_STATES, JobState, TaskState

#: ``format`` of a status with one map per task, and of a columnar one.
FORMAT_FULL = 1
FORMAT_COLUMNS = 2
View = Literal["full", "columns"]
VIEWS: tuple[View, ...] = ("full", "columns")
#: The sparse columns of a columnar status, in the order they are sent.
SPARSE: tuple[str, ...] = ("name", "result", "error", "exit_code", "progress", "reason", "retry_at", "tail")
#: Bytes per task of the dense columns: state (1), attempts (4), started_at (8), finished_at (8).
DENSE_BYTES_PER_TASK = 21

_LITTLE = sys.byteorder == "little"


# -- reply shapes ---------------------------------------------------------------------------------


class PingReply(TypedDict):
    version: str
    protocol: int
    pid: int


class JobSummary(TypedDict):
    """One job in a job list, and the head of its status."""

    id: str
    name: str
    user: str | None
    uid: int | None
    state: JobState
    run: int
    repeat: int | Literal["forever"]
    created_at: float
    started_at: float | None
    finished_at: float | None
    tasks: int
    counts: dict[str, int]
    reason: str | None


class JobDetail(JobSummary):
    """A job's head in its status: the summary and the job-wide fields."""

    namespace: dict[str, Any]
    runs: list[dict[str, Any]]
    on_failure: str
    on_interrupt: str
    after: list[str]
    root: list[Any]


class GroupStatus(TypedDict):
    name: str
    path: str
    kind: str
    parent: int | None
    children: list[Any]


class AttemptInfo(TypedDict):
    number: int
    id: str
    started_at: float | None
    finished_at: float | None
    status: str | None
    pid: int | None
    worker: str | None


class TaskStatus(TypedDict):
    """One task in the full view (format 1)."""

    id: str
    name: str
    path: str
    kind: str
    state: TaskState
    attempts: int
    attempt_history: list[AttemptInfo]
    started_at: float | None
    finished_at: float | None
    result: Any
    error: dict[str, str] | None
    exit_code: int | None
    progress: dict[str, Any] | None
    reason: str | None
    retry_at: float | None
    priority: str
    tags: list[str]
    depends_on: list[str]
    tail: list[str]


#: Which tasks a reply holds: ``count`` from ``from``; ``next`` is where the next page starts
#: (None: this was the last). "from" is a keyword, hence the functional form.
Page = TypedDict("Page", {"from": int, "count": int, "total": int, "next": int | None})


class FullStatus(TypedDict):
    """A job's status in the full view (format 1)."""

    format: int
    job: JobDetail
    groups: list[GroupStatus]
    tasks: list[TaskStatus]
    page: NotRequired[Page]


ColumnsWire = TypedDict(
    "ColumnsWire",
    {
        "from": int,
        "count": int,
        "total": int,
        "next": int | None,
        "state": bytes,
        "attempts": bytes,
        "started_at": bytes,
        "finished_at": bytes,
    },
)


class ColumnStatusWire(TypedDict):
    """A job's status in the columnar view (format 2), as sent."""

    format: int
    job: JobDetail
    groups: list[GroupStatus]
    columns: ColumnsWire
    sparse: dict[str, list[Any]]


class TaskReply(TypedDict):
    """``status`` or ``wait`` of one task (``12.3``, ``12/name``)."""

    id: str
    finished: bool
    state: TaskState
    task: TaskStatus
    job: JobSummary


class WaitReply(TypedDict):
    """``wait`` of a job (and ``submit`` with ``wait``): ``status`` in the view asked for."""

    id: str
    finished: bool
    state: JobState
    status: FullStatus | ColumnStatusWire


class SubmitReply(TypedDict):
    id: str
    name: str
    existing: bool
    tasks: int
    finished: NotRequired[bool]
    state: NotRequired[JobState]
    status: NotRequired[FullStatus | ColumnStatusWire]


class CancelReply(TypedDict):
    """``cancel``: the job or task reference, and how many running attempts are being stopped."""

    id: str
    stopping: int


# -- the columnar codec ---------------------------------------------------------------------------


def pack_u32(values: list[int]) -> bytes:
    """Little-endian uint32 array (values above 2**32-1 are clipped)."""
    try:
        out = array("I", values)
    except OverflowError:
        out = array("I", [v if v < 0xFFFFFFFF else 0xFFFFFFFF for v in values])
    if not _LITTLE:
        out.byteswap()
    return out.tobytes()


def pack_f64(values: list[float | None]) -> bytes:
    """Little-endian float64 array; None becomes NaN."""
    out: array[float]
    try:
        out = array("d", values)  # type: ignore[arg-type]  # the common case: no None
    except TypeError:
        out = array("d", [math.nan if v is None else v for v in values])
    if not _LITTLE:
        out.byteswap()
    return out.tobytes()


def _unpack(code: str, data: Any, count: int, what: str) -> array[Any]:
    if not isinstance(data, bytes):
        raise ValueError(f"columnar status: {what} must be bytes, got {type(data).__name__}")
    out = array(code)
    if len(data) != count * out.itemsize:
        raise ValueError(f"columnar status: {what} has {len(data)} bytes for {count} tasks")
    out.frombytes(data)
    if not _LITTLE:
        out.byteswap()
    return out


def _int(value: Any, what: str) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"columnar status: {what} must be a count, got {value!r}")
    return value


@dataclass(slots=True)
class TaskRow:
    """One task of a columnar status, made on demand by :meth:`JobStatus.task`."""

    index: int
    name: str | None
    state: TaskState
    attempts: int
    started_at: float | None
    finished_at: float | None
    result: Any = None
    error: dict[str, str] | None = None
    exit_code: int | None = None
    progress: dict[str, Any] | None = None
    reason: str | None = None
    retry_at: float | None = None
    tail: list[str] = field(default_factory=list)


@dataclass(slots=True)
class JobStatus:
    """A decoded columnar status: the job's head and its tasks as columns (one page or all).

    ``states`` holds one code per task (``states[i - first]`` is task ``i``'s); ``sparse`` maps
    each sparse column to ``{task index: value}``. Built without a per-task object.
    """

    job: JobDetail
    groups: list[GroupStatus]
    first: int
    total: int
    next: int | None
    states: bytes
    attempts: array[int]
    started_at: array[float]
    finished_at: array[float]
    sparse: dict[str, dict[int, Any]]

    @classmethod
    def decode(cls, wire: Any) -> JobStatus:
        """Check and decode a columnar status as the daemon sent it; ValueError if it is malformed."""
        if not isinstance(wire, dict) or wire.get("format") != FORMAT_COLUMNS:
            got = wire.get("format") if isinstance(wire, dict) else type(wire).__name__
            raise ValueError(f"not a columnar status (format {FORMAT_COLUMNS}): {got!r}")
        cols = wire.get("columns")
        sparse_wire = wire.get("sparse")
        if not isinstance(cols, dict) or not isinstance(sparse_wire, dict):
            raise ValueError("columnar status: columns and sparse must be maps")
        if not isinstance(wire.get("job"), dict):
            raise ValueError("columnar status: job must be a map")
        count = _int(cols.get("count"), "count")
        first = _int(cols.get("from"), "from")
        total = _int(cols.get("total"), "total")
        nxt = cols.get("next")
        if nxt is not None:
            nxt = _int(nxt, "next")
        states = cols.get("state")
        if not isinstance(states, bytes) or len(states) != count:
            raise ValueError(f"columnar status: state must be {count} bytes")
        if states and max(states) >= len(TASK_STATES):
            raise ValueError(f"columnar status: unknown state code {max(states)}")
        sparse: dict[str, dict[int, Any]] = {}
        for key, pair in sparse_wire.items():
            if not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[1], list):
                raise ValueError(f"columnar status: sparse column {key!r} must be [indices, values]")
            indices = _unpack("I", pair[0], len(pair[1]), f"sparse column {key!r}")
            if indices and not (first <= min(indices) and max(indices) < first + count):
                raise ValueError(f"columnar status: sparse column {key!r} names a task outside the page")
            sparse[str(key)] = dict(zip(indices, pair[1], strict=True))
        groups = wire.get("groups", [])
        return cls(
            job=wire["job"],
            groups=groups if isinstance(groups, list) else [],
            first=first,
            total=total,
            next=nxt,
            states=states,
            attempts=_unpack("I", cols.get("attempts"), count, "attempts"),
            started_at=_unpack("d", cols.get("started_at"), count, "started_at"),
            finished_at=_unpack("d", cols.get("finished_at"), count, "finished_at"),
            sparse=sparse,
        )

    def extend(self, page: JobStatus) -> None:
        """Append the next page (as :meth:`decode` made it) to this status."""
        if page.first != self.first + len(self.states):
            raise ValueError(f"columnar status: page from {page.first} does not follow {self.end}")
        self.states += page.states
        self.attempts.extend(page.attempts)
        self.started_at.extend(page.started_at)
        self.finished_at.extend(page.finished_at)
        for key, values in page.sparse.items():
            self.sparse.setdefault(key, {}).update(values)
        self.next = page.next
        self.job = page.job  # the newer head (its counts cover every task either way)

    @property
    def end(self) -> int:
        """One past the last task held."""
        return self.first + len(self.states)

    @property
    def state(self) -> JobState:
        return self.job["state"]

    def counts(self) -> dict[str, int]:
        """Tasks per state among those held (the job's ``counts`` cover every task)."""
        out: dict[str, int] = {}
        for code, name in enumerate(TASK_STATES):
            n = self.states.count(code)
            if n:
                out[name] = n
        return out

    def indices(self, *states: str) -> Iterator[int]:
        """Indices of the tasks held that are in one of ``states``, in order (scanned in C)."""
        codes = sorted(TASK_STATE_CODES[s] for s in states)
        if not codes:
            return
        pattern = re.compile(b"[" + b"".join(re.escape(bytes([c])) for c in codes) + b"]")
        first = self.first
        for match in pattern.finditer(self.states):
            yield first + match.start()

    def task(self, index: int) -> TaskRow:
        """Task ``index``'s row (it must be held)."""
        k = index - self.first
        if not 0 <= k < len(self.states):
            raise IndexError(f"task {index} is not in this status ({self.first}..{self.end - 1})")
        started, finished = self.started_at[k], self.finished_at[k]
        sparse = self.sparse
        return TaskRow(
            index,
            sparse.get("name", {}).get(index),
            TASK_STATES[self.states[k]],
            self.attempts[k],
            None if math.isnan(started) else started,
            None if math.isnan(finished) else finished,
            result=sparse.get("result", {}).get(index),
            error=sparse.get("error", {}).get(index),
            exit_code=sparse.get("exit_code", {}).get(index),
            progress=sparse.get("progress", {}).get(index),
            reason=sparse.get("reason", {}).get(index),
            retry_at=sparse.get("retry_at", {}).get(index),
            tail=list(sparse.get("tail", {}).get(index) or ()),
        )
