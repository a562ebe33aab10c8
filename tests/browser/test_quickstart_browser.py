"""End to end in a real browser: quickstart.ipynb in JupyterLab and Notebook 7, driven like a person would.

Runs every cell (and prints how long the first heatmap took), then moves the θ and T sliders
with the keyboard and uploads a PNG and a text file through the explorer's upload button; then
reloads the page with the kernel running (every pane must come back as it was, and a slider
must redraw it), and runs every cell a second time in the same kernel. After each step it compares what the browser drew
(the ``href`` data URI of each map pane's heatmap ``<image>``, which plotly.js renders from the
map) with the step before: the pane that depends on the moved control must change, the others
must not. Any JavaScript error, and any "Error displaying widget", fails the test.
Screenshots, the console and the server log are in ``test-artifacts/browser/``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

MAP_PANES = ("Grad-CAM", "LayerCAM", "I-CAM", "Fusion-CAM")
FIRST_RENDER_TIMEOUT = 240  # s: kernel start, torch import, the demo model, the first maps (~10 s here)
UPDATE_TIMEOUT = 90  # s: one slider move or upload, metrics and curves included (~2-5 s here)
# The status line once the maps, metrics and curves of the last request are shown.
# (A T that keeps the same layers adds "; T = ... keeps the same k layers ...".)
STATUS_DONE = re.compile(r"^(?P<label>.+): maps in \d+ ms, AD / IC in \d+ ms, curves in \d+ ms, ADCC in \d+ ms"
                         r"(; .*)?$")

# Everything the test compares, read from the rendered page in one call.
SNAPSHOT_JS = """(root) => {
  const text = (el) => (el ? el.textContent : '');
  const plots = [...root.querySelectorAll('.js-plotly-plot')].map((plot) => ({
    title: text(plot.querySelector('.gtitle')),
    text: text(plot.querySelector('.infolayer')),
    map: plot.querySelector('.hm image')?.getAttribute('href') ?? null,     // the heatmap, drawn
    image: plot.querySelector('.im image')?.getAttribute('href') ?? null,   // the picture under it
  }));
  const sliders = Object.fromEntries([...root.querySelectorAll('.widget-slider')].map((s) => [
    text(s.querySelector('.widget-label')), s.querySelector('.noUi-handle')?.getAttribute('aria-valuenow')]));
  const dropdowns = Object.fromEntries([...root.querySelectorAll('.widget-dropdown')].map((d) => {
    const select = d.querySelector('select');
    const shown = select.selectedIndex < 0 ? '' : select.options[select.selectedIndex].text.replace(/\u00a0/g, ' ');
    return [text(d.querySelector('.widget-label')), shown];
  }));
  const status = root.querySelector('.widget-hprogress + .widget-html .widget-html-content');
  return {plots, sliders, dropdowns, status: text(status).trim()};
}"""


def _digest(s: str | None) -> str | None:
    return None if s is None else hashlib.sha1(s.encode()).hexdigest()[:12]


@dataclass
class Snapshot:
    maps: dict[str, str | None]  # map pane title -> digest of its heatmap's data URI (None: no heatmap drawn)
    images: dict[str, str | None]  # map pane title -> digest of the picture under the heatmap
    titles: dict[str, str]  # every plot's title -> the text of its title and annotations
    sliders: dict[str, str | None]
    dropdowns: dict[str, str]  # label -> the option shown
    status: str
    picture: str | None  # the data URI of the picture under the Grad-CAM map

    @classmethod
    def read(cls, root: Any) -> Snapshot:
        raw = root.evaluate(SNAPSHOT_JS)
        panes = {p["title"]: p for p in raw["plots"] if p["title"] in MAP_PANES}
        return cls(maps={t: _digest(panes.get(t, {}).get("map")) for t in MAP_PANES},
                   images={t: _digest(panes.get(t, {}).get("image")) for t in MAP_PANES},
                   titles={p["title"]: p["title"] + " | " + p["text"] for p in raw["plots"]},
                   sliders=raw["sliders"], dropdowns=raw["dropdowns"], status=raw["status"],
                   picture=panes.get("Grad-CAM", {}).get("image"))

    def title(self, prefix: str) -> str:
        return next((v for k, v in self.titles.items() if k.startswith(prefix)), "")

    @property
    def done(self) -> bool:
        """Maps, metrics and curves of the last request shown, no error, every map drawn."""
        return bool(STATUS_DONE.match(self.status)) and all(self.maps.values())

    @property
    def label(self) -> str:
        m = STATUS_DONE.match(self.status)
        return m["label"] if m else ""

    def describe(self) -> str:
        return (f"status={self.status!r} dropdowns={self.dropdowns} sliders={self.sliders} maps={self.maps} "
                f"images={self.images} I-CAM scores={self.title('I-CAM layer scores')!r} "
                f"Fusion components={self.title('Fusion-CAM components')!r}")


class Explorer:
    """The CAMExplorer's output in the notebook, as the browser shows it."""

    shots = 0  # screenshots so far in this run (their file names are numbered in order)

    def __init__(self, page: Any, console: Any, artifacts: Path, front_end_errors: Any = None) -> None:
        self.page, self.console, self.artifacts = page, console, artifacts
        self.root = page.locator(".jp-OutputArea-output", has=page.locator(".widget-upload"))
        # Errors the front end itself logs before any cell runs (Notebook 7's own): not the explorer's.
        self.front_end_errors = front_end_errors or (lambda e: False)

    def snapshot(self) -> Snapshot:
        return Snapshot.read(self.root)

    def check_no_errors(self) -> None:
        errors = [e for e in self.console.errors if not self.front_end_errors(e)]
        assert not errors, "JavaScript errors in the page:\n" + "\n".join(errors)
        n = self.page.get_by_text("Error displaying widget").count()
        assert n == 0, f"{n} widget(s) show 'Error displaying widget'"

    def wait_for(self, what: str, predicate: Any, timeout: float = UPDATE_TIMEOUT) -> Snapshot:
        """Poll the rendered page until ``predicate(snapshot)`` holds on two reads 0.4 s apart
        with the same maps (the redraw has settled); fail with the last state otherwise."""
        deadline = time.monotonic() + timeout
        previous: Snapshot | None = None
        while True:
            self.check_no_errors()
            snap = self.snapshot()
            if predicate(snap):
                if previous is not None and previous.maps == snap.maps and previous.images == snap.images:
                    return snap
                previous = snap
            else:
                previous = None
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; last state: {snap.describe()}",
                            pytrace=False)
            self.page.wait_for_timeout(400)

    def slider_handle(self, label_start: str) -> Any:
        slider = self.root.locator(".widget-slider").filter(
            has=self.page.locator(".widget-label", has_text=re.compile("^" + re.escape(label_start))))
        assert slider.count() == 1, f"expected one slider labelled {label_start!r}, found {slider.count()}"
        return slider.locator(".noUi-handle")

    def press(self, label_start: str, key: str, times: int) -> None:
        """Focus the slider's handle and press ``key`` like a person at the keyboard."""
        handle = self.slider_handle(label_start)
        handle.scroll_into_view_if_needed()
        handle.focus()
        for _ in range(times):
            handle.press(key)

    def drag(self, label_start: str, dx: float) -> None:
        """Drag the slider's handle ``dx`` pixels with the mouse, like a person would."""
        handle = self.slider_handle(label_start)
        handle.scroll_into_view_if_needed()
        box = handle.bounding_box()
        assert box is not None
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        self.page.mouse.move(x, y)
        self.page.mouse.down()
        self.page.mouse.move(x + dx, y, steps=8)
        self.page.mouse.up()

    def upload(self, files: Any) -> None:
        button = self.root.locator(".widget-upload")
        button.scroll_into_view_if_needed()
        with self.page.expect_file_chooser() as chooser:
            button.click()
        chooser.value.set_files(files)

    def screenshot(self, name: str, page: bool = False) -> None:
        Explorer.shots += 1
        stem = self.artifacts / f"{Explorer.shots:02d}-{name}"
        self.root.screenshot(path=f"{stem}-explorer.png")
        if page:
            self.page.screenshot(path=f"{stem}-page.png")


