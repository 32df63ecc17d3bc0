"""What runs on a remote engine's worker host (a Dask worker), never in the daemon.

:mod:`procpoold.remote.runner` is the function a Dask worker runs for each attempt; it starts
:mod:`procpoold.remote.harness` as a subprocess of its own session, so that a timeout or a cancel
can stop the attempt (a function running in a Dask worker's thread cannot be interrupted) and so
that whatever the task does stays out of the Dask worker's process. Both sides speak
:mod:`procpoold.remote.frames`: length-prefixed msgpack, no pickle.

Importing this package imports nothing heavy: the harness starts once per attempt.
"""
