"""Check that `dvc plots show` draws its charts in a real browser with no network.

Renders the repository's plots (or an existing page, --html) with DVC, opens the page in headless
Chromium with every connection refused, and checks that each chart has been drawn: one <canvas> or
<svg> per chart in the DOM, and a screenshot that is not blank. Needs `chromium` (Debian package).

    python scripts/check_plots_render.py                      # all plots of this repo
    python scripts/check_plots_render.py --targets plots/ood/roc/fp32/msp_tin_crop.csv
    python scripts/check_plots_render.py --html out/index.html --screenshot shot.png
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

OFFLINE = ["--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>"]  # any request fails fast
BROWSER = ("chromium", "chromium-browser", "google-chrome")


def chromium(*args: str) -> str:
    binary = next(filter(None, map(shutil.which, BROWSER)), None)
    if binary is None:
        raise SystemExit("no headless browser: apt-get install -y chromium")
    command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000", *OFFLINE, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=True).stdout


def charts(html: str) -> int:
    """Charts the page asks for: one vegaEmbed call per chart."""
    return len(re.findall(r"vegaEmbed\(", html))


def check(page: Path, screenshot: Path) -> list[str]:
    """Problems found; empty when every chart is drawn."""
    expected = charts(page.read_text())
    dom = chromium("--dump-dom", page.resolve().as_uri())
    drawn = len(re.findall(r"<canvas\b|<svg\b[^>]*\bclass=\"marks\"", dom))
    problems = [] if drawn >= expected > 0 else [f"{drawn} of {expected} charts drawn"]
    height = max(1000, 450 * expected)
    chromium(f"--screenshot={screenshot.resolve()}", f"--window-size=1200,{min(height, 16000)}", page.resolve().as_uri())
    pixels = np.asarray(Image.open(screenshot).convert("L"))
    inked = float((pixels < 200).mean())
    if inked < 0.002:
        problems.append(f"screenshot {screenshot} is blank ({inked:.2%} of pixels inked)")
    print(f"{page}: {drawn}/{expected} charts drawn, {inked:.2%} of the screenshot inked ({screenshot})")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--html", type=Path, help="a page already written by `dvc plots show` (default: render one)")
    parser.add_argument("--targets", nargs="*", default=[], help="plot ids or files passed to `dvc plots show`")
    parser.add_argument("--screenshot", type=Path, default=Path("dvc_plots.png"), help="where to save the screenshot")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        page = args.html
        if page is None:
            subprocess.run(["dvc", "plots", "show", *args.targets, "-o", tmp], check=True, capture_output=True)
            page = Path(tmp) / "index.html"
            if not page.is_file():
                print(f"error: `dvc plots show` wrote no page: no plot matches {args.targets}", file=sys.stderr)
                return 1
        problems = check(page, args.screenshot)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