def _changed(before: Snapshot, after: Snapshot) -> set[str]:
    return {t for t in MAP_PANES if before.maps[t] != after.maps[t]}


def _run_all_cells(page: Any) -> None:
    """Run → Run All Cells, from the menu bar."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()


def _save_notebook(page: Any) -> None:
    """File → Save Notebook, from the menu bar; returns once the tab no longer shows unsaved changes."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^File$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Save Notebook$")).click()
    page.wait_for_function("() => !document.querySelector('.lm-TabBar-tab.jp-mod-current.jp-mod-dirty')")


def _square_png(path: Path) -> np.ndarray:
    """Save a bundled sample of another class than the notebook's scene as a PNG file; its pixels."""
    import camwidgets as cw

    img = cw.load_sample("shapes-square")["image"]  # (3, H, W) in [0, 1]
    rgb = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(rgb).save(path)
    return rgb


def _pixels(data_uri: str | None) -> np.ndarray:
    """The pixels of a ``data:image/png;base64,...`` URI (what plotly draws a go.Image from)."""
    assert data_uri and data_uri.startswith("data:image/png;base64,"), str(data_uri)[:60]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_uri.split(",", 1)[1]))).convert("RGB"))


# The data URI of the heatmap drawn in the map pane titled ``title`` (null if none).
PANE_HREF_JS = """(title) => { const p = [...document.querySelectorAll('.js-plotly-plot')]
                    .find((e) => e.querySelector('.gtitle')?.textContent === title);
                  return p?.querySelector('.hm image')?.getAttribute('href') ?? null; }"""
