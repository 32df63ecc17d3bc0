"""The contract between daemon and client: the one definition of the wire protocol.

It imports only the standard library and msgpack, and never imports the daemon
or the client. Modules: :mod:`.version`, :mod:`.errors`, :mod:`.codec` (the
envelope), :mod:`.ops` (operations and their arguments), :mod:`.states` (job and
task states, their sets and transitions), :mod:`.status` (reply shapes and the
columnar job status), :mod:`.paths`.
"""
