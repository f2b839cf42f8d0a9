"""The data-shape table: its statistics on hand-checked values, and the files it writes."""

import json

import pytest

from simulations.research.data_shape import gini, main


def test_gini_on_hand_computed_values():
    assert gini([3, 3, 3, 3]) == 0.0
    assert gini([0, 0, 0, 1]) == pytest.approx(0.75)  # (2*4 - 4 - 1) * 1 / (4 * 1)
    assert gini([1, 2, 3]) == pytest.approx(2 / 9)  # sum |xi - xj| / (2 n^2 mean) = 8 / 36


def test_the_table_puts_the_shapes_side_by_side(tmp_path, capsys):
    assert main(["--synthetic", "200x300", "--out", str(tmp_path)]) == 0
    shapes = json.loads((tmp_path / "shape.json").read_text())
    assert list(shapes) == ["synthetic movielens 200x300", "synthetic default 200x300"]
    movielens = shapes["synthetic movielens 200x300"]
    assert movielens["users"] == 200 and movielens["per_user_quantiles"]["0.0"] >= 20
    assert sum(1 for _ in movielens["top_item_share"]) == 3
    table = (tmp_path / "shape.md").read_text()
    assert "| Gini of item degrees |" in table and table in capsys.readouterr().out


def test_a_bad_size_or_a_missing_ml_100k_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--synthetic", "lots", "--out", str(tmp_path)])
    assert "expected USERSxITEMS" in capsys.readouterr().err
    assert main(["--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    assert "cannot read ML-100K" in capsys.readouterr().err
