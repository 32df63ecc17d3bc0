"""The scheduler: owns every job, the ready queues and the attempts in flight.

Runs on the daemon's loop thread. :class:`Scheduler` is split by responsibility into mixins over
one state (:class:`procpoold.scheduler.state.SchedulerState`), as the pool executor is; see
:mod:`procpoold.scheduler.scheduler`.
"""

from procpoold.scheduler.scheduler import Scheduler
from procpoold.scheduler.state import LOG_SLACK, not_found
from procpoold.scheduler.submission import job_user

__all__ = ["LOG_SLACK", "Scheduler", "job_user", "not_found"]
