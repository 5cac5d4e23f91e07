"""The scheduler: timetables of one-off and recurring jobs, on the durable store.

``Scheduler`` (embedded, for Python code), ``SchedulerService`` (operations on the store, as the HTTP API and
CLI use them), ``SchedulerInstance`` (what fires runs), ``ScheduleSpec`` (the one wire model of a schedule).
"""

from ecliptic.schedule.spec import RunView, ScheduleSpec, ScheduleView

__all__ = ["RunView", "ScheduleSpec", "ScheduleView", "Scheduler"]


def __getattr__(name: str) -> object:
    # Lazy: the library pulls in the store and the instance, which a process reading only specs does not need.
    if name == "Scheduler":
        from ecliptic.schedule.library import Scheduler

        return Scheduler
    raise AttributeError(name)
