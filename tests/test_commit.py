"""The broker's group commit (revchat/core/commit.py) driven with a store the test controls: batches in
submission order, outages, a draft the store refuses, and what stopping does to what is queued."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from itertools import count

import pytest

from revchat.core.commit import GroupCommit, Unstorable, storable_draft
from revchat.core.errors import BrokerUnavailable
from revchat.core.events import Draft, Event, User
from revchat.core.faults import Faults
from revchat.core.history import HistoryUnavailable

ANN = User("guest:ann", "Ann")

# A publisher left unanswered is a failure here, not a hang (mutation runs count on it).
pytestmark = pytest.mark.timeout(10)


def draft(text: str, user: User = ANN) -> Draft:
    return Draft("message", "lobby", user, 1764489600000, text)


def exactly(message: str) -> str:
    """A ``pytest.raises`` pattern for this whole message (each says why, in one line)."""
    return f"^{re.escape(message)}$"


SHUTTING_DOWN = exactly("the server is shutting down")


def faults_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """What the tally of the ``parts`` fixture logged."""
    return [r for r in caplog.records if r.name == "test.commit"]


def logged_error(record: logging.LogRecord) -> BaseException | None:
    """The exception a record carries (its traceback), if any."""
    return record.exc_info[1] if record.exc_info else None


class Store:
    """A history's ``append`` that the test can hold (``gate``), fail or refuse single drafts."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.down: HistoryUnavailable | None = None
        self.refuse: set[str] = set()
        self.short = False
        self._ids = count(1)

    async def __call__(self, drafts: list[Draft]) -> list[Event]:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.down is not None:
            raise self.down
        if any(d.text in self.refuse for d in drafts):
            raise ValueError("the store cannot take " + ", ".join(d.text for d in drafts))
        self.batches.append([d.text for d in drafts])
        events = [Event.stored(d, str(next(self._ids))) for d in drafts]
        return events[:-1] if self.short else events


class Listener:
    """What the broker would do with stored batches and failures; can be told to raise."""

    def __init__(self) -> None:
        self.stored: list[list[str]] = []
        self.failures: list[HistoryUnavailable] = []
        self.broken = False
        self.takes: set[str] = set()

    def on_stored(self, events: list[Event]) -> None:
        self.stored.append([e.text for e in events])
        if any(e.text in self.takes for e in events):
            events.clear()
        if self.broken:
            raise RuntimeError("the listener broke")

    def on_failed(self, exc: HistoryUnavailable) -> None:
        self.failures.append(exc)


@pytest.fixture
async def parts() -> AsyncIterator[tuple[GroupCommit, Store, Listener]]:
    store, listener = Store(), Listener()
    commit = GroupCommit(store, listener.on_stored, listener.on_failed, max_batch=3,
                         faults=Faults(logging.getLogger("test.commit")))
    commit.start("test-publisher")
    yield commit, store, listener
    if store.gate is not None:
        store.gate.set()
    await commit.stop(timeout=5)


async def test_drafts_are_stored_in_order_in_batches(parts: tuple[GroupCommit, Store, Listener]) -> None:
    """What is submitted while a batch is stored goes into the next ones, at most max_batch each,
    in submission order; each publisher gets its own event and the counters add up."""
    commit, store, listener = parts
    store.gate = asyncio.Event()
    first = commit.submit(draft("a"))
    await store.entered.wait()
    rest = [commit.submit(draft(t)) for t in "bcdefg"]
    store.gate.set()
    events = await asyncio.gather(first, *rest)
    assert [e.text for e in events] == list("abcdefg")
    assert store.batches == [["a"], ["b", "c", "d"], ["e", "f", "g"]]
    assert listener.stored == store.batches
    assert (commit.stats.batches, commit.stats.events, commit.stats.failed, commit.stats.unexpected) == (
        3, 7, 0, 0)


async def test_an_outage_fails_the_batch_and_the_loop_goes_on(
    parts: tuple[GroupCommit, Store, Listener]
) -> None:
    """A store that is down fails every publisher of the batch with BrokerUnavailable ("history is
    unavailable"), is reported once per batch (not as an unexpected error), and the next batch is
    stored once it is back."""
    commit, store, listener = parts
    outage = HistoryUnavailable("disk gone")
    store.down = outage
    store.gate = asyncio.Event()
    first = commit.submit(draft("a"))
    await store.entered.wait()
    lost = [commit.submit(draft(t)) for t in "bc"]
    store.gate.set()
    for future in (first, *lost):
        with pytest.raises(BrokerUnavailable, match=exactly("history is unavailable")):
            await future
    assert listener.failures == [outage, outage]
    assert (commit.stats.failed, commit.stats.unexpected, commit.stats.batches) == (2, 0, 0)
    store.down = None
    assert (await commit.submit(draft("d"))).text == "d"
    assert listener.stored == [["d"]]


