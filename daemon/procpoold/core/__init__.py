"""Pure domain logic: job state, the ready set, priorities, namespaces. No I/O, no clock: time is passed in."""
