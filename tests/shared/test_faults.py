"""The test-only fault spec: where (a plain fit round or a SecAgg+ stage), which devices, how."""

import pytest

from shared.faults import Fault, parse_fault


def test_fault_spec():
    assert parse_fault("") == []
    assert parse_fault("1:share-keys:0,1; 2:collect:4:hang; 3:fit:5:nan;3:fit:6,7:shapes") == [
        Fault(1, "share-keys", (0, 1), "raise"),
        Fault(2, "collect", (4,), "hang"),
        Fault(3, "fit", (5,), "nan"),
        Fault(3, "fit", (6, 7), "shapes"),
    ]
    assert parse_fault("2:fit:0")[0].mode == "raise"


@pytest.mark.parametrize(
    "bad",
    [
        "1:train:0",  # no such place
        "x:setup:0",
        "1:setup",
        "1:fit:a",
        "1:setup:0:explode",
        "1:collect:0:nan",  # garbage only in a plain fit round: under SecAgg+ no single update
        "1:fit:0:hang:extra",
    ],
)
def test_a_bad_fault_spec_names_the_entry_and_the_form(bad):
    with pytest.raises(ValueError, match=r"bad fault entry .*ROUND:WHERE:ID,ID\[:MODE\]"):
        parse_fault(f"2:fit:1; {bad}")
