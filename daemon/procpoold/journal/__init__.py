"""The daemon's journal: every record, the daemon's and its tasks', reaches journald (with
structured fields) or stderr (as readable lines) through a forwarder process.

* :mod:`~procpoold.journal.encoding`: MESSAGE_IDs, priorities, field encoding, the ring records;
* :mod:`~procpoold.journal.senders`: journald's native protocol and stderr lines;
* :mod:`~procpoold.journal.forwarder`: the forwarder process (and its in-process twin);
* :mod:`~procpoold.journal.process`: the forwarder process as the daemon runs it: its channel,
  start, reaping through a pidfd, restart budget and stop;
* :mod:`~procpoold.journal.sink`: the daemon's side: the sink, the log policy, the root logger's
  handler, the ``logs`` operation;
* :mod:`~procpoold.journal.handle`: :class:`TaskLog`, a handle on one attempt's records for tools
  and tests (the scheduler gives the sink integers: lifecycle events are packed once per loop
  iteration, see :mod:`~procpoold.journal.sink`).

There is no module-level state: :func:`setup_logging` returns the sink, and the daemon passes it
to whoever writes records (the scheduler, the pool, the command engine).
"""

from procpoold.journal.encoding import (
    MAX_MESSAGE,
    SYSLOG_IDENTIFIER,
    MessageId,
    encode_fields,
    message_ids,
    priority,
)
from procpoold.journal.handle import TaskLog
from procpoold.journal.senders import (
    JOURNAL_SOCKET,
    Entry,
    FieldSet,
    JournalSender,
    StderrSender,
    choose_target,
    entry_fields,
    journal_available,
)
from procpoold.journal.sink import LogSink, SinkHandler, logs_op, setup_logging

__all__ = [
    "JOURNAL_SOCKET",
    "MAX_MESSAGE",
    "SYSLOG_IDENTIFIER",
    "Entry",
    "FieldSet",
    "JournalSender",
    "LogSink",
    "MessageId",
    "SinkHandler",
    "StderrSender",
    "TaskLog",
    "choose_target",
    "encode_fields",
    "entry_fields",
    "journal_available",
    "logs_op",
    "message_ids",
    "priority",
    "setup_logging",
]
