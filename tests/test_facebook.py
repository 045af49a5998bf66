"""Sign in with Facebook and the data deletion callback (docs/protocol.md), clicked through like a browser
against a real revchat server and a fake Facebook, each on a loopback port."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from revchat.core.history import FORGOTTEN_NAME
from revchat.core.sessions import SESSION_COOKIE, Signer
from revchat.settings import config
from revchat.web import facebook
from revchat.web.facebook import OAUTH_COOKIE, OAUTH_MAX_AGE
from tests.support.browser import DESKTOP, Watch, chromium, require_chromium
from tests.support.fake_facebook import (
    SLOW,
    Failure,
    FakeFacebook,
    Person,
    fake_facebook,
    refused_url,
    s256,
    signed_request,
)
from tests.support.live import Live, frame, frame_of, live_server, make_settings, say

CLIENT_ID = "1234567890"
SECRET = "fb-app-secret-0123456789abcdef"


@dataclass
class Setup:
    live: Live
    fake: FakeFacebook
    browser: httpx.AsyncClient

    async def start(self) -> str:
        """Press "Sign in with Facebook": the dialog URL revchat redirects to."""
        response = await self.browser.get("/auth/facebook")
        assert response.status_code == 302, response.text
        assert OAUTH_COOKIE in response.cookies
        location: str = response.headers["location"]
        return location

    async def dialog(self, url: str) -> str:
        """What the fake dialog sends the browser back to."""
        response = await self.browser.get(url)
        assert response.status_code == 302, response.text
        location: str = response.headers["location"]
        return location

    async def click_through(self) -> httpx.Response:
        """The whole flow up to revchat's answer to the callback."""
        return await self.browser.get(await self.dialog(await self.start()))


@pytest.fixture
async def fb(tmp_path: Path) -> AsyncIterator[Setup]:
    async with fake_facebook(CLIENT_ID, SECRET) as fake:
        settings = make_settings(tmp_path, fb_client_id=CLIENT_ID, fb_client_secret=SECRET,
                                 fb_dialog_url=fake.url, fb_api_url=fake.url, guests=False)
        async with live_server(settings) as live, \
                httpx.AsyncClient(base_url=live.url, timeout=10) as browser:
            yield Setup(live, fake, browser)


def failure_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "revchat.facebook" and r.levelno >= logging.WARNING]


def assert_sign_in_page(response: httpx.Response, status: int, message: str) -> None:
    assert response.status_code == status
    assert message in response.text
    assert "Sign in with Facebook" in response.text
    assert SESSION_COOKIE not in response.cookies


async def test_dialog_url_parameters(fb: Setup) -> None:
    """The dialog URL names the app, the callback, a fresh state and a PKCE S256 challenge."""
    first, second = await fb.start(), await fb.start()
    url = urlsplit(first)
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"{fb.fake.url}/v26.0/dialog/oauth"
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert query["client_id"] == CLIENT_ID
    assert query["redirect_uri"] == f"{fb.live.url}/auth/facebook/callback"
    assert query["response_type"] == "code"
    assert query["scope"] == "public_profile"
    assert query["code_challenge_method"] == "S256"
    assert len(query["state"]) >= 32 and len(query["code_challenge"]) == 43
    again = {k: v[0] for k, v in parse_qs(urlsplit(second).query).items()}
    assert again["state"] != query["state"] and again["code_challenge"] != query["code_challenge"]


async def test_state_cookie_is_short_lived_and_lax(fb: Setup) -> None:
    """State and verifier travel in an HttpOnly, SameSite=Lax cookie that lives ten minutes."""
    response = await fb.browser.get("/auth/facebook")
    header = next(h for h in response.headers.get_list("set-cookie")
                  if h.startswith(OAUTH_COOKIE + "="))
    assert "HttpOnly" in header and "SameSite=Lax" in header and "Max-Age=600" in header


