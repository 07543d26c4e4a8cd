"""Lease keys parsed by structure, and the lease state machine against a reference model."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from qmtl.runtime.sdk import lease_rules as rules
from qmtl.runtime.sdk.lease_rules import LeaseKey, LeaseState, parse_lease_key

NODE = "ohlcv:binance:BTC/USDT:1m"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            f"{NODE}:60:0:3600:w1:2024-01-01T00:00:00Z",
            LeaseKey(NODE, 60, 0, 3600, "w1", "2024-01-01T00:00:00Z"),
        ),
        (f"{NODE}:60:0:3600::", LeaseKey(NODE, 60, 0, 3600, "", "")),
        (
            "ohlcv:binance:BTC/USDT:USDT:1h:3600:7200:10800::v3",
            LeaseKey("ohlcv:binance:BTC/USDT:USDT:1h", 3600, 7200, 10800, "", "v3"),
        ),
    ],
)  # fmt: skip
def test_keys_parse_by_structure_and_round_trip(text: str, expected: LeaseKey) -> None:
    key = parse_lease_key(text)
    assert key == expected
    assert str(key) == text


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("", "empty"),
        (f"{NODE}:60:0:3600", "must look like"),
        ("ohlcv:binance:BTC/USDT:60:0:3600::", "must look like"),
        ("ohlcv:../etc:BTC/USDT:1m:60:0:3600::", "exchange"),
        ("ohlcv:binance:BTC/../x:1m:60:0:3600::", "symbol"),
        (f"{NODE}:x:0:3600::", "interval"),
        (f"{NODE}:060:0:3600::", "interval"),
        (f"{NODE}:60:-1:3600::", "start"),
        (f"{NODE}:60:0:+3600::", "end"),
        (f"{NODE}:60:10:10::", "after start"),
        (f"{NODE}:0:0:10::", "interval"),
        (f"{NODE}:60:0:3600:../w:", "world_id"),
        (f"{NODE}:60:0:3600:w':", "world_id"),
        (f'{NODE}:60:0:3600:w:a"s', "as_of"),
        (f"{NODE}:60:0:3600:w:\x00", "control"),
        (f"{NODE}:60:0:3600:w x:", "whitespace"),
        (f"{NODE}:60:0:3600:{'w' * 10_000}:", "characters long"),
    ],
)
def test_hostile_keys_are_refused_naming_the_part(text: str, names: str) -> None:
    with pytest.raises(ValueError, match=names):
        parse_lease_key(text)


def test_lease_ms_bounds() -> None:
    key = parse_lease_key(f"{NODE}:60:0:3600::")
    for bad in (0, rules.MAX_LEASE_MS + 1, True):
        with pytest.raises(ValueError, match="lease_ms"):
            rules.claim(None, key, now_ms=0, lease_ms=bad, token="t")


def test_completed_windows_may_be_claimed_again() -> None:
    key = parse_lease_key(f"{NODE}:60:0:3600::")
    granted = rules.claim(None, key, now_ms=0, lease_ms=10, token="a")
    assert isinstance(granted, rules.Granted)
    done = rules.complete(granted.record, "a", now_ms=5)
    assert isinstance(done, rules.Changed) and done.record.state is LeaseState.COMPLETED
    assert isinstance(rules.complete(done.record, "a", now_ms=6), rules.Unchanged)
    again = rules.claim(done.record, key, now_ms=6, lease_ms=10, token="b")
    assert isinstance(again, rules.Granted) and again.expired is None
    assert rules.completion_ratio([again.record], NODE) == 0.0


def test_release_fails_a_held_lease_by_its_holder_id_without_the_token() -> None:
    key = parse_lease_key(f"{NODE}:60:0:3600::")
    granted = rules.claim(None, key, now_ms=0, lease_ms=10, token="a")
    assert isinstance(granted, rules.Granted)
    held = granted.record
    assert isinstance(rules.release(None, held.held_by, "x", now_ms=1), rules.Missing)

    other = rules.release(held, rules.holder_id("b"), "stuck", now_ms=1)
    assert other == rules.Conflict("held by another holder", held.held_by, 10)

    for now in (5, 50):  # live, then expired but not re-claimed: both may be released
        out = rules.release(held, held.held_by, "stuck", now_ms=now)
        assert isinstance(out, rules.Changed)
        assert out.record == rules.LeaseRecord(
            key=held.key, node_id=NODE, token="a", lease_until_ms=10,
            state=LeaseState.FAILED, reason="released by operator: stuck", updated_ms=now,
        )  # fmt: skip
    released = out.record

    # The old holder's token is stale now: nothing it does changes the row, and a failed
    # row never turns completed.
    assert rules.complete(released, "a", now_ms=60) == rules.Conflict(
        "stale token", released.held_by, 10
    )
    assert isinstance(rules.fail(released, "a", "late", now_ms=60), rules.Conflict)
    assert isinstance(rules.heartbeat(released, "a", now_ms=60, lease_ms=5), rules.Conflict)
    # Nothing more to release; the key is claimable at once.
    assert rules.release(released, released.held_by, "again", now_ms=60) == rules.Conflict(
        "not held", released.held_by, 10
    )
    again = rules.claim(released, key, now_ms=60, lease_ms=10, token="c")
    assert isinstance(again, rules.Granted) and again.expired is None


def test_release_refuses_completed_rows_and_cuts_long_reasons() -> None:
    key = parse_lease_key(f"{NODE}:60:0:3600::")
    granted = rules.claim(None, key, now_ms=0, lease_ms=10, token="a")
    assert isinstance(granted, rules.Granted)
    done = rules.complete(granted.record, "a", now_ms=1)
    assert isinstance(done, rules.Changed)
    out = rules.release(done.record, done.record.held_by, "x", now_ms=2)
    assert isinstance(out, rules.Conflict) and out.reason == "not held"

    long = rules.release(granted.record, granted.record.held_by, "r" * 5000, now_ms=2)
    assert isinstance(long, rules.Changed)
    assert len(long.record.reason) == rules.MAX_REASON_LENGTH
    assert long.record.reason.startswith(rules.RELEASE_REASON_PREFIX + "rrr")


KEYS = [parse_lease_key(f"{NODE}:60:{i * 3600}:{(i + 1) * 3600}::") for i in range(3)]


class LeaseMachine(RuleBasedStateMachine):
    """The rules against a model: per key, (token, until, state); an advancing clock; tokens
    used by anyone (stale ones too), releases naming any holder."""

    @initialize()
    def setup(self) -> None:
        self.now = 1_000
        self.rows: dict[str, rules.LeaseRecord] = {}
        self.model: dict[str, tuple[str, int, str]] = {}
        self.tokens: list[str] = ["never-granted"]
        self.serial = 0
        self.released: dict[str, set[str]] = {}  # key -> tokens whose lease was released

    def _live(self, key: str) -> bool:
        entry = self.model.get(key)
        return entry is not None and entry[2] == "held" and entry[1] > self.now

    @rule(ms=st.integers(0, 200))
    def advance(self, ms: int) -> None:
        self.now += ms

    @rule(i=st.integers(0, 2), lease_ms=st.integers(1, 300))
    def claim(self, i: int, lease_ms: int) -> None:
        key = KEYS[i]
        self.serial += 1
        token = f"tok{self.serial}"
        before = self.rows.get(str(key))
        out = rules.claim(before, key, now_ms=self.now, lease_ms=lease_ms, token=token)
        if self._live(str(key)):
            assert isinstance(out, rules.Conflict)
            assert before is not None and out.held_by == rules.holder_id(before.token)
            return
        assert isinstance(out, rules.Granted)
        was_expired = str(key) in self.model and self.model[str(key)][2] == "held"
        assert (out.expired is not None) == was_expired
        assert out.record.token == token and out.record.lease_until_ms == self.now + lease_ms
        self.rows[str(key)] = out.record
        self.model[str(key)] = (token, self.now + lease_ms, "held")
        self.tokens.append(token)

    @precondition(lambda self: bool(self.tokens))
    @rule(i=st.integers(0, 2), pick=st.integers(0, 10_000), op=st.sampled_from(["c", "f", "h"]))
    def use_token(self, i: int, pick: int, op: str) -> None:
        key = str(KEYS[i])
        token = self.tokens[pick % len(self.tokens)]
        before = self.rows.get(key)
        if op == "c":
            out = rules.complete(before, token, now_ms=self.now)
        elif op == "f":
            out = rules.fail(before, token, "boom", now_ms=self.now)
        else:
            out = rules.heartbeat(before, token, now_ms=self.now, lease_ms=50)
        entry = self.model.get(key)
        if entry is None:
            assert isinstance(out, rules.Missing)
            return
        current, until, state = entry
        ok = token == current and (
            (op == "c" and state in ("held", "completed"))
            or (op == "f" and state == "held")
            or (op == "h" and state == "held" and until > self.now)
        )
        if not ok:
            assert isinstance(out, rules.Conflict)  # stale token: nothing changes
            return
        if op == "c" and state == "completed":
            assert isinstance(out, rules.Unchanged)
            return
        assert isinstance(out, rules.Changed)
        self.rows[key] = out.record
        if op == "c":
            self.model[key] = (current, until, "completed")
        elif op == "f":
            self.model[key] = (current, until, "failed")
        else:
            self.model[key] = (current, max(until, self.now + 50), "held")

    @rule(i=st.integers(0, 2), pick=st.integers(0, 10_000), reason=st.text(max_size=20))
    def release(self, i: int, pick: int, reason: str) -> None:
        key = str(KEYS[i])
        named = rules.holder_id(self.tokens[pick % len(self.tokens)])
        before = self.rows.get(key)
        out = rules.release(before, named, reason, now_ms=self.now)
        entry = self.model.get(key)
        if entry is None:
            assert isinstance(out, rules.Missing)
            return
        current, until, state = entry
        if state != "held" or rules.holder_id(current) != named:
            # never changes a row it does not name by its holder (or one not held)
            assert isinstance(out, rules.Conflict) and self.rows[key] is before
            assert out.reason == ("not held" if state != "held" else "held by another holder")
            return
        assert isinstance(out, rules.Changed)
        assert out.record.reason == rules.RELEASE_REASON_PREFIX + reason
        self.rows[key] = out.record
        self.model[key] = (current, until, "failed")
        self.released.setdefault(key, set()).add(current)
        # claimable at once, whether the lease was live or had run out
        again = rules.claim(out.record, KEYS[i], now_ms=self.now, lease_ms=1, token="probe")
        assert isinstance(again, rules.Granted) and again.expired is None

    @invariant()
    def a_released_token_never_completes_fails_or_extends(self) -> None:
        for key, tokens in self.released.items():
            row = self.rows[key]
            for token in tokens:
                assert isinstance(rules.complete(row, token, now_ms=self.now), rules.Conflict)
                assert isinstance(rules.fail(row, token, "x", now_ms=self.now), rules.Conflict)
                beat = rules.heartbeat(row, token, now_ms=self.now, lease_ms=5)
                assert isinstance(beat, rules.Conflict)

    @invariant()
    def rows_match_the_model(self) -> None:
        for key, (token, until, state) in self.model.items():
            row = self.rows[key]
            assert (row.token, row.lease_until_ms, row.state.value) == (token, until, state)

    @invariant()
    def completion_ratio_is_completed_over_claimed(self) -> None:
        if not self.model:
            assert rules.completion_ratio(self.rows.values(), NODE) == 0.0
            return
        done = sum(state == "completed" for _, _, state in self.model.values())
        assert rules.completion_ratio(self.rows.values(), NODE) == done / len(self.model)


LeaseMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestLeaseMachine = LeaseMachine.TestCase
