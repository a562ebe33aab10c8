"""Fixtures of the browser test: a throw-away JupyterLab server and Debian's Chromium driven by Playwright.

Everything runs offline. The server gets its own root (a temporary copy of ``notebooks/``, so
autosave never touches the repository), its own Jupyter config / data / runtime / workspace /
settings / IPython directories (the user's settings never interfere), and the virtual
environment's kernelspec ``python3`` (Jupyter's environment paths stay on the search path).
Screenshots, the browser console and the server log go to ``test-artifacts/browser/``.

Missing Chromium or Playwright skips the test, except under ``CI``, where it fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "browser"
#: Playwright's own browser download does not work offline: Debian's chromium, with these flags only.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_START_TIMEOUT = 120  # seconds; JupyterLab starts in about 5 s here

# Server-side configuration (written to the temporary JUPYTER_CONFIG_DIR):
LAB_CONFIG = {
    "LabApp": {
        # No request to the news feed (https://jupyterlab.github.io/assets/feed.xml).
        "news_url": None,
        # No request to PyPI for a newer JupyterLab.
        "check_for_updates_class": "jupyterlab.handlers.announcements.NeverCheckForUpdate",
        # The extension manager lists what is installed and never queries PyPI.
        "extension_manager": "readonly",
    },
}
# User settings (written to the temporary JUPYTERLAB_SETTINGS_DIR): exactly what answering "No"
# to JupyterLab's "Would you like to get notified about official Jupyter news?" toast stores;
# the toast would otherwise cover part of the page in every screenshot.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                         "checkForUpdates": False},
}


def need(reason: str) -> None:
    """Skip for a missing tool, but fail under CI: CI must run the browser test."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: the browser test must run)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """``test-artifacts/browser/``, emptied of the previous run's files."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.iterdir():
        if old.is_file():
            old.unlink()
    return ARTIFACTS


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        need("Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it as root)")
    return str(path)


@pytest.fixture(scope="session")
def sync_playwright() -> Any:
    try:
        from playwright.sync_api import sync_playwright as sp
    except ImportError:
        need('Playwright is not installed (pip install -e ".[test]")')
    return sp


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _jupyter_command() -> list[str]:
    jupyter = Path(sys.executable).with_name("jupyter")  # .venv/bin/jupyter next to .venv/bin/python
    return [str(jupyter), "lab"] if jupyter.exists() else [sys.executable, "-m", "jupyterlab"]


@dataclass
class LabServer:
    url: str
    token: str
    root: Path
    log: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    def lab_url(self, path: str) -> str:
        return f"{self.url}/lab/tree/{path}?token={self.token}"

    def notebook_url(self, path: str) -> str:
        """The same notebook in Notebook 7's front end (served by the same server when the
        ``notebook`` package is installed)."""
        return f"{self.url}/notebooks/{path}?token={self.token}"

    def log_tail(self, n: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        return ""


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server (it shuts its kernels down), then kill what is left of its process group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # the group is the server's own (start_new_session)


@pytest.fixture(scope="module")
def lab_server(tmp_path_factory: pytest.TempPathFactory, artifacts: Path) -> Iterator[LabServer]:
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        need('JupyterLab is not installed (pip install -e ".[test]")')
    base = tmp_path_factory.mktemp("jupyterlab")
    root = base / "notebooks"
    shutil.copytree(REPO / "notebooks", root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    dirs = {name: base / name for name in ("config", "data", "runtime", "workspaces", "settings", "ipython")}
    for d in dirs.values():
        d.mkdir()
    (dirs["config"] / "jupyter_server_config.json").write_text(json.dumps(LAB_CONFIG, indent=1))
    for rel, value in LAB_SETTINGS.items():
        path = dirs["settings"] / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))

    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "JPY_", "IPYTHON"))}
    env.update(
        JUPYTER_CONFIG_DIR=str(dirs["config"]),  # replaces ~/.jupyter; the venv's etc/jupyter stays
        JUPYTER_DATA_DIR=str(dirs["data"]),  # replaces ~/.local/share/jupyter; the venv's kernelspec stays
        JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
        JUPYTERLAB_WORKSPACES_DIR=str(dirs["workspaces"]),  # no restored layout from an earlier session
        JUPYTERLAB_SETTINGS_DIR=str(dirs["settings"]),
        IPYTHONDIR=str(dirs["ipython"]),  # no startup scripts of the user's IPython profile in the kernel
        JUPYTER_PLATFORM_DIRS="0",
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        PYTHONUNBUFFERED="1",
    )
    port, token = _free_port(), secrets.token_hex(24)
    cmd = [*_jupyter_command(), "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = artifacts / "jupyter-server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=base, start_new_session=True)
    server = LabServer(url=f"http://127.0.0.1:{port}", token=token, root=root, log=log, process=proc)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{server.log_tail()}", pytrace=False)
            try:
                with urllib.request.urlopen(f"{server.url}/api/status?token={token}", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not answer in {SERVER_START_TIMEOUT} s:\n{server.log_tail()}",
                            pytrace=False)
            time.sleep(0.25)
        yield server
    finally:
        _stop(proc)


@dataclass
class ConsoleLog:
    """Everything the page printed, and the errors among it."""

    lines: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def on_console(self, msg: Any) -> None:
        loc = msg.location or {}
        where = f" ({loc.get('url', '')}:{loc.get('lineNumber', '')})" if loc.get("url") else ""
        self.lines.append(f"[{msg.type}] {msg.text}{where}")
        if msg.type == "error":
            self.errors.append(f"console error: {msg.text}{where}")

    def on_pageerror(self, err: Any) -> None:
        self.lines.append(f"[pageerror] {err}\n{getattr(err, 'stack', '') or ''}")
        self.errors.append(f"uncaught exception: {err}")


@pytest.fixture(scope="module")
def browser(sync_playwright: Any, chromium_path: str) -> Iterator[Any]:
    pw = sync_playwright().start()
    try:
        try:
            browser = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS, headless=True)
        except Exception as err:  # a broken browser install is a missing browser
            need(f"Chromium at {chromium_path} does not start under Playwright: {err}")
        try:
            yield browser
        finally:
            browser.close()
    finally:
        pw.stop()


@pytest.fixture
def console() -> ConsoleLog:
    return ConsoleLog()


@pytest.fixture
def page(browser: Any, console: ConsoleLog, artifacts: Path) -> Iterator[Any]:
    """A fresh page whose console (and uncaught exceptions) is recorded; saved, with a last
    screenshot, whatever happens."""
    # Tall enough that the whole explorer fits in the notebook panel for its screenshots.
    context = browser.new_context(viewport={"width": 1440, "height": 2200})
    try:
        page = context.new_page()
        page.on("console", console.on_console)
        page.on("pageerror", console.on_pageerror)
        try:
            yield page
        finally:
            with contextlib.suppress(Exception):
                page.screenshot(path=str(artifacts / "99-last-state.png"))
            (artifacts / "console.log").write_text("\n".join(console.lines) + "\n", encoding="utf-8")
    finally:
        context.close()
