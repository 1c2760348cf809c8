"""web_search: DuckDuckGo and friends through `ddgs`, numbered results with title, URL and snippet.

The provider is swappable behind one interface: `ddgs` for normal runs, `file:PATH` (a JSON list of
{"title", "url", "snippet"}) for offline work and tests. Results are untrusted text: the agent
wraps them as data; here they are capped in count (tools.web_search.max_results is the ceiling,
whatever the model asks) and in length, and cleaned of control and format characters. A failure is
one human line ("search unavailable: ..."), never ddgs's or primp's debug dump.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import Field

from vision_agent.config import WebSearchSettings, read_text_file
from vision_agent.errors import ToolError
from vision_agent.tooling import ToolContext, call_with_deadline

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 500
MAX_TITLE_CHARS = 200
MAX_URL_CHARS = 500
MAX_SNIPPET_CHARS = 300
MAX_RESULTS_FILE_BYTES = 10 * 1024 * 1024


@dataclass
class SearchHit:
    title: str
    url: str
    snippet: str


def web_search(query: str, context: ToolContext, max_results: Annotated[int, Field(ge=1, le=25)] | None = None) -> str:
    """Search the web and return numbered results (title, URL, snippet) to cite in the answer.

    Args:
        query: what to search for, e.g. "Eiffel Tower height in metres"
        max_results: how many results (the settings give the default and the maximum)
    """
    settings = context.settings.web_search
    query = query.strip()
    if not query:
        raise ToolError("empty search query")
    if len(query) > MAX_QUERY_CHARS:
        raise ToolError(f"search query too long ({len(query)} characters; the limit is {MAX_QUERY_CHARS})")
    # The settings are the ceiling (and the default); the schema's own bounds are not relied upon.
    count = settings.max_results if not max_results or max_results < 1 else min(max_results, settings.max_results)
    hits = run_search(query, count, settings, context.cancel)
    if not hits:
        return f"no results for {query!r}"
    return "\n".join(f"[{n}] {hit.title}\n    {hit.url}\n    {hit.snippet}" for n, hit in enumerate(hits, 1))


def run_search(
    query: str, count: int, settings: WebSearchSettings, cancel: threading.Event | None = None
) -> list[SearchHit]:
    """Call the provider under the one deadline helper, so that a hung connection cannot outlive the timeout."""
    call = call_with_deadline(
        lambda _call_cancel: _provider(settings)(query, count, settings), settings.timeout_s + 1, cancel, "web-search"
    )
    if call.cancelled:
        raise ToolError("cancelled")
    if call.timed_out:
        raise ToolError(f"search unavailable: the search engine did not answer within {settings.timeout_s:g} s")
    error = call.error
    if isinstance(error, ToolError):
        raise error
    if error is not None:
        if not isinstance(error, Exception):  # SystemExit, KeyboardInterrupt: not a search failure to describe
            raise error
        log.debug("web_search failed", exc_info=error)  # the full dump, for -v
        raise ToolError(f"search unavailable: {describe_failure(error)}")
    return [_clean(hit) for hit in (call.value or [])[:count]]


# What ddgs and primp raise, by class name or message fragment (lower case), as the user reads it.
# ddgs wraps primp's exception (whose text is a Rust debug dump) in its own, so the whole chain is read.
_FAILURES = [
    (("DNSError", "DNSTimeoutError", "error resolving dns", "name or service not known"),
     "cannot reach the search engine (DNS lookup failed: no network?)"),
    (("TimeoutError", "TimeoutException", "timed out"), "the search engine did not answer in time"),
    (("proxy",), "cannot reach the search engine through the proxy (DDGS_PROXY)"),
    (("ConnectError", "connection refused", "network is unreachable", "connection reset"),
     "cannot reach the search engine (connection failed: no network?)"),
    (("certificate", "tls", "ssl", "corrupt message"), "the secure connection to the search engine failed"),
    (("RatelimitException", "StatusError", "ratelimit"), "the search engine refused the request (rate limited?)"),
    (("DecodeError", "BodyError", "JSONDecodeError"), "the search engine sent an unreadable answer"),
]  # fmt: skip


def describe_failure(error: BaseException) -> str:
    """One line for any failure of the provider: no braces, no debug structs."""
    if isinstance(error, ImportError):
        return "the ddgs package is not installed (pip install ddgs)"
    chain = _chain(error)
    names = {type(e).__name__ for e in chain}
    text = re.sub(r"https?://\S+", "", " ".join(str(e) for e in chain)).lower()  # the URL holds the query
    for clues, message in _FAILURES:
        if any(clue in names or clue.lower() in text for clue in clues):
            return message
    innermost = type(chain[-1]).__name__
    return f"the search engine failed ({innermost})"


def _chain(error: BaseException) -> list[BaseException]:
    """The exception, what it wraps (ddgs passes the engine's exception as its argument), and causes."""
    chain, todo = [], [error]
    while todo and len(chain) < 10:
        current = todo.pop(0)
        if current in chain:
            continue
        chain.append(current)
        todo += [a for a in current.args if isinstance(a, BaseException)]
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]
    return chain


def _provider(settings: WebSearchSettings):
    if settings.provider == "ddgs":
        return _ddgs_search
    if settings.provider.startswith("file:"):
        return _file_search
    raise ToolError(f"unknown search provider {settings.provider!r} (use ddgs or file:PATH)")


def _ddgs_search(query: str, count: int, settings: WebSearchSettings) -> list[SearchHit]:
    from ddgs import DDGS
    from ddgs.exceptions import DDGSException

    try:
        results = DDGS(timeout=int(max(1, settings.timeout_s))).text(
            query, region=settings.region, safesearch=settings.safesearch, max_results=count, backend=settings.backend
        )
    except DDGSException as exc:
        if not exc.args or exc.args == ("No results found.",):  # every engine answered, with nothing
            return []
        raise
    return [_hit(r.get("title"), r.get("href"), r.get("body")) for r in results or [] if isinstance(r, dict)]


def _file_search(query: str, count: int, settings: WebSearchSettings) -> list[SearchHit]:
    path = Path(settings.provider.removeprefix("file:")).expanduser()
    # A regular file of bounded size (a FIFO cannot hang the read), then JSON of bounded depth.
    raw = read_text_file(path, MAX_RESULTS_FILE_BYTES, what="search unavailable: results file", error=ToolError)
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ToolError(f"search unavailable: results file {path}: {str(exc).splitlines()[0][:200]}") from None
    if isinstance(data, dict):  # {"query": [results]} answers per query, with "*" as the fallback
        data = data.get(query, data.get("*", []))
    if not isinstance(data, list):
        raise ToolError(f"search unavailable: results file {path}: expected a list of results")
    return [_hit(d.get("title"), d.get("url"), d.get("snippet")) for d in data if isinstance(d, dict)]


def _hit(title, url, snippet) -> SearchHit:
    return SearchHit(*(value if isinstance(value, str) else "" if value is None else str(value)
                       for value in (title, url, snippet)))  # fmt: skip


def _clean(hit: SearchHit) -> SearchHit:
    return SearchHit(
        _tidy(hit.title, MAX_TITLE_CHARS), _tidy(hit.url, MAX_URL_CHARS), _tidy(hit.snippet, MAX_SNIPPET_CHARS)
    )


def _tidy(text: str, limit: int) -> str:
    """One line of at most `limit` characters: control, format (zero-width, bidi), surrogate and private
    characters become spaces, runs of whitespace one space."""
    text = text[: limit * 4]  # bound the work before cleaning
    text = "".join(" " if unicodedata.category(ch)[0] == "C" else ch for ch in text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


TOOLS = [web_search]
