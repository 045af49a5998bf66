"""The chat page in a real browser: the system Chromium driven by Playwright, against a real
revchat server running in the test's event loop. Waits are on conditions, never fixed sleeps.

Without /usr/bin/chromium these tests skip, except under CI=true, where they fail."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from revchat.core.events import Draft, User
from tests.support.browser import (
    DESKTOP,
    DOCS,
    PHONE,
    Server,
    Watch,
    chromium,
    guest_page,
    require_chromium,
    server_on,
)
from tests.support.live import Live, frame, frame_of, live_server, make_settings, say

try:
    from playwright.async_api import expect
except ImportError:  # require_chromium() skips or fails with the reason
    expect = None  # type: ignore[assignment]
else:
    expect.set_options(timeout=10_000)

pytestmark = pytest.mark.browser

XSS = "<img src=x onerror=alert(1)>"
MINE = re.compile(r"\bmine\b")


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    require_chromium()
    async with chromium() as launched:
        yield launched


@pytest.fixture
def watch() -> Iterator[Watch]:
    """Every page a test opens is watched; none may open a dialog, throw or break the CSP."""
    watched = Watch()
    yield watched
    watched.assert_clean()


def messages(page: Any, text: str | None = None) -> Any:
    found = page.locator("#messages .event.message")
    if text is not None:
        found = found.filter(has=page.locator(".text", has_text=re.compile("^" + re.escape(text) + "$")))
    return found


async def send(page: Any, text: str) -> None:
    """Type into the composer and press Enter, as a person would."""
    await page.locator("#text").fill(text)
    await page.locator("#text").press("Enter")
    await expect(messages(page, text)).to_have_count(1)


async def test_two_guests_chat(browser: Any, watch: Watch, live: Live) -> None:
    """Two guests in two browser contexts: each sees the other's message; their own is marked as
    theirs (by user id: another guest who is also called Ann does not see it as hers)."""
    ann = await guest_page(browser, watch, live.url, "Ann")
    bob = await guest_page(browser, watch, live.url, "Bob")

    await send(ann, "Hi Bob!")
    own = messages(ann, "Hi Bob!")
    await expect(own).to_have_class(MINE)
    await expect(own.locator(".you")).to_have_text("you")
    theirs = messages(bob, "Hi Bob!")
    await expect(theirs).to_have_count(1)
    await expect(theirs).not_to_have_class(MINE)
    await expect(theirs.locator(".you")).to_have_count(0)
    await expect(theirs.locator(".name")).to_have_text("Ann")

    await bob.locator("#text").fill("Hello Ann")
    await bob.get_by_role("button", name="Send", exact=True).click()
    await expect(messages(ann, "Hello Ann")).not_to_have_class(MINE)
    await expect(messages(bob, "Hello Ann")).to_have_class(MINE)

    # local time, with the exact instant in the machine-readable attribute
    stamp = messages(ann, "Hi Bob!").locator("time")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT.*Z", await stamp.get_attribute("datetime") or "")
    assert re.search(r"\d\d?[:.]\d\d", await stamp.inner_text())

    other_ann = await guest_page(browser, watch, live.url, "Ann")
    await expect(messages(other_ann, "Hi Bob!")).to_have_count(1)
    await expect(messages(other_ann, "Hi Bob!")).not_to_have_class(MINE)
    await expect(other_ann.locator("#member-count")).to_have_text("3 members")
    assert watch.dialogs == []


async def test_join_leave_and_members(browser: Any, watch: Watch, live: Live) -> None:
    """Joins and leaves show as notices apart from messages; the member list and count follow."""
    ann = await guest_page(browser, watch, live.url, "Ann")
    await expect(ann.locator("#member-count")).to_have_text("1 member")
    await expect(ann.locator("#members .member")).to_have_count(1)
    await expect(ann.locator("#members .member.mine .name")).to_have_text("Ann")

    bob = await guest_page(browser, watch, live.url, "Bob")
    joined = ann.locator("#messages .event.join").filter(has_text="Bob")
    await expect(joined).to_have_count(1)
    await expect(joined).to_contain_text("Bob joined")
    await expect(joined.locator(".bubble")).to_have_count(0)  # a notice, not a message
    await expect(ann.locator("#member-count")).to_have_text("2 members")
    await expect(ann.locator("#members .member .name")).to_have_text(["Ann", "Bob"])
    await expect(bob.locator("#members .member.mine .name")).to_have_text("Bob")

    await bob.context.close()
    left = ann.locator("#messages .event.leave").filter(has_text="Bob")
    await expect(left).to_contain_text("Bob left")
    await expect(ann.locator("#member-count")).to_have_text("1 member")
    await expect(ann.locator("#members .member .name")).to_have_text(["Ann"])


async def test_typing_is_seen_by_the_other(browser: Any, watch: Watch, live: Live) -> None:
    """Typing in the composer shows "Bob is typing…" to Ann, gone once Bob's message arrives."""
    ann = await guest_page(browser, watch, live.url, "Ann")
    bob = await guest_page(browser, watch, live.url, "Bob")
    await expect(ann.locator("#member-count")).to_have_text("2 members")
    await bob.locator("#text").press_sequentially("hel")
    await expect(ann.locator("#typing")).to_have_text("Bob is typing…")
    await expect(bob.locator("#typing")).to_have_text("")  # nobody is told about themselves
    await bob.locator("#text").press_sequentially("lo")
    await bob.locator("#text").press("Enter")
    await expect(messages(ann, "hello")).to_have_count(1)
    await expect(ann.locator("#typing")).to_have_text("")


