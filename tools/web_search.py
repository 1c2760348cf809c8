"""web_search: DuckDuckGo and friends through `ddgs`, numbered results with title, URL and snippet.

The provider is swappable behind one interface: `ddgs` for normal runs, `file:PATH` (a JSON list of
{"title", "url", "snippet"}) for offline work and tests. Results are untrusted text: the agent
wraps them as data, and they are cleaned of control characters and capped in length here.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import Field

from vision_agent.config import WebSearchSettings
from vision_agent.errors import ToolError
from vision_agent.tooling import ToolContext

MAX_SNIPPET_CHARS = 300
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


@dataclass
class SearchHit:
    title: str
    url: str
    snippet: str


def web_search(query: str, context: ToolContext, max_results: Annotated[int, Field(ge=1, le=25)] | None = None) -> str:
    """Search the web and return numbered results (title, URL, snippet) to cite in the answer.

    Args:
        query: what to search for, e.g. "Eiffel Tower height in metres"
        max_results: how many results (default from the settings, at most 25)
    """
    settings = context.settings.web_search
    if not query.strip():
        raise ToolError("empty search query")
    count = max_results or settings.max_results
    hits = run_search(query.strip(), count, settings)
    if not hits:
        return f"no results for {query!r}"
    return "\n".join(f"[{n}] {hit.title}\n    {hit.url}\n    {hit.snippet}" for n, hit in enumerate(hits, 1))


def run_search(query: str, count: int, settings: WebSearchSettings) -> list[SearchHit]:
    """Call the provider in a daemon thread so that a hung connection cannot outlive the timeout."""
    outcome: dict = {}

    def work():
        try:
            outcome["hits"] = _provider(settings)(query, count, settings)
        except Exception as exc:  # reported as the tool's error below
            outcome["error"] = exc

    thread = threading.Thread(target=work, name="web-search", daemon=True)
    thread.start()
    thread.join(settings.timeout_s + 1)
    if thread.is_alive():
        raise ToolError(f"search unavailable: no answer within {settings.timeout_s:g} s")
    if "error" in outcome:
        error = outcome["error"]
        if isinstance(error, ToolError):
            raise error
        raise ToolError(f"search unavailable: {type(error).__name__}: {str(error)[:200]}")
    return [_clean(hit) for hit in outcome["hits"][:count]]


def _provider(settings: WebSearchSettings):
    if settings.provider == "ddgs":
        return _ddgs_search
    if settings.provider.startswith("file:"):
        return _file_search
    raise ToolError(f"unknown search provider {settings.provider!r} (use ddgs or file:PATH)")


def _ddgs_search(query: str, count: int, settings: WebSearchSettings) -> list[SearchHit]:
    from ddgs import DDGS

    results = DDGS(timeout=int(max(1, settings.timeout_s))).text(
        query, region=settings.region, safesearch=settings.safesearch, max_results=count, backend=settings.backend
    )
    return [SearchHit(r.get("title", ""), r.get("href", ""), r.get("body", "")) for r in results or []]


def _file_search(query: str, count: int, settings: WebSearchSettings) -> list[SearchHit]:
    path = Path(settings.provider.removeprefix("file:")).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ToolError(f"search unavailable: results file {path}: {exc}") from None
    if isinstance(data, dict):  # {"query": [results]} answers per query, with "*" as the fallback
        data = data.get(query, data.get("*", []))
    return [SearchHit(str(d.get("title", "")), str(d.get("url", "")), str(d.get("snippet", ""))) for d in data]


def _clean(hit: SearchHit) -> SearchHit:
    def tidy(text: str, limit: int) -> str:
        text = " ".join(_CONTROL.sub(" ", text).split())
        return text if len(text) <= limit else text[: limit - 1] + "…"

    return SearchHit(tidy(hit.title, 200), tidy(hit.url, 500), tidy(hit.snippet, MAX_SNIPPET_CHARS))


TOOLS = [web_search]
