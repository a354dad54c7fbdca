"""`Guard`: the proxy's browser-facing defences, as pure ASGI middleware (outermost).

- **Host check** (DNS rebinding): a request whose ``Host`` is not allowed gets a
  400 ``invalid_host`` envelope. Allowed: IP literals (a rebinding attack needs a
  name it controls, never a bare address), ``localhost``, this machine's host name
  (and ``<name>.local``), the host of ``HOMELAB_PUBLIC_URL``, ``HOMELAB_PROXY_HOST``
  and every name in ``HOMELAB_ALLOWED_HOSTS`` (``*`` there turns the check off).
  A Host accepted by name or address is kept in the request's state
  (``ACCEPTED_HOST``) for `proxy.images.image_url_base`; one let in by ``*`` alone is not.
- **Cross-site writes**: a request other than GET/HEAD/OPTIONS that carries an
  ``Origin`` that is not the request's own ``Host`` (nor an allowed host *name*) is
  refused with 403 ``cross_origin``. Browsers send ``Origin`` on every cross-site
  POST, including the "simple" form posts that need no preflight; the SDK and curl
  send none.
- **Response headers** on every answer: a Content-Security-Policy (``script-src
  'self'``, ``frame-ancestors 'none'``, no plugins, no foreign connections),
  ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY`` and
  ``Referrer-Policy: no-referrer``.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.errors import ProxyError

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
ACCEPTED_HOST = "accepted_host"
"""Key in the request's state (``scope["state"]``): the Host header value the check accepted."""
_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$")
_PORT = re.compile(r"^[0-9]{1,5}$")


def host_name(value: str) -> str:
    """The host part of a Host header value or URL authority, lower-cased, without
    port or IPv6 brackets ('' when malformed)."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else ""
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def authority(name: str, port: object = None) -> str | None:
    """``name[:port]`` for a URL, rebuilt from a host name or IP address (an IPv6 one
    bracketed) and a port; None when either is malformed (nothing is passed on as is)."""
    name = name.strip().lower().rstrip(".")
    if _is_ip(name):
        host = f"[{name}]" if ":" in name else name
    elif _NAME.match(name):
        host = name
    else:
        return None
    if port is None or port == "":
        return host
    port = str(port)
    return f"{host}:{port}" if _PORT.match(port) and 0 < int(port) < 65536 else None


def host_authority(value: str) -> str | None:
    """`authority` of a Host header value (``name``, ``name:port``, ``[v6]:port``)."""
    value = value.strip()
    if value.startswith("["):
        end = value.find("]")
        rest = value[end + 1 :]
        if end < 0 or (rest and not rest.startswith(":")):
            return None
        return authority(value[1:end], rest[1:] if rest else None)
    name, colon, port = value.partition(":")
    return authority(name, port if colon else None)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def default_hosts(proxy_host: str, public_url: str | None, extra: Iterable[str]) -> set[str]:
    """The host names the proxy answers to (IP literals are always accepted)."""
    hosts = {"localhost", "localhost.localdomain"}
    machine = socket.gethostname().lower()
    if machine:
        hosts |= {machine, f"{machine}.local", machine.split(".")[0]}
    with_fqdn = socket.getfqdn().lower()
    if with_fqdn:
        hosts.add(with_fqdn)
    if public_url:
        hosts.add(host_name(urlsplit(public_url).netloc))
    hosts.add(host_name(proxy_host))
    # HOMELAB_ALLOWED_HOSTS entries may carry a port (`homelab.lan:8080`, `name:*`, as
    # /mcp takes them): the Host check here is by name.
    hosts |= {host_name(h).rstrip(".") for h in extra if h.strip()}
    return {h for h in hosts if h}


_VERDICTS = 256
"""Host header values whose verdict `Guard` keeps (clients send the same one or two)."""


class Guard:
    def __init__(self, app: ASGIApp, allowed_hosts: set[str]) -> None:
        self.app = app
        self.any_host = "*" in allowed_hosts
        self.allowed = allowed_hosts
        self._verdicts: dict[str, tuple[str, bool]] = {}
        """Host header value -> (`host_name` of it, `known_host` of that), at most
        `_VERDICTS` of them: parsing an IP literal on every request cost more than the
        rest of the check. Emptied when full (a client cycling Host values gains nothing)."""

    def known_host(self, name: str) -> bool:
        """Allowed by name or as an IP address (not merely because of ``*``)."""
        name = name.rstrip(".")
        return name in self.allowed or _is_ip(name)

    def _verdict(self, host: str) -> tuple[str, bool]:
        """(`host_name`, known) of a Host header value, from `_verdicts` when there."""
        found = self._verdicts.get(host)
        if found is None:
            name = host_name(host)
            found = (name, bool(name) and self.known_host(name))
            if len(self._verdicts) >= _VERDICTS:
                self._verdicts.clear()
            self._verdicts[host] = found
        return found

    def allowed_host(self, name: str) -> bool:
        return self.any_host or self.known_host(name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        host, origin = "", None
        for key, value in scope["headers"]:
            if key == b"host":
                host = value.decode("latin-1")
            elif key == b"origin":
                origin = value.decode("latin-1")
        name, known = self._verdict(host)
        if not known and not (name and self.any_host):
            await (
                ProxyError(
                    "The Host header names a host this proxy does not serve; add it to "
                    "HOMELAB_ALLOWED_HOSTS if clients reach the proxy by that name.",
                    status=400,
                    type="invalid_request_error",
                    code="invalid_host",
                )
            ).send(with_headers)
            return
        if origin is not None and scope["method"] not in _SAFE_METHODS:
            netloc = urlsplit(origin).netloc.lower() if "://" in origin else ""
            same = bool(netloc) and netloc == host.strip().lower()
            named = host_name(netloc) in self.allowed  # e.g. a TLS reverse proxy's name
            if not (same or named or self.any_host):
                await (
                    ProxyError(
                        "Cross-site requests are refused: the request's Origin is not this proxy.",
                        status=403,
                        type="invalid_request_error",
                        code="cross_origin",
                    )
                ).send(with_headers)
                return
        if known:
            scope.setdefault("state", {})[ACCEPTED_HOST] = host
        await self.app(scope, receive, with_headers)
