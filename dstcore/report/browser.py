"""The rendered report as a reader's browser lays it out: headless Chromium measures where the
verdict block falls, how wide every table is and whether every figure loaded, and takes a
screenshot of the first screen.

Chromium is found on the PATH, or installed from Debian's ``chromium`` package on demand
(:func:`ensure_chromium`, root with apt-get only). Measuring needs no driver: a copy of the page
with a small script appended is loaded with ``--dump-dom``, and the script writes what it
measured into the page as JSON.
"""

from __future__ import annotations

import html as html_lib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from dstcore import DstError

NAMES = ("chromium", "chromium-browser", "google-chrome")
# Headless, and none of the background connections a closed network refuses.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars"]
WIDTH, HEIGHT = 1200, 900  # the viewport every table must fit (px) and the "first screen"

_MEASURE = """<script>
window.addEventListener("load", () => {
  const box = (el) => { const r = el.getBoundingClientRect();
    return {left: r.left, right: r.right, top: r.top + scrollY, bottom: r.bottom + scrollY,
            width: r.width}; };
  const verdicts = document.getElementById("verdicts");
  const out = {viewport: {width: innerWidth, height: innerHeight},
               verdicts: verdicts ? box(verdicts) : null};
  document.querySelectorAll("details").forEach((d) => { d.open = true; });
  out.page_width = document.documentElement.scrollWidth;
  out.tables = [...document.querySelectorAll("table")].map((t, i) => ({
    id: t.id || `table-${i}`, ...box(t), scroll_width: t.scrollWidth,
    parent_width: t.parentElement.clientWidth,
    in_details: !!t.closest("details")}));
  out.images = [...document.images].map((im) => ({complete: im.complete,
    natural_width: im.naturalWidth, ...box(im)}));
  const pre = document.createElement("pre");
  pre.id = "dst-measure";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def find_chromium() -> str | None:
    """The path of a Chromium on the PATH, or None."""
    return next((path for name in NAMES if (path := shutil.which(name))), None)


def ensure_chromium() -> str:
    """A Chromium to run: the one on the PATH, else Debian's ``chromium`` package installed now
    (needs root and apt-get). Raises :class:`DstError` with the reason when neither works."""
    found = find_chromium()
    if found:
        return found
    if not shutil.which("apt-get"):
        raise DstError("no Chromium on the PATH and no apt-get to install Debian's chromium")
    if os.geteuid() != 0:
        raise DstError("no Chromium on the PATH; installing Debian's chromium needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise DstError(f"could not install Debian's chromium ({' '.join(command)}: {last})")
    found = find_chromium()
    if not found:
        raise DstError("apt-get installed chromium but no chromium is on the PATH")
    return found


def _run(chromium: str, args: list[str], timeout_s: float = 120) -> str:
    with tempfile.TemporaryDirectory(prefix="dst-chromium-") as profile:
        done = subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        raise DstError(f"chromium exited with {done.returncode}: "
                       f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    return done.stdout


def measure(html: Path, chromium: str, width: int = WIDTH, height: int = HEIGHT) -> dict:
    """Layout of ``html`` at ``width`` × ``height``: the viewport, the verdict block's box, the
    page's scroll width, every table's box and scroll width (with every ``<details>`` opened),
    and every image's load state. Boxes are in px from the top left of the page."""
    with tempfile.TemporaryDirectory(prefix="dst-measure-") as tmp:
        page = Path(tmp) / "page.html"
        page.write_text(Path(html).read_text() + _MEASURE)
        dom = _run(chromium, ["--dump-dom", f"--window-size={width},{height}",
                              "--virtual-time-budget=20000", page.as_uri()])
    found = re.search(r'<pre id="dst-measure">(.*?)</pre>', dom, re.S)
    if not found:
        raise DstError(f"chromium loaded {html} but the measuring script did not run")
    return json.loads(html_lib.unescape(found.group(1)))


def screenshot(html: Path, png: Path, chromium: str, width: int = WIDTH,
               height: int = HEIGHT) -> Path:
    """A PNG of the first screen (``width`` × ``height`` px) of ``html``."""
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    _run(chromium, [f"--screenshot={png}", f"--window-size={width},{height}",
                    "--virtual-time-budget=20000", Path(html).resolve().as_uri()])
    if not png.is_file():
        raise DstError(f"chromium wrote no screenshot of {html}")
    return png


def problems(layout: dict) -> list[str]:
    """What a reader would hit, one line each: the verdict block below the first screen, a
    table wider than the viewport or cut off by its container, a figure that did not load."""
    view = layout["viewport"]
    found = []
    verdicts = layout["verdicts"]
    if verdicts is None:
        found.append("no verdict block (#verdicts)")
    elif verdicts["bottom"] > view["height"]:
        found.append(f"the verdict block ends at {verdicts['bottom']:.0f} px, below the first "
                     f"screen ({view['height']} px)")
    if layout["page_width"] > view["width"]:
        found.append(f"the page is {layout['page_width']} px wide, wider than the viewport "
                     f"({view['width']} px)")
    for t in layout["tables"]:
        if t["right"] > view["width"] or t["scroll_width"] > t["width"] + 1:
            found.append(f"table {t['id']} is {t['scroll_width']} px wide and ends at "
                         f"{t['right']:.0f} px (viewport {view['width']} px)")
    for i, im in enumerate(layout["images"]):
        if not im["complete"] or im["natural_width"] == 0:
            found.append(f"figure {i + 1} did not load")
    return found
