"""docs/protocol.md over HTTP, with sanic-testing's client as Sanic users test their apps."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sanic import Sanic

from revchat.core.sessions import SESSION_COOKIE
from revchat.settings.config import Settings
from revchat.web.app import CSP, create_app
from tests.support.live import make_settings

ORIGIN = "http://127.0.0.1:9000"


@pytest.fixture
def app(settings: Settings) -> Iterator[Sanic]:
    yield create_app(settings, name="revchat_http_test")


def sign_in(app: Sanic, name: str = "Ann") -> str:
    _, response = app.test_client.post("/auth/guest", data={"name": name},
                                       headers={"origin": ORIGIN}, allow_redirects=False)
    assert response.status == 302
    return response.cookies[SESSION_COOKIE]


def session(cookie: str) -> dict[str, str]:
    return {"cookie": f"{SESSION_COOKIE}={cookie}"}


def test_sign_in_page_offers_guest_form(app: Sanic) -> None:
    """Signed out, / shows the nickname form and no Facebook button (not configured)."""
    _, response = app.test_client.get("/")
    assert response.status == 200
    assert 'action="/auth/guest"' in response.text
    assert "Sign in with Facebook" not in response.text


def test_every_page_has_the_security_headers(app: Sanic) -> None:
    """Pages carry a CSP without inline scripts, nosniff and a frame ban."""
    _, response = app.test_client.get("/")
    assert response.headers["content-security-policy"] == CSP
    assert "unsafe-inline" not in CSP and "script-src 'self'" in CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"


def test_guest_sign_in_sets_a_signed_httponly_lax_cookie(app: Sanic) -> None:
    """A good nickname starts a session: 302 to / and an HttpOnly SameSite=Lax cookie."""
    _, response = app.test_client.post("/auth/guest", data={"name": "  Ann  "},
                                       allow_redirects=False)
    assert response.status == 302 and response.headers["location"] == "/"
    header = response.headers["set-cookie"]
    assert "HttpOnly" in header and "SameSite=Lax" in header and "Secure" not in header
    cookie = response.cookies[SESSION_COOKIE]
    _, page = app.test_client.get("/", headers=session(cookie))
    assert "Welcome Ann" in page.text and 'action="/auth/logout"' in page.text


def test_secure_cookie_behind_https(tmp_path: Path) -> None:
    """With an https public URL the session cookie is Secure."""
    app = create_app(make_settings(tmp_path, public_url="https://chat.example.org"),
                     name="revchat_https_test")
    _, response = app.test_client.post("/auth/guest", data={"name": "Ann"},
                                       allow_redirects=False)
    assert "Secure" in response.headers["set-cookie"]


@pytest.mark.parametrize(
    ("name", "message"),
    [("", "choose a name"), ("   ", "choose a name"), ("x" * 33, "at most 32"),
     ("bad\x07bell", "control characters"), ("new\nline", "control characters")],
)
def test_bad_guest_name_shows_the_form_again(app: Sanic, name: str, message: str) -> None:
    """A bad nickname gets the form again with the reason, status 400, and no session."""
    _, response = app.test_client.post("/auth/guest", data={"name": name},
                                       allow_redirects=False)
    assert response.status == 400
    assert message in response.text
    assert 'action="/auth/guest"' in response.text
    assert SESSION_COOKIE not in response.cookies


def test_guest_name_is_escaped_on_the_page(app: Sanic) -> None:
    """A name with HTML is shown as text on the welcome page."""
    cookie = sign_in(app, "<img src=x onerror=alert(1)>")
    _, page = app.test_client.get("/", headers=session(cookie))
    assert "<img src=x" not in page.text
    assert "&lt;img src=x onerror=alert(1)&gt;" in page.text


def test_cross_origin_post_is_refused(app: Sanic) -> None:
    """A POST whose Origin is not the public URL's is refused with 403 (no CSRF token needed)."""
    _, response = app.test_client.post("/auth/guest", data={"name": "Ann"},
                                       headers={"origin": "https://evil.example"},
                                       allow_redirects=False)
    assert response.status == 403
    assert SESSION_COOKIE not in response.cookies
    _, response = app.test_client.post("/auth/logout", headers={"origin": "https://evil.example"},
                                       allow_redirects=False)
    assert response.status == 403