async def test_html_from_users_is_only_text(browser: Any, watch: Watch, live: Live) -> None:
    """An HTML payload as a name and as a message shows as text: no element, no dialog."""
    mallory = await guest_page(browser, watch, live.url, XSS)
    bob = await guest_page(browser, watch, live.url, "Bob")
    await send(mallory, XSS)
    for page in (mallory, bob):
        message = messages(page, XSS)
        await expect(message).to_have_count(1)
        await expect(message.locator(".name")).to_have_text(XSS)
        await expect(page.locator("#members .name", has_text=XSS)).to_have_count(1)
        await expect(page.locator("#messages .event.join .name", has_text=XSS)).to_have_count(1)
        assert await page.locator("img").count() == 0
    await expect(mallory.locator(".me")).to_contain_text(XSS)
    await mallory.goto("/")
    await expect(mallory.locator(".welcome")).to_have_text("Welcome " + XSS)
    assert await mallory.locator('img[src="x"]').count() == 0
    assert watch.dialogs == []


async def test_too_long_message_shows_the_servers_error(
    browser: Any, watch: Watch, live: Live
) -> None:
    """Past the textarea's maxlength (removed here), the server refuses the message: its error
    shows next to the composer, the text is given back, and nothing is published."""
    ann = await guest_page(browser, watch, live.url, "Ann")
    box = ann.locator("#text")
    await box.evaluate("box => box.removeAttribute('maxlength')")
    too_long = "é" * 2001
    await box.fill(too_long)
    await expect(ann.locator("#count")).to_have_class(re.compile(r"\bover\b"))
    await expect(ann.locator("#count-value")).to_have_text("2001")
    await box.press("Enter")
    error = ann.locator("#composer-error")
    await expect(error).to_contain_text("longer than 2000 characters")
    await expect(error).to_have_attribute("role", "alert")
    await expect(box).to_have_value(too_long)
    await expect(messages(ann)).to_have_count(0)
    # editing clears the error; a good message goes through
    await box.fill("short enough")
    await expect(error).to_be_hidden()
    await box.press("Enter")
    await expect(messages(ann, "short enough")).to_have_count(1)


async def test_rate_limited_message_shows_the_servers_error(
    browser: Any, watch: Watch, tmp_path: Path
) -> None:
    """Over the rate limit, the server's rate_limited error shows and the text is kept."""
    async with live_server(make_settings(tmp_path, burst=1, rate=0.01)) as live:
        ann = await guest_page(browser, watch, live.url, "Ann")
        await send(ann, "first")
        await ann.locator("#text").fill("second")
        await ann.locator("#text").press("Enter")
        await expect(ann.locator("#composer-error")).to_contain_text("too fast")
        await expect(ann.locator("#text")).to_have_value("second")
        await expect(messages(ann)).to_have_count(1)


