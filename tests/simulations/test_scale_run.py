"""The scale run's memory summary: each process's RSS at a round and at the last, and the ratio."""

from simulations.research.scale_run import summarize


def test_rss_is_read_at_round_5_and_in_the_last_rounds_training():
    samples = [
        {"t": 0, "round": 3, "rss_mb": {"1 python": 400.0, "2 ray::Actor": 900.0}},
        {"t": 1, "round": 5, "rss_mb": {"1 python": 410.0, "2 ray::Actor": 1000.0, "9 sh": 3.0}},
        {"t": 2, "round": 5, "rss_mb": {"1 python": 999.0, "2 ray::Actor": 999.0}},
        {"t": 3, "round": 49, "rss_mb": {"1 python": 451.0, "2 ray::Actor": 1050.0}},
        # the last evaluation (recorded as round 50 only when it is done)
        {"t": 4, "round": 49, "rss_mb": {"1 python": 452.0, "2 ray::Actor": 1400.0}},
        {"t": 5, "round": 50, "rss_mb": {"1 python": 452.0, "2 ray::Actor": 1100.0}},
    ]
    summary = summarize(samples, from_round=5, last_round=50)
    assert summary["processes"] == {
        "1 python": {"from": 410.0, "last_training": 451.0, "ratio": 1.1, "peak": 999.0},
        "2 ray::Actor": {"from": 1000.0, "last_training": 1050.0, "ratio": 1.05, "peak": 1400.0},
    }  # the 3 MB shell is not one of the run's processes
    assert summary["max_ratio"] == 1.1
    assert summary["peak_tree_rss_mb"] == 1998.0
