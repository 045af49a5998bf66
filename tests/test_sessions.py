"""Signed values and sessions (revchat/core/sessions.py): any token reads as a value or None, never an
exception; what has been ended stays ended until it would have expired anyway."""

from __future__ import annotations

import hashlib
import json
import random
import string
import time
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from itsdangerous import URLSafeSerializer

from revchat.core.events import User, storable
from revchat.core.sessions import (
    CLOCK_SKEW,
    MAX_TOKEN,
    SESSION_MAX_AGE,
    Ended,
    Session,
    SessionBook,
    Signer,
    new_session,
    now_ms,
    read_session,
    session_token,
)

KEY = "test-key-" + "k" * 40
SIGNER = Signer(KEY, "session")
NOW = 1_764_489_600_123  # Unix ms

SURROGATES = st.characters(categories=["Cs"])
ANY_CHAR = st.characters(codec=None, exclude_categories=()) | SURROGATES | st.sampled_from(".-_=~ ")
ANY_TEXT = st.text(alphabet=ANY_CHAR)
UTF8_TEXT = st.text()  # no lone surrogates: what Signer.dumps itself can sign
B64_TEXT = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=")

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | ANY_TEXT


def json_values(scalars: st.SearchStrategy[Any], keys: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
        max_leaves=12,
    )


JSON_VALUES = json_values(JSON_SCALARS, ANY_TEXT)
UTF8_VALUES = json_values(st.none() | st.booleans() | st.integers(-(2**70), 2**70)
                          | st.floats(allow_nan=False) | UTF8_TEXT, UTF8_TEXT)

_FORGER = URLSafeSerializer(KEY, salt="revchat.session", signer_kwargs={"digest_method": hashlib.sha256},
                            serializer_kwargs={"ensure_ascii": True})


def signed(body: dict[str, Any]) -> str:
    """``body`` exactly as given (its own ``t``, lone surrogates escaped) under SIGNER's key:
    what only a holder of the key could make."""
    return _FORGER.dumps(body)


def test_signed_is_what_the_signer_makes() -> None:
    """The test's raw signer makes the same tokens as Signer, so its bodies really are validly signed."""
    assert signed({"a": "b", "t": NOW}) == SIGNER.dumps({"a": "b"}, now=NOW)
    assert SIGNER.loads(signed({"a": "é", "t": NOW}), 60, now=NOW) == {"a": "é", "t": NOW}
    assert SIGNER.loads(signed({"a": 1, "t": NOW}), 60, now=NOW) == {"a": 1, "t": NOW}


@st.composite
def edited_tokens(draw: st.DrawFn) -> tuple[str, str]:
    """A real token and a copy truncated, with a character replaced, inserted or removed."""
    token = SIGNER.dumps(draw(st.dictionaries(UTF8_TEXT, UTF8_VALUES, max_size=3)), now=NOW)
    where = draw(st.integers(0, len(token)))
    char = draw(st.sampled_from("Aa0-_.=") | ANY_CHAR)
    edit = draw(st.sampled_from(["truncate", "replace", "insert", "delete"]))
    if edit == "truncate":
        return token, token[:where]
    if edit == "replace":
        return token, token[:where] + char + token[where + 1:]
    if edit == "insert":
        return token, token[:where] + char + token[where:]
    return token, token[:where] + token[where + 1:]


OTHER_SIGNERS = st.builds(Signer, st.sampled_from(["x" * 40, KEY + "!", KEY[:-1]]), st.just("session")) \
    | st.builds(Signer, st.just(KEY), st.sampled_from(["oauth", "Session", "session ", ""]))
FOREIGN_TOKENS = st.builds(lambda signer, value: signer.dumps(value, now=NOW),
                           OTHER_SIGNERS, st.dictionaries(UTF8_TEXT, UTF8_VALUES, max_size=3))
