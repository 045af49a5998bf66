"""What a client may send, checked without I/O: any frame or query number gives a value or the
module's own error (revchat/core/protocol.py and the id and text checks of revchat/core/events.py)."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from revchat.core.events import MAX_ID_PART, error_frame, id_key, storable
from revchat.core.protocol import (
    BadFrame,
    Command,
    RateLimiter,
    Say,
    TokenBucket,
    Typing,
    parse,
    whole_number,
)

# Lone surrogates are rare among all code points, so they are drawn on purpose as well.
SURROGATES = st.characters(categories=["Cs"])
ANY_CHAR = st.characters(codec=None, exclude_categories=()) | SURROGATES | st.sampled_from('"\\[]{}:,.- 0²٣')
ANY_TEXT = st.text(alphabet=ANY_CHAR)

JSON_SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT
                | st.integers(min_value=10**300, max_value=10**400))
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=20,
)


def encode(value: Any, ascii_only: bool) -> str:
    """``value`` as JSON text; with ``ascii_only`` a lone surrogate is a ``\\udXXX`` escape."""
    return json.dumps(value, ensure_ascii=ascii_only)


SAY_FRAMES = st.builds(
    lambda text, extra, ascii_only: encode({**extra, "type": "say", "text": text}, ascii_only),
    JSON_VALUES, st.dictionaries(ANY_TEXT, JSON_VALUES, max_size=3), st.booleans(),
)
TYPED_FRAMES = st.builds(
    lambda kind, ascii_only: encode({"type": kind}, ascii_only), JSON_VALUES, st.booleans())
JSON_FRAMES = st.builds(encode, JSON_VALUES, st.booleans())
NESTED_FRAMES = st.builds(lambda n, close: "[" * n + "]" * (n if close else 0),
                          st.integers(0, 20_000), st.booleans())
HUGE_NUMBERS = st.builds(lambda digits, tail: "1" * digits + tail,
                         st.integers(1, 10_000), st.sampled_from(["", ".5", "e999", "e-999"]))
ANY_FRAME: st.SearchStrategy[str | bytes] = st.one_of(
    ANY_TEXT, st.binary(), JSON_FRAMES, SAY_FRAMES, TYPED_FRAMES, NESTED_FRAMES, HUGE_NUMBERS)


def checked_parse(data: str | bytes, max_length: int) -> Command | BadFrame:
    """``parse(data)``, or the BadFrame it raised, after checking what the protocol promises of
    each; any other exception propagates and fails the test."""
    try:
        command = parse(data, max_length)
    except BadFrame as exc:
        assert exc.code in {"bad_request", "too_long"}
        assert isinstance(exc.message, str) and exc.message
        error_frame(exc.code, exc.message).encode()  # the answer itself can be sent
        return exc
    assert isinstance(command, Say | Typing)
    if isinstance(command, Say):
        assert command.text and command.text == command.text.strip()
        assert len(command.text) <= max_length
        command.text.encode()
    return command


@settings(max_examples=300)
@given(data=ANY_FRAME, max_length=st.integers(1, 3000))
def test_parse_gives_a_command_or_bad_frame_for_any_input(data: str | bytes, max_length: int) -> None:
    """Whatever a frame holds, parse returns a valid command or raises BadFrame with a sendable message."""
    checked_parse(data, max_length)


@given(text=ANY_TEXT, max_length=st.integers(1, 50), ascii_only=st.booleans())
def test_say_frames_are_judged_by_their_stripped_text(text: str, max_length: int, ascii_only: bool) -> None:
    """A say frame gives Say(stripped text), or empty/invalid-Unicode as bad_request, too long as too_long."""
    result = checked_parse(encode({"type": "say", "text": text}, ascii_only), max_length)
    stripped = text.strip()
    if not stripped:
        assert isinstance(result, BadFrame) and result.code == "bad_request"
    elif len(stripped) > max_length:
        assert isinstance(result, BadFrame) and result.code == "too_long"
    elif not storable(stripped):
        assert isinstance(result, BadFrame) and result.code == "bad_request"
    else:
        assert result == Say(stripped)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ('{"type":"say","text":"\\ud800"}', "bad_request"),
        ('{"type":"say","text":"\ud800"}', "bad_request"),
        ('{"type":"say","text":"a\\udfffb"}', "bad_request"),
        ("[" * 10_000, "bad_request"),
        ('{"type":"say","text":' + "[" * 10_000, "bad_request"),
        ("[" * 10_000 + "]" * 10_000, "bad_request"),
        ('{"type":"\\ud800"}', "bad_request"),
        ('{"type":"\ud800"}', "bad_request"),
        ('{"type":"' + "\\ud800" * 100 + '"}', "bad_request"),
        ('{"type":null}', "bad_request"),
        ('{"type":"say"}', "bad_request"),
        ('{"type":"say","text":"   "}', "bad_request"),
        ('{"type":"say","text":5}', "bad_request"),
        ("1" * 5000, "bad_request"),
        ('{"type":"say","text":"hi","n":' + "9" * 5000 + "}", "bad_request"),
        (b'{"type":"say","text":"hi"}', "bad_request"),
        (b"\xff\xfe", "bad_request"),
        ("", "bad_request"),
        ("\ud800", "bad_request"),
        ('{"type":"say","text":"' + "x" * 11 + '"}', "too_long"),
    ],
)
def test_bad_frames(data: str | bytes, code: str) -> None:
    """Each malformed, invalid-Unicode, nested, binary or too-long frame raises BadFrame with its code."""
    result = checked_parse(data, 10)
    assert isinstance(result, BadFrame) and result.code == code


def test_unknown_type_with_a_surrogate_is_echoed_in_ascii() -> None:
    """An unknown type holding a lone surrogate is refused with a message that can still be sent."""
    with pytest.raises(BadFrame) as caught:
        parse('{"type":"\\ud800"}', 10)
    assert caught.value.code == "bad_request" and "\\ud800" in caught.value.message
    assert caught.value.message.isascii()
    error_frame(caught.value.code, caught.value.message).encode()


def test_valid_frames_round_trip() -> None:
    """A say frame gives its trimmed text (non-ASCII included) and a typing frame gives Typing."""
    assert parse(json.dumps({"type": "say", "text": "  héllo 👋 "}), 10) == Say("héllo 👋")
    assert parse(json.dumps({"type": "say", "text": "x" * 10}), 10) == Say("x" * 10)
    assert parse('{"type":"typing","text":[1]}', 10) == Typing()


ASCII_DIGITS = st.text(alphabet="0123456789", max_size=12)


@given(raw=ANY_TEXT | ASCII_DIGITS, low=st.integers(0, 1000), high=st.integers(0, 10**9))
@example(raw="9" * 5000, low=0, high=10**9)
def test_whole_number_is_none_or_an_ascii_number_in_range(raw: str, low: int, high: int) -> None:
    """whole_number returns None, or int(raw) within [low, high] when raw is ASCII digits."""
    value = whole_number(raw, low, high)
    if value is not None:
        assert raw.isascii() and raw.isdigit()
        assert value == int(raw) and low <= value <= high


@given(value=st.integers(0, 10**9), low=st.integers(0, 1000), high=st.integers(0, 10**9))
def test_whole_number_accepts_every_plain_number_in_range(value: int, low: int, high: int) -> None:
    """A number written plainly in decimal is returned exactly when it lies within [low, high]."""
    assert whole_number(str(value), low, high) == (value if low <= value <= high else None)


@pytest.mark.parametrize("raw", ["²", "-1", " 1", "1 ", "+1", "1e3", "1_0", "\u0661", "٣", "\uff11",
                                 "", "1.0", "9" * 5000, "\ud800", "0x1"])
def test_whole_number_refuses(raw: str) -> None:
    """Superscripts, signs, spaces, exponents, non-ASCII digits and 5000-digit strings give None."""
    assert whole_number(raw, 0, 1000) is None


ID_LIKE = st.one_of(
    st.from_regex(r"\A[0-9]{0,22}(-[0-9]{0,22}){0,2}\Z"),
    st.builds(lambda a, b: f"{a}-{b}", st.integers(-1, 2**65), st.integers(-1, 2**65)),
    st.builds(str, st.integers(-1, 2**65)),
)


@given(raw=ANY_TEXT | ID_LIKE)
def test_id_key_is_none_or_two_64_bit_numbers(raw: str) -> None:
    """id_key never raises, and a key it gives is two numbers from 0 to 2**64-1 read from ASCII digits."""
    key = id_key(raw)
    if key is not None:
        assert len(key) == 2 and all(0 <= part <= MAX_ID_PART for part in key)
        parts = raw.split("-")
        assert all(p.isascii() and p.isdigit() for p in parts)
        assert key == (*map(int, parts), 0)[:2]


U64 = st.integers(0, 2**64 - 1)


@given(a=U64, b=U64)
def test_id_key_round_trips(a: int, b: int) -> None:
    """Every pair of unsigned 64-bit numbers, written "a-b" or just "a", reads back as its key."""
    assert id_key(f"{a}-{b}") == (a, b)
    assert id_key(str(a)) == (a, 0)


@given(first=st.tuples(U64, U64), second=st.tuples(U64, U64))
def test_id_keys_sort_in_numeric_order(first: tuple[int, int], second: tuple[int, int]) -> None:
    """Two ids' keys compare as their numbers do, not as their text does."""
    one, two = id_key("-".join(map(str, first))), id_key("-".join(map(str, second)))
    assert one is not None and two is not None
    assert (one < two) == (first < second) and (one == two) == (first == second)


