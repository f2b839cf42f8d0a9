"""The reply validator, fuzzed: every dtype, shape, NaN/Inf, huge norm, missing or extra array,
bad example count and wrong metric type is rejected with :class:`InvalidReply` naming it; valid
replies are accepted unchanged; and a rejected reply changes nothing of the server's state."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
from flwr.common import Code, FitRes, Parameters, Status, ndarrays_to_parameters
from hypothesis import example, given
from hypothesis import strategies as st

from server.checkpoint import Checkpoint, Checkpointer
from server.validation import InvalidReply, ReplyValidator
from shared.wire import BUDGET_EXHAUSTED, DP_EPSILON, DP_STATUS, LOSS, TRAINED
from tests.server.test_strategy import FakeProxy, make_strategy

NAMES = ("a.weight", "b.bias", "c.table")
CURRENT = [
    np.linspace(-1, 1, 20, dtype=np.float32).reshape(5, 4),
    np.zeros(4, np.float32),
    np.arange(12, dtype=np.float32).reshape(3, 2, 2),
]
MAX_EXAMPLES, MAX_NORM = 1000, 50.0
VALIDATOR = ReplyValidator.for_global(
    NAMES, CURRENT, max_num_examples=MAX_EXAMPLES, max_update_norm=MAX_NORM
)

DTYPES = ["float16", "float64", "int32", "int64", "uint8", "bool", "complex64", ">f4", "<f4"]
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=5),
    st.binary(max_size=5),
    st.lists(st.integers(), max_size=2),
)

# A mutation of a valid reply, and the problem it must be rejected for (None: still valid).
ARRAY_MUTATION = st.one_of(
    st.tuples(st.just("dtype"), st.integers(0, 2), st.sampled_from(DTYPES)),
    st.tuples(st.just("shape"), st.integers(0, 2), st.integers(0, 5)),
    st.tuples(
        st.just("value"),
        st.integers(0, 2),
        st.floats(0, 1),
        st.sampled_from([math.nan, math.inf, -math.inf, 1e30, -3e38, 1e-3]),
    ),
    st.tuples(st.just("missing"), st.integers(0, 2)),
    st.tuples(st.just("extra"), st.integers(0, 3)),
)


def _fits(value: float, dtype: np.dtype) -> bool:
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    return info is None or info.min <= value <= info.max


def mutate(arrays: list[np.ndarray], mutation: tuple) -> list[np.ndarray]:
    arrays = [a.copy() for a in arrays]
    kind, index = mutation[0], mutation[1] % (len(arrays) or 1)
    if not arrays and kind != "extra":
        return arrays
    if kind == "dtype":
        arrays[index] = arrays[index].astype(mutation[2])
    elif kind == "shape":
        a, choice = arrays[index], mutation[2]
        flat = a.reshape(-1)  # a 0-d array (after an earlier mutation) cannot be sliced
        arrays[index] = [
            lambda: flat,
            lambda: a[:-1] if a.ndim else flat[:0],
            lambda: np.concatenate([flat, flat[:1]]) if a.ndim <= 1 else np.concatenate([a, a[:1]]),
            lambda: np.asarray(a.flat[0]) if a.size else np.zeros((), a.dtype),  # 0-d
            lambda: a.T,
            lambda: a[None],
        ][choice]()
    elif kind == "value":
        flat = arrays[index].reshape(-1)
        if flat.size:
            value = mutation[3]
            integer = not np.issubdtype(flat.dtype, np.inexact)
            if integer and (not np.isfinite(value) or not _fits(value, flat.dtype)):
                # an integer array cannot hold NaN/Inf or a value past its range (NumPy
                # raises): make the array float
                flat = arrays[index] = flat.astype(np.float64).reshape(arrays[index].shape)
                flat = flat.reshape(-1)
            with np.errstate(over="ignore", invalid="ignore"):
                flat[int(mutation[2] * (flat.size - 1))] = value
    elif kind == "missing":
        del arrays[index]
    else:
        arrays.insert(mutation[1] % (len(arrays) + 1), np.zeros(3, np.float32))
    return arrays


def problems(arrays: list[np.ndarray], examples: object, metrics: dict) -> list[str]:
    """An oracle written apart from the validator: the words a rejection must name."""
    found = []
    if isinstance(examples, bool) or not isinstance(examples, int | np.integer):
        found.append("num_examples")
    elif not 1 <= examples <= MAX_EXAMPLES:
        found.append("num_examples")
    if LOSS in metrics:
        loss = metrics[LOSS]
        ok = isinstance(loss, int | float) and not isinstance(loss, bool)
        if not ok or abs(loss) > 1e308 or not math.isfinite(loss):
            found.append(LOSS)
    if DP_STATUS in metrics and metrics[DP_STATUS] not in (TRAINED, BUDGET_EXHAUSTED):
        found.append(DP_STATUS)
    if len(arrays) != len(NAMES):
        return [*found, "arrays"]
    norm2 = 0.0
    for name, new, old in zip(NAMES, arrays, CURRENT, strict=True):
        if new.dtype != old.dtype:
            found.append(f"{name}: dtype")
        elif new.shape != old.shape:
            found.append(f"{name}: shape")
        elif not np.isfinite(new).all():
            found.append(f"{name}: contains NaN or Inf")
        else:
            norm2 += float(((new.astype(np.float64) - old) ** 2).sum())
    if not found and norm2**0.5 > MAX_NORM:
        found.append("max-update-norm")
    return found


def _reply(arrays, examples, metrics) -> FitRes:
    return FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), examples, metrics)


def _small_update(rng_seed: int, scale: float) -> list[np.ndarray]:
    rng = np.random.default_rng(rng_seed)
    return [(a + rng.normal(0, scale, a.shape)).astype(np.float32) for a in CURRENT]


METRICS = st.dictionaries(
    st.sampled_from([LOSS, DP_STATUS, DP_EPSILON, "other"]),
    st.one_of(JUNK, st.sampled_from([TRAINED, BUDGET_EXHAUSTED]), st.floats(0, 10)),
    max_size=3,
)


@given(
    seed=st.integers(0, 2**32 - 1),
    scale=st.sampled_from([0.0, 1e-3, 0.1, 5.0]),
    mutations=st.lists(ARRAY_MUTATION, max_size=3),
    examples=st.one_of(st.integers(1, MAX_EXAMPLES), JUNK, st.just(np.int64(7))),
    metrics=METRICS,
)
@example(  # a loss beyond float range: float() of it raised OverflowError in the mean loss
    seed=0, scale=0.0, mutations=[], examples=5, metrics={LOSS: 2**1100}
)
@example(seed=0, scale=0.0, mutations=[], examples=5, metrics={LOSS: "0.5"})
@example(seed=0, scale=0.0, mutations=[], examples=5, metrics={DP_STATUS: "declined"})
def test_validator_accepts_exactly_the_valid_replies(seed, scale, mutations, examples, metrics):
    arrays = _small_update(seed, scale)
    for mutation in mutations:
        arrays = mutate(arrays, mutation)
    expected = problems(arrays, examples, metrics)
    try:
        got = VALIDATOR.check(_reply(arrays, examples, metrics), CURRENT)
    except InvalidReply as err:
        assert expected, f"a valid reply was rejected: {err}"
        assert any(word in str(err) for word in expected), (str(err), expected)
        return
    assert not expected, f"accepted a reply with {expected}"
    assert len(got) == len(arrays)
    for a, b in zip(got, arrays, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)


@given(
    tensors=st.lists(st.binary(max_size=300), max_size=4),
    truncate=st.integers(0, 200),
    tensor_type=st.sampled_from(["numpy.ndarray", "", "torch"]),
)
def test_undecodable_payloads_are_rejected(tensors, truncate, tensor_type):
    valid = ndarrays_to_parameters(CURRENT).tensors
    # the valid tensors, one truncated, and arbitrary bytes beside them
    cut = [t[: len(t) - truncate] if k == 0 else t for k, t in enumerate(valid)]
    for payload in (tensors, cut, [*valid[:2], *tensors]):
        reply = _reply(CURRENT, 10, {})
        reply.parameters = Parameters(tensors=list(payload), tensor_type=tensor_type)
        try:
            VALIDATOR.check(reply, CURRENT)
        except InvalidReply as err:
            assert str(err)
        else:
            assert payload == valid  # only the untouched payload may pass


# -- the strategy: a rejected reply changes nothing --------------------------------------------


def server_state(strategy) -> dict[str, bytes]:
    """Everything a checkpoint keeps of the server (model, optimizer, user-level DP, caps)."""
    cp = strategy.pipeline.find(Checkpointer)
    checkpoint = Checkpoint(
        round=0,
        version="",
        config={},
        names=cp.names,
        model=cp.model.arrays,
        optimizer=cp.optimizer.state,
        user_dp=cp.user,
        nodes_at_cap=frozenset(cp.reports.nodes_at_cap),
        elapsed_seconds=0.0,
    )
    return {k: np.asarray(v).tobytes() for k, v in checkpoint.to_arrays().items()}


BAD = st.one_of(
    st.tuples(st.just("arrays"), st.lists(ARRAY_MUTATION, min_size=1, max_size=2)),
    st.tuples(st.just("examples"), st.sampled_from([0, -1, 10**9, 2.5, True, "3", None])),
    st.tuples(
        st.just("metrics"),
        st.sampled_from(
            [
                {LOSS: math.nan},
                {LOSS: "x"},
                {LOSS: b"1"},
                {LOSS: 10**400},
                {DP_STATUS: "exhausted"},
                {DP_STATUS: BUDGET_EXHAUSTED, LOSS: math.inf},
                {DP_STATUS: 1},
            ]
        ),
    ),
)


@given(
    strategy_name=st.sampled_from(["fedavg", "fedadam", "itemsum"]),
    momentum=st.booleans(),
    good=st.integers(0, 2),
    bad=st.lists(BAD, min_size=1, max_size=3),
    where=st.integers(0, 5),
)
def test_rejected_replies_change_no_server_state(strategy_name, momentum, good, bad, where):
    changes = {"min_fit_clients": 1, "server_momentum": 0.9 if momentum else 0.0}
    if strategy_name == "fedadam":
        changes["server_momentum"] = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        base, arrays, _ = make_strategy(Path(tmp) / "a", strategy=strategy_name, **changes)
        fuzzed, _, _ = make_strategy(Path(tmp) / "b", strategy=strategy_name, **changes)
        before = server_state(fuzzed)
        good_replies = [
            (FakeProxy(i), _reply([a + 0.01 * (i + 1) for a in arrays], 10, {LOSS: 0.5}))
            for i in range(good)
        ]
        bad_replies = []
        for k, (kind, what) in enumerate(bad):
            update, examples, metrics = [a + 0.02 for a in arrays], 10, {LOSS: 0.5}
            if kind == "arrays":
                for mutation in what:
                    update = mutate(update, mutation)
                if len(update) == len(arrays) and all(
                    u.dtype == a.dtype and u.shape == a.shape and np.isfinite(u).all()
                    for u, a in zip(update, arrays, strict=True)
                ):
                    update[0] = update[0] + 1e6  # still the layout: make it a huge norm
            elif kind == "examples":
                examples = what
            else:
                metrics = what
            bad_replies.append((FakeProxy(100 + k), _reply(update, examples, metrics)))
        mixed = good_replies[:]
        for reply in bad_replies:
            mixed.insert(where % (len(mixed) + 1), reply)
        base.aggregate_fit(1, good_replies, [])
        fuzzed.aggregate_fit(1, mixed, [])
        assert fuzzed.round.record.fit_rejected == len(bad_replies)
        assert fuzzed.round.record.fit_replies == good
        if good:
            assert server_state(fuzzed) == server_state(base)
        else:
            assert server_state(fuzzed) == before
            assert fuzzed.round.record.skipped.startswith("no valid trained replies")