# The title and annotations of the plot whose title starts with ``prefix`` ("" if none).
PLOT_TEXT_JS = """(prefix) => { const p = [...document.querySelectorAll('.js-plotly-plot')]
                    .find((e) => (e.querySelector('.gtitle')?.textContent ?? '').startsWith(prefix));
                  return p ? (p.querySelector('.gtitle').textContent + ' ' +
                              (p.querySelector('.infolayer')?.textContent ?? '')) : ''; }"""
ALL_RUN_JS = """() => { const p = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')];
                   return p.length > 0 && p.every((e) => /^\\[\\d+\\]:$/.test(e.textContent.trim())); }"""
FIRST_MAPS_JS = """() => { const hm = [...document.querySelectorAll('.jp-OutputArea-output .js-plotly-plot')]
                   .filter((p) => p.querySelector('.hm image') && p.querySelector('.im image'));
                   return hm.length >= 4; }"""


def _first_picture(page: Any, artifacts: Path, name: str) -> float:
    """Seconds from now (Run All clicked) until four map panes show a heatmap over the picture."""
    t0 = time.monotonic()
    page.wait_for_function(FIRST_MAPS_JS, timeout=FIRST_RENDER_TIMEOUT * 1000, polling=100)
    seconds = time.monotonic() - t0
    print(f"\n{name}: first heatmaps {seconds:.1f} s after Run All")
    with (artifacts / "timings.txt").open("a") as f:
        f.write(f"{name}: first heatmaps {seconds:.1f} s after Run All\n")
    return seconds


