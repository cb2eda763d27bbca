"""Safety of a local server that any web page the user visits can send requests to.

- DNS rebinding: a request whose Host header is not one of ours (127.0.0.1, localhost, [::1],
  the --host name, any --allow-host) is refused, so a hostile name resolved to 127.0.0.1 gets nothing.
- Token (required when listening beyond loopback, as Jupyter does): given once as `?token=`, then
  kept in an HttpOnly SameSite=Strict cookie; scripts send `Authorization: Bearer T` or `X-Ragvl-Token`.
- CSRF: a state-changing request (POST, DELETE, ...) from another origin is refused unless it
  carries the token in a header or the query; a cookie alone never counts for it.
Refusals are JSON errors with a 4xx status.
"""

from __future__ import annotations

import hmac
import json
from urllib.parse import parse_qs

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def cookie_name(port: int) -> str:
    """Per port: browsers share cookies between ports of one host."""
    return f"ragvl_token_{port}"


async def send_json(send: Send, status: int, body: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": data})


class Guard:
    """ASGI middleware: Host allow-list, token, CSRF (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, host: str, port: int, token: str | None, allow_hosts: tuple[str, ...] = ()):
        self.app, self.port, self.token = app, port, token or None
        names = {*LOOPBACK, host if ":" not in host or host.startswith("[") else f"[{host}]", *allow_hosts}
        self.hosts = {n.lower() for n in names}
        self.cookie = cookie_name(port)

    def host_ok(self, value: str) -> bool:
        value = value.lower()
        name, _, port = value.rpartition(":") if not value.endswith("]") else (value, "", "")
        if not name:  # no port given (only possible on port 80)
            name, port = value, ""
        return name in self.hosts and port in ("", str(self.port))

    def _token_matches(self, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan events; the app has no websocket routes
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if not self.host_ok(host):
            return await send_json(send, 403, {"error": f"Host {host!r} is not allowed (DNS rebinding guard); "
                                                        f"use http://127.0.0.1:{self.port}/"})
        query = parse_qs(scope.get("query_string", b"").decode(errors="replace"))
        auth = headers.get("authorization", "")
        header_token = headers.get("x-ragvl-token") or (auth[7:] if auth.lower().startswith("bearer ") else None)
        query_token = (query.get("token") or [None])[0]
        cookie_token = None
        for part in headers.get("cookie", "").split(";"):
            k, _, v = part.strip().partition("=")
            if k == self.cookie:
                cookie_token = v

        method = scope.get("method", "GET")
        origin = headers.get("origin")
        cross_site = (origin is not None and origin.lower() not in (f"http://{host.lower()}", f"https://{host.lower()}")) \
            or headers.get("sec-fetch-site") == "cross-site"
        if method not in SAFE_METHODS and cross_site and not (
                self.token and (self._token_matches(header_token) or self._token_matches(query_token))):
            return await send_json(send, 403, {"error": "cross-origin request refused (CSRF guard): send the "
                                                        "token in an X-Ragvl-Token header"})
        if self.token is None:
            return await self.app(scope, receive, send)
        if not any(self._token_matches(t) for t in (header_token, query_token, cookie_token)):
            return await send_json(send, 401, {"error": "this server needs its token: open the URL that "
                                                        "`ragvl serve` printed (…/?token=…)"})
        if self._token_matches(query_token) and not self._token_matches(cookie_token):
            set_cookie = (b"set-cookie", f"{self.cookie}={self.token}; HttpOnly; SameSite=Strict; Path=/".encode())
            if scope["path"] == "/" and method == "GET":  # keep the token out of the address bar and history
                await send({"type": "http.response.start", "status": 303,
                            "headers": [(b"location", b"/"), set_cookie, (b"content-length", b"0")]})
                return await send({"type": "http.response.body", "body": b""})

            async def send_with_cookie(message):
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", []), set_cookie]}
                await send(message)

            return await self.app(scope, receive, send_with_cookie)
        return await self.app(scope, receive, send)