async def test_sign_in_end_to_end(fb: Setup) -> None:
    """Clicking through ends at / with a session; the socket knows the user as fb:<id>."""
    response = await fb.click_through()
    assert response.status_code == 302 and response.headers["location"] == "/"
    cookie = response.cookies[SESSION_COOKIE]
    assert f'{OAUTH_COOKIE}=""; Path=/; Max-Age=0' in ";".join(
        response.headers.get_list("set-cookie")), "the state cookie is used once"
    home = await fb.browser.get("/")
    assert "Welcome Ann Example" in home.text
    person = fb.fake.person
    you = {"id": f"fb:{person.id}", "name": person.name, "avatar": person.picture}
    async with fb.live.connect("lobby", cookie) as ws:
        welcome = await frame(ws)
        assert welcome["you"] == you
        await frame_of(ws, "join")
        await say(ws, "hello from Facebook")
        message = await frame_of(ws, "message")
        assert message["user"] == you and message["text"] == "hello from Facebook"


async def test_profile_is_cleaned(fb: Setup) -> None:
    """Whitespace and control characters leave the name; a non-https picture is no avatar."""
    fb.fake.person = Person(id="42", name=" Ann\n\x1b[31m  Example\t", picture="http://x.test/a.jpg")
    cookie = (await fb.click_through()).cookies[SESSION_COOKIE]
    async with fb.live.connect("lobby", cookie) as ws:
        assert (await frame(ws))["you"] == {"id": "fb:42", "name": "Ann [31m Example",
                                            "avatar": None}


async def test_profile_without_id_is_refused(fb: Setup) -> None:
    """A /me answer without a numeric id signs nobody in (502)."""
    fb.fake.person = Person(id="")
    response = await fb.click_through()
    assert_sign_in_page(response, 502, "Facebook could not sign you in")


async def test_token_request_carries_verifier_and_secret(fb: Setup) -> None:
    """The code exchange sends the client secret in the body and the verifier of the challenge."""
    dialog = await fb.start()
    challenge = parse_qs(urlsplit(dialog).query)["code_challenge"][0]
    await fb.browser.get(await fb.dialog(dialog))
    [sent] = fb.fake.token_requests
    assert sent["client_secret"] == SECRET and sent["client_id"] == CLIENT_ID
    assert sent["authorization"] == ""
    assert sent["grant_type"] == "authorization_code"
    assert sent["redirect_uri"] == f"{fb.live.url}/auth/facebook/callback"
    assert s256(sent["code_verifier"]) == challenge
    [me] = fb.fake.me_requests
    assert me["fields"] == "id,name,picture" and me["appsecret_proof"]


async def test_state_mismatch(fb: Setup, caplog: pytest.LogCaptureFixture) -> None:
    """A callback whose state is not the browser's own shows the sign-in page, 400, no session."""
    callback = await fb.dialog(await fb.start())
    forged = callback.replace("state=", "state=x")
    response = await fb.browser.get(forged)
    assert_sign_in_page(response, 400, "does not belong to your browser")
    assert fb.fake.token_requests == []
    assert failure_logs(caplog) == ["Facebook sign-in failed: the state does not match the cookie"]


async def test_missing_state_cookie(fb: Setup) -> None:
    """A callback in a browser without the state cookie (another browser, cookies off) is 400."""
    callback = await fb.dialog(await fb.start())
    async with httpx.AsyncClient(timeout=10) as other_browser:
        response = await other_browser.get(callback)
    assert_sign_in_page(response, 400, "Please try again")
    assert fb.fake.token_requests == []


async def test_expired_state_cookie(fb: Setup) -> None:
    """A state cookie older than ten minutes no longer signs anyone in."""
    callback = await fb.dialog(await fb.start())
    state = parse_qs(urlsplit(callback).query)["state"][0]
    old = Signer(fb.live.settings.secret_key, "oauth").dumps(
        {"state": state, "verifier": "v" * 64}, now=time.time() - OAUTH_MAX_AGE - 5)
    async with httpx.AsyncClient(timeout=10) as same_browser_later:
        response = await same_browser_later.get(callback,
                                                headers={"cookie": f"{OAUTH_COOKIE}={old}"})
    assert_sign_in_page(response, 400, "took too long")