@pytest.mark.parametrize("raw", [str(2**64), f"1-{2**64}", "9" * 21, "²", "1-²", "٣", "", "-", "1-",
                                 "-1", "1-2-3", " 1", "1 ", "+1", "\ud800"])
def test_id_key_refuses(raw: str) -> None:
    """Numbers above 2**64-1, non-ASCII digits, signs, spaces and extra parts give None."""
    assert id_key(raw) is None


def test_id_key_boundaries() -> None:
    """The largest part is 2**64-1, and a one-part id sorts with a second part of 0."""
    assert id_key(str(2**64 - 1)) == (2**64 - 1, 0)
    assert id_key(f"{2**64 - 1}-{2**64 - 1}") == (2**64 - 1, 2**64 - 1)
    assert id_key("42") == id_key("42-0") == (42, 0)


@given(text=ANY_TEXT)
@example(text="\ud800")
@example(text="a\udfffb")
@example(text="\ud83d\ude00")  # a surrogate pair in a str is still two lone surrogates
def test_storable_is_exactly_utf8_encodable(text: str) -> None:
    """storable(text) is True exactly when text.encode() succeeds."""
    try:
        text.encode()
    except UnicodeEncodeError:
        assert not storable(text)
    else:
        assert storable(text)


RATES = st.floats(min_value=0, max_value=1e6, exclude_min=True)
BURSTS = st.floats(min_value=0, max_value=1e6, exclude_min=True)


