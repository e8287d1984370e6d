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
import json
import re
from pathlib import Path

from taskrunner.config import Settings

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


# --- the page this api serves: offline, with example tabs, pre-authorised under dev --------

DEV_NOTE = """# Authorised with the development key of `taskrunner dev`: run the tabs in order.
# Submit starts a task; Follow streams its events (an empty "id" means the task the
# last Submit here returned; paste any other task's id to follow that one)."""
KEY_NOTE = """# This API needs an API key. Open Headers (at the bottom) and replace
# PASTE-YOUR-KEY with yours (once: the other tabs then use it too). `taskrunner keys
# create NAME` makes one; `make dev` prints one. Then run the tabs in order: Submit starts
# a task, and Follow streams its events (an empty "id" means the task the last Submit here
# returned)."""

FOLLOW = """subscription Follow($id: ID!) {
  taskUpdates(id: $id) {
    __typename at
    ... on StatusChanged { status result error { code message } }
    ... on ProgressReported { progress message }
    ... on LogAppended { level line }
  }
}"""
EXAMPLES: list[tuple[str, str, str | None]] = [  # (tab, query, variables)
    (
        "Submit",
        """mutation Submit {
  submitTask(task: {sleep: {seconds: 3}}, options: {labels: ["graphiql"]}) {
    id status createdAt logsUrl
  }
}""",
        None,
    ),
    ("Follow", FOLLOW, '{"id": ""}'),
    (
        "List",
        """query List {
  tasks(first: 10) {
    edges { node { id type status createdAt finishedAt error { code } } }
    pageInfo { hasNextPage endCursor }
  }
}""",
        None,
    ),
    (
        "Schedule",
        """# An echo every minute, created paused: resumeSchedule starts it, triggerSchedule
# fires one now, deleteSchedule removes it. Each run creates another.
mutation Schedule {
  createSchedule(schedule: {
    name: "graphiql-every-minute"
    everySeconds: 60
    task: {echo: {message: "tick"}}
    paused: true
  }) { id name paused nextRunAt }
}""",
        None,
    ),
    (
        "Workflow",
        """# A diamond (its steps in the variables below): a adds 1 and 2; b and c each add
# their own number to a's sum; d adds 1000 to both. workflowUpdates(id) follows it.
mutation Workflow($workflow: WorkflowInput!) {
  submitWorkflow(workflow: $workflow) { id status steps { key task { id status } } }
}""",
        json.dumps(
            {
                "workflow": {
                    "name": "diamond",
                    "steps": [
                        {"key": "a", "task": {"sum": {"numbers": [1, 2]}}},
                        {
                            "key": "b",
                            "task": {"sum": {"numbers": [10]}},
                            "dependsOn": ["a"],
                            "bind": [{"field": "numbers[]", "step": "a", "path": "sum"}],
                        },
                        {
                            "key": "c",
                            "task": {"sum": {"numbers": [100]}},
                            "dependsOn": ["a"],
                            "bind": [{"field": "numbers[]", "step": "a", "path": "sum"}],
                        },
                        {
                            "key": "d",
                            "task": {"sum": {"numbers": [1000]}},
                            "dependsOn": ["b", "c"],
                            "bind": [
                                {"field": "numbers[]", "step": "b", "path": "sum"},
                                {"field": "numbers[]", "step": "c", "path": "sum"},
                            ],
                        },
                    ],
                }
            },
            indent=2,
        ),
    ),
]

# What the page's own script (below) replaces in strawberry's template.
_FETCHER = re.compile(r"const fetcher = GraphiQL\.createFetcher\(\{.*?\}\);", re.DOTALL)
_ANCHORS = {
    "parameters.q || EXAMPLE_QUERY,": "parameters.q,",
    "plugins: [explorerPlugin],": (
        "plugins: [explorerPlugin],\n"
        "          defaultTabs: TASKRUNNER.tabs,\n"
        "          defaultHeaders: TASKRUNNER.editorHeaders,"
    ),
}
_MAIN_SCRIPT = re.compile(r"<script>\s*const EXAMPLE_QUERY")

