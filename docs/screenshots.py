"""Screenshots of a search in the MLflow UI and of its Pareto plot, taken in headless Chromium.

Runs a small digits search (or reuses a store), starts ``mlflow ui`` on it,
and drives Chromium over the DevTools protocol:

- ``docs/img/mlflow-pareto-runs.png``: the runs table opened at the URL the
  ``browse:`` line prints (filtered to the search's Pareto runs), the search
  expanded;
- ``docs/img/mlflow-search-run.png``: the search run's page, its description
  (the front, the filter, the export commands);
- ``docs/img/pareto.png``: the ``pareto.png`` artifact, as logged;
- ``docs/img/pareto-html.png``: ``pareto.html`` in the browser, a front
  point hovered. The script fails if the page does not render its points
  or the hover shows no tooltip.

Needs Chromium (Debian: ``apt-get install chromium``)::

    python docs/screenshots.py                    # a fresh 16-trial search, about 2 minutes on 2 cores
    python docs/screenshots.py --store DIR        # reuse DIR/mlflow.db (its latest search)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "img"
WIDTH, HEIGHT = 1440, 860


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                r.read()
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {seconds:.0f} s")


def run_small_search(store: Path, trials: int) -> None:
    """A digits search into ``store/mlflow.db``, printed as the CLI prints it."""
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    cmd = [
        *(sys.executable, "-m", "rayzor.search.cli", "search"),
        *("--trials", str(trials), "--name", "tour", "--seed", "1"),
        *("--tracking-uri", f"sqlite:///{store / 'mlflow.db'}", "--storage-path", str(store / "ray")),
    ]
    subprocess.run(cmd, check=True, env=env, cwd=store)


class Page:
    """One Chromium tab over the DevTools protocol (aiohttp's websocket client)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.next_id = 0

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        await self.ws.send_str(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads((await self.ws.receive()).data)
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return dict(msg.get("result", {}))

    async def eval(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, seconds: float = 30.0) -> Any:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                value = await self.eval(expression)
            except RuntimeError:  # the page is (re)loading: no document yet
                value = None
            if value:
                return value
            await asyncio.sleep(0.3)
        raise RuntimeError(f"timed out waiting for: {expression}")

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete'")

    async def click_text(self, selector: str, text: str) -> bool:
        """Click the first element matching ``selector`` whose text is ``text``; False when there is none."""
        return bool(
            await self.eval(
                f"(() => {{ const el = [...document.querySelectorAll({json.dumps(selector)})]"
                f".find(e => e.innerText && e.innerText.trim() === {json.dumps(text)});"
                " if (!el) return false; el.click(); return true; })()"
            )
        )

    async def hover(self, x: float, y: float) -> None:
        await self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)

    async def screenshot(self, path: Path) -> None:
        data = await self.send("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(data["data"]))
        print(f"wrote {path}")


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("no Chromium found: apt-get install chromium")


async def shoot(ui: str, store: Path, chromium: str) -> None:
    """Drive Chromium through the runs table, the search run and the HTML plot."""
    import aiohttp

    from rayzor.search import browse_hint, load_search
    from rayzor.search._browse import size_metric
    from rayzor.search._config import quality_metric

    view = load_search(f"sqlite:///{store / 'mlflow.db'}", "rayzor")
    parent, client, experiment_id = view.parent, view.client, view.parent.info.experiment_id
    uri = client.tracking_uri
    hint = browse_hint(uri, experiment_id, parent.info.run_id)
    runs_url = hint[1].split()[-1].replace("http://127.0.0.1:5000", ui)
    OUT.mkdir(parents=True, exist_ok=True)
    artifacts = Path(tempfile.mkdtemp(prefix="rayzor-shots-"))
    png = client.download_artifacts(parent.info.run_id, "pareto.png", str(artifacts))
    html = client.download_artifacts(parent.info.run_id, "pareto.html", str(artifacts))
    shutil.copy(png, OUT / "pareto.png")
    print(f"wrote {OUT / 'pareto.png'}")

    port = _free_port()
    profile = tempfile.mkdtemp(prefix="rayzor-chromium-")
    browser = subprocess.Popen(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--remote-debugging-port={port}",
            f"--user-data-dir={profile}",
            f"--window-size={WIDTH},{HEIGHT}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/json/version", 30)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as r:
            target = next(t for t in json.load(r) if t["type"] == "page")
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                page = Page(ws)
                await page.send("Page.enable")
                await page.send(
                    "Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False
                )
                state = _ui_state(parent.info.run_id, quality_metric(view.objectives), size_metric(view.objectives))
                await runs_table(page, ui, runs_url, experiment_id, state)
                await search_run(page, ui, experiment_id, parent.info.run_id)
                await html_plot(page, Path(html))
    finally:
        browser.send_signal(signal.SIGTERM)
        browser.wait(timeout=20)
        shutil.rmtree(profile, ignore_errors=True)


def _ui_state(parent_run_id: str, quality: str, size: str) -> dict[str, Any]:
    """The runs table's saved view (MLflow keeps it in the browser's localStorage): the search expanded,
    the columns a user would add with "Columns" (quality, size, latency, plan), a wide name column."""
    return {
        "searchFilter": "",
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        "selectedColumns": [f"metrics.`{quality}`", f"metrics.`{size}`", "metrics.`latency_ms`", "tags.`rayzor.plan`"],
        "columnOrder": [],
        "columnWidths": {},
        "runsPinned": [],
        "runsHidden": [],
        "runsVisibilityMap": {},
        "runsHiddenMode": "FIRST_10_RUNS",
        "viewMaximized": False,
        "runListHidden": False,
        "isAccordionReordered": False,
        "useGroupedValuesInCharts": True,
        "hideEmptyCharts": True,
        "groupBy": None,
        "groupsExpanded": {},
        "autoRefreshEnabled": False,
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
        "runsExpanded": {parent_run_id: True},
    }


async def runs_table(page: Page, ui: str, url: str, experiment_id: str, state: dict[str, Any]) -> None:
    # Seed the saved view and close the assistant panel before the page reads them.
    await page.goto(f"{ui}/")
    key = f'MLflowLocalStorage-1.1-ExperimentPage-["{experiment_id}"]-ReactComponentState'
    await page.eval(
        f"localStorage.setItem({json.dumps(key)}, {json.dumps(json.dumps(state))});"
        "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
        "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
    )
    await page.goto(url)
    # a row of the table, not the experiment's description (which mentions the star too)
    pareto_row = "[...document.querySelectorAll('.ag-row')].some(r => r.innerText.includes('★'))"
    try:
        await page.wait_for(pareto_row, 60)
    except RuntimeError:
        await page.screenshot(OUT / "debug.png")
        raise
    # Widen the name column so the Pareto names show whole, as a user would drag it: the saved view
    # applies widths to the columns of its column order, so both are written and the page reloaded.
    order = await page.eval(
        "[...document.querySelectorAll('.ag-header-cell')].map(c => c.getAttribute('col-id')).filter(Boolean)"
    )
    print(f"runs table columns: {order}")
    state = {**state, "columnOrder": order, "columnWidths": {"attributes.`Run Name`": 300, "tags.`rayzor.plan`": 240}}
    await page.eval(f"localStorage.setItem({json.dumps(key)}, {json.dumps(json.dumps(state))})")
    await page.send("Page.reload")
    await asyncio.sleep(1.0)
    await page.wait_for(f"document.readyState === 'complete' && {pareto_row}", 60)
    await asyncio.sleep(1.5)
    await page.screenshot(OUT / "mlflow-pareto-runs.png")


async def search_run(page: Page, ui: str, experiment_id: str, run_id: str) -> None:
    await page.goto(f"{ui}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning")
    await page.wait_for("document.body.innerText.includes('Pareto-optimal of')", 60)
    await page.click_text("button, span, a", "Show more")  # the description starts folded
    await asyncio.sleep(1.0)
    await page.screenshot(OUT / "mlflow-search-run.png")


async def html_plot(page: Page, html: Path) -> None:
    await page.send("Emulation.setDeviceMetricsOverride", width=880, height=660, deviceScaleFactor=1, mobile=False)
    await page.goto(html.as_uri())
    count = await page.wait_for("document.querySelectorAll('svg .pt').length", 10)
    box = await page.eval(
        "(() => { const el = [...document.querySelectorAll('svg .pt')]"
        ".find(e => e.dataset.tip.includes('Pareto-optimal')); const r = el.getBoundingClientRect();"
        " return {x: r.x + r.width / 2, y: r.y + r.height / 2}; })()"
    )
    await page.hover(box["x"], box["y"])
    tip = await page.wait_for(
        "(() => { const t = document.getElementById('tip'); return t.style.display === 'block' && t.textContent; })()",
        5,
    )
    if "trial-" not in tip or "plan" not in tip:
        raise RuntimeError(f"the hover tooltip does not show the trial and its plan: {tip!r}")
    print(f"pareto.html: {count} points, hover shows: {tip.splitlines()[0]} ...")
    await page.screenshot(OUT / "pareto-html.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="Folder with an mlflow.db of a finished search (skips the search).")
    parser.add_argument("--trials", type=int, default=16, help="Trials of the fresh search [default: 16].")
    args = parser.parse_args()
    chromium = _chromium()
    store = args.store or Path(tempfile.mkdtemp(prefix="rayzor-tour-"))
    if args.store is None:
        run_small_search(store, args.trials)
    port = _free_port()
    ui = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            *(
                sys.executable,
                "-m",
                "mlflow",
                "ui",
                "--backend-store-uri",
                f"sqlite:///{store.resolve() / 'mlflow.db'}",
            ),
            *("--host", "127.0.0.1", "--port", str(port), "-w", "1"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_http(f"{ui}/health", 90)
        asyncio.run(shoot(ui, store.resolve(), chromium))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