GARBAGE_TOKENS = st.one_of(
    ANY_TEXT,
    B64_TEXT,
    st.lists(B64_TEXT | ANY_TEXT, min_size=2, max_size=4).map(".".join),
    st.builds(lambda n, s: s * n, st.integers(1000, 9000), st.sampled_from(["a", ".", "A.", "\ud800"])),
    st.builds(lambda head: head + "." + SIGNER.dumps({}, now=NOW).split(".")[-1], B64_TEXT),
)


@settings(max_examples=300)
@given(token=GARBAGE_TOKENS | FOREIGN_TOKENS)
@example(token="")
@example(token=".")
@example(token="..")
@example(token="\ud800.\udfff")
@example(token="a" * (MAX_TOKEN + 1))
@example(token=".eJwDAAAAAAE.x")  # the compressed-payload marker with a bogus signature
def test_loads_refuses_any_token_it_did_not_sign(token: str) -> None:
    """loads never raises for any text, foreign key or purpose, and returns None for all of them."""
    assert SIGNER.loads(token, SESSION_MAX_AGE, now=NOW) is None


@given(pair=edited_tokens())
def test_loads_refuses_edited_tokens(pair: tuple[str, str]) -> None:
    """A real token truncated or edited anywhere reads as None, or (base64 slack) as the original value."""
    token, edited = pair
    original = SIGNER.loads(token, SESSION_MAX_AGE, now=NOW)
    assert original is not None
    assert SIGNER.loads(edited, SESSION_MAX_AGE, now=NOW) in (None, original)
    if edited.rsplit(".", 1)[0] != token.rsplit(".", 1)[0]:  # a different payload is never accepted
        assert SIGNER.loads(edited, SESSION_MAX_AGE, now=NOW) is None


@given(value=st.dictionaries(UTF8_TEXT, UTF8_VALUES, max_size=5), issued=st.integers(0, 2**53))
def test_dumps_loads_round_trip(value: dict[str, Any], issued: int) -> None:
    """What dumps signs, loads gives back with its issue time t (when the token fits in MAX_TOKEN)."""
    token = SIGNER.dumps(value, now=issued)
    got = SIGNER.loads(token, SESSION_MAX_AGE, now=issued)
    assert got == ({**value, "t": issued} if len(token) <= MAX_TOKEN else None)


@given(age_ms=st.integers(-10 * CLOCK_SKEW * 1000, 10**10), max_age=st.integers(0, 10**6))
@example(age_ms=60_000, max_age=60)
@example(age_ms=60_001, max_age=60)
@example(age_ms=-CLOCK_SKEW * 1000, max_age=60)
@example(age_ms=-CLOCK_SKEW * 1000 - 1, max_age=60)
def test_expiry_and_clock_skew(age_ms: int, max_age: int) -> None:
    """A value is accepted from 300 s in the future up to max_age seconds old, and refused outside that."""
    token = SIGNER.dumps({"v": 1}, now=NOW)
    accepted = SIGNER.loads(token, max_age, now=NOW + age_ms) is not None
    assert accepted == (-CLOCK_SKEW * 1000 <= age_ms <= max_age * 1000)


def test_expiry_examples() -> None:
    """An old value is refused; one up to 300 s from the future is accepted, one from further is not."""
    token = SIGNER.dumps({"v": 1}, now=NOW)
    assert SIGNER.loads(token, 3600, now=NOW) == {"v": 1, "t": NOW}
    assert SIGNER.loads(token, 3600, now=NOW + 3601_000) is None
    assert SIGNER.loads(token, 3600, now=NOW - 300_000) is not None
    assert SIGNER.loads(token, 3600, now=NOW - 300_001) is None
    assert SIGNER.loads(SIGNER.dumps({"v": 1}), 3600) is not None  # the real clock


@given(issued=st.one_of(
    st.integers(), st.integers(min_value=10**300, max_value=10**400),
    st.integers(min_value=-(10**400), max_value=-(10**300)),
    st.floats(), st.booleans(), st.none(), ANY_TEXT, st.lists(st.integers(), max_size=2)))
