"""The HTTP exchange both API clients make (the Management Activity API, Microsoft Graph's audit search).

A bearer token asked for the tenant inside each attempt, JSON, and redirects never followed: the
token goes wherever the request goes, so a redirect is an error, not a hop. Which answer means
what is ``errors.classify``'s; what each API adds on top (AF codes, Graph's permission hint) stays
in its client.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from yarl import URL

from function_app.core.errors import ApiError, PermanentApiError
from function_app.o365.auth import TokenProvider
from function_app.o365.errors import classify

USER_AGENT = "AuditLake/0.1"


@dataclass(frozen=True, slots=True)
class Answer:
    """An answer read whole (or, for an error, its first bytes)."""

    status: int
    headers: Mapping[str, str]
    body: bytes


async def bearer_headers(tokens: TokenProvider, tenant_id: str) -> dict[str, str]:
    """The headers of a request on behalf of *tenant_id*, with a token currently valid for it."""
    token = await tokens.token(tenant_id)
    return {"Authorization": f"Bearer {token}", "Accept": "application/json", "User-Agent": USER_AGENT}


async def send(
    session: aiohttp.ClientSession,
    method: str,
    url: URL,
    headers: Mapping[str, str],
    *,
    timeout: aiohttp.ClientTimeout,
    body: bytes | None = None,
) -> Answer:
    """*method* *url* with *body* as JSON, redirects not followed; the answer read whole."""
    sent = {**headers, "Content-Type": "application/json"} if body is not None else dict(headers)
    async with session.request(method, url, headers=sent, data=body, timeout=timeout,
                               allow_redirects=False) as response:
        return Answer(response.status, response.headers, await response.read())


def error_of(answer: Answer) -> ApiError:
    """The error an answer of 300 or more stands for: a redirect is permanent (never followed);
    the rest as ``classify`` reads status, body and ``Retry-After``."""
    if 300 <= answer.status < 400:
        return PermanentApiError(f"unexpected redirect (HTTP {answer.status}); not followed", status=answer.status)
    return classify(answer.status, answer.body, answer.headers).error