async def test_callback_is_used_once(fb: Setup) -> None:
    """Replaying a callback after the sign-in finds no state cookie and signs nobody in."""
    callback = await fb.dialog(await fb.start())
    assert (await fb.browser.get(callback)).status_code == 302
    fb.browser.cookies.clear()
    response = await fb.browser.get(callback)
    assert_sign_in_page(response, 400, "Please try again")


async def test_cancelled_sign_in(fb: Setup, caplog: pytest.LogCaptureFixture) -> None:
    """Pressing Cancel in the dialog comes back as error=access_denied: 400 and a kind word."""
    fb.fake.cancel = True
    response = await fb.click_through()
    assert_sign_in_page(response, 400, "You cancelled the Facebook sign-in")
    assert failure_logs(caplog) == ["Facebook sign-in failed: the user cancelled"]


@pytest.mark.parametrize("failure", ["400", "500", "bad_json"])
async def test_token_endpoint_fails(fb: Setup, caplog: pytest.LogCaptureFixture,
                                    failure: Failure) -> None:
    """A token endpoint error or unreadable answer shows the sign-in page with 502, one log line."""
    fb.fake.token_failure = failure
    response = await fb.click_through()
    assert_sign_in_page(response, 502, "Facebook could not sign you in")
    [line] = failure_logs(caplog)
    assert "token endpoint" in line and SECRET not in line
    assert fb.fake.me_requests == []