# Every request carries the editor's headers over TASKRUNNER.headers (the dev key); GraphiQL
# sends a subscription's as its connection_init payload (the api reads the key there:
# browsers cannot set headers on a websocket). A key typed in one tab serves the tabs that
# still have the placeholder. The Follow tab's empty "id" is the task the last Submit on
# this page returned.
_SCRIPT = """<script>
      const TASKRUNNER = %s;
      function taskrunnerFetcher(url, subscriptionUrl, baseHeaders) {
        const LAST = "taskrunner.graphiql.lastTaskId";
        function remember(result) {
          const id = result && result.data && result.data.submitTask && result.data.submitTask.id;
          if (id) sessionStorage.setItem(LAST, id);
          return result;
        }
        // A key pasted in one tab's Headers serves the tabs that still have the placeholder.
        const AUTH = "taskrunner.graphiql.authorization";
        function withKey(headers) {
          const name = Object.keys(headers).find((h) => h.toLowerCase() === "authorization");
          const value = name === undefined ? undefined : String(headers[name]);
          if (value !== undefined && !value.includes("PASTE-YOUR-KEY")) {
            sessionStorage.setItem(AUTH, value);
            return headers;
          }
          const saved = sessionStorage.getItem(AUTH);
          if (saved === null) return headers;
          if (name !== undefined) delete headers[name];
          headers.Authorization = saved;
          return headers;
        }
        function through(result) {  // a result, a promise of one, or a stream of them
          if (result && typeof result.then === "function") return result.then(through);
          if (result && typeof result[Symbol.asyncIterator] === "function") {
            return (async function* () {
              for await (const item of result) yield remember(item);
            })();
          }
          return remember(result);
        }
        const fetcher = GraphiQL.createFetcher({ url, headers: baseHeaders, subscriptionUrl });
        return function (params, opts) {
          const edited = withKey(Object.assign({}, (opts && opts.headers) || {}));
          // GraphiQL sends these over HTTP, and as a subscription's connection_init payload
          const headers = Object.assign({}, TASKRUNNER.headers, edited);
          let request = params;
          const last = sessionStorage.getItem(LAST);
          if (request.variables && request.variables.id === "" && last) {
            const variables = Object.assign({}, request.variables, { id: last });
            request = Object.assign({}, request, { variables });
          }
          return through(fetcher(request, Object.assign({}, opts, { headers })));
        };
      }
    </script>
    """


def page_config(dev_key: str | None) -> dict[str, object]:
    """The page's settings: its tabs, and the headers every request carries (the dev key)
    or the editor starts with (where a key goes)."""
    note = DEV_NOTE if dev_key else KEY_NOTE
    editor = "" if dev_key else '{\n  "Authorization": "Bearer PASTE-YOUR-KEY"\n}'
    tabs = [
        {"query": (f"{note}\n\n" if i == 0 else "") + query, "variables": variables}
        for i, (_, query, variables) in enumerate(EXAMPLES)
    ]
    for tab in tabs:
        if tab["variables"] is None:
            del tab["variables"]
        if editor:
            tab["headers"] = editor
    return {
        "headers": {"Authorization": f"Bearer {dev_key}"} if dev_key else {},
        "editorHeaders": editor,
        "tabs": tabs,
    }


def graphiql_page(base_html: str, *, dev_key: str | None) -> str:
    """The offline page (``offline_graphiql_html``) with example tabs and, given
    ``dev_key``, every request authorised with it. Raises GraphiQLAssetError when
    strawberry's template no longer has what this rewrites."""
    html = offline_graphiql_html(base_html)
    missing = [anchor for anchor in _ANCHORS if anchor not in html]
    if not _FETCHER.search(html) or not _MAIN_SCRIPT.search(html) or missing:
        raise GraphiQLAssetError(
            "strawberry's GraphiQL template changed: api.graphiql.graphiql_page cannot add "
            f"its tabs and key (missing: {missing or 'the fetcher or the main script'})"
        )
    html = _FETCHER.sub(
        "const fetcher = taskrunnerFetcher(fetchURL, subscriptionUrl, defaultHeaders);", html
    )
    for anchor, replacement in _ANCHORS.items():
        html = html.replace(anchor, replacement)
    config = json.dumps(page_config(dev_key)).replace("</", "<\\/")
    start = _MAIN_SCRIPT.search(html)
    assert start is not None
    return html[: start.start()] + _SCRIPT % config + html[start.start() :]


def dev_key_for(settings: Settings) -> str | None:
    """The key GraphiQL and the dashboard come authorised with: DEV_API_KEY (set by
    `taskrunner dev`) when the api listens on a loopback address only."""
    if settings.dev_api_key is None or settings.auth_disabled or not settings.on_loopback():
        return None
    return settings.dev_api_key.get_secret_value()