@example(issued=10**400)
@example(issued=-(10**400))
@example(issued=1.5)
@example(issued=float(NOW))
@example(issued=True)
def test_loads_never_raises_whatever_t_holds(issued: Any) -> None:
    """A validly signed value with any t never makes loads raise; only an int t within the window passes."""
    got = SIGNER.loads(signed({"v": 1, "t": issued}), SESSION_MAX_AGE, now=NOW)
    if type(issued) is not int:
        assert got is None
    else:
        assert (got is not None) == (-CLOCK_SKEW * 1000 <= NOW - issued <= SESSION_MAX_AGE * 1000)


USERS = st.builds(User, UTF8_TEXT.filter(bool), UTF8_TEXT, st.none() | UTF8_TEXT.filter(bool))


@given(user=USERS, issued=st.integers(NOW - 10**9, NOW + 10**9))
def test_session_token_reads_back_the_same_session(user: User, issued: int) -> None:
    """read_session of session_token(new_session(user)) is the same session: id, user and issue time."""
    session = new_session(user, now=issued)
    assert session.issued == issued and session.expires == issued + SESSION_MAX_AGE * 1000
    token = session_token(SIGNER, session)
    body = SIGNER.loads(token, SESSION_MAX_AGE, now=issued)
    assert body == {"u": user.as_dict(), "s": session.id, "t": issued}
    current = new_session(user)  # read_session checks against the real clock
    assert read_session(SIGNER, session_token(SIGNER, current)) == current


def checked_read(token: str | None) -> Session | None:
    """read_session(token), checking that a session it gives holds only text that can be sent."""
    session = read_session(SIGNER, token)
    if session is not None:
        assert isinstance(session.id, str) and session.id
        assert type(session.issued) is int
        texts = [session.id, session.user.id, session.user.name]
        if session.user.avatar is not None:
            texts.append(session.user.avatar)
        assert all(storable(text) for text in texts), f"unsendable text in {session!r}"
    return session


SHAPED_USERS = st.fixed_dictionaries(
    {}, optional={"id": JSON_SCALARS, "name": JSON_SCALARS, "avatar": JSON_SCALARS})
SHAPED_BODIES = st.fixed_dictionaries(
    {}, optional={"u": SHAPED_USERS | JSON_VALUES, "s": JSON_SCALARS | JSON_VALUES,
                  "t": st.sampled_from([now_ms(), float(now_ms()), True, None, str(now_ms())])})


@settings(max_examples=300)
@given(body=SHAPED_BODIES | st.dictionaries(ANY_TEXT, JSON_VALUES, max_size=4))
def test_read_session_never_raises_for_any_signed_body(body: dict[str, Any]) -> None:
    """Whatever validly signed JSON object a cookie holds, read_session gives a sendable Session or None."""
    checked_read(signed(body))


@given(token=GARBAGE_TOKENS | FOREIGN_TOKENS | st.none())
def test_read_session_refuses_any_token_it_did_not_sign(token: str | None) -> None:
    """read_session gives None for a missing, foreign or garbage cookie."""
    assert read_session(SIGNER, token) is None


GOOD_USER = {"id": "guest:abc", "name": "Ann", "avatar": None}


@pytest.mark.parametrize(
    "body",
    [
        {"s": "sid"},
        {"u": GOOD_USER},
        {"u": "guest:abc", "s": "sid"},
        {"u": ["guest:abc"], "s": "sid"},
        {"u": None, "s": "sid"},
        {"u": GOOD_USER, "s": 5},
        {"u": GOOD_USER, "s": ""},
        {"u": GOOD_USER, "s": None},
        {"u": GOOD_USER, "s": ["sid"]},
        {"u": {"name": "Ann"}, "s": "sid"},
        {"u": {"id": "guest:abc"}, "s": "sid"},
        {"u": {**GOOD_USER, "name": "A\ud800"}, "s": "sid"},
        {"u": {**GOOD_USER, "id": "\udfff"}, "s": "sid"},
        {"u": {**GOOD_USER, "avatar": "https://x/\ud800.png"}, "s": "sid"},
        {"u": GOOD_USER, "s": "sid\ud800"},
    ],
    ids=["no-u", "no-s", "u-str", "u-list", "u-null", "s-int", "s-empty", "s-null", "s-list",
         "no-id", "no-name", "name-surrogate", "id-surrogate", "avatar-surrogate", "s-surrogate"],
)
def test_read_session_refuses_wrong_shapes(body: dict[str, Any]) -> None:
    """A validly signed body of the wrong shape, or with a lone surrogate in any text, reads as None."""
    assert checked_read(signed({**body, "t": now_ms()})) is None


