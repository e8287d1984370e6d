"""Fetch a web page and return its title, H1 headings and links.

Only hosts allowed by FETCH_DOMAIN_ALLOWLIST are fetched; hosts that resolve to private,
loopback, link-local or metadata addresses are refused unless allowlisted as
taskrunner.fetch describes, after every redirect too, and the connection goes to the very
address that was checked. `maxBytes` caps the body as it is decoded, so a small compressed
body cannot inflate past it in the worker's memory. Failures have their own codes:
FETCH_REFUSED, TOO_MANY_REDIRECTS, RESPONSE_TOO_LARGE, UNSUPPORTED_ENCODING (a stacked or
unknown Content-Encoding); a body that is not the gzip or deflate it claims ends
TASK_ERROR ("DecodingError: ...").
"""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit, urlunsplit

from pydantic import BaseModel, Field, HttpUrl
from selectolax.lexbor import LexborHTMLParser, LexborNode

from taskrunner.fetch import fetch
from workers.task_context import TaskContext

NAME = "webScrape"
# Its own queue: slow, network-bound pages do not hold up other work, and scraping can be
# given workers of its own (`taskrunner worker --queues scrape`).
QUEUE = "scrape"


class Input(BaseModel):
    url: HttpUrl = Field(description="The page to fetch (http or https).")
    max_bytes: int = Field(
        default=2_000_000, ge=1, le=20_000_000, description="Largest body to read, in bytes."
    )
    follow_redirects: bool = Field(default=True, description="Follow up to 5 redirects.")


def concurrency(input: Input) -> tuple[str, int]:
    """The default concurrency key and limit: one key per domain, two pages of a site at
    once (options.concurrencyKey and concurrencyLimit override it)."""
    return f"domain:{input.url.host}", 2


def _text(node: LexborNode) -> str:
    """A node's text with its whitespace collapsed, as a reader sees it."""
    return " ".join(node.text().split())


def _links(base: str, parser: LexborHTMLParser) -> list[str]:
    found: dict[str, None] = {}
    for node in parser.css("a[href]"):
        href = (node.attributes.get("href") or "").strip()
        absolute = urljoin(base, href)
        parts = urlsplit(absolute)
        if parts.scheme in ("http", "https"):
            found[urlunsplit(parts._replace(fragment=""))] = None
    return list(found)


async def run(ctx: TaskContext, input: Input) -> dict[str, object]:
    page = await fetch(
        str(input.url),
        allowlist=ctx.settings.fetch_domain_allowlist,
        max_bytes=input.max_bytes,
        max_redirects=5 if input.follow_redirects else 0,
    )
    parser = LexborHTMLParser(page.body.decode("utf-8", errors="replace"))
    title = parser.css_first("title")
    return {
        "statusCode": page.status_code,
        "finalUrl": page.final_url,
        "contentType": page.content_type,
        "title": _text(title) if title else None,
        "h1s": [_text(h) for h in parser.css("h1")],
        "links": _links(page.final_url, parser),
    }