@given(rate=RATES, burst=BURSTS, start=st.floats(0, 1e6),
       gaps=st.lists(st.floats(0, 10), min_size=1, max_size=30))
@example(rate=3.0, burst=1.0, start=1.0, gaps=[0.0, 0.0])
@example(rate=1.0, burst=0.25, start=0.0, gaps=[0.0, 0.0])
def test_token_bucket_gives_a_token_after_the_wait_it_names(
    rate: float, burst: float, start: float, gaps: list[float]
) -> None:
    """take() returns 0 or a wait after which take() returns 0, so a bucket never starves (burst < 1 too)."""
    bucket = TokenBucket(rate, burst, start)
    now = start
    for gap in gaps:
        now += gap
        wait = bucket.take(now)
        assert wait >= 0.0
        if wait == math.inf:  # only when 1/rate itself overflows: the true wait is not a float
            assert rate < 1 / sys.float_info.max
            return
        if wait > 0.0:
            now += wait
            again = bucket.take(now)
            assert again == 0.0, f"still {again!r} s to wait after waiting {wait!r} s at {now!r}"


@settings(max_examples=50)
@given(rate=RATES, burst=st.floats(min_value=0, max_value=3000, exclude_min=True), now=st.floats(0, 1e6))
@example(rate=1.0, burst=0.5, now=0.0)
@example(rate=1.0, burst=2.5, now=0.0)
def test_token_bucket_allows_at_most_its_burst_at_once(rate: float, burst: float, now: float) -> None:
    """At one instant a bucket gives at least one and at most ceil(max(1, burst)) tokens, then a wait."""
    bucket = TokenBucket(rate, burst, now)
    limit = math.ceil(max(1.0, burst))
    taken = 0
    while bucket.take(now) == 0.0:
        taken += 1
        assert taken <= limit
    assert taken >= max(1, math.floor(burst))


