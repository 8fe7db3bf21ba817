"""What a notebook user sees, checked in a real browser (headless Chromium).

A model's treescope HTML (what ``nnx.display`` shows in Jupyter) beside its ``nnx.tabulate``
table, and the built docs' quickstart guide, are loaded in Chromium. Treescope draws into a
shadow DOM, which ``--dump-dom`` does not print, so the page gets a small probe script that
copies the rendered shadow text and any console errors into the DOM after the page's scripts
have run. Screenshots go to ``out/browser/`` (CI keeps them as artifacts).

Slow; skipped where no ``chromium`` is installed (``.ci/run`` installs it with apt-get).
"""

from __future__ import annotations

import functools
import html
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import jax.numpy as jnp
import pytest

import nnx

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "out" / "browser"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install chromium)"),
]

_PROBE_HEAD = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message)));
const __consoleError = console.error;
console.error = (...args) => { window.__errors.push(args.join(" ")); __consoleError(...args); };
</script>"""

_PROBE_TAIL = """<pre id="nnx-probe-rendered" hidden></pre><pre id="nnx-probe-errors" hidden></pre>
<script>
setTimeout(() => {
  const shadows = [...document.querySelectorAll("treescope-container")].map(
    c => c.shadowRoot ? c.shadowRoot.textContent : "NO-SHADOW-ROOT");
  document.getElementById("nnx-probe-rendered").textContent = shadows.join("\\n");
  document.getElementById("nnx-probe-errors").textContent = JSON.stringify(window.__errors);
}, 1500);
</script>"""


def with_probe(page: str) -> str:
    page = re.sub(r"<head([^>]*)>", lambda m: m.group(0) + _PROBE_HEAD, page, count=1)
    return page.replace("</body>", _PROBE_TAIL + "</body>", 1)


def render(url: str, screenshot: Path) -> tuple[str, str, list[str]]:
    """(dumped DOM, treescope's rendered shadow text, console errors) of a page."""
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    flags.append("--virtual-time-budget=8000")
    dom = subprocess.run(
        [*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120
    ).stdout
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [*flags, f"--screenshot={screenshot}", "--window-size=1280,1000", url],
        capture_output=True,
        timeout=120,
    )
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000, "no screenshot"

    def probe(name: str) -> str:
        match = re.search(rf'<pre id="nnx-probe-{name}"[^>]*>(.*?)</pre>', dom, re.S)
        assert match, f"the probe script did not run: {dom[:500]}"
        return html.unescape(match.group(1))

    return dom, probe("rendered"), json.loads(probe("errors") or "[]")


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(16, 32, rngs=rngs)
        self.bn = nnx.BatchNorm(32, rngs=rngs)
        self.out = nnx.Linear(32, 4, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.bn(self.hidden(x))))


def test_model_treescope_html_and_table_in_chromium(tmp_path):
    import treescope

    model = MLP(nnx.Rngs(0))
    tree = treescope.render_to_html(model, compressed=False)
    table = nnx.tabulate(model, jnp.ones((8, 16)))
    page = tmp_path / "model.html"
    page.write_text(
        with_probe(
            "<!doctype html><html><head><meta charset='utf-8'><title>nnx model</title></head>"
            f"<body><div id='tree'>{tree}</div><pre id='table'>{html.escape(table)}</pre>"
            "</body></html>"
        )
    )
    dom, rendered, errors = render(page.as_uri(), OUT / "model.png")
    assert errors == [], errors
    for text in ("MLP(", "hidden=", "Linear(", "BatchNorm(", "in_features=16", "float32(32,)"):
        assert text in rendered, (text, rendered[-2000:])
    assert "_meta" not in rendered and "bias_init" not in rendered
    table_text = html.unescape(re.search(r'<pre id="table">(.*?)</pre>', dom, re.S).group(1))
    assert "Total Parameters: 804" in table_text and "float32[8,32]" in table_text


def test_docs_quickstart_page_in_chromium(tmp_path):
    """The quickstart guide of a built site: ``NNX_DOCS_SITE`` (what ``.ci/run`` built), or
    a fresh ``mkdocs build`` here."""
    built = os.environ.get("NNX_DOCS_SITE")
    if built:
        site = (ROOT / built).resolve()
        assert site.is_dir(), f"NNX_DOCS_SITE={built} is not a built site"
    else:
        pytest.importorskip("mkdocs")
        site = tmp_path / "site"
        subprocess.run(
            [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
            cwd=ROOT,
            check=True,
            capture_output=True,
            timeout=900,
            env={**os.environ, "XLA_FLAGS": ""},
        )
    pages = sorted(site.rglob("*quickstart*/index.html"))
    assert pages, sorted(str(p.relative_to(site)) for p in site.rglob("*.html"))[:40]
    # Served over HTTP as a user browses it (the theme's search worker refuses file:// URLs);
    # the probed copy sits beside the page so its relative links resolve.
    probed = pages[0].parent / "probed.html"
    probed.write_text(with_probe(pages[0].read_text()))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/{probed.relative_to(site).as_posix()}"
        dom, rendered, errors = render(url, OUT / "quickstart.png")
    finally:
        server.shutdown()
        probed.unlink()
    assert errors == [], errors
    text = html.unescape(re.sub(r"<[^>]+>", " ", dom))
    assert "Quickstart" in text and "accuracy" in text.lower(), text[:2000]
    assert "jp-OutputArea-output" in dom, "the guide shows no cell outputs"
    assert "Linear" in text + rendered, "the quickstart shows no layer"
