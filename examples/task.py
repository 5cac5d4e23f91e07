#!/usr/bin/env python3
"""A Python task file: the schedule lives in the file itself.

    ecliptic run --file examples/task.py              # on the schedule of the task block
    ecliptic run --file examples/task.py --when once  # now, once

Ecliptic calls run(**options) with the [options] table as keyword arguments. The [env] table is added to the
environment of the run only (never to the scheduler's own environment). The script block (PEP 723) lists the
file's dependencies, installed through uv when it is available.
"""

# /// script
# requires-python = ">=3.11"
# dependencies = []
# ///
#
# /// task
# cron = "*/15 * * * *"
# timezone = "Europe/Vienna"
# name = "hello-task"
# [env]
# GREETING = "Hello"
# [options]
# who = "world"
# times = 2
# ///

from __future__ import annotations

import os


def run(who: str = "world", times: int = 1) -> int:
    """Print a greeting ``times`` times; the return value goes to the run's log."""
    greeting = os.environ.get("GREETING", "Hi")
    for _ in range(times):
        print(f"{greeting}, {who}!")
    return times


if __name__ == "__main__":
    run()