async def test_reconnects_after_a_restart(browser: Any, watch: Watch, tmp_path: Path) -> None:
    """The server stops: the page says it is offline, reconnects by itself to the restarted
    server (same port, same SQLite history) and shows what was said meanwhile, nothing twice."""
    settings = make_settings(tmp_path, history=f"sqlite:///{tmp_path}/h.db")
    first = Server(settings)
    live = await first.start()
    try:
        await first.serve()
        ann = await guest_page(browser, watch, live.url, "Ann")
        bob_cookie = await live.sign_in("Bob")
        async with live.connect("lobby", bob_cookie) as ws:
            bob = User.from_dict((await frame(ws))["you"])
            await say(ws, "before the restart")
            await frame_of(ws, "message")
        await expect(messages(ann, "before the restart")).to_have_count(1)
        await send(ann, "mine, before")
        # a mark on a shown message: still there afterwards means the page resumed (?since=)
        # rather than rebuilt its list from the archive
        await messages(ann, "before the restart").evaluate("item => { item.keptMark = true; }")
    finally:
        await first.stop()

    banner = ann.locator("#banner")
    await expect(banner).to_be_visible()
    await expect(banner).to_contain_text("Reconnecting")
    await expect(ann.locator("body")).to_have_attribute("data-state", "offline")
    await ann.locator("#text").fill("while offline")
    await ann.locator("#text").press("Enter")
    await expect(ann.locator("#composer-error")).to_contain_text("Not connected")
    await expect(ann.locator("#text")).to_have_value("while offline")

    second = Server(settings, port=live.port)
    live2 = await second.start()
    try:
        # Said while the page was away: stored before the new server accepts anyone, so the page
        # can only learn of it by resuming with ?since=.
        await live2.engine.broker.publish(
            Draft("message", "lobby", bob, int(time.time() * 1000), "said while you were away"))
        await second.serve()
        await expect(ann.locator("body")).to_have_attribute("data-state", "online", timeout=30_000)
        await expect(banner).to_be_hidden()
        await expect(messages(ann, "said while you were away")).to_have_count(1)
        for text in ("before the restart", "mine, before"):
            await expect(messages(ann, text)).to_have_count(1)
        assert await messages(ann, "before the restart").evaluate("item => item.keptMark === true")
        ids = await ann.locator("#messages li").evaluate_all("items => items.map(i => i.dataset.id)")
        assert len(ids) == len(set(ids)), ids
        assert [int(i) for i in ids] == sorted(int(i) for i in ids), ids

        # the text kept while offline can be sent now, and live messages flow again
        await ann.locator("#text").press("Enter")
        await expect(messages(ann, "while offline")).to_have_class(MINE)
        async with live2.connect("lobby", bob_cookie) as ws:
            await frame(ws)
            await say(ws, "after the restart")
            await frame_of(ws, "message")
        await expect(messages(ann, "after the restart")).to_have_count(1)
        texts = await messages(ann).locator(".text").all_inner_texts()
        assert texts == ["before the restart", "mine, before", "said while you were away",
                         "while offline", "after the restart"]
    finally:
        await second.stop()


async def test_scrolling_up_loads_older_messages(
    browser: Any, watch: Watch, tmp_path: Path
) -> None:
    """Past the welcome's archive, reading up to the top fetches older pages of history, oldest
    first, keeping the reader's place, until the beginning of the room."""
    async with live_server(make_settings(tmp_path, archive_size=10, rate=0)) as live:
        cookie = await live.sign_in("Bob")
        async with live.connect("lobby", cookie) as ws:
            await frame(ws)
            for i in range(120):
                await say(ws, f"m{i:03}")
            for _ in range(120):
                await frame_of(ws, "message")
        ann = await guest_page(browser, watch, live.url, "Ann")
        shown = messages(ann)
        scroller = ann.locator("#scroller")
        beginning = ann.locator("#beginning")
        rounds = 0
        while not await beginning.is_visible():
            rounds += 1
            assert rounds < 20, "scrolling up never reached the beginning"
            before = await shown.count()
            await scroller.evaluate("s => { s.scrollTop = 0; }")
            await ann.wait_for_function(
                """n => document.querySelectorAll('#messages .event.message').length > n
                        || !document.getElementById('beginning').hidden""",
                arg=before,
            )
            if await shown.count() > before and not await beginning.is_visible():
                # the place is kept: the page did not jump to the top of what it loaded
                assert await scroller.evaluate("s => s.scrollTop") > 0
        texts = await shown.locator(".text").all_inner_texts()
        assert texts == [f"m{i:03}" for i in range(120)]
        await expect(beginning).to_contain_text("beginning of #lobby")
        await expect(ann.locator("#older")).to_be_hidden()


