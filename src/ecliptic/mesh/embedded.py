"""A pod inside another process (``ecliptic serve``): the one-pod mesh of the embedded defaults.

The pod keeps its own event loop on a thread of its own, so the web server's loop and the pod never wait
on each other; it is stopped with the process and resumes from its directory at the next start.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

from ecliptic.mesh.pod import Pod, PodOptions

log = logging.getLogger("ecliptic.mesh.embedded")


class EmbeddedPod:
    def __init__(self, root: Path, listen: str) -> None:
        self.options = PodOptions(root=root, listen=listen, name="embedded")
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pod: Pod | None = None
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self.address = listen

    def start(self, timeout: float = 30.0) -> bool:
        """Start the pod; False (and ``error`` set) when it could not, e.g. its port is taken."""
        self._thread = threading.Thread(target=self._run, name="mesh-pod", daemon=True)
        self._thread.start()
        self._ready.wait(timeout)
        return self.error is None and self._pod is not None

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._pod = Pod(self.options)

            def ready(pod: Pod) -> None:
                self.address = pod.address
                self._ready.set()

            await self._pod.run(ready)

        try:
            asyncio.run(main())
        except BaseException as exc:
            self.error = exc
            self._pod = None
            log.error("the embedded mesh pod stopped: %s", exc)
        finally:
            self._ready.set()

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._pod is not None:
            self._loop.call_soon_threadsafe(self._pod.stop)
        if self._thread is not None:
            self._thread.join(timeout)