@pytest.mark.parametrize("rate", [0, 0.0, -1.0, math.nan, -math.inf])
def test_token_bucket_needs_a_positive_rate(rate: float) -> None:
    """A rate of 0, below 0 or NaN is refused with a ValueError saying the rate must be above 0."""
    with pytest.raises(ValueError) as caught:
        TokenBucket(rate, 10, 0.0)
    assert str(caught.value) == "a token bucket needs a rate above 0"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_allows_a_burst_then_refills_at_its_rate() -> None:
    """burst messages pass at once, the next is refused, and one more passes per 1/rate seconds."""
    clock = Clock()
    limiter = RateLimiter(2.0, 3, clock=clock)
    assert [limiter.allow("u", "r") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("v", "r") and limiter.allow("u", "s")  # other buckets are untouched
    clock.now += 0.25
    assert not limiter.allow("u", "r")
    clock.now += 0.25
    assert limiter.allow("u", "r") and not limiter.allow("u", "r")
    clock.now += 100.0
    assert [limiter.allow("u", "r") for _ in range(4)] == [True, True, True, False]


@given(rate=st.floats(0.01, 100), burst=st.integers(1, 20),
       gaps=st.lists(st.floats(0, 5), min_size=1, max_size=60))
def test_rate_limiter_never_allows_more_than_burst_plus_rate(
    rate: float, burst: int, gaps: list[float]
) -> None:
    """Over any run of calls, what passes is at most burst plus rate times the time elapsed."""
    clock = Clock()
    limiter = RateLimiter(rate, burst, clock=clock)
    start, allowed = clock.now, 0
    for gap in gaps:
        clock.now += gap
        allowed += limiter.allow("u", "r")
        assert allowed <= burst + rate * (clock.now - start) + 1e-9


def test_rate_limiter_with_rate_zero_always_allows() -> None:
    """A rate of 0 turns limiting off: every call passes and nothing is kept."""
    limiter = RateLimiter(0, 1, clock=Clock())
    assert all(limiter.allow("u", "r") for _ in range(1000))
    assert limiter._buckets == {}


def test_rate_limiter_forgets_full_buckets() -> None:
    """Up to 10,000 buckets are kept, full or not; the call that makes a 10,001st forgets the full
    ones (all but that new one here, as every older bucket has refilled)."""
    clock = Clock()
    limiter = RateLimiter(1.0, 1, clock=clock)
    for i in range(10_000):
        clock.now += 1.0
        assert limiter.allow(f"user{i}", "room")
    assert len(limiter._buckets) == 10_000
    clock.now += 1.0
    assert limiter.allow("one more", "room")
    assert list(limiter._buckets) == [("one more", "room")]


def test_rate_limiter_keeps_buckets_that_are_not_full() -> None:
    """Forgetting full buckets never refills a drained one: a limited key stays limited."""
    clock = Clock()
    limiter = RateLimiter(0.001, 1, clock=clock)
    assert limiter.allow("limited", "room") and not limiter.allow("limited", "room")
    for i in range(10_001):  # all at one instant: none of these buckets is full again
        assert limiter.allow(f"user{i}", "room")
    assert len(limiter._buckets) == 10_002
    assert not limiter.allow("limited", "room")


@pytest.mark.parametrize(("data", "message"), [
    (b'{"type":"say","text":"hi"}', "frames must be JSON text, not binary"),
    ("{", "the frame is not valid JSON"),
    ("[" * 10_000, "the frame is nested too deep"),
    ("[]", "the frame must be a JSON object"),
    ('{"type":"shout"}', "unknown frame type 'shout'"),
    ('{"type":5}', "unknown frame type int"),
    ('{"type":null}', "unknown frame type NoneType"),
    ('{"type":"' + "x" * 100 + '"}', "unknown frame type '" + "x" * 40 + "'"),
    ('{"type":"say"}', "a say frame needs a text string"),
    ('{"type":"say","text":" \\n "}', "the message is empty"),
    ('{"type":"say","text":"' + "x" * 11 + '"}', "the message is longer than 10 characters"),
    ('{"type":"say","text":"\\ud800"}', "the message is not valid Unicode text (a lone surrogate)"),
])
def test_each_refusal_says_why(data: str | bytes, message: str) -> None:
    """Each refusal carries the sentence the page shows the person ("Not sent: ..."), naming what was
    wrong; an unknown type is echoed as at most its first 40 characters."""
    with pytest.raises(BadFrame) as caught:
        parse(data, 10)
    assert caught.value.message == message == str(caught.value)


def test_a_token_short_by_rounding_alone_still_passes() -> None:
    """A bucket that has refilled to within 1e-9 of a whole token gives it: waiting exactly what it
    said must not starve the caller on rounding."""
    bucket = TokenBucket(1.0, 1.0, 0.0)
    assert bucket.take(0.0) == 0.0
    assert bucket.take(1.0 - 1e-9) == 0.0


def test_token_bucket_names_the_wait_for_the_missing_part() -> None:
    """An empty bucket names the time for the missing part of a token only, plus a margin of
    exactly four ulps of now (no more: the wait is not padded further)."""
    bucket = TokenBucket(2.0, 1.0, 100.0)
    assert bucket.take(100.0) == 0.0
    wait = bucket.take(100.25)  # half a token is back: a quarter second to go (exact in binary)
    assert wait == 0.25 + 4 * math.ulp(100.25)


def test_rate_limiter_forgets_a_bucket_the_moment_it_is_full_again() -> None:
    """A bucket refilled exactly to its burst (rate x elapsed, rate above 1) is forgotten when the
    limiter clears out, and one still short of it is kept."""
    clock = Clock()
    limiter = RateLimiter(4.0, 1, clock=clock)
    assert limiter.allow("full", "room")
    clock.now += 0.125
    assert limiter.allow("half", "room")
    clock.now += 0.125  # "full" has refilled exactly: 0.25 s x 4 = 1 token; "half" has 0.5
    for i in range(10_000):
        limiter.allow(f"user{i}", "room")
    assert ("full", "room") not in limiter._buckets
    assert ("half", "room") in limiter._buckets


def test_id_key_parts_are_at_most_20_digits_even_with_leading_zeros() -> None:
    """Each part of an id is at most 20 ASCII digits, leading zeros counted: a longer part is
    refused even when its value would fit in 64 bits."""
    assert id_key("0" * 19 + "1") == (1, 0) and id_key("1-" + "0" * 19 + "1") == (1, 1)
    assert id_key("0" * 20 + "1") is None
    assert id_key("1-" + "0" * 20 + "1") is None
