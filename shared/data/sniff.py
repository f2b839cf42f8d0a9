"""Guessing a delimited file's layout from its first lines: the delimiter, whether the first
row is a header, and which columns hold users, items, ratings and timestamps.

Only guesses: a file they misread is what ``csv-delimiter`` and ``csv-header`` are for.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from shared.data.reading import INT_RE, Columns, is_number

# Header names (lower-cased, non-alphanumerics dropped) used to spot a header row and to pick
# columns by name; exact matches only, so ids such as "user_7" are never mistaken for names.
_USER_NAMES = frozenset({"user", "userid", "uid", "users", "customer", "customerid", "reviewerid"})
_ITEM_NAMES = frozenset(
    "item itemid iid items movie movieid product productid asin track trackid song songid "
    "book bookid isbn article articleid artist artistid".split()
)
# A count of plays or clicks is implicit feedback like a rating: the same column.
_RATING_NAMES = frozenset(
    "rating ratings score stars overall value weight count counts plays playcount clicks "
    "listens listencount".split()
)
_TIME_NAMES = frozenset({"timestamp", "time", "ts", "unixtime", "unixreviewtime", "datetime"})
_ALL_NAMES = _USER_NAMES | _ITEM_NAMES | _RATING_NAMES | _TIME_NAMES


def _norm_name(field: str) -> str:
    return re.sub(r"[^a-z0-9]", "", field.lower())


def detect_delimiter(sample: Sequence[str]) -> str | None:
    """Pick the separator that splits every sampled line; None means runs of whitespace."""
    if all("::" in ln for ln in sample):
        return "::"
    candidates = ("\t", ",", ";", "|")
    for d in candidates:  # same non-zero count on every line: the clearest signal
        counts = {ln.count(d) for ln in sample}
        if len(counts) == 1 and counts != {0}:
            return d
    for d in candidates:  # counts vary (quoted fields, a malformed line): still present everywhere
        if all(d in ln for ln in sample):
            return d
    for d in candidates:
        if d in sample[0]:
            return d
    return None


def looks_like_header(rows: Sequence[list[str]]) -> bool:
    first = [f.strip() for f in rows[0]]
    if any(_norm_name(f) in _ALL_NAMES for f in first):
        return True
    if any(INT_RE.match(f) for f in first[:2]):
        # An integer id is data, however damaged the rest of the row: calling it a header would
        # drop the row in silence (e.g. ``1,2,abc`` or ``1,"2\r3",4``); parsing it names the flaw.
        return False
    if any(not is_number(f) for f in first[2:]):  # rating/timestamp positions must be numeric
        return True
    rest = rows[1:]
    # An id column that is integer everywhere except the first row: the first row is a header.
    return bool(rest) and any(
        not INT_RE.match(first[c]) and all(len(r) > c and INT_RE.match(r[c].strip()) for r in rest)
        for c in range(min(2, len(first)))
    )


def columns_from_names(names: Sequence[str]) -> Columns | None:
    norm = [_norm_name(n) for n in names]

    def find(candidates: frozenset[str], taken: set[int]) -> int | None:
        return next((k for k, n in enumerate(norm) if n in candidates and k not in taken), None)

    taken: set[int] = set()
    found = []
    for group in (_USER_NAMES, _ITEM_NAMES, _RATING_NAMES, _TIME_NAMES):
        k = find(group, taken)
        found.append(k)
        if k is not None:
            taken.add(k)
    user, item, rating, timestamp = found
    if user is None or item is None:
        return None
    return Columns(len(names), user, item, rating, timestamp)
