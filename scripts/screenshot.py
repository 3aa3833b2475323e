"""Screenshot an HTML page (a run's report.html, a compare.html) in a headless browser.

    python scripts/screenshot.py runs/demo-.../report.html report.png [--width 1280 --height 2400]

Uses the first of chromium-headless-shell, chromium, google-chrome on PATH (Debian:
``apt-get install chromium-headless-shell``); exits 2 naming them when none is there.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")


def find_browser() -> str | None:
    """The first headless-capable browser on PATH, or None."""
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def screenshot(page: Path, out: Path, width: int = 1280, height: int = 2400, timeout: float = 120.0) -> Path:
    """Render ``page`` at ``width`` x ``height`` CSS pixels and write the PNG ``out``."""
    browser = find_browser()
    if browser is None:
        raise FileNotFoundError(f"no headless browser on PATH (looked for {', '.join(BROWSERS)})")
    args = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--window-size={width},{height}", f"--screenshot={out.resolve()}", page.resolve().as_uri()]
    subprocess.run(args, check=True, capture_output=True, timeout=timeout)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=2400)
    args = parser.parse_args()
    try:
        print(screenshot(args.page, args.out, args.width, args.height))
    except FileNotFoundError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
