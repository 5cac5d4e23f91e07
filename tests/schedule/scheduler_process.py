"""A scheduler instance in a process of its own, for tests of several instances and of crashes.

    python -m tests.schedule.scheduler_process DATABASE_URL DATA_DIR

prints ``ready <instance id>`` once it runs, and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from datetime import timedelta
from pathlib import Path

from ecliptic.config import Settings
from ecliptic.schedule.assembly import build_scheduler
from ecliptic.store import Database, upgrade


def main() -> None:
    url, data_dir = sys.argv[1], Path(sys.argv[2])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    settings = Settings(
        database_url=url,
        data_dir=data_dir,
        scheduler_tick=timedelta(milliseconds=50),
        scheduler_lease=timedelta(seconds=10),
    )
    db = Database(url)
    upgrade(db)
    parts = build_scheduler(db, settings, heartbeat=timedelta(milliseconds=500))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    parts.start()
    print(f"ready {parts.instance.id}", flush=True)
    stop.wait()
    parts.stop()
    db.dispose()


if __name__ == "__main__":
    main()