@pytest.mark.parametrize("origin", ["http://localhost:9000", "http://127.0.0.1:9000",
                                    "http://[::1]:9000"])
def test_loopback_aliases_of_the_public_origin_are_accepted(app: Sanic, origin: str) -> None:
    """On a loopback public URL, localhost, 127.0.0.1 and [::1] are the same origin, for the
    sign-in form and for signing out."""
    _, response = app.test_client.post("/auth/guest", data={"name": "Ann"},
                                       headers={"origin": origin}, allow_redirects=False)
    assert response.status == 302
    cookie = response.cookies[SESSION_COOKIE]
    _, response = app.test_client.post("/auth/logout", headers={"origin": origin, **session(cookie)},
                                       allow_redirects=False)
    assert response.status == 302


@pytest.mark.parametrize("origin", ["http://localhost:9001", "https://localhost:9000",
                                    "http://[::1]", "http://127.0.0.2:9000", "http://[::2]:9000",
                                    "null"])
def test_other_ports_schemes_and_hosts_are_foreign(app: Sanic, origin: str) -> None:
    """The loopback aliases keep the public URL's scheme and port; anything else is refused."""
    _, response = app.test_client.post("/auth/guest", data={"name": "Ann"},
                                       headers={"origin": origin}, allow_redirects=False)
    assert response.status == 403


@pytest.mark.parametrize("origin", ["http://localhost", "http://127.0.0.1", "http://[::1]",
                                    "https://localhost"])
def test_a_public_url_that_is_not_loopback_has_no_aliases(tmp_path: Path, origin: str) -> None:
    """With --public-url https://chat.example.org only that origin is accepted, not loopback ones."""
    app = create_app(make_settings(tmp_path, public_url="https://chat.example.org"),
                     name="revchat_public_origin_test")
    _, response = app.test_client.post("/auth/guest", data={"name": "Ann"},
                                       headers={"origin": origin}, allow_redirects=False)
    assert response.status == 403
    _, response = app.test_client.post("/auth/guest", data={"name": "Ann"},
                                       headers={"origin": "https://chat.example.org"},
                                       allow_redirects=False)
    assert response.status == 302


def test_guests_off_refuses_guest_sign_in(tmp_path: Path) -> None:
    """With --no-guests the guest form is gone and POST /auth/guest is 403."""
    app = create_app(make_settings(tmp_path, guests=False), name="revchat_noguest_test")
    _, response = app.test_client.get("/")
    assert 'action="/auth/guest"' not in response.text
    _, response = app.test_client.post("/auth/guest", data={"name": "Ann"},
                                       allow_redirects=False)
    assert response.status == 403


def test_logout_ends_the_session(app: Sanic) -> None:
    """POST /auth/logout clears the cookie and goes back to /."""
    cookie = sign_in(app)
    _, response = app.test_client.post("/auth/logout", headers=session(cookie),
                                       allow_redirects=False)
    assert response.status == 302 and response.headers["location"] == "/"
    assert 'revchat_session=""' in response.headers["set-cookie"] or \
        "Max-Age=0" in response.headers["set-cookie"]


def test_room_page_needs_a_session(app: Sanic) -> None:
    """Signed out, a room page redirects to /; signed in it is the chat page of that room."""
    _, response = app.test_client.get("/rooms/lobby", allow_redirects=False)
    assert response.status == 302 and response.headers["location"] == "/"
    cookie = sign_in(app)
    _, response = app.test_client.get("/rooms/Dev_Team-2", headers=session(cookie))
    assert response.status == 200
    assert 'data-room="dev_team-2"' in response.text
    assert '<script type="module" src="/static/js/room.js"' in response.text
    assert "<script>" not in response.text