async def test_room_switcher_and_sign_out(browser: Any, watch: Watch, live: Live) -> None:
    """The header's room switcher goes to another room; Sign out ends the session."""
    ann = await guest_page(browser, watch, live.url, "Ann")
    await expect(ann.locator("h1")).to_have_text("#lobby")
    await ann.get_by_label("Switch to room").fill("Kitchen")
    await ann.get_by_label("Switch to room").press("Enter")
    await ann.wait_for_url(live.url + "/rooms/kitchen")
    await expect(ann.locator("h1")).to_have_text("#kitchen")
    await expect(ann.locator("body")).to_have_attribute("data-state", "online")
    await expect(ann.locator("#member-count")).to_have_text("1 member")
    await ann.get_by_role("button", name="Sign out").click()
    await ann.wait_for_url(live.url + "/")
    await expect(ann.get_by_label("Nickname")).to_be_visible()
    await ann.goto("/rooms/lobby")
    await ann.wait_for_url(live.url + "/")


async def test_keyboard_only(browser: Any, watch: Watch, live: Live) -> None:
    """Sign in, join, reach the composer with Tab, write two lines (Shift+Enter) and send (Enter),
    all without a mouse."""
    context = await browser.new_context(base_url=live.url, viewport=DESKTOP)
    page = await context.new_page()
    watch.attach(page)
    await page.goto("/")
    await expect(page.get_by_label("Nickname")).to_be_focused()  # autofocus
    await page.keyboard.type("Kim")
    await page.keyboard.press("Enter")
    await expect(page.locator(".welcome")).to_have_text("Welcome Kim")
    await page.keyboard.press("Tab")
    await expect(page.get_by_label("Room")).to_be_focused()
    await page.keyboard.press("Enter")
    await page.wait_for_url(live.url + "/rooms/lobby")
    await page.wait_for_selector("body[data-state=online]")

    await page.keyboard.press("Tab")
    await expect(page.get_by_role("link", name="Skip to the message box")).to_be_focused()
    box = page.get_by_label("Message #lobby")
    for _ in range(15):
        await page.keyboard.press("Tab")
        if await box.evaluate("box => box === document.activeElement"):
            break
    await expect(box).to_be_focused()
    await page.keyboard.type("typed without a mouse")
    await page.keyboard.press("Shift+Enter")
    await page.keyboard.type("second line")
    await expect(box).to_have_value("typed without a mouse\nsecond line")
    await page.keyboard.press("Enter")
    sent = messages(page, "typed without a mouse\nsecond line")
    await expect(sent).to_have_count(1)
    await expect(sent).to_have_class(MINE)
    await expect(box).to_have_value("")
    await expect(box).to_be_focused()

    # the skip link takes the keyboard straight to the composer
    await page.reload()
    await page.wait_for_selector("body[data-state=online]")
    await page.keyboard.press("Tab")
    await page.keyboard.press("Enter")
    await expect(box).to_be_focused()


async def test_accessible_structure(browser: Any, watch: Watch, live: Live) -> None:
    """Labelled controls, the message list a live region, the member list a labelled region."""
    page = await guest_page(browser, watch, live.url, "Ann")
    await expect(page.locator("#messages")).to_have_attribute("aria-live", "polite")
    await expect(page.get_by_label("Message #lobby")).to_be_visible()
    await expect(page.get_by_label("Switch to room")).to_be_attached()
    await expect(page.get_by_role("complementary", name="Members")).to_be_visible()
    await expect(page.get_by_role("region", name="Conversation in #lobby")).to_be_visible()
    await expect(page.locator("#composer-error")).to_have_attribute("role", "alert")
    await expect(page.locator("#banner")).to_have_attribute("role", "status")
    unlabelled = await page.evaluate(
        """() => [...document.querySelectorAll('input, textarea, button, select')]
              .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                           && !e.textContent.trim())
              .map(e => e.outerHTML)"""
    )
    assert unlabelled == []


