"""Check that every page of the docs site reads in a 1366 x 768 window: nothing scrolls or is cut sideways.

    python docs/check_width.py [--width 1366] [--height 768] [--site DIR] [--chromium PATH]

Builds the site with ``mkdocs build --strict`` into a temporary folder (or copies a built ``--site DIR``
there), opens each page in headless Chromium (Debian's ``chromium`` package) at that window size and reads,
once the page has loaded:

* ``document.documentElement.scrollWidth`` against ``clientWidth`` (the window less its vertical scrollbar):
  a page wider than that scrolls sideways;
* every visible box that hides part of its content sideways (a code block or a table whose
  ``scrollWidth`` exceeds its ``clientWidth``): a line cut at the box's edge.

Prints one line per page (and the boxes at fault) and exits with 1 if any page overflows or cuts a line.
Needs no network: pages are opened from files, and web fonts that cannot be fetched fall back to the
system's fonts, as they would for a reader offline.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MARK = "width-check-result"

# Runs once the page has loaded; measures before it writes its answer into the page (as JSON in a <pre>).
PROBE = """<script>
window.addEventListener("load", function () {
  setTimeout(function () {
    var root = document.documentElement, cw = root.clientWidth;
    function name(e) {
      var s = e.tagName.toLowerCase();
      if (e.id) s += "#" + e.id;
      if (typeof e.className === "string" && e.className.trim()) s += "." + e.className.trim().split(/\\s+/).join(".");
      return s;
    }
    function text(e) { return (e.textContent || "").replace(/\\s+/g, " ").trim().slice(0, 70); }
    function visible(e) {
      if (!e.getClientRects().length) return false;
      var st = getComputedStyle(e);
      return st.visibility !== "hidden" && st.display !== "none";
    }
    var wide = [], cut = [];
    document.querySelectorAll("body *").forEach(function (e) {
      if (!visible(e)) return;
      var r = e.getBoundingClientRect();
      if (r.right > cw + 0.5 && r.width > 0) wide.push({box: name(e), right: Math.round(r.right), text: text(e)});
      var ox = getComputedStyle(e).overflowX;
      if (ox !== "visible" && e.scrollWidth > e.clientWidth + 1 && e.clientWidth > 0 && e.clientHeight > 0)
        cut.push({box: name(e), scroll_width: e.scrollWidth, client_width: e.clientWidth, text: text(e)});
    });
    var out = document.createElement("pre");
    out.id = "%s";
    out.textContent = JSON.stringify({inner_width: window.innerWidth, client_width: cw,
      scroll_width: root.scrollWidth, wide: wide.slice(-5), cut: cut});
    document.body.appendChild(out);
  }, 300);
});
</script>
""" % MARK


def find_chromium(given: str | None) -> str:
    for candidate in ([given] if given else ["chromium", "chromium-browser", "google-chrome"]):
        path = shutil.which(candidate)
        if path:
            return path
    sys.exit(f"check_width: no Chromium found ({given or 'chromium'}): install Debian's package "
             "(apt-get install chromium) or give --chromium PATH")


def build_site(site: str | None, into: Path) -> Path:
    if site:
        shutil.copytree(site, into)
        return into
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])))
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-f", str(REPO / "mkdocs.yml"),
                          "-d", str(into)], cwd=REPO, env=env, capture_output=True, text=True)
    if run.returncode:
        sys.exit(f"check_width: mkdocs build --strict failed:\n{run.stdout}{run.stderr}")
    return into


def measure(chromium: str, page: Path, width: int, height: int, profile: Path) -> dict:
    text = page.read_text(encoding="utf-8")
    page.write_text(text.replace("</body>", PROBE + "</body>", 1), encoding="utf-8")
    args = [chromium, "--headless", "--disable-gpu", "--no-first-run", "--disable-extensions",
            f"--user-data-dir={profile}", f"--window-size={width},{height}", "--virtual-time-budget=10000",
            "--dump-dom", page.as_uri()]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.insert(1, "--no-sandbox")  # Chromium refuses to start its sandbox as root
    run = subprocess.run(args, capture_output=True, text=True, timeout=120)
    found = re.search(rf'<pre id="{MARK}">(.*?)</pre>', run.stdout, re.S)
    if not found:
        sys.exit(f"check_width: Chromium returned no measurement for {page} (exit {run.returncode}):\n"
                 f"{run.stderr[-2000:]}")
    return json.loads(html.unescape(found.group(1)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check that no docs page scrolls or cuts a line sideways "
                                     "at a given window size, in headless Chromium.", allow_abbrev=False)
    parser.add_argument("--width", type=int, default=1366, help="window width in CSS pixels (default 1366)")
    parser.add_argument("--height", type=int, default=768, help="window height in CSS pixels (default 768)")
    parser.add_argument("--site", help="a built site to check as it is (default: build one with mkdocs --strict)")
    parser.add_argument("--chromium", help="the Chromium executable (default: chromium on the PATH)")
    args = parser.parse_args(argv)
    chromium = find_chromium(args.chromium)
    failed = 0
    with tempfile.TemporaryDirectory(prefix="check-width-") as tmp:
        site = build_site(args.site, Path(tmp) / "site")
        pages = sorted(p for p in site.rglob("*.html") if "assets" not in p.relative_to(site).parts)
        for page in pages:
            m = measure(chromium, page, args.width, args.height, Path(tmp) / "profile")
            over = m["scroll_width"] - m["client_width"]
            ok = over <= 0 and not m["cut"]
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {page.relative_to(site).as_posix():40s} scrollWidth {m['scroll_width']} / "
                  f"clientWidth {m['client_width']} (innerWidth {m['inner_width']}), boxes cut sideways: {len(m['cut'])}")
            if over > 0:
                for w in m["wide"]:
                    print(f"       wider than the window: {w['box']} (right edge {w['right']} px): {w['text']!r}")
            for c in m["cut"]:
                print(f"       cut: {c['box']} ({c['scroll_width']} px of content in {c['client_width']} px): {c['text']!r}")
    print(f"{len(pages) - failed} of {len(pages)} pages fit {args.width} x {args.height}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
