# firmware_py/backoff.py on both runtimes: the rules B1-B3 of its docstring.
import vec
from firmware_py import backoff


def test_ceiling_doubles_from_base_to_cap():
    got = [backoff.ceiling(a, 500, 60000) for a in range(10)]
    assert got == [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000]
    assert backoff.ceiling(10 ** 6, 1, 300000) == 300000  # no huge intermediate integers


def test_delay_lies_in_the_upper_half_of_the_ceiling():
    for attempt in range(12):
        c = backoff.ceiling(attempt, 1000, 120000)
        seen = set()
        for rnd in (0, 1, 7, 499, 12345, 2 ** 31 - 1, 2 ** 32 + 5):
            d = backoff.next_delay(attempt, 1000, 120000, rnd)
            assert c // 2 <= d <= c <= 120000, (attempt, rnd, d)
            seen.add(d)
        assert len(seen) > 1  # jitter: different draws, different delays
    assert backoff.next_delay(0, 1000, 5000, 0) == 500
    assert backoff.next_delay(0, 1000, 5000, 500) == 1000


def test_caller_mistakes_raise_value_error():
    for args in ((-1, 1000, 5000, 0), (0, 0, 5000, 0), (0, 1000, 500, 0), (0, 1000, 5000, -1)):
        vec.raises(ValueError, backoff.next_delay, *args)


def test_backoff_counts_failures_and_resets_on_success():
    b = backoff.Backoff(100, 1000)
    ds = [b.failure(0) for _ in range(6)]
    assert ds == [50, 100, 200, 400, 500, 500] and b.attempt == 6
    b.success()
    assert b.attempt == 0 and b.failure(50) == 100