async def test_phone_layout(browser: Any, watch: Watch, live: Live) -> None:
    """At 375 px wide nothing overflows sideways, long words and names included."""
    bob = await guest_page(browser, watch, live.url, "Bob")
    ann = await guest_page(
        browser, watch, live.url, "Ann Longname-Withouta-Break", viewport=PHONE,
        device_scale_factor=2, is_mobile=True, has_touch=True, color_scheme="light",
    )
    await send(bob, "Are you on your phone?")
    await send(ann, "Yes! Testing the small screen.")
    await send(bob, "Here is a long link: https://example.org/" + "averyveryverylongpath" * 4)
    await send(ann, "Wrapped nicely. See you in #kitchen later?")
    await expect(messages(ann)).to_have_count(4)
    overflow = await ann.evaluate(
        """() => {
            const width = document.documentElement.clientWidth;
            const bad = [];
            const scrollWidth = document.documentElement.scrollWidth;
            if (scrollWidth > width) bad.push('document ' + scrollWidth);
            for (const e of document.querySelectorAll(
                    '.top, .top *, .composer, .composer *, #scroller, .bubble, .notice, .members, #typing')) {
                const r = e.getBoundingClientRect();
                if (r.width && (r.left < -0.5 || r.right > width + 0.5)) bad.push(e.className || e.tagName);
            }
            return bad;
        }"""
    )
    assert overflow == []
    for visible in ("#text", "#composer button", "#member-count", ".top button"):
        await expect(ann.locator(visible).first).to_be_in_viewport()
    DOCS.mkdir(exist_ok=True)
    await ann.screenshot(path=str(DOCS / "screenshot-phone.png"), animations="disabled")


async def test_screenshots_of_a_conversation(browser: Any, watch: Watch, tmp_path: Path) -> None:
    """Two people chatting on a desktop, for the README (light, and dark)."""
    async with server_on(make_settings(tmp_path, rate=0)) as server:
        assert server.live is not None
        url = server.live.url
        screen: dict[str, Any] = {"viewport": {"width": 1280, "height": 800}, "color_scheme": "light"}
        ann = await guest_page(browser, watch, url, "Ann Lee", **screen)
        bob = await guest_page(browser, watch, url, "Bob Martin", **screen)
        cy = await guest_page(browser, watch, url, "Cyrille", **screen)
        await send(bob, "Morning! Did the new chat server go out?")
        await send(ann, "It did. revchat is running on the small box in the office.")
        await send(ann, "History lives in SQLite, so a restart loses nothing.")
        await send(cy, "Nice, I restarted it twice this morning and my tab just picked up again.")
        await send(bob, "And what if someone posts HTML?\n<b>bold?</b>")
        await send(ann, "Shown as plain text, like that one.")
        await cy.context.close()
        await expect(ann.locator("#messages .event.leave")).to_have_count(1)
        await bob.locator("#text").press_sequentially("Great, then")
        await expect(ann.locator("#typing")).to_have_text("Bob Martin is typing…")
        await ann.locator("#text").fill("Let's move the stand-up here")
        DOCS.mkdir(exist_ok=True)
        await ann.screenshot(path=str(DOCS / "screenshot-chat.png"), animations="disabled")
        await ann.emulate_media(color_scheme="dark")
        await ann.screenshot(path=str(DOCS / "screenshot-dark.png"), animations="disabled")


async def test_signing_out_in_one_tab_signs_out_the_others(browser: Any, watch: Watch,
                                                           live: Live) -> None:
    """Two tabs of one session: "Sign out" in one ends the session on the server, so the other
    tab's socket is closed and it says so at once, offering to sign in, instead of reconnecting."""
    first = await guest_page(browser, watch, live.url, "Ann")
    second = await first.context.new_page()
    watch.attach(second)
    await second.goto("/rooms/lobby")
    await second.wait_for_selector("body[data-state=online]")
    await first.get_by_role("button", name="Sign out").click()
    await first.wait_for_url(re.compile(r"/$"))
    await second.wait_for_selector("body[data-state=signed-out]")
    await expect(second.locator("#banner-text")).to_have_text("You are signed out.")
    await expect(first.get_by_label("Nickname")).to_be_visible()


async def test_light_and_dark_follow_the_system(browser: Any, watch: Watch, live: Live) -> None:
    """The page is light when the system asks for light and dark when it asks for dark (the
    colours of the page and its text swap sides), with no reload."""

    def luminance(rgb: str) -> float:
        red, green, blue = (int(v) for v in re.findall(r"\d+", rgb)[:3])
        return (0.2126 * red + 0.7152 * green + 0.0722 * blue) / 255

    page = await guest_page(browser, watch, live.url, "Ann", color_scheme="light")
    colours = "() => [getComputedStyle(document.body).backgroundColor, getComputedStyle(document.body).color]"
    light_bg, light_text = await page.evaluate(colours)
    await page.emulate_media(color_scheme="dark")
    dark_bg, dark_text = await page.evaluate(colours)
    assert luminance(light_bg) > 0.5 > luminance(light_text), (light_bg, light_text)
    assert luminance(dark_bg) < 0.5 < luminance(dark_text), (dark_bg, dark_text)
