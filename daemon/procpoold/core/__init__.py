"""Pure domain logic: job state, the ready set, priorities, namespaces.

No I/O and no clock here: time is passed in.
"""