async def test_only_the_culprit_of_a_refused_batch_hears_of_it(
    parts: tuple[GroupCommit, Store, Listener]
) -> None:
    """A batch the store refuses for one draft is stored again draft by draft, in order: only that
    draft's publisher gets Unstorable, and it counts as one unexpected error."""
    commit, store, listener = parts
    store.refuse = {"bad"}
    store.gate = asyncio.Event()
    blocker = commit.submit(draft("first"))
    await store.entered.wait()
    futures = [commit.submit(draft(t)) for t in ("x", "bad", "y")]
    store.gate.set()
    await blocker
    x, bad, y = futures
    assert (await x).text == "x" and (await y).text == "y"
    with pytest.raises(Unstorable, match=exactly("the message cannot be stored")):
        await bad
    assert store.batches == [["first"], ["x"], ["y"]]
    assert listener.stored == [["first"], ["x"], ["y"]]
    assert commit.stats.unexpected == 1 and commit.stats.events == 3
    assert commit._faults.count == 1  # the broker's tally, which /metrics reads


async def test_a_lone_refused_draft_is_unstorable(
    parts: tuple[GroupCommit, Store, Listener], caplog: pytest.LogCaptureFixture
) -> None:
    """A batch of one draft the store refuses fails that publisher with Unstorable and nothing
    else; the error logged names the draft's type, user and room, with the store's error."""
    commit, store, _ = parts
    store.refuse = {"bad"}
    with pytest.raises(Unstorable, match=exactly("the message cannot be stored")):
        await commit.submit(draft("bad"))
    assert commit.stats.unexpected == 1 and commit.running
    [record] = faults_logged(caplog)
    assert "storing a message of guest:ann in lobby" in record.getMessage()
    error = logged_error(record)
    assert isinstance(error, ValueError) and str(error) == "the store cannot take bad"
    assert (await commit.submit(draft("ok"))).text == "ok"


async def test_a_broken_listener_still_answers_the_publishers(
    parts: tuple[GroupCommit, Store, Listener], caplog: pytest.LogCaptureFixture
) -> None:
    """An error while handing a stored batch on is counted and logged as such, with the
    listener's error, and its publishers still get their events (they were stored)."""
    commit, _, listener = parts
    listener.broken = True
    assert (await commit.submit(draft("a"))).text == "a"
    assert commit.stats.unexpected == 1 and commit.stats.events == 1
    [record] = faults_logged(caplog)
    assert "delivering a batch" in record.getMessage()
    error = logged_error(record)
    assert isinstance(error, RuntimeError) and str(error) == "the listener broke"
    assert (await commit.submit(draft("b"))).text == "b"
    assert commit.stats.unexpected == 2 and commit.stats.events == 2
    listener.broken = False
    assert (await commit.submit(draft("c"))).text == "c"
    assert commit.stats.unexpected == 2


async def test_a_store_that_loses_events_fails_the_batch(
    parts: tuple[GroupCommit, Store, Listener], caplog: pytest.LogCaptureFixture
) -> None:
    """A store that returns fewer events than drafts is a bug: the batch's publishers get
    BrokerUnavailable, it is counted and logged (how many events for how many drafts), and the
    loop keeps running."""
    commit, store, listener = parts
    store.short = True
    with pytest.raises(BrokerUnavailable, match=exactly("the message could not be published")):
        await commit.submit(draft("a"))
    assert commit.stats.unexpected == 1 and commit.running and commit.problem() is None
    [record] = faults_logged(caplog)
    assert "publishing a batch" in record.getMessage()
    error = logged_error(record)
    assert isinstance(error, RuntimeError) and str(error) == "the store returned 0 events for 1 drafts"
    assert listener.stored == []
    store.short = False
    assert (await commit.submit(draft("b"))).text == "b"


