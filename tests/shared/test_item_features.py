"""Public item-feature loaders: golden values on small fixtures, dense-id alignment, malformed
lines rejected with file and line number."""

from pathlib import Path

import numpy as np
import pytest

from shared.data.item_features import load_item_features, movielens_catalogue
from shared.data.reading import DataFormatError

FIX = Path(__file__).parents[1] / "fixtures" / "item_features"


def test_u_item_genres_year_and_dense_alignment() -> None:
    # Dense order 0->raw 2, 1->raw 1, 2->raw 3, 3->raw 99 (no row).
    feats = load_item_features(FIX / "u.item", np.array([2, 1, 3, 99]))
    m, names = feats.matrix, feats.names
    assert m.shape == (4, 19 + 2 + 1)
    assert m[0, names.index("Action")] == 1 and m[0, names.index("Thriller")] == 1
    assert m[1, names.index("Comedy")] == 1 and m[1, names.index("Action")] == 0
    assert m[1, names.index("year")] == pytest.approx(0.95)
    assert m[2, names.index("year_unknown")] == 1 and m[2, names.index("year")] == 0
    assert m[3].tolist() == [0.0] * 21 + [1.0]  # missing row: zeros plus the missing flag
    assert feats.num_missing == 1


def test_movies_dat_and_csv_vocab_from_file() -> None:
    dat = load_item_features(FIX / "movies.dat", np.array([1, 2, 5]))
    assert dat.names == ("Adventure", "Animation", "Comedy", "year", "year_unknown", "missing")
    assert dat.matrix[0].tolist() == [0, 1, 1, pytest.approx(0.95), 0, 0]
    assert dat.matrix[2].tolist() == [0, 0, 0, 0, 1, 0]  # no genres, no year
    csv_ = load_item_features(FIX / "movies.csv", np.array(["1", "2"]))
    assert csv_.names[:4] == ("Adventure", "Animation", "Children", "Comedy")
    assert csv_.matrix[0, :4].tolist() == [0, 1, 0, 1]  # quoted title with a comma


def test_generic_csv() -> None:
    feats = load_item_features(FIX / "features.csv", np.array([20, 10, 30]))
    assert feats.names == ("a", "b", "missing")
    assert feats.matrix.tolist() == [[-1, 2.5, 0], [0.5, 1, 0], [0, 0, 1]]
    assert feats.describe()["items_without_row"] == 1


@pytest.mark.parametrize(
    ("name", "line", "problem"),
    [
        ("u.item", 1, "7 fields"),
        ("features.csv", 3, "not a number"),
        ("movies.dat", 2, "not an integer"),
    ],
)
def test_malformed_lines_name_file_and_line(name: str, line: int, problem: str) -> None:
    with pytest.raises(DataFormatError) as err:
        load_item_features(FIX / "bad" / name, np.array([1]))
    assert err.value.line_number == line and problem in err.value.problem
    assert name in str(err.value)


def test_catalogue_lookup(tmp_path: Path) -> None:
    assert movielens_catalogue(FIX).name == "u.item"
    with pytest.raises(FileNotFoundError, match="no MovieLens catalogue"):
        movielens_catalogue(tmp_path)