async def test_facebook_unreachable(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """When the Graph API refuses connections, the sign-in page says so with 502."""
    async with fake_facebook(CLIENT_ID, SECRET) as fake:
        settings = make_settings(tmp_path, fb_client_id=CLIENT_ID, fb_client_secret=SECRET,
                                 fb_dialog_url=fake.url, fb_api_url=refused_url())
        async with live_server(settings) as live, \
                httpx.AsyncClient(base_url=live.url, timeout=10) as browser:
            response = await Setup(live, fake, browser).click_through()
    assert_sign_in_page(response, 502, "could not reach Facebook")
    [line] = failure_logs(caplog)
    assert "ConnectError" in line


async def test_facebook_too_slow(fb: Setup, caplog: pytest.LogCaptureFixture,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A token endpoint slower than the timeout ends on the sign-in page with 502, not a hang."""
    monkeypatch.setattr(facebook, "TIMEOUT", httpx.Timeout(SLOW / 4))
    fb.fake.token_failure = "slow"
    response = await fb.click_through()
    assert_sign_in_page(response, 502, "could not reach Facebook")
    [line] = failure_logs(caplog)
    assert "ReadTimeout" in line


@pytest.mark.parametrize("failure", ["400", "500", "bad_json"])
async def test_me_fails(fb: Setup, caplog: pytest.LogCaptureFixture, failure: Failure) -> None:
    """A failing or unreadable /me shows the sign-in page with 502 and starts no session."""
    fb.fake.me_failure = failure
    response = await fb.click_through()
    assert_sign_in_page(response, 502, "Facebook could not sign you in")
    [line] = failure_logs(caplog)
    assert "/me" in line


async def test_not_configured(live: Live) -> None:
    """Without Facebook credentials the routes answer 404 and say why."""
    async with httpx.AsyncClient(base_url=live.url) as client:
        response = await client.get("/auth/facebook")
        deletion = await client.post("/auth/facebook/data-deletion", data={"signed_request": "x"})
    assert response.status_code == 404 and "Facebook sign-in is not configured" in response.text
    assert deletion.status_code == 404


async def test_data_deletion_anonymises_the_user(fb: Setup) -> None:
    """A valid signed_request anonymises the user's stored events and names a status page."""
    cookie = (await fb.click_through()).cookies[SESSION_COOKIE]
    async with fb.live.connect("lobby", cookie) as ws:
        await frame(ws)
        await say(ws, "remember me not")
        await frame_of(ws, "message")
    person = fb.fake.person
    fb.fake.person = Person(id="777", name="Bob", picture="https://fake-facebook.example/777.jpg")
    async with httpx.AsyncClient(base_url=fb.live.url, timeout=10) as bobs_browser:
        bob = await Setup(fb.live, fb.fake, bobs_browser).click_through()
    async with fb.live.connect("lobby", bob.cookies[SESSION_COOKIE]) as ws:
        await frame(ws)
    request = signed_request({"algorithm": "HMAC-SHA256", "issued_at": int(time.time()),
                              "user_id": person.id}, SECRET)
    # Facebook's servers post it: no browser, no cookie, and whatever Origin they like.
    async with httpx.AsyncClient(base_url=fb.live.url) as facebook:
        response = await facebook.post("/auth/facebook/data-deletion",
                                       data={"signed_request": request},
                                       headers={"origin": "https://www.facebook.com"})
    assert response.status_code == 200, response.text
    answer = response.json()
    code = answer["confirmation_code"]
    assert answer["url"] == f"{fb.live.url}/auth/facebook/deletion?code={code}"
    assert person.id not in code
    events = await fb.live.engine.broker.history.recent("lobby", 50)
    mine = [e for e in events if e.user.id == f"fb:{person.id}"]
    assert {e.type for e in mine} == {"join", "message", "leave"}
    assert all(e.user.name == FORGOTTEN_NAME and e.user.avatar is None for e in mine)
    assert any(e.user.name == "Bob" and e.user.avatar for e in events)
    status = await fb.browser.get(answer["url"])
    assert status.status_code == 200
    assert "Your data was deleted" in status.text and code in status.text


@pytest.mark.parametrize("signed", [
    signed_request({"algorithm": "HMAC-SHA256", "user_id": "10229876543210"}, "not-the-secret"),
    signed_request({"algorithm": "none", "user_id": "10229876543210"}, SECRET),
    signed_request({"algorithm": "HMAC-SHA256", "user_id": "../../etc"}, SECRET),
    "no-dot-here",
    "%%%.%%%",
    "",
], ids=["forged", "algorithm", "user_id", "malformed", "not-base64", "missing"])
async def test_data_deletion_refuses_bad_requests(fb: Setup, signed: str) -> None:
    """A forged or malformed signed_request is refused with a JSON 400 and changes nothing."""
    cookie = (await fb.click_through()).cookies[SESSION_COOKIE]
    async with fb.live.connect("lobby", cookie) as ws:
        await frame(ws)
    async with httpx.AsyncClient(base_url=fb.live.url) as facebook:
        response = await facebook.post("/auth/facebook/data-deletion",
                                       data={"signed_request": signed} if signed else {})
    assert response.status_code == 400
    assert response.json() == {"error": "invalid signed_request"}
    events = await fb.live.engine.broker.history.recent("lobby", 50)
    assert events and all(e.user.name == fb.fake.person.name for e in events)


async def test_deletion_status_needs_a_real_code(fb: Setup) -> None:
    """The status page answers 404 for a code this server did not issue."""
    for code in ["", "abc", "0" * 32, "6a1b2c3d" + "0" * 24]:
        response = await fb.browser.get("/auth/facebook/deletion", params={"code": code})
        assert response.status_code == 404


async def test_guests_off_when_facebook_is_configured(tmp_path: Path) -> None:
    """With Facebook credentials guests are off (POST /auth/guest is 403) unless --guests."""
    flags = {"fb_client_id": CLIENT_ID, "fb_client_secret": SECRET, "data_dir": str(tmp_path),
             "history": "memory://", "secret_key": "k" * 40}
    settings = config.load(flags, environ={}).settings
    assert settings.guests is False
    async with live_server(settings) as live, httpx.AsyncClient(base_url=live.url) as client:
        page = await client.get("/")
        assert "Sign in with Facebook" in page.text and "Enter as guest" not in page.text
        response = await client.post("/auth/guest", data={"name": "Ann"})
        assert response.status_code == 403 and SESSION_COOKIE not in response.cookies
    with_guests = config.load(flags | {"guests": True}, environ={}).settings
    async with live_server(with_guests) as live, httpx.AsyncClient(base_url=live.url) as client:
        response = await client.post("/auth/guest", data={"name": "Ann"})
        assert response.status_code == 302


PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8"
                       "AAAAASUVORK5CYII=")


@pytest.mark.browser
async def test_in_a_browser(fb: Setup) -> None:
    """In Chromium: the button, the dialog and back, then the name and picture in the room."""
    require_chromium()
    from playwright.async_api import expect

    person, watch, pictures = fb.fake.person, Watch(), []

    async def picture(route: Any) -> None:  # Facebook's CDN, served from here: no network.
        pictures.append(route.request.url)
        await route.fulfill(status=200, content_type="image/png", body=PNG)

    async with chromium() as browser:
        context = await browser.new_context(base_url=fb.live.url, viewport=DESKTOP)
        await context.route("https://fake-facebook.example/**", picture)
        page = await context.new_page()
        watch.attach(page)
        await page.goto("/")
        await page.get_by_role("link", name="Sign in with Facebook").click()
        await expect(page.locator(".welcome")).to_have_text(f"Welcome {person.name}")
        await page.goto("/rooms/lobby")
        await page.wait_for_selector("body[data-state=online]")
        await page.locator("#text").fill("hello from Chromium")
        await page.locator("#text").press("Enter")
        message = page.locator("#messages .event.message", has_text="hello from Chromium")
        await expect(message.locator(".name")).to_have_text(person.name)
        await expect(message.locator(".avatar img")).to_have_attribute("src", person.picture)
        me = page.locator("#members .member.mine")
        await expect(me.locator(".avatar img")).to_have_attribute("src", person.picture)
        await expect(me.locator(".avatar img")).to_have_js_property("naturalWidth", 1)
    assert person.picture in pictures
    watch.assert_clean()



async def test_the_code_never_reaches_the_log(fb: Setup, caplog: pytest.LogCaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A callback that fails in a way nothing foresaw (Sanic logs the request's URL with its
    traceback) leaves no code and no state in any log line."""
    caplog.set_level(logging.INFO, logger="sanic")

    async def broken(request: Any, settings: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(facebook, "_sign_in", broken)
    callback = await fb.dialog(await fb.start())
    query = parse_qs(urlsplit(callback).query)
    code, state = query["code"][0], query["state"][0]
    response = await fb.browser.get(callback)
    assert response.status_code == 500
    lines = [r.getMessage() for r in caplog.records if r.name.startswith(("sanic", "revchat"))]
    assert any("/auth/facebook/callback" in line for line in lines)
    assert not [line for line in lines if code in line or state in line]


async def test_data_deletion_ends_the_users_sessions(fb: Setup) -> None:
    """After Facebook's data deletion, the user's cookie opens nothing and their open socket is
    closed with 4401 "signed out"; other users are not touched."""
    cookie = (await fb.click_through()).cookies[SESSION_COOKIE]
    person = fb.fake.person
    async with fb.live.connect("lobby", cookie) as ws:
        await frame(ws)
        request = signed_request({"algorithm": "HMAC-SHA256", "issued_at": int(time.time()),
                                  "user_id": person.id}, SECRET)
        async with httpx.AsyncClient(base_url=fb.live.url) as facebook_servers:
            answer = await facebook_servers.post("/auth/facebook/data-deletion",
                                                 data={"signed_request": request})
        assert answer.status_code == 200
        with pytest.raises(ConnectionClosed) as closed:
            await frame_of(ws, "never")
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    page = await fb.browser.get("/rooms/lobby", headers={"cookie": f"{SESSION_COOKIE}={cookie}"})
    assert page.status_code == 302
    again = (await fb.click_through()).cookies[SESSION_COOKIE]  # signing in anew works
    async with fb.live.connect("lobby", again) as ws:
        assert (await frame(ws))["type"] == "welcome"