@pytest.mark.parametrize("issued", [float(now_ms()), True, None, str(now_ms())])
def test_read_session_needs_an_int_issue_time(issued: Any) -> None:
    """A session whose t is a float, a bool, null or a string reads as None."""
    assert read_session(SIGNER, signed({"u": GOOD_USER, "s": "sid", "t": issued})) is None
    assert read_session(SIGNER, signed({"u": GOOD_USER, "s": "sid", "t": now_ms()})) is not None


def session(issued: int, user_id: str = "guest:abc", sid: str = "sid") -> Session:
    return Session(sid, User(user_id, "Ann"), issued)


@given(issued=st.integers(0, 2**50), later=st.integers(0, 2 * SESSION_MAX_AGE * 1000))
def test_signed_out_session_stays_ended_until_it_expires(issued: int, later: int) -> None:
    """A signed-out session is ended until its own expiry has passed, then it is forgotten."""
    book, one = SessionBook(), session(issued)
    book.apply(Ended(sessions={one.id: one.expires}), now=issued)
    assert book.ended(one) and not book.ended(session(issued, sid="other"))
    now = issued + later
    book.apply(Ended(), now=now)
    assert book.ended(one) == (now <= one.expires)
    assert len(book) == (1 if now <= one.expires else 0)


def test_signed_out_session_expiry_examples() -> None:
    """Ended at its expiry instant it still counts; once it has expired, the book's next sweep
    (at most an hour later) forgets it."""
    book, one = SessionBook(), session(NOW)
    book.apply(Ended(sessions={one.id: one.expires}), now=NOW)
    book.apply(Ended(), now=one.expires)
    assert book.ended(one)
    book.apply(Ended(), now=one.expires + SessionBook.PRUNE_EVERY)
    assert not book.ended(one) and len(book) == 0


@given(before=st.integers(0, 2**50), issued=st.integers(0, 2**50), older=st.integers(0, 10**9))
def test_ending_a_users_sessions_ends_those_issued_until_then(before: int, issued: int, older: int) -> None:
    """Ended(users={uid: before}) ends that user's sessions issued at or before it, not later ones."""
    book = SessionBook()
    book.apply(Ended(users={"guest:abc": before}), now=before)
    assert book.ended(session(issued)) == (issued <= before)
    assert not book.ended(session(issued, user_id="guest:other"))
    book.apply(Ended(users={"guest:abc": before - older}), now=before)  # an older cut-off never shrinks it
    assert book.ended(session(issued)) == (issued <= before)


def test_user_cut_off_is_forgotten_once_its_sessions_expired() -> None:
    """A user's cut-off is kept while sessions issued before it could still be alive."""
    book = SessionBook()
    book.apply(Ended(users={"guest:abc": NOW}), now=NOW)
    book.apply(Ended(), now=NOW + SESSION_MAX_AGE * 1000)
    assert book.ended(session(NOW))
    book.apply(Ended(), now=NOW + SESSION_MAX_AGE * 1000 + SessionBook.PRUNE_EVERY)
    assert len(book) == 0
    assert book.snapshot() == Ended()


INTS = st.integers(-(2**63), 2**63)


@given(sessions=st.dictionaries(ANY_TEXT, INTS), users=st.dictionaries(ANY_TEXT, INTS))
def test_ended_json_round_trip(sessions: dict[str, int], users: dict[str, int]) -> None:
    """Ended.from_json(e.to_json()) == e, lone surrogates in ids included; the JSON is ASCII."""
    ended = Ended(sessions, users)
    text = ended.to_json()
    assert text.isascii()
    assert Ended.from_json(text) == ended
    assert Ended.from_json(text.encode()) == ended


