"""A stateful model of the room engine, with a real MemoryBroker: subscribers come (some resuming,
some stalled), talk, type and go, some interrupted at any await, and after each settle every sink,
member list and counter is checked against the stored history."""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Awaitable, Iterable
from typing import Any, Literal, TypeVar

from hypothesis import Phase, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from revchat.backends.memory import MemoryBroker, MemoryHistory
from revchat.core.engine import Engine, Limits
from revchat.core.events import Event, User, id_key
from revchat.core.room import Subscription
from tests.support.sink import Sink, line_frame

T = TypeVar("T")

USERS = (User("guest:ann", "Ann"), User("guest:bob", "Bob"), User("guest:cid", "Cid"))
ROOMS = ("north", "south")
QUEUE_SIZE = 600
"""Bytes a stalled sink may hold unsent: a few frames, so stalled subscribers get dropped."""
WRITE_DELAY = 1e6
"""Seconds between two flushes of a busy room. The engine measures it on the real clock, so a
room stays busy for the whole run: after its first flush, each waits for the model to let time
pass on the loop's clock (the frames meanwhile pile up, and subscribers join in between)."""
LIMITS = Limits(archive_size=3, resume_limit=4, queue_size=QUEUE_SIZE, write_delay=WRITE_DELAY,
                rate=0)
CACHE = 4
"""Events a held room keeps (the engine keeps at least 100): small, so that resumes also read
history and the cache is trimmed."""
KEEP = 10**6
SETTLE_PASSES = 500
"""Loop passes after which a settle that has not come to rest fails (a hang is a finding)."""
EVENT_TYPES = frozenset({"message", "join", "leave"})
SINCE_KINDS = ("none", "last seen", "seen", "alias", "other room", "garbage")
GARBAGE = ("", "x", "0", "-1", "1-2-3", "18446744073709551616", "\uff19", " 1", "99999999999999999")

State = Literal["connecting", "live", "gone"]


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock moves only when the model says time passes, or when the loop
    would otherwise sleep: the engine's flush timers fire without any real wait."""

    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(NoWaitSelector(self))

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class NoWaitSelector(selectors.SelectSelector):
    """Polls instead of sleeping until the next timer, and moves the loop's clock to it."""

    def __init__(self, loop: VirtualClockLoop) -> None:
        super().__init__()
        self.loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout > 0:
            self.loop.advance(timeout)
            timeout = 0
        return super().select(timeout)


class Client:
    """One socket of the model: its subscribe task, and what became of it."""

    def __init__(self, number: int, user: User, room: str, since: str | None, sink: Sink,
                 task: asyncio.Task[Subscription]) -> None:
        self.number = number
        self.user = user
        self.room = room
        self.since = since
        self.sink = sink
        self.task = task
        self.sub: Subscription | None = None
        self.state: State = "connecting"
        self.how = ""
        self.op: asyncio.Task[Event] | None = None
        """The message it is saying, while that is in flight."""
        self.checked = 0
        """Frames already checked by :meth:`EngineModel.one_order`."""
        self.last_key: tuple[int, ...] = ()

    def __repr__(self) -> str:
        return f"client{self.number}({self.user.name} in {self.room})"

    def newest(self) -> tuple[int, ...]:
        """The key of the newest event this socket knows of (its ``since`` if it resumed)."""
        events = self.events()
        if events:
            return id_key(events[-1]["id"]) or ()
        frames = self.sink.frames()
        return (id_key(self.since or "") or ()) if frames and frames[0]["resumed"] else ()

    def events(self) -> list[dict[str, Any]]:
        """The room events received: the welcome's archive, then the live ones."""
        frames = self.sink.frames()
        if not frames:
            return []
        live = [f for f in frames[1:] if f["type"] in EVENT_TYPES]
        return [*frames[0]["archive"], *live]


def alternate(events: Iterable[Event], user_id: str) -> list[str]:
    return [e.type for e in events if e.user.id == user_id and e.type != "message"]


# No explain phase: tracing every line of a failing run's event loop takes minutes (past the
# suite's timeout); without it a failure shrinks in seconds.
@settings(max_examples=200, stateful_step_count=50, report_multiple_bugs=False,
          phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink])