def test_quickstart_explorer_in_jupyterlab(lab_server: Any, page: Any, console: Any, artifacts: Path,
                                           tmp_path: Path) -> None:
    square_png = tmp_path / "square.png"
    square_rgb = _square_png(square_png)
    page.set_default_timeout(UPDATE_TIMEOUT * 1000)

    # -- open the notebook once its kernel is up, and run every cell -----------------------------
    page.goto(lab_server.lab_url("quickstart.ipynb"))
    page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=FIRST_RENDER_TIMEOUT * 1000)
    _run_all_cells(page)
    _first_picture(page, artifacts, "JupyterLab")
    prompts = page.locator(".jp-CodeCell .jp-InputArea-prompt")
    page.wait_for_function(ALL_RUN_JS, timeout=FIRST_RENDER_TIMEOUT * 1000)
    assert prompts.count() >= 7
    page.screenshot(path=str(artifacts / "00-notebook-after-run-all.png"))  # as Run All left it
    explorer = Explorer(page, console, artifacts)
    assert explorer.root.count() == 1, "the explorer's output should appear once"
    explorer.root.scroll_into_view_if_needed()
    # The notebook drives the explorer to T = 0.7 and θ = 30 before the later cells run.
    start = explorer.wait_for(
        "the explorer's first picture (T = 0.70, θ = 30)",
        lambda s: s.done and "T = 0.70" in s.title("I-CAM layer scores") and "θ=30" in s.title("Fusion-CAM components"),
        timeout=FIRST_RENDER_TIMEOUT)
    assert start.label == "crescent", start.describe()
    assert start.dropdowns["image"] == "pair-crescent-triangle", start.dropdowns
    assert start.dropdowns["class"].startswith("predicted: crescent ("), start.dropdowns
    assert start.sliders.get("T (I-CAM)") == "0.7" and start.sliders.get("θ (Fusion-CAM)") == "30.0", start.sliders
    assert len(set(start.maps.values())) == len(MAP_PANES), f"four different maps expected: {start.describe()}"
    explorer.screenshot("first-picture", page=True)
    # the controls and the four maps fit one 1440x900 screen
    top = explorer.root.bounding_box()
    maps_bottom = max(b["y"] + b["height"] for b in (
        explorer.root.locator(".js-plotly-plot", has=page.locator(".hm")).nth(i).bounding_box() for i in range(4)))
    print(f"\nexplorer: controls and maps {maps_bottom - top['y']:.0f} px tall, {top['width']:.0f} px wide")
    assert maps_bottom - top["y"] <= 900 - 120, "controls + maps taller than a 1440x900 screen minus Lab's bars"
    # the metrics tab: one row per method, every value computed
    explorer.root.locator(".lm-TabBar-tab", has_text="Metrics").click()
    table = explorer.root.locator(".js-plotly-plot", has=page.locator(".table"))
    cells = table.first.text_content() or ""
    assert all(label in cells for label in MAP_PANES) and "…" not in cells, cells
    explorer.screenshot("metrics-tab")
    explorer.root.locator(".lm-TabBar-tab", has_text="I-CAM layers").click()

    # -- θ: 30 -> 40 with the arrow keys: only the Fusion-CAM map changes --------------------------
    explorer.press("θ (Fusion-CAM)", "ArrowRight", 10)
    theta = explorer.wait_for("Fusion-CAM at θ = 40",
                              lambda s: s.done and "θ=40" in s.title("Fusion-CAM components"))
    assert theta.sliders["θ (Fusion-CAM)"] == "40.0", theta.sliders
    assert _changed(start, theta) == {"Fusion-CAM"}, f"before: {start.describe()}\nafter: {theta.describe()}"
    assert theta.images == start.images
    explorer.screenshot("theta-40")

    # -- T: 0.70 -> 0.80: I-CAM keeps more layers; only the I-CAM map changes ----------------------
    explorer.press("T (I-CAM)", "ArrowRight", 10)
    t_move = explorer.wait_for("I-CAM at T = 0.80",
                               lambda s: s.done and "T = 0.80" in s.title("I-CAM layer scores"))
    assert t_move.sliders["T (I-CAM)"] == "0.8", t_move.sliders
    assert _changed(theta, t_move) == {"I-CAM"}, f"before: {theta.describe()}\nafter: {t_move.describe()}"
    assert t_move.maps["Grad-CAM"] == start.maps["Grad-CAM"] and t_move.maps["LayerCAM"] == start.maps["LayerCAM"]
    assert t_move.title("I-CAM layer scores") != start.title("I-CAM layer scores")
    explorer.screenshot("threshold-0.80")

    # -- the class menu: explain the triangle instead of the predicted crescent: every map moves -
    menu = explorer.root.locator(".widget-dropdown").filter(
        has=page.locator(".widget-label", has_text=re.compile(r"^class$"))).locator("select")
    other = next(o for o in menu.locator("option").all_text_contents()
                 if o.replace("\u00a0", " ").startswith("triangle ("))
    menu.select_option(label=other)
    on_other = explorer.wait_for("the maps of the triangle", lambda s: s.done and s.label == "triangle")
    assert _changed(t_move, on_other) == set(MAP_PANES), f"before: {t_move.describe()}\nafter: {on_other.describe()}"
    assert on_other.images == t_move.images
    explorer.screenshot("class-triangle")
    menu.select_option(index=0)  # back to "predicted: crescent": the crescent's maps again, from the cache
    back = explorer.wait_for("the maps of the crescent again", lambda s: s.done and s.label == "crescent")
    assert back.maps == t_move.maps, f"before: {t_move.describe()}\nafter: {back.describe()}"

    # -- upload a PNG of a square: every pane redraws over the new picture --------------------------
    explorer.upload(square_png)
    square = explorer.wait_for("the panes of the uploaded square",
                               lambda s: s.done and s.images != t_move.images)
    # the picture under the maps is the file's, pixel for pixel, and the demo model sees a square
    diff = int(np.abs(_pixels(square.picture).astype(int) - square_rgb).max())
    assert diff <= 1, f"the panes show another picture than the uploaded file (pixels differ by up to {diff})"
    assert len(set(square.images.values())) == 1, square.describe()
    assert square.label == "square", square.describe()
    assert square.dropdowns["image"] == "(uploaded)", square.dropdowns
    assert square.dropdowns["class"].startswith("predicted: square ("), square.dropdowns
    assert _changed(t_move, square) == set(MAP_PANES), f"before: {t_move.describe()}\nafter: {square.describe()}"
    explorer.screenshot("uploaded-square", page=True)

    # -- upload a text file: the status line says why, and the panes stay as they were ---------------
    explorer.upload({"name": "notes.txt", "mimeType": "text/plain", "buffer": b"this is not an image\n"})
    refused = explorer.wait_for("the upload error in the status line", lambda s: s.status.startswith("⚠"))
    assert "not an image PIL can read" in refused.status, refused.status
    assert refused.maps == square.maps and refused.images == square.images, refused.describe()
    assert refused.dropdowns == square.dropdowns
    assert explorer.root.locator(".progress-bar-danger").count() == 1
    explorer.screenshot("text-upload-refused")

    # -- and the explorer still works: θ 40 -> 35 redraws Fusion-CAM for the square ------------------
    explorer.press("θ (Fusion-CAM)", "ArrowLeft", 5)
    after = explorer.wait_for("Fusion-CAM at θ = 35 after the error",
                              lambda s: s.done and "θ=35" in s.title("Fusion-CAM components"))
    assert after.label == "square", after.describe()
    assert _changed(refused, after) == {"Fusion-CAM"}, f"before: {refused.describe()}\nafter: {after.describe()}"
    explorer.screenshot("theta-35-after-error", page=True)
    explorer.check_no_errors()

    # -- latency in the browser: one θ key press until Fusion-CAM is redrawn for it, five times -------
    # (redrawn: its components pane shows the new θ; the heatmap itself may not change at every step:
    # on this square the gradient map is zero on more than 35 % of the pixels, so θ = 30-35 denoise alike)
    latencies, changed = [], 0
    for i in range(5):
        handle = explorer.slider_handle("θ (Fusion-CAM)")
        before_href = page.evaluate(PANE_HREF_JS, "Fusion-CAM")
        t0 = time.monotonic()
        handle.press("ArrowLeft")
        page.wait_for_function(f"() => ({PLOT_TEXT_JS})('Fusion-CAM components').includes('θ={34 - i}')",
                               polling=10)
        latencies.append(time.monotonic() - t0)
        changed += page.evaluate(PANE_HREF_JS, "Fusion-CAM") != before_href
        explorer.wait_for("the metrics after a θ step", lambda s: s.done)
    latencies.sort()
    line = (f"JupyterLab: θ key press to Fusion-CAM redrawn: median {1000 * latencies[2]:.0f} ms, "
            f"range {1000 * latencies[0]:.0f}-{1000 * latencies[-1]:.0f} ms ({changed} of 5 steps changed the map)")
    print("\n" + line)
    with (artifacts / "timings.txt").open("a") as f:
        f.write(line + "\n")
    explorer.press("θ (Fusion-CAM)", "ArrowRight", 5)
    after = explorer.wait_for("Fusion-CAM back at θ = 35",
                              lambda s: s.done and "θ=35" in s.title("Fusion-CAM components"))

    # -- save, then reload the page while the kernel runs: every pane comes back as it was, and works --
    _save_notebook(page)
    page.reload()
    page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=FIRST_RENDER_TIMEOUT * 1000)
    explorer = Explorer(page, console, artifacts)
    explorer.root.scroll_into_view_if_needed()
    reloaded = explorer.wait_for("the panes after a reload", lambda s: s.done and s.maps == after.maps)
    assert reloaded.images == after.images and reloaded.titles == after.titles, reloaded.describe()
    assert reloaded.sliders == after.sliders and reloaded.dropdowns == after.dropdowns
    explorer.screenshot("after-reload", page=True)
    explorer.press("θ (Fusion-CAM)", "ArrowRight", 5)
    moved = explorer.wait_for("Fusion-CAM at θ = 40 after the reload",
                              lambda s: s.done and "θ=40" in s.title("Fusion-CAM components"))
    assert _changed(reloaded, moved) == {"Fusion-CAM"}, f"before: {reloaded.describe()}\nafter: {moved.describe()}"

    # -- Run All a second time in the same kernel: one explorer, drawn again, no error ----------------
    _run_all_cells(page)
    _first_picture(page, artifacts, "JupyterLab, Run All again")
    page.wait_for_function(ALL_RUN_JS, timeout=FIRST_RENDER_TIMEOUT * 1000)
    explorer = Explorer(page, console, artifacts)
    assert explorer.root.count() == 1, "the explorer's output should appear once"
    explorer.root.scroll_into_view_if_needed()
    again = explorer.wait_for("the second Run All's picture",
                              lambda s: s.done and "θ=30" in s.title("Fusion-CAM components"))
    assert again.label == "crescent" and again.maps == start.maps, (
        f"first: {start.describe()}\nagain: {again.describe()}")
    explorer.screenshot("run-all-again", page=True)
    explorer.check_no_errors()


