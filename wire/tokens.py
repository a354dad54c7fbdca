"""The rules for the manager token and the proxy's API keys, and making a new token.

One rule for every place that accepts or writes a token (`manager.settings`,
`proxy.settings`, ``setup.sh``, ``deploy/demo.py``): at least `TOKEN_MIN_LENGTH`
characters of ``[A-Za-z0-9._~+/=-]`` (safe in an env file and an Authorization header),
not a placeholder (no word like "changeme" or "secret", at least 6 distinct
characters). New tokens are 43 URL-safe characters from 32 random bytes.

Command line (setup.sh runs it, inside the manager or proxy image where the host has
no Python)::

    python -m wire.tokens new       # print a new token
    python -m wire.tokens check     # read tokens, one a line, from stdin; exit 1 naming
                                    # the first bad one's problem (the token is not shown)
"""

from __future__ import annotations

import re
import secrets
import sys

TOKEN_MIN_LENGTH = 16
NEW_TOKEN_BYTES = 32
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9._~+/=-]+")
NEW_TOKEN_HINT = "generate one with: python -m wire.tokens new"

_PLACEHOLDER_WORDS = (
    "changeme",
    "change-me",
    "change_me",
    "secret",
    "token",
    "password",
    "placeholder",
    "replaceme",
    "replace-me",
    "example",
)


def placeholder_reason(token: str) -> str | None:
    """Why `token` looks like a placeholder rather than a real secret, or None."""
    lowered = token.lower()
    for word in _PLACEHOLDER_WORDS:
        if word in lowered:
            return f"contains the placeholder word {word!r}"
    if re.fullmatch(r"(.)\1*", lowered):
        return "is one character repeated"
    if len(set(lowered)) < 6:
        return "uses fewer than 6 distinct characters"
    return None


def token_problem(token: str) -> str | None:
    """What is wrong with `token` (never echoing it), or None when it may be used."""
    if len(token) < TOKEN_MIN_LENGTH:
        return f"must be at least {TOKEN_MIN_LENGTH} characters"
    if not TOKEN_PATTERN.fullmatch(token):
        return "may only use the characters A-Z a-z 0-9 . _ ~ + / = -"
    reason = placeholder_reason(token)
    if reason:
        return f"looks like a placeholder ({reason})"
    return None


def check_token(token: str) -> str:
    """`token` if it may be used; raises ValueError naming the problem and how to fix it."""
    problem = token_problem(token)
    if problem:
        raise ValueError(f"{problem}; {NEW_TOKEN_HINT}")
    return token


def new_token() -> str:
    """A new random token (43 URL-safe characters)."""
    return secrets.token_urlsafe(NEW_TOKEN_BYTES)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["new"]:
        print(new_token())
        return 0
    if args == ["check"]:
        lines = [line for line in sys.stdin.read().splitlines() if line]
        if not lines:
            print("no token given on stdin", file=sys.stderr)
            return 1
        for number, token in enumerate(lines, 1):
            problem = token_problem(token)
            if problem:
                where = f"token {number} of {len(lines)}" if len(lines) > 1 else "the token"
                print(f"{where} {problem}", file=sys.stderr)
                return 1
        return 0
    print("usage: python -m wire.tokens new | check  (check reads stdin)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