async def test_a_listener_that_takes_the_events_leaves_no_publisher_waiting(
    parts: tuple[GroupCommit, Store, Listener]
) -> None:
    """A listener that empties the list of stored events it is handed changes nothing its
    publishers hear: each gets its own stored event, and the loop goes on."""
    commit, store, listener = parts
    listener.takes = {"a"}
    store.gate = asyncio.Event()
    taken = [commit.submit(draft(t)) for t in "ab"]
    await store.entered.wait()
    after = commit.submit(draft("c"))
    store.gate.set()
    # Batches are handled one after the other: once "c" is answered, the one before was handled.
    assert (await after).text == "c"
    assert listener.stored == [["a", "b"], ["c"]] and all(f.done() for f in taken)
    assert [(await future).text for future in taken] == ["a", "b"]
    assert commit.stats.unexpected == 0


@pytest.mark.parametrize("user", [
    User("guest:ann", "Ann\ud800"), User("guest:\udfff", "Ann"), User("guest:ann", "Ann", "\ud800"),
])
async def test_unicode_that_cannot_be_sent_fails_at_once(
    parts: tuple[GroupCommit, Store, Listener], user: User
) -> None:
    """A lone surrogate in the text, user id, name or avatar fails that draft with Unstorable at
    submission, saying it is not valid Unicode: nothing reaches the store."""
    commit, store, _ = parts
    for bad in (draft("a\ud800"), draft("a", user)):
        future = commit.submit(bad)
        assert future.done()
        with pytest.raises(Unstorable, match=exactly("the message is not valid Unicode text")):
            await future
    assert store.batches == []


def test_storable_draft_checks_every_text() -> None:
    """A draft is storable when its text, user id, name and avatar all encode as UTF-8, whether
    they are ASCII or not."""
    assert storable_draft(draft("hi"))
    assert storable_draft(draft("héllo 👋", User("fb:1", "Zoë", "https://example.com/ä.png")))
    assert storable_draft(draft("hi", User("fb:1", "Zoë", None)))
    assert not storable_draft(draft("hé\ud800"))
    assert not storable_draft(draft("hi", User("fb:\ud800", "Zoë")))
    assert not storable_draft(draft("hi", User("fb:1", "Zo\udfff")))
    assert not storable_draft(draft("hé", User("fb:1", "Zoë", "\ud800")))
    assert not storable_draft(draft("hi", User("fb:1", "Ann", "\ud800")))


async def test_not_started_and_stopped_refuse_drafts(caplog: pytest.LogCaptureFixture) -> None:
    """Before start and after stop, submit fails at once with BrokerUnavailable saying why; a
    publisher stopped on purpose is no problem for /healthz and logs no error."""
    store, listener = Store(), Listener()
    commit = GroupCommit(store, listener.on_stored, listener.on_failed)
    assert not commit.running and commit.problem() is None
    with pytest.raises(BrokerUnavailable, match=exactly("the publisher is not running")):
        await commit.submit(draft("early"))
    commit.start("test-publisher")
    assert commit.running and commit.problem() is None
    assert (await commit.submit(draft("a"))).text == "a"
    await commit.stop()
    assert not commit.running and commit.problem() is None
    with pytest.raises(BrokerUnavailable, match=SHUTTING_DOWN):
        await commit.submit(draft("late"))
    assert store.batches == [["a"]]
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_stop_stores_what_is_queued_first() -> None:
    """stop() lets the loop store everything submitted before it, then ends the loop."""
    store, listener = Store(), Listener()
    commit = GroupCommit(store, listener.on_stored, listener.on_failed, max_batch=2)
    commit.start("test-publisher")
    futures = [commit.submit(draft(t)) for t in "abcde"]
    await commit.stop(timeout=5)
    assert [(await f).text for f in futures] == list("abcde")
    assert store.batches == [["a", "b"], ["c", "d"], ["e"]]


async def test_stop_gives_up_on_a_stuck_store() -> None:
    """A store that never answers is abandoned after stop's timeout: the batch in flight and
    everything still queued fail with BrokerUnavailable: the server is shutting down."""
    store, listener = Store(), Listener()
    store.gate = asyncio.Event()  # never set
    commit = GroupCommit(store, listener.on_stored, listener.on_failed, max_batch=1)
    commit.start("test-publisher")
    in_flight = commit.submit(draft("a"))
    await store.entered.wait()
    queued = commit.submit(draft("b"))
    await commit.stop(timeout=0.05)
    for future in (in_flight, queued):
        with pytest.raises(BrokerUnavailable, match=SHUTTING_DOWN):
            await future
    assert not commit.running and listener.stored == []


