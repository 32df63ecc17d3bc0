"""The engines a daemon runs, by name, and the routing of tasks to them.

Built once by the composition root (``procpoold.app``) from the engine objects it creates; the
scheduler and the supervisor use only this and the :class:`~procpoold.engines.Executor` protocol.

Routing: a task runs on the engine its ``engine`` field names (or its job's ``engine``, which the
parser gives every task that names none); without one, on the default engine of its kind
(``call`` or ``cmd``): the first registered engine that runs that kind, unless ``defaults`` names
another. The name ``"local"`` is that first registered engine of the task's kind whatever the
defaults (``pool`` for call tasks, ``commands`` for cmd tasks): the way back to this daemon when
its default is a remote engine. A route that names an unknown engine, or one that cannot run the
task's kind, is refused when the job is submitted (:meth:`Engines.check_job`), and a stored job whose
route no longer exists is failed at recovery with the reason, never the start.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from procpool.contract.tree import LOCAL_ENGINE, JobSpec, TreeError
from procpoold.engines import Executor


class RouteError(ValueError):
    """A task names an engine this daemon does not have, or one that cannot run its kind."""


class Engines:
    """The registered engines by name, in registration order, and the default engine per kind."""

    def __init__(self, engines: Iterable[Executor], defaults: Mapping[str, str] | None = None) -> None:
        self.by_name: dict[str, Executor] = {}
        for engine in engines:
            if engine.name == LOCAL_ENGINE:
                raise ValueError(f"an engine may not be named {LOCAL_ENGINE!r}: tasks use that name "
                                 "for the first engine of their kind")
            if engine.name in self.by_name:
                raise ValueError(f"two engines are named {engine.name!r}")
            self.by_name[engine.name] = engine
        #: task kind -> the first registered engine that runs it: what "local" names
        self.local: dict[str, str] = {}
        for engine in self.by_name.values():
            for kind in sorted(engine.kinds):
                self.local.setdefault(kind, engine.name)
        #: task kind -> the name of the engine that runs it when the task names none
        self.defaults: dict[str, str] = dict(self.local)
        for kind, name in (defaults or {}).items():
            named = self.by_name.get(name)
            if named is None or kind not in named.kinds:
                raise ValueError(f"the default engine of {kind!r} tasks, {name!r}, does not run them")
            self.defaults[kind] = name
        #: (kind, engine named by the task or None) -> engine name, filled as routes are checked
        self._routes: dict[tuple[str, str | None], str] = {(k, None): n for k, n in self.defaults.items()}
        self._routes.update({(k, LOCAL_ENGINE): n for k, n in self.local.items()})

    def all(self) -> list[Executor]:
        """Every engine, in registration order."""
        return list(self.by_name.values())

    def __getitem__(self, name: str) -> Executor:
        return self.by_name[name]

    def route_name(self, kind: str, engine: str | None = None) -> str:
        """The name of the engine that runs a task of ``kind`` naming ``engine`` (None: the default).

        Raises :class:`RouteError` for a route that does not exist (see :meth:`check_job`)."""
        name = self._routes.get((kind, engine))
        if name is None:
            name = self._check(kind, engine)
        return name

    def route(self, kind: str, engine: str | None = None) -> Executor:
        """The engine that runs a task of ``kind`` naming ``engine`` (see :meth:`route_name`)."""
        return self.by_name[self.route_name(kind, engine)]

    def check_job(self, spec: JobSpec) -> None:
        """Raise :class:`~procpool.contract.tree.TreeError` for a task of ``spec`` that no engine
        of this daemon can run: at the job's ``engine`` when the job names an engine this daemon
        has not, else at the task's path (its ``engine`` when it names one itself)."""
        hint = "see 'procctl status' for the daemon's engines"
        job_engine = spec.engine
        if job_engine is not None and job_engine != LOCAL_ENGINE and job_engine not in self.by_name:
            known = ", ".join(sorted(self.by_name))
            raise TreeError("engine", f"no engine named {job_engine!r} (this daemon has: {known})", hint)
        defaults = self.defaults
        for task in spec.tasks:
            if task.engine is not None or task.kind not in defaults:
                try:
                    self.route_name(task.kind, task.engine)
                except RouteError as exc:
                    if task.engine is None:
                        raise TreeError(task.path, str(exc), hint) from None
                    if task.engine == job_engine:  # (the job's, or the same named by the task)
                        hint = f'give the task an "engine" that runs {task.kind} tasks, such as "local"'
                        raise TreeError(task.path, f"{exc} (the job's engine)", hint) from None
                    raise TreeError(f"{task.path}.engine", str(exc), hint) from None

    def _check(self, kind: str, engine: str | None) -> str:
        if engine is None or engine == LOCAL_ENGINE:
            raise RouteError(f"no engine of this daemon runs {kind!r} tasks")
        found = self.by_name.get(engine)
        if found is None:
            known = ", ".join(sorted(self.by_name))
            raise RouteError(f"no engine named {engine!r} (this daemon has: {known})")
        if kind not in found.kinds:
            raise RouteError(f"the engine {engine!r} does not run {kind!r} tasks")
        self._routes[(kind, engine)] = engine
        return engine