class EngineModel(RuleBasedStateMachine):
    """Shows that, whatever subscribers do and wherever they are interrupted, each sink gets its
    room's stored events once, in order and without a gap, and that no subscription that went away
    stays counted, a member or held."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = VirtualClockLoop()
        self.history = MemoryHistory()
        self.broker = MemoryBroker(self.history)
        self.engine = Engine(self.broker, LIMITS, frame=line_frame)
        self.engine._cache = CACHE
        self.clients: list[Client] = []
        self.hang_ups: list[asyncio.Task[None]] = []
        """The handlers' engine.cancel calls, each run as a task of its own."""
        self._run(self.broker.open())

    # -- driving the loop -------------------------------------------------------------------

    def _run(self, awaitable: Awaitable[T]) -> T:
        async def run() -> T:
            return await awaitable

        return self.loop.run_until_complete(run())

    def _step(self, passes: int) -> None:
        """Run exactly ``passes`` passes of the loop."""
        for _ in range(passes):
            self.loop.call_soon(self.loop.stop)
            self.loop.run_forever()

    def _leave(self, client: Client) -> None:
        """The client goes away: cancel its subscribe task unless it has ended, and let the
        task take the cancellation in."""
        if not client.task.done():
            client.task.cancel()
            self._run(asyncio.wait([client.task]))

    def _working(self) -> bool:
        """A task is running (other than the publisher waiting for drafts) or drafts wait."""
        commits = self.broker._commits
        busy = asyncio.all_tasks(self.loop) - {asyncio.current_task(self.loop), commits._task}
        return bool(busy or commits._queue or commits._wakeup.is_set())

    def _quiet(self) -> bool:
        """Nothing left to do: no work, and no flush waiting for its time."""
        return not self._working() and all(r.flush is None for r in self.engine.rooms.values())

    async def _settle(self, strict: bool = True) -> None:
        """Run the loop until it is quiet; when only flushes are waiting, time passes."""
        for _ in range(SETTLE_PASSES):
            if self._quiet():
                return
            if not self._working():
                self.loop.advance(WRITE_DELAY)
            await asyncio.sleep(0)
        assert not strict, "the engine did not come to rest"

    def _in(self, state: State) -> list[Client]:
        return [c for c in self.clients if c.state == state]

    def _idle(self) -> list[Client]:
        return [c for c in self._in("live") if c.op is None]

    def _hang_up(self, client: Client, how: str, passes: int = 0) -> None:
        """The socket ends: its handler stops saying what it was saying, then cancels the
        subscription (in a task, run ``passes`` passes here)."""
        assert client.sub is not None
        if client.op is not None and not client.op.done():
            client.op.cancel()
            self._run(asyncio.wait([client.op]))
        client.state, client.how = "gone", how
        self.hang_ups.append(self.loop.create_task(self.engine.cancel(client.sub)))
        self._step(passes)

    def _collect(self) -> None:
        """Note the tasks that ended, failing on any error; hang up the subscriptions whose
        socket the engine closed, as their handler would."""
        for task in [t for t in self.hang_ups if t.done()]:
            task.result()
            self.hang_ups.remove(task)
        for client in self.clients:
            if client.op is not None and client.op.done():
                op, client.op = client.op, None
                if not op.cancelled():
                    event = op.result()
                    assert (event.type, event.room, event.user) == ("message", client.room, client.user)
            if client.state == "connecting" and client.task.done():
                if client.task.cancelled():
                    client.state, client.how = "gone", "interrupted"
                else:
                    client.sub, client.state = client.task.result(), "live"
            if client.state == "live" and client.sink.closed is not None:
                assert client.sink.closed == (1013, "slow consumer"), client.sink.closed
                self._hang_up(client, "dropped")

    def _since(self, room: str, kind: str, pick: int) -> str | None:
        """A ``since`` as a client could send it: an id seen in this room (the last one of a
        socket, or any), the same id spelt differently, an id of another room, or garbage."""
        if kind == "none":
            return None
        if kind == "garbage":
            return GARBAGE[pick % len(GARBAGE)]
        seen = [c for c in self.clients if (c.room == room) == (kind != "other room") and c.events()]
        if kind == "last seen":
            ids = [c.events()[-1]["id"] for c in seen]
        else:
            ids = [e["id"] for c in seen for e in c.events()]
        if not ids:
            return None
        chosen: str = ids[pick % len(ids)]
        if kind == "alias":
            return "0" + chosen if pick % 2 else chosen + "-0"
        return chosen

    # -- rules ------------------------------------------------------------------------------

    @rule(user=st.sampled_from(USERS), room=st.sampled_from(ROOMS), since=st.sampled_from(SINCE_KINDS),
          pick=st.integers(0, 40), stalled=st.sampled_from((False, False, False, False, True)),
          passes=st.integers(0, 8), leave=st.booleans())
    def subscribe(self, user: User, room: str, since: str, pick: int, stalled: bool, passes: int,
                  leave: bool) -> None:
        """Open a socket: start engine.subscribe and let the loop run ``passes`` passes; with
        ``leave``, the client then goes away (its task is cancelled) if it is not subscribed yet."""
        sink = Sink(stalled)
        since_id = self._since(room, since, pick)
        task = self.loop.create_task(self.engine.subscribe(room, user, sink, since=since_id))
        client = Client(len(self.clients), user, room, since_id, sink, task)
        self.clients.append(client)
        self._step(passes)
        if leave:
            self._leave(client)
        self._collect()
        note(f"{client!r}: since={since_id!r}, stalled={stalled}: {client.state} {client.how}".rstrip())

    @precondition(lambda self: bool(self._in("connecting")))
    @rule(data=st.data(), passes=st.integers(0, 8))
    def interrupt(self, data: st.DataObject, passes: int) -> None:
        """A client still subscribing leaves after ``passes`` more loop passes."""
        client = data.draw(st.sampled_from(self._in("connecting")))
        self._step(passes)
        self._leave(client)
        self._collect()
        note(f"{client!r}: {client.state} {client.how}".rstrip())

    @precondition(lambda self: bool(self._idle()))
    @rule(data=st.data(), text=st.text(st.characters(codec="utf-8"), min_size=1, max_size=6),
          passes=st.integers(0, 4))
    def say(self, data: st.DataObject, text: str, passes: int) -> None:
        """A subscriber says something: engine.say, in a task run ``passes`` passes here."""
        client = data.draw(st.sampled_from(self._idle()))
        assert client.sub is not None
        client.op = self.loop.create_task(self.engine.say(client.sub, text))
        self._step(passes)
        self._collect()

    @precondition(lambda self: bool(self._in("live")))
    @rule(data=st.data())
    def typing(self, data: st.DataObject) -> None:
        """A subscriber types: the others hear of it after every event the room has had."""
        client = data.draw(st.sampled_from(self._in("live")))
        assert client.sub is not None
        others = {c: len(c.sink.frames()) for c in self._in("live") if c.room == client.room}
        self.engine.typing(client.sub)
        last = self.engine.rooms[client.room].last
        for other, count in others.items():
            frames = other.sink.frames()
            if len(frames) > count and frames[-1]["type"] == "typing":
                assert other.newest() == last, f"{other!r} heard the typing before the room's events"
        self._collect()

    @precondition(lambda self: bool(self._in("live")))
    @rule(data=st.data(), passes=st.integers(0, 4))
    def cancel(self, data: st.DataObject, passes: int) -> None:
        """The socket ends the normal way (even in the middle of a say): engine.cancel."""
        client = data.draw(st.sampled_from(self._in("live")))
        self._hang_up(client, "cancelled", passes)
        self._collect()

    @precondition(lambda self: any(not c.sink.stalled for c in self._in("live")))
    @rule(data=st.data())
    def stall(self, data: st.DataObject) -> None:
        """The client stops reading: from now on everything sent to it stays unsent."""
        client = data.draw(st.sampled_from([c for c in self._in("live") if not c.sink.stalled]))
        client.sink.stalled = True

    @rule()
    def tick(self) -> None:
        """``write_delay`` passes: the busy rooms' pending frames are flushed."""
        self.loop.advance(WRITE_DELAY)
        self._step(1)
        self._collect()

    @rule()
    def settle(self) -> None:
        """Let everything in flight finish, then check the whole state against the store."""
        for _ in range(10):
            self._run(self._settle())
            self._collect()
            if self._quiet() and not self._in("connecting") and not self.hang_ups:
                break
        else:
            raise AssertionError("cancelling dropped subscribers did not come to rest")
        self._run(self._check_settled())

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def one_order(self) -> None:
        """Every sink gets a welcome first, then its room's events in one order, never twice;
        nobody hears their own typing; nothing is written to a closed sink."""
        for client in self.clients:
            assert client.sink.writes_after_close == 0, f"{client!r} written to after close"
            frames = client.sink.frames()
            for index in range(client.checked, len(frames)):
                frame = frames[index]
                if index == 0:
                    assert frame["type"] == "welcome", frame
                    assert (frame["room"], frame["you"]) == (client.room, client.user.as_dict())
                    events = frame["archive"]
                elif frame["type"] == "typing":
                    assert frame["room"] == client.room
                    assert frame["user"]["id"] != client.user.id, f"{client!r} heard its own typing"
                    continue
                else:
                    assert frame["type"] in EVENT_TYPES, frame
                    events = [frame]
                for event in events:
                    key = id_key(event["id"])
                    assert key is not None and event["room"] == client.room, event
                    assert key > client.last_key, (
                        f"{client!r} got {event['type']} {event['id']} after {client.last_key}")
                    client.last_key = key
            client.checked = len(frames)

    async def _check_settled(self) -> None:
        self.one_order()
        stored = {room: await self.history.recent(room, KEEP) for room in ROOMS}
        live = self._in("live")
        for client in live:
            self._check_delivery(client, stored[client.room])
        for room in ROOMS:
            here = {c.user.id for c in live if c.room == room}
            counted = {u.id for u in await self.broker.members(room)}
            assert counted == here, f"{room}: broker counts {counted}, live subscribers {here}"
            held = self.engine.rooms.get(room)
            if here:
                assert held is not None, f"{room} has live subscribers but is not held"
                assert set(held.members) == here, f"{room}: engine says {set(held.members)}, not {here}"
            else:
                assert held is None, f"{room} is held with no live subscriber"
            for user in USERS:
                seq = alternate(stored[room], user.id)
                assert all(kind == ("join", "leave")[i % 2] for i, kind in enumerate(seq)), (
                    f"{room}: {user.name}'s joins and leaves are {seq}")
                assert (bool(seq) and seq[-1] == "join") == (user.id in here), (
                    f"{room}: {user.name}'s last of {seq} but live={user.id in here}")
            for client in live:
                if client.room == room:
                    self._check_view(client, here)
        for user in USERS:
            mine = sum(c.user.id == user.id for c in live)
            assert self.engine.quota.held(user.id) == mine, (
                f"quota holds {self.engine.quota.held(user.id)} sockets of {user.name}, {mine} live")
        assert self.engine.connections == len(live), (
            f"the engine writes to {self.engine.connections} sockets, {len(live)} are live")

    def _check_delivery(self, client: Client, stored: list[Event]) -> None:
        """Archive plus live events are exactly the stored ones after ``since`` (resumed), or
        a run of the newest ones with a full-size archive (or all of them)."""
        welcome = client.sink.frames()[0]
        got = client.events()
        if welcome["resumed"]:
            key = id_key(client.since or "")
            assert key is not None and any(e.key == key for e in stored), (
                f"{client!r} resumed from an unknown id {client.since!r}")
            expected = [e for e in stored if e.key > key]
            assert len(welcome["archive"]) <= LIMITS.resume_limit
        else:
            expected = stored[len(stored) - len(got):] if got else []
        assert [e["id"] for e in got] == [e.id for e in expected], (
            f"{client!r} (since={client.since!r}, resumed={welcome['resumed']}) got "
            f"{[e['id'] for e in got]}, stored {[e.id for e in stored]}")
        assert got == [e.as_dict() for e in expected]
        if not welcome["resumed"]:
            assert len(welcome["archive"]) == LIMITS.archive_size or len(got) == len(stored), (
                f"{client!r}'s short archive does not start the room's history")

    def _check_view(self, client: Client, here: set[str]) -> None:
        """The welcome's members, kept up by the live joins and leaves, are the room's members."""
        frames = client.sink.frames()
        view = {m["id"] for m in frames[0]["members"]}
        for frame in frames[1:]:
            if frame["type"] == "join":
                view.add(frame["user"]["id"])
            elif frame["type"] == "leave":
                view.discard(frame["user"]["id"])
        assert view == here, f"{client!r} sees members {view}, live are {here}"

    # -- teardown ---------------------------------------------------------------------------

    async def _shut_down(self) -> None:
        await self._settle(strict=False)
        for client in self.clients:
            task = client.task
            if client.state == "connecting" and task.done() and not task.cancelled() \
                    and task.exception() is None:
                client.sub, client.state = task.result(), "live"
            if client.sub is not None and client.state == "live":
                await self.engine.cancel(client.sub)
                client.state = "gone"
        await self._settle(strict=False)
        await self.broker.close()

    def teardown(self) -> None:
        try:
            self._run(self._shut_down())
        finally:
            left = asyncio.all_tasks(self.loop)
            for task in left:
                task.cancel()
            if left:
                self.loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            ours = [*self.hang_ups, *(c.task for c in self.clients),
                    *(c.op for c in self.clients if c.op is not None)]
            for task in ours:  # after a failure: its error is the report, not a loop warning
                if task.done() and not task.cancelled():
                    task.exception()
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()


TestEngineModel = EngineModel.TestCase