def test_quickstart_explorer_in_notebook7(lab_server: Any, page: Any, console: Any, artifacts: Path) -> None:
    try:
        import notebook  # noqa: F401
    except ImportError:
        pytest.skip('Notebook 7 is not installed (pip install -e ".[test]")')
    page.set_default_timeout(UPDATE_TIMEOUT * 1000)
    page.goto(lab_server.notebook_url("quickstart.ipynb"))
    page.locator(".jp-Notebook").wait_for(timeout=FIRST_RENDER_TIMEOUT * 1000)
    page.locator(".jp-NotebookKernelStatus-idle, .jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(
        timeout=FIRST_RENDER_TIMEOUT * 1000)
    page.wait_for_timeout(3000)
    # Notebook 7.6 with JupyterLab 4.6 logs errors of its own on every page, before any cell runs (also on
    # /tree and on a notebook without widgets): "Cannot read properties of undefined (reading 'schema')",
    # and a 403 for one of its fonts. Those are not the explorer's; anything else fails the test.
    baseline = set(console.errors)
    assert all("camwidgets" not in e and "plotly" not in e.lower() and "widget" not in e for e in baseline), baseline

    def front_end_errors(e: str) -> bool:
        return e in baseline or ("/static/notebook/" in e and "403" in e)

    _run_all_cells(page)
    _first_picture(page, artifacts, "Notebook 7")
    page.wait_for_function(ALL_RUN_JS, timeout=FIRST_RENDER_TIMEOUT * 1000)
    explorer = Explorer(page, console, artifacts, front_end_errors)
    assert explorer.root.count() == 1, "the explorer's output should appear once"
    explorer.root.scroll_into_view_if_needed()
    start = explorer.wait_for("the explorer's picture in Notebook 7",
                              lambda s: s.done and "θ=30" in s.title("Fusion-CAM components"),
                              timeout=FIRST_RENDER_TIMEOUT)
    explorer.screenshot("notebook7", page=True)
    # (Notebook 7 keeps the arrow keys for itself: the mouse drags the handle instead.)
    explorer.drag("T (I-CAM)", -40)
    moved = explorer.wait_for("I-CAM at a lower T in Notebook 7",
                              lambda s: s.done and s.sliders["T (I-CAM)"] != "0.7"
                              and "T = 0.70" not in s.title("I-CAM layer scores"))
    assert float(moved.sliders["T (I-CAM)"]) < 0.7, moved.sliders
    assert _changed(start, moved) <= {"I-CAM"}, f"before: {start.describe()}\nafter: {moved.describe()}"
    assert moved.title("I-CAM layer scores") != start.title("I-CAM layer scores")
    explorer.check_no_errors()