ENDED_SHAPED = st.builds(
    lambda sessions, users, ascii_only: json.dumps({"sessions": sessions, "users": users},
                                                   ensure_ascii=ascii_only),
    JSON_VALUES | st.dictionaries(ANY_TEXT, JSON_SCALARS | JSON_VALUES, max_size=3),
    JSON_VALUES | st.dictionaries(ANY_TEXT, JSON_SCALARS | JSON_VALUES, max_size=3),
    st.booleans(),
)
ENDED_INPUTS = st.one_of(
    ANY_TEXT, st.binary(), ENDED_SHAPED, JSON_VALUES.map(json.dumps),
    st.builds(lambda n: "[" * n, st.integers(0, 20_000)),
)


@settings(max_examples=300)
@given(text=ENDED_INPUTS)
@example(text="[]")
@example(text="null")
@example(text='"sessions"')
@example(text='{"sessions":{"a":1e400},"users":{}}')
@example(text='{"sessions":{"a":NaN},"users":{}}')
@example(text='{"sessions":{"a":null},"users":{}}')
@example(text="[" * 3000)
@example(text=b"\xff")
def test_ended_from_json_raises_only_value_or_type_error(text: str | bytes) -> None:
    """Ended.from_json of anything gives an Ended or raises ValueError (bad JSON, shape or number) or
    TypeError (a null, list or object where an int belongs), nothing else."""
    try:
        ended = Ended.from_json(text)
    except (ValueError, TypeError):
        return
    assert all(type(v) is int for v in (*ended.sessions.values(), *ended.users.values()))
    assert Ended.from_json(ended.to_json()) == ended


def test_tokens_keep_their_format_across_releases() -> None:
    """A Signer made now reads and makes exactly the tokens of HMAC-SHA256 under the salt
    ``revchat.<purpose>``, so cookies issued by an earlier release stay valid."""
    signer = Signer(KEY, "session")  # made here, not at import, so what it is made of is under test
    assert signer.dumps({"a": "b"}, now=NOW) == signed({"a": "b", "t": NOW})
    assert signer.loads(signed({"a": "é", "t": NOW}), 60, now=NOW) == {"a": "é", "t": NOW}


def test_a_token_for_one_purpose_is_refused_for_another() -> None:
    """Tokens signed with the same key for another purpose (an OAuth state) never pass as a session."""
    token = Signer(KEY, "oauth").dumps({"u": "x"}, now=NOW)
    assert Signer(KEY, "session").loads(token, 60, now=NOW) is None
    assert Signer(KEY, "oauth").loads(token, 60, now=NOW) == {"u": "x", "t": NOW}


def test_tokens_up_to_max_token_are_read() -> None:
    """A valid token of exactly MAX_TOKEN characters is read; one character longer is refused unread."""
    signer = Signer(KEY, "session")
    chars = random.Random(0)
    pad = "".join(chars.choice(string.ascii_letters + string.digits) for _ in range(9000))  # no repeats
    lengths = {len(token): token for token in (signer.dumps({"p": pad[:n], "q": "q" * extra}, now=NOW)
                                               for n in range(MAX_TOKEN - 200, MAX_TOKEN + 200)
                                               for extra in range(3))}
    assert signer.loads(lengths[MAX_TOKEN], 60, now=NOW) is not None
    assert signer.loads(lengths[MAX_TOKEN + 1], 60, now=NOW) is None


@pytest.mark.parametrize("body", [[1, 2], "text", 5, None])
def test_a_signed_value_that_is_not_an_object_reads_as_none(body: Any) -> None:
    """A validly signed JSON value that is not an object (a list, text, number, null) is None."""
    assert SIGNER.loads(_FORGER.dumps(body), SESSION_MAX_AGE, now=NOW) is None


def test_the_book_snapshot_holds_sessions_and_users() -> None:
    """snapshot() gives back both the signed-out sessions and the users' cut-offs, and len counts both."""
    book = SessionBook()
    ended = Ended(sessions={"s1": NOW + 10, "s2": NOW + 20}, users={"guest:abc": NOW - 5})
    book.apply(ended, now=NOW)
    assert book.snapshot() == ended
    assert len(book) == 3


