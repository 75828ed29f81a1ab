"""Bearer-token check for the operator endpoints that expose job output and error texts.

The token travels only in the ``Authorization`` header, never in the URL, so it stays out of
access logs, proxy logs and browser history (the operator page takes it from the URL fragment,
which browsers never send; see ``operator.html``). Unset on the dispatcher, the protected
endpoints answer 403 to everyone rather than fall back to the pilot token: that one is on every
pilot node, and whoever holds it can register a pilot and receive jobs.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from aiohttp import web

from prompt.credentials import token_matches

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_CHALLENGE = 'Bearer realm="prompt"'
NOT_CONFIGURED = (
    "no operator token is configured on the dispatcher: set PROMPT_OPERATOR_TOKEN or "
    "PROMPT_OPERATOR_TOKEN_FILE to use this endpoint\n"
)


def require_token(token: str) -> Callable[[Handler], Handler]:
    """A decorator: the handler runs only for ``Authorization: Bearer <token>``.

    Missing or wrong token: 401 with a ``WWW-Authenticate`` challenge; no token configured
    (empty): 403. Answers it lets through are marked ``Cache-Control: no-store``."""
    expected = token.encode()

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def checked(request: web.Request) -> web.StreamResponse:
            if not expected:
                raise web.HTTPForbidden(text=NOT_CONFIGURED)
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not given.strip():
                raise web.HTTPUnauthorized(
                    headers={"WWW-Authenticate": _CHALLENGE},
                    text="this endpoint needs the header Authorization: Bearer <operator token>\n",
                )
            if not token_matches(given.strip(), expected):
                raise web.HTTPUnauthorized(
                    headers={"WWW-Authenticate": f'{_CHALLENGE}, error="invalid_token"'},
                    text="wrong operator token\n",
                )
            response = await handler(request)
            if not response.prepared:
                response.headers.setdefault("Cache-Control", "no-store")
            return response

        return checked

    return decorate
