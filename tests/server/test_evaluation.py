"""Federated evaluation's summary on hand-computed lists, and the replies it refuses."""

from types import SimpleNamespace

import numpy as np
import pytest
from flwr.common import Code, EvaluateRes, Status

from server.evaluation import Catalogue, parse_top_list, summarize_evaluation
from shared.wire import DIVERSITY10, EVAL_METRICS, FULL_HR10, HR10, TOP10

NUM_ITEMS = 20
# Items 0-9 held by half of 4 users, 10-19 by a quarter: 1 and 2 bits of self-information.
SHARES = np.array([0.5] * 10 + [0.25] * 10)


def reply(hr: float, top: str | None, diversity: float | None = None) -> EvaluateRes:
    metrics = {name: 0.0 for name in EVAL_METRICS} | {HR10: hr}
    if top is not None:
        metrics[TOP10] = top
    if diversity is not None:
        metrics[DIVERSITY10] = diversity
    return EvaluateRes(Status(Code.OK, ""), loss=0.5, num_examples=1, metrics=metrics)


def results(*replies: EvaluateRes):
    return [(SimpleNamespace(node_id=i), r) for i, r in enumerate(replies)]


def csv(items) -> str:
    return ",".join(str(i) for i in items)


LIST_A, LIST_B = csv(range(10)), csv(range(5, 15))


def test_two_lists_give_the_hand_computed_figures():
    catalogue = Catalogue(num_items=NUM_ITEMS, shares=SHARES, num_users=4)
    _, metrics, fields = summarize_evaluation(
        3, results(reply(1.0, LIST_A, 0.4), reply(0.0, LIST_B, 0.8)), [], catalogue
    )
    assert metrics[HR10] == 0.5
    assert metrics["coverage10"] == 15 / 20  # items 0-14 shown
    # Exposure counts: 5 items twice, 10 once, 5 never. Gini = sum|xi - xj| / (2 n^2 mean)
    # = 2 * (5*10*1 + 5*5*2 + 10*5*1) / (2 * 400 * 1) = 0.375.
    assert metrics["exposure_gini10"] == pytest.approx(0.375)
    # 15 recommendations of 1-bit items and 5 of 2-bit items.
    assert metrics["novelty10"] == pytest.approx(25 / 20)
    assert metrics[DIVERSITY10] == pytest.approx(0.6)
    assert fields["eval_clients"] == 2 and fields["coverage10"] == metrics["coverage10"]


def test_a_deployed_server_has_no_shares_so_no_novelty_and_devices_may_keep_their_lists():
    catalogue = Catalogue(num_items=NUM_ITEMS)
    _, metrics, _ = summarize_evaluation(
        1, results(reply(1.0, LIST_A, 0.4), reply(0.0, None, 0.8)), [], catalogue
    )
    assert "novelty10" not in metrics
    assert metrics["coverage10"] == 10 / 20  # only the shared list is counted
    assert metrics[DIVERSITY10] == pytest.approx(0.6)  # every device's own figure


@pytest.mark.parametrize(
    "top, diversity",
    [
        (csv(range(9)), None),  # nine items
        (csv([0] * 10), None),  # repeated
        (csv(range(11, 21)), None),  # item 20 is outside a 20-item catalogue
        ("0,1,2,3,4,5,6,7,8,-9", None),  # not an id
        (LIST_A, 2.5),  # 1 - cos cannot exceed 2
        (LIST_A, -0.1),
    ],
)
def test_a_malformed_list_or_diversity_drops_that_reply_only(top, diversity):
    catalogue = Catalogue(num_items=NUM_ITEMS, shares=SHARES, num_users=4)
    _, metrics, fields = summarize_evaluation(
        2, results(reply(1.0, LIST_B, 0.5), reply(0.0, top, diversity)), [], catalogue
    )
    assert fields["eval_clients"] == 1 and fields["eval_failures"] == 1
    assert metrics[HR10] == 1.0 and metrics["coverage10"] == 10 / 20


def test_accuracy_outside_unit_interval_is_still_refused():
    bad = reply(1.0, LIST_A)
    bad.metrics[FULL_HR10] = 1.5
    _, metrics, fields = summarize_evaluation(1, results(bad), [], Catalogue(NUM_ITEMS))
    assert metrics == {} and fields["eval_failures"] == 1


def test_devices_that_never_answered_count_as_failures():
    """A device silent past round-timeout is in neither of Flower's lists; asked counts it."""
    _, metrics, fields = summarize_evaluation(
        1, results(reply(1.0, LIST_A)), [], Catalogue(NUM_ITEMS), asked=3
    )
    assert fields["eval_clients"] == 1 and fields["eval_failures"] == 2 and metrics[HR10] == 1.0
    _, _, nobody = summarize_evaluation(1, [], [], Catalogue(NUM_ITEMS), asked=2)
    assert nobody == {"eval_clients": 0, "eval_failures": 2}


def test_parse_top_list_names_what_is_wrong():
    assert parse_top_list(LIST_B, NUM_ITEMS).tolist() == list(range(5, 15))
    with pytest.raises(ValueError, match="catalogue has 20"):
        parse_top_list(csv(range(11, 21)), NUM_ITEMS)
    with pytest.raises(ValueError, match="string"):
        parse_top_list(3.0, NUM_ITEMS)


def test_the_poisoning_audit_counts_the_lists_that_show_its_target():
    catalogue = Catalogue(num_items=NUM_ITEMS, audit_item=12)  # in LIST_B only
    _, metrics, _ = summarize_evaluation(
        1, results(reply(1.0, LIST_A), reply(0.0, LIST_B), reply(0.0, LIST_B)), [], catalogue
    )
    assert metrics["target_exposure10"] == pytest.approx(2 / 3)
    _, plain, _ = summarize_evaluation(1, results(reply(1.0, LIST_A)), [], Catalogue(NUM_ITEMS))
    assert "target_exposure10" not in plain