def test_expired_entries_are_swept_at_most_once_an_hour() -> None:
    """Adding to the book does not sweep it each time: an entry that expired is kept (harmless:
    its cookie has expired too) until the first apply an hour after the last sweep."""
    book = SessionBook()
    book.apply(Ended(sessions={"s1": NOW + 1}), now=NOW)
    book.apply(Ended(sessions={"s2": NOW + SESSION_MAX_AGE * 1000}), now=NOW + 2)
    assert len(book) == 2
    book.apply(Ended(), now=NOW + SessionBook.PRUNE_EVERY - 1)
    assert len(book) == 2
    book.apply(Ended(), now=NOW + SessionBook.PRUNE_EVERY)
    assert book.snapshot() == Ended(sessions={"s2": NOW + SESSION_MAX_AGE * 1000})


def test_a_users_cut_off_is_swept_once_their_last_session_expired() -> None:
    """A sweep just after the user's sessions could last no longer forgets their cut-off."""
    book = SessionBook()
    book.apply(Ended(users={"guest:abc": NOW}), now=NOW)
    book.apply(Ended(), now=NOW + SESSION_MAX_AGE * 1000 + 1)
    assert len(book) == 0


def test_now_ms_is_unix_milliseconds() -> None:
    """now_ms is the wall clock in Unix milliseconds, the unit of every issue time and cut-off."""
    before = int(time.time() * 1000)
    assert before - 1 <= now_ms() <= int(time.time() * 1000) + 1


def test_a_new_session_id_is_16_random_bytes_in_url_safe_base64() -> None:
    """A new session's id is 128 random bits as URL-safe base64: 22 characters of A-Z, a-z, 0-9, - and _,
    different for every session."""
    ids = [new_session(User("guest:abc", "Ann"), now=NOW).id for _ in range(50)]
    assert all(len(sid) == 22 and set(sid) <= set(string.ascii_letters + string.digits + "-_") for sid in ids)
    assert len(set(ids)) == len(ids)


def test_ended_json_is_compact() -> None:
    """to_json is compact JSON, no spaces after separators: what a worker publishes to the others."""
    ended = Ended(sessions={"s1": 1, "s2": 2}, users={"guest:abc": 3})
    assert ended.to_json() == '{"sessions":{"s1":1,"s2":2},"users":{"guest:abc":3}}'


@pytest.mark.parametrize(("text", "message"), [
    ("[" * 3000, "not an Ended value: nested too deep"),
    ('{"sessions":' * 3000, "not an Ended value: nested too deep"),
    ("[]", "not an Ended value"),
    ('{"sessions":{}}', "not an Ended value"),
    ('{"sessions":{},"users":[]}', "not an Ended value"),
    ('{"sessions":{"s":1.5},"users":{}}', "an Ended value's times are whole numbers"),
    ('{"sessions":{},"users":{"u":true}}', "an Ended value's times are whole numbers"),
])
def test_ended_from_json_says_what_is_wrong(text: str, message: str) -> None:
    """Each refusal of from_json is a ValueError whose message names what is wrong: too deep a
    nesting, not the Ended shape, or a time that is not a whole number."""
    with pytest.raises(ValueError) as caught:
        Ended.from_json(text)
    assert str(caught.value) == message


@given(now=st.integers(SessionBook.PRUNE_EVERY, 2**50))
@example(now=SessionBook.PRUNE_EVERY)
def test_a_new_books_first_apply_sweeps(now: int) -> None:
    """A book never swept sweeps on its first apply (at any time from PRUNE_EVERY after the epoch):
    what it is given already expired is dropped at once, what has not is kept."""
    horizon = now - SESSION_MAX_AGE * 1000
    book = SessionBook()
    book.apply(Ended(sessions={"gone": now - 1, "kept": now}, users={"old": horizon - 1, "new": horizon}),
               now=now)
    assert book.snapshot() == Ended(sessions={"kept": now}, users={"new": horizon})