async def test_a_publisher_that_was_cancelled_is_a_problem() -> None:
    """When the loop's task is cancelled without stop(), its batch fails, /healthz is told "the
    publisher has stopped" (nothing is reported as an error: it was cancelled), and new drafts
    are refused until it is stopped for good."""
    reported: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: reported.append(context))
    store, listener = Store(), Listener()
    store.gate = asyncio.Event()
    commit = GroupCommit(store, listener.on_stored, listener.on_failed)
    commit.start("test-publisher")
    future = commit.submit(draft("a"))
    await store.entered.wait()
    task = next(t for t in asyncio.all_tasks() if t.get_name() == "test-publisher")
    task.cancel()
    with pytest.raises(BrokerUnavailable, match=SHUTTING_DOWN):
        await future
    await asyncio.wait((task,))
    assert not commit.running
    assert commit.problem() == "the publisher has stopped"
    with pytest.raises(BrokerUnavailable, match=exactly("the publisher is not running")):
        await commit.submit(draft("b"))
    await commit.stop()
    assert commit.problem() is None
    asyncio.get_running_loop().set_exception_handler(None)
    assert reported == []


class Fatal(BaseException):
    """Not an Exception: nothing in the loop catches it."""


async def test_a_publisher_that_died_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A loop that dies of an error nothing catches is logged as an error that names it, with its
    traceback, and reported stopped."""

    async def fatal(drafts: list[Draft]) -> list[Event]:
        raise Fatal("boom")

    listener = Listener()
    commit = GroupCommit(fatal, listener.on_stored, listener.on_failed)
    commit.start("test-publisher")
    future = commit.submit(draft("a"))
    task = next(t for t in asyncio.all_tasks() if t.get_name() == "test-publisher")
    await asyncio.wait((task,))
    assert commit.problem() == "the publisher has stopped"
    errors = [r for r in caplog.records if r.name == "revchat.broker" and r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None and errors[0].exc_info[1] is task.exception()
    message = errors[0].getMessage()
    assert "the publisher stopped" in message and "boom" in message
    future.cancel()  # its batch died with the loop (only stop() or an Exception answers it)


async def test_a_batch_holds_at_most_4096_drafts_by_default() -> None:
    """Without max_batch (as the brokers make it), what queues behind a batch is stored in
    batches of at most 4096 drafts."""
    store, listener = Store(), Listener()
    store.gate = asyncio.Event()
    commit = GroupCommit(store, listener.on_stored, listener.on_failed)
    commit.start("test-publisher")
    first = commit.submit(draft("first"))
    await store.entered.wait()
    rest = [commit.submit(draft(str(i))) for i in range(5000)]
    store.gate.set()
    await asyncio.gather(first, *rest)
    assert [len(b) for b in store.batches] == [1, 4096, 904]
    await commit.stop()


async def test_without_a_tally_of_its_own_errors_are_still_counted() -> None:
    """A GroupCommit made without a Faults tally keeps its own: a refused draft is answered and
    counted all the same."""
    store, listener = Store(), Listener()
    store.refuse = {"bad"}
    commit = GroupCommit(store, listener.on_stored, listener.on_failed)
    commit.start("test-publisher")
    with pytest.raises(Unstorable):
        await commit.submit(draft("bad"))
    assert commit.stats.unexpected == 1 and commit._faults.count == 1
    await commit.stop()


async def test_stop_gives_up_during_a_draft_by_draft_retry() -> None:
    """A stop that gives up while a refused batch is being stored again draft by draft fails the
    rest of that batch with BrokerUnavailable, as a shutdown, not as an error of ours."""
    calls = 0
    retrying = asyncio.Event()

    async def store(drafts: list[Draft]) -> list[Event]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("the store cannot take this batch")
        retrying.set()
        await asyncio.Event().wait()  # the store hangs on the first single draft
        raise AssertionError("unreachable")

    listener = Listener()
    commit = GroupCommit(store, listener.on_stored, listener.on_failed)
    commit.start("test-publisher")
    futures = [commit.submit(draft(t)) for t in ("x", "bad", "y")]
    await asyncio.wait_for(retrying.wait(), 5)
    await commit.stop(timeout=0.01)
    for future in futures:
        with pytest.raises(BrokerUnavailable, match=SHUTTING_DOWN):
            await future
    assert commit.stats.unexpected == 0
