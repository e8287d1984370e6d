"""GraphiQL without internet access.

Strawberry's GraphiQL page (``strawberry/static/graphiql.html``) loads React, ReactDOM,
js-cookie, GraphiQL and its explorer plugin from https://unpkg.com, so on a machine that
cannot reach the CDN the page stays blank. The exact same files (byte-identical to the npm
tarballs, see ``api/static/graphiql/README.md``) are vendored in ``STATIC_DIR``;
``offline_graphiql_html`` rewrites the page to load them from ``STATIC_PATH`` and fails
loudly when a strawberry upgrade references assets that are not vendored.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

STATIC_DIR: Path = Path(__file__).resolve().parent / "static" / "graphiql"
STATIC_PATH = "/static/graphiql"

# The CDN URLs of strawberry 0.341's graphiql.html -> the vendored file in STATIC_DIR.
ASSETS: dict[str, str] = {
    "https://unpkg.com/react@18.2.0/umd/react.production.min.js": "react.production.min.js",
    "https://unpkg.com/react-dom@18.2.0/umd/react-dom.production.min.js": (
        "react-dom.production.min.js"
    ),
    "https://unpkg.com/js-cookie@3.0.5/dist/js.cookie.min.js": "js.cookie.min.js",
    "https://unpkg.com/graphiql@3.8.3/graphiql.min.js": "graphiql.min.js",
    "https://unpkg.com/graphiql@3.8.3/graphiql.min.css": "graphiql.min.css",
    "https://unpkg.com/@graphiql/plugin-explorer@1.0.2/dist/index.umd.js": (
        "plugin-explorer.umd.js"
    ),
    "https://unpkg.com/@graphiql/plugin-explorer@1.0.2/dist/style.css": "plugin-explorer.css",
}

_UNPKG_URL = re.compile(r"""(?:https?:)?//unpkg\.com/[^\s"'<>)]*""")
_TAG = re.compile(r"<(?:script|link)\b[^>]*>", re.IGNORECASE)
_EXTERNAL_REF = re.compile(r"""\b(?:src|href)\s*=\s*["']?((?:https?:)?//[^\s"'>]+)""")
_SRI_ATTRS = re.compile(r"""\s+(?:integrity|crossorigin)(?:\s*=\s*(?:"[^"]*"|'[^']*'|[^\s>]+))?""")
_INTEGRITY = re.compile(r"""\bintegrity\s*=\s*["']([^"']+)["']""")
_REF = re.compile(r"""\b(?:src|href)\s*=\s*["']([^"']+)["']""")


class GraphiQLAssetError(RuntimeError):
    """The GraphiQL page would load an asset that is not vendored in STATIC_DIR."""


def offline_graphiql_html(
    base_html: str, *, static_path: str = STATIC_PATH, keep_integrity: bool = True
) -> str:
    """Return strawberry's GraphiQL page loading every asset from ``static_path``.

    Each unpkg URL of ``ASSETS`` becomes ``{static_path}/{file}``. The ``integrity``
    (SRI) hashes of strawberry's template match the vendored files, so they are kept by
    default; ``keep_integrity=False`` drops ``integrity`` and ``crossorigin`` from the
    rewritten tags. Raises ``GraphiQLAssetError`` if an unpkg URL (or any other external
    script or stylesheet) is left, or if a vendored file is missing.
    """
    prefix = static_path.rstrip("/")
    html = base_html
    used: list[str] = []
    for url, name in ASSETS.items():
        if url in html:
            html = html.replace(url, f"{prefix}/{name}")
            used.append(name)

    leftovers = sorted(set(_UNPKG_URL.findall(html)))
    leftovers += sorted(
        {ref for tag in _TAG.findall(html) for ref in _EXTERNAL_REF.findall(tag)} - set(leftovers)
    )
    if leftovers:
        raise GraphiQLAssetError(
            "the GraphiQL template still loads assets from a CDN: "
            + ", ".join(leftovers)
            + f" -- vendor them in {STATIC_DIR} and add them to api.graphiql.ASSETS "
            "(see api/static/graphiql/README.md)"
        )
    missing = [name for name in used if not (STATIC_DIR / name).is_file()]
    if missing:
        raise GraphiQLAssetError(f"vendored GraphiQL assets missing in {STATIC_DIR}: {missing}")

    if not keep_integrity:
        local = f"{prefix}/"

        def strip(match: re.Match[str]) -> str:
            tag = match.group(0)
            return _SRI_ATTRS.sub("", tag) if local in tag else tag

        html = _TAG.sub(strip, html)
    return html


def sri_mismatches(html: str, *, static_path: str = STATIC_PATH) -> list[str]:
    """List the tags of ``html`` whose ``integrity`` hash does not match the vendored file.

    Only tags loading from ``static_path`` are checked. An empty list means browsers
    accept every vendored asset (a mismatch makes them refuse it and the page stays blank).
    """
    prefix = static_path.rstrip("/") + "/"
    problems: list[str] = []
    for tag in _TAG.findall(html):
        integrity, ref = _INTEGRITY.search(tag), _REF.search(tag)
        if integrity is None or ref is None or not ref.group(1).startswith(prefix):
            continue
        path = STATIC_DIR / ref.group(1)[len(prefix) :]
        expected = integrity.group(1).split()
        if not path.is_file():
            problems.append(f"{ref.group(1)}: file missing")
            continue
        data = path.read_bytes()
        actual = {
            f"{algo}-{base64.b64encode(hashlib.new(algo, data).digest()).decode()}"
            for algo in ("sha256", "sha384", "sha512")
        }
        if not actual.intersection(expected):
            problems.append(f"{ref.group(1)}: integrity {' '.join(expected)} does not match")
    return problems
