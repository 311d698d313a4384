"""What every Microsoft Graph client here shares: one host the token may go to, JSON bodies, paging.

Two Graph clients read audit data (the Purview audit search, the Entra sign-in and directory audit
logs). Both send the bearer token only to the Graph root they were built for, read answers that
must be JSON objects, and follow ``@odata.nextLink`` to the end; those rules live here once.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import orjson
from yarl import URL

from function_app.core.errors import PermanentApiError, RetryableError
from function_app.core.model import utc
from function_app.o365.clouds import Cloud
from function_app.o365.http import Answer

# Graph service roots per cloud (learn.microsoft.com/graph/deployments). GCC tenants use the
# global service; GCC High is "US Government L4", DoD "L5".
GRAPH_ROOTS: Mapping[Cloud, str] = {
    Cloud.ENTERPRISE: "https://graph.microsoft.com",
    Cloud.GCC: "https://graph.microsoft.com",
    Cloud.GCC_HIGH: "https://graph.microsoft.us",
    Cloud.DOD: "https://dod-graph.microsoft.us",
}


def graph_root_of(cloud: Cloud, override: str | None = None) -> str:
    """The Graph root of *cloud*: the override (an emulator), else the cloud's own."""
    return (override or GRAPH_ROOTS[cloud]).rstrip("/")


def graph_scope(graph_root: str) -> str:
    """The client-credentials scope for a Graph root: its origin ``/.default``."""
    parts = urlsplit(graph_root)
    return f"{parts.scheme}://{parts.netloc}/.default"


class GraphRoot:
    """A Graph service root (``https://graph.microsoft.com``, or an emulator's ``.../graph``)."""

    __slots__ = ("_origin", "url")

    def __init__(self, graph_root: str) -> None:
        parts = urlsplit(graph_root)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ValueError(f"graph_root must be an absolute http(s) URL, not {graph_root!r}")
        self.url = graph_root.rstrip("/")
        self._origin = (parts.scheme.lower(), parts.netloc.lower())

    def own_url(self, raw: str) -> URL:
        """*raw* as a URL to send the token to; PermanentApiError if it leaves the root's host
        (an ``@odata.nextLink`` or a stored query URL pointing elsewhere would carry the token away)."""
        parts = urlsplit(raw)
        if (parts.scheme.lower(), parts.netloc.lower()) != self._origin:
            raise PermanentApiError(f"a Graph URL points away from the Graph host: {parts.scheme}://{parts.netloc}")
        return URL(raw, encoded=True)


def graph_time(value: datetime) -> str:
    """A datetime as Graph's filters take it: UTC, whole seconds, ``Z``."""
    return utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def json_object(answer: Answer, what: str) -> dict[str, Any]:
    """The answer's body as a JSON object. A body that does not parse is retryable: a page cut off
    in transit heals on the next attempt; one that parses to something else will not."""
    try:
        parsed: Any = orjson.loads(answer.body)
    except orjson.JSONDecodeError as exc:
        raise RetryableError(f"{what} of {len(answer.body)} bytes is not JSON: {exc}", status=answer.status) from exc
    if not isinstance(parsed, dict):
        raise PermanentApiError(f"{what} is a JSON {type(parsed).__name__}, not an object")
    return parsed


def page_of(item: dict[str, Any], what: str) -> tuple[list[dict[str, Any]], str | None]:
    """``value`` (objects only) and ``@odata.nextLink`` (None on the last page) of a Graph page."""
    value = item.get("value", [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise PermanentApiError(f"{what}: 'value' is not an array of objects")
    link = item.get("@odata.nextLink")
    return value, link.strip() if isinstance(link, str) and link.strip() else None


class NextLinks:
    """The ``@odata.nextLink`` values of one paging, so a link served twice stops the loop."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def check(self, link: str) -> None:
        if link in self._seen:
            raise PermanentApiError("Graph returned the same @odata.nextLink twice; stopping rather than looping")
        self._seen.add(link)
