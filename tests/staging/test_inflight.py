"""Transfers in flight per source: what estimates share a source's bandwidth with."""

from __future__ import annotations

import threading

from ecliptic.staging.inflight import InFlight


def test_transfers_are_counted_per_source_while_they_run() -> None:
    gauge = InFlight()
    with gauge.transfer("rse:FAR") as first:
        assert gauge.count("rse:FAR") == 1 and gauge.count("rse:NEAR") == 0
        with gauge.transfer("rse:FAR") as second, gauge.transfer("rse:NEAR"):
            assert gauge.count("rse:FAR") == 2 and gauge.count("rse:NEAR") == 1
        assert second.at_start == 1
    assert first.at_start == 0 and first.at_end == 0
    assert gauge.count("rse:FAR") == 0


def test_counts_stay_right_under_threads_and_errors() -> None:
    gauge = InFlight()
    barrier = threading.Barrier(8)
    seen: list[int] = []

    def run(index: int) -> None:
        try:
            with gauge.transfer("http:host:80"):
                barrier.wait(timeout=10)
                seen.append(gauge.count("http:host:80"))
                if index % 2:
                    raise RuntimeError("transfer failed")
        except RuntimeError:
            pass

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert seen and max(seen) == 8
    assert gauge.count("http:host:80") == 0
