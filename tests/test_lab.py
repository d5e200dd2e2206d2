"""JupyterLab in a real browser: a chapter `.py` opens as a notebook through jupytext, Run > Run All Cells runs it
in smoke mode, and no cell shows a traceback. This is what a reader does first (`make lab`).
"""

import contextlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from browser import Watch, chromium, missing, require_browser

from vnas import book

CHAPTER = "00_welcome"  # the cheapest chapter in smoke mode
# The settings a reader gets from `make lab`: jupytext's notebook opens .py files (the setting that `jupytext_config
# set-default-viewer` writes); and for the test, every cell in the DOM (the default windowing attaches only the
# visible ones), the kernel started without asking, and no news or update check (no network here).
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin": {"defaultViewers": {"python": "Jupytext Notebook"}},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none", "autoStartDefaultKernel": True},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
}
# Run All has finished: the kernel idle, no cell waiting ("[*]:"), some cell run ("[3]:"). After an error the cells
# left are not run ("[ ]:"), which the test reports.
PROMPTS = "() => Array.from(document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')).map(p => p.textContent)"
DONE = f"""() => {{
  const prompts = ({PROMPTS})();
  const status = document.querySelector('.jp-Notebook-ExecutionIndicator');
  return status.getAttribute('data-status') === 'idle' && !prompts.some(p => p.includes('*'))
    && prompts.some(p => /\\d/.test(p));
}}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """JupyterLab on a free localhost port over a copy of the chapter, in smoke mode; stopped at the end, always."""
    require_browser()  # before starting anything
    if importlib.util.find_spec("jupyterlab") is None:
        missing("no JupyterLab; pip install -e '.[dev,lab]' (make env does)")
    root = tmp_path / "chapters"
    root.mkdir()
    shutil.copy(book.CHAPTERS_DIR / f"{CHAPTER}.py", root)  # a copy: the lab saves, and jupytext pairs to .ipynb
    shutil.copy(book.CHAPTERS_DIR / "jupytext.toml", root)
    for name, values in LAB_SETTINGS.items():
        path = tmp_path / "settings" / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "VNAS_MODE": "smoke", "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"), "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.port_retries=0",
               "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}"]
    if os.getuid() == 0:
        command.append("--allow-root")
    log = (tmp_path / "lab.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):  # it starts in a few seconds; on a busy 2-core machine, up to a minute
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited ({server.returncode}):\n{(tmp_path / 'lab.log').read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"JupyterLab did not answer on {base}:\n{(tmp_path / 'lab.log').read_text()[-3000:]}")
        yield base, token
    finally:
        # a clean shutdown stops its kernels too; a kill of its process group is the fallback
        try:
            urllib.request.urlopen(urllib.request.Request(f"{base}/api/shutdown?token={token}", method="POST"),
                                   timeout=10)
            server.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.mark.slow
def test_a_chapter_runs_in_jupyterlab(lab):
    base, token = lab
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        watch = Watch(page)
        page.set_default_timeout(120_000)
        page.goto(f"{base}/lab/tree/{CHAPTER}.py?token={token}")
        page.wait_for_selector(".jp-NotebookPanel .jp-CodeCell")  # opened as a notebook, not as a text file
        page.wait_for_function("() => document.querySelector('.jp-NotebookPanel .jp-KernelName')"
                               "?.innerText.includes('Python')")  # a kernel chosen
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']")  # and started
        page.click(".jp-NotebookPanel .jp-CodeCell .jp-InputPrompt >> nth=0")  # the notebook is the current widget
        page.click(".lm-MenuBar-itemLabel:text-is('Run')")
        page.click(".lm-Menu-item:not(.lm-mod-disabled) .lm-Menu-itemLabel:text-is('Run All Cells')")
        page.wait_for_function(DONE, timeout=300_000, polling=500)
        prompts = page.evaluate(PROMPTS)
        outputs = page.eval_on_selector_all(".jp-OutputArea-output", "os => os.map(o => o.innerText)")
        page.close()
    tracebacks = [o for o in outputs if "Traceback" in o]  # how an error output (and IPython's) reads
    assert not tracebacks, "\n---\n".join(tracebacks)[:3000]
    assert all(re.fullmatch(r"\[\d+\]:", p) for p in prompts), f"not every cell ran: {prompts}"
    assert any("mode: smoke" in o for o in outputs), outputs[:3]
    assert not watch.errors and not watch.outside, (watch.errors, watch.outside)  # no broken extension, no network
