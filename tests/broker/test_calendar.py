from ecliptic.broker.calendar import CapacityCalendar, Hold, Resources

CAPACITY = Resources(8, 16, 100)


def test_empty_calendar_fits_at_the_first_start() -> None:
    calendar = CapacityCalendar(CAPACITY, [])
    fit = next(calendar.fits(100, 1000, 50, Resources(8, 16, 1), step=10))
    assert fit.start == 100
    assert fit.free == CAPACITY


def test_start_waits_until_enough_is_released() -> None:
    holds = [Hold(0, 500, 6, 4, 0), Hold(200, 800, 2, 4, 0)]
    calendar = CapacityCalendar(CAPACITY, holds)
    assert calendar.peak(0, 1000) == Resources(8, 8, 0)
    fits = list(calendar.fits(0, 2000, 100, Resources(4, 1, 0), step=1))
    assert fits[0].start == 500  # 6 cores held until 500
    assert fits[0].free.cores == 6  # 2 still held until 800
    assert fits[1].start == 800 and fits[1].free.cores == 8


def test_windows_straddling_a_hold_see_its_peak() -> None:
    calendar = CapacityCalendar(CAPACITY, [Hold(150, 160, 8, 0, 0)])
    assert not list(calendar.fits(100, 100, 100, Resources(1, 1, 0), step=1))
    assert calendar.free(100, 150).cores == 8
    assert calendar.free(159, 200).cores == 0


def test_candidates_align_to_the_step_and_respect_latest() -> None:
    calendar = CapacityCalendar(CAPACITY, [Hold(0, 95, 8, 0, 0)])
    starts = [fit.start for fit in calendar.fits(1, 400, 10, Resources(1, 1, 0), step=60)]
    assert starts == [120]
    assert list(calendar.fits(1, 100, 10, Resources(1, 1, 0), step=60)) == []


def test_candidate_limit_bounds_a_hopeless_search() -> None:
    holds = [Hold(t, t + 1, 8, 0, 0) for t in range(0, 10_000, 2)]
    calendar = CapacityCalendar(CAPACITY, holds)
    assert list(calendar.fits(0, 10_000, 5, Resources(1, 1, 0), step=1, max_candidates=50)) == []