@pytest.mark.parametrize("room", ["a" * 65, "dot.ted", "sp%20ace", "%3Cb%3E"])
def test_bad_room_names_are_404(app: Sanic, room: str) -> None:
    """Anything but 1-64 letters, digits, - and _ is not a room."""
    cookie = sign_in(app)
    _, response = app.test_client.get(f"/rooms/{room}", headers=session(cookie))
    assert response.status == 404


def test_room_chooser_redirects_and_validates(app: Sanic) -> None:
    """The chooser goes to the named room (lower case); a bad name is shown again with 400."""
    _, response = app.test_client.get("/rooms?room=Dev", allow_redirects=False)
    assert response.status == 302 and response.headers["location"] == "/rooms/dev"
    _, response = app.test_client.get("/rooms?room=no%20spaces", allow_redirects=False)
    assert response.status == 400 and "Room names are" in response.text


def test_history_endpoint(app: Sanic) -> None:
    """401 signed out; signed in, JSON pages of events oldest first; bad limit 400."""
    _, response = app.test_client.get("/rooms/lobby/history")
    assert response.status == 401
    cookie = sign_in(app)
    _, response = app.test_client.get("/rooms/lobby/history?limit=10",
                                      headers=session(cookie))
    assert response.status == 200 and response.json == {"events": [], "more": False}
    for bad in ("0", "201", "x"):
        _, response = app.test_client.get(f"/rooms/lobby/history?limit={bad}",
                                          headers=session(cookie))
        assert response.status == 400


def test_healthz_names_its_parts(app: Sanic) -> None:
    """/healthz answers exactly the documented fields: status, broker, history, connections,
    rooms and the worker's process id."""
    _, response = app.test_client.get("/healthz")
    assert response.status == 200
    assert response.json == {"status": "ok", "broker": "memory", "history": "memory",
                             "connections": 0, "rooms": 0, "worker": os.getpid()}


def test_healthz_and_metrics(app: Sanic) -> None:
    """/healthz says ok with the parts named; /metrics is Prometheus text."""
    _, response = app.test_client.get("/healthz")
    assert response.status == 200
    assert response.json["status"] == "ok" and response.json["history"] == "memory"
    _, response = app.test_client.get("/metrics")
    assert response.status == 200
    assert "revchat_connections 0.0" in response.text
    assert "revchat_slow_consumers_total" in response.text


def test_static_files_are_served(app: Sanic) -> None:
    """The page's script and style come from revchat itself."""
    for path in ("/static/js/room.js", "/static/js/codes.js", "/static/style.css"):
        _, response = app.test_client.get(path)
        assert response.status == 200 and len(response.body) > 100


def test_pages_load_nothing_from_another_origin(app: Sanic) -> None:
    """The sign-in and room pages, their script and their style load nothing from elsewhere (no
    framework from a CDN, no external font): every src/href is revchat's own /static/."""
    cookie = sign_in(app)
    bodies = [app.test_client.get(path, headers=session(cookie))[1].text
              for path in ("/", "/rooms/lobby", "/static/js/room.js", "/static/style.css")]
    page_links = re.findall(r'(?:src|href)="([^"]*)"', bodies[0] + bodies[1])
    assert page_links and all(link.startswith(("/static/", "/rooms", "/", "#")) and
                              not link.startswith("//") for link in page_links), page_links
    for body in bodies:
        assert not re.search(r"(?:src|href)\s*=\s*[\"']?(?:https?:)?//", body)
        assert not re.search(r"@import|@font-face|url\(\s*[\"']?(?:https?:)?//", body)


def test_unknown_page_is_a_clean_404(app: Sanic) -> None:
    """An unknown path answers 404 with a page, not a traceback."""
    _, response = app.test_client.get("/nope", headers={"accept": "text/html"})
    assert response.status == 404
    assert "Traceback" not in response.text and "Back to revchat" in response.text
