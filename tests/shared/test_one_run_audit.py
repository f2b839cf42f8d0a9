"""The one-run audit's statistics (Steinke, Nasr, Jagielski 2023), on hand-derivable cases."""

import math

import pytest

from shared.one_run_audit import epsilon_lower_bound, guess_from_scores, p_value


def _binomial_tail(n: int, p: float, v: int) -> float:
    return sum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(v, n + 1))


def test_perfect_guesses_without_delta_have_the_closed_form_bound():
    """δ = 0, v = r: P[Bin(r, p) >= r] = p^r < β  <=>  ε < logit(β^(1/r)).

    100 perfect guesses at 95% confidence: p = 0.05^(1/100) = 0.970487, ε = 3.4930, worked by
    hand from the paper's theorem with δ = 0 (W is dominated by Bin(r, p))."""
    for guesses in (10, 100, 1000):
        p = 0.05 ** (1 / guesses)
        assert epsilon_lower_bound(guesses * 2, guesses, guesses, 0.0) == pytest.approx(
            math.log(p / (1 - p)), abs=1e-9
        )
    assert epsilon_lower_bound(1000, 100, 100, 0.0) == pytest.approx(3.4930, abs=1e-4)


def test_p_value_without_delta_is_the_binomial_tail():
    for epsilon in (0.0, 0.5, 2.0):
        p = math.exp(epsilon) / (1 + math.exp(epsilon))
        for guesses, correct in ((20, 12), (50, 40), (7, 0)):
            assert p_value(100, guesses, correct, epsilon, 0.0) == pytest.approx(
                _binomial_tail(guesses, p, correct), rel=1e-9
            )


def test_the_delta_term_is_the_papers_maximum_over_windows():
    """r = 4, v = 3, ε = 0 (p = 1/2): windows P[2 <= B < 3] / 1 = 6/16, P[1 <= B < 3] / 2 = 5/16,
    P[0 <= B < 3] / 3 = 11/48; the maximum is 6/16, so p = 5/16 + 2 m δ 6/16."""
    assert p_value(10, 4, 3, 0.0, 1e-3) == pytest.approx(5 / 16 + 2 * 10 * 1e-3 * 6 / 16)


def test_delta_and_fewer_correct_guesses_lower_the_bound():
    strict = epsilon_lower_bound(1000, 200, 190, 0.0)
    assert 0 < epsilon_lower_bound(1000, 200, 190, 1e-5) < strict
    assert epsilon_lower_bound(1000, 200, 170, 0.0) < strict
    assert epsilon_lower_bound(1000, 200, 100, 1e-5) == 0.0  # coin flips refute nothing
    assert epsilon_lower_bound(1000, 200, 190, 0.0, confidence=0.99) < strict


def test_the_bound_is_where_the_p_value_crosses_one_minus_confidence():
    bound = epsilon_lower_bound(500, 100, 90, 1e-5)
    beta = 1 - 0.95
    assert p_value(500, 100, 90, bound, 1e-5) < beta <= p_value(500, 100, 90, bound + 1e-6, 1e-5)


def test_guesses_take_the_most_and_least_confident_canaries():
    scores = [0.9, 0.1, 0.5, 0.8, 0.2, 0.3]
    included = [True, False, True, False, False, True]
    made = guess_from_scores(scores, included, guess_in=2, guess_out=2)
    # "in": 0.9 (right), 0.8 (wrong); "out": 0.1 (right), 0.2 (right)
    assert (made.guesses, made.correct, made.canaries) == (4, 3, 6)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((10, 5, 6, 1.0, 0.0), "correct"),
        ((10, 11, 3, 1.0, 0.0), "guesses"),
        ((10, 5, 3, -1.0, 0.0), "ε >= 0"),
        ((10, 5, 3, 1.0, 2.0), "δ in"),
    ],
)
def test_impossible_counts_are_refused(args, message):
    with pytest.raises(ValueError, match=message):
        p_value(*args)
