"""Render RUN_DIR/report.html in headless Chromium: a screenshot, and a check of the DOM text.

    python -m simulations.research.render_report RUN_DIR [--png OUT.png]

Exits 1 when the page does not render or the ε values of RUN_DIR/privacy.json are not in its text
(run `confide report RUN_DIR` first).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
# No network, no sync or updates, nothing from a profile: the page must render on its own.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,2400",
]


class _Text(HTMLParser):
    """The visible text of a page (what a reader sees, not attribute values or CSS)."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("style", "script"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def _chromium(args: list[str], timeout: int = 120) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="confide-chromium-") as profile:
        return subprocess.run(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def expected_epsilons(privacy: dict) -> list[str]:
    """The ε values the page must show, formatted as the report formats them."""
    values = [privacy["interaction_level"].get(k) for k in ("epsilon_max", "epsilon_median")]
    values += [
        privacy["interaction_level"].get("epsilon_min"),
        privacy["user_level"].get("epsilon"),
    ]
    return [f"{v:.3g}" for v in values if isinstance(v, int | float)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument(
        "--png", type=Path, help="screenshot path (default RUN_DIR/report_screen.png)"
    )
    args = parser.parse_args(argv)
    page, summary = args.run_dir / "report.html", args.run_dir / "privacy.json"
    if not page.is_file() or not summary.is_file():
        print(f"render_report: {page} or {summary} missing: run `confide report`", file=sys.stderr)
        return 1
    if not Path(CHROMIUM).exists():
        print(f"render_report: {CHROMIUM} not found (apt-get install chromium)", file=sys.stderr)
        return 1
    png = (args.png or args.run_dir / "report_screen.png").resolve()
    url = page.resolve().as_uri()
    shot = _chromium([f"--screenshot={png}", url])
    if shot.returncode != 0 or not png.is_file():
        print(f"render_report: screenshot failed:\n{shot.stderr[-2000:]}", file=sys.stderr)
        return 1
    dom = _chromium(["--dump-dom", url])
    if dom.returncode != 0 or "<body" not in dom.stdout:
        print(f"render_report: --dump-dom failed:\n{dom.stderr[-2000:]}", file=sys.stderr)
        return 1
    reader = _Text()
    reader.feed(dom.stdout)
    text = " ".join(reader.parts)
    expected = expected_epsilons(json.loads(summary.read_text()))
    missing = [eps for eps in expected if eps not in text]
    if missing:
        print(
            f"render_report: ε values {missing} not in the rendered text of {page}", file=sys.stderr
        )
        return 1
    print(f"rendered {page} -> {png}; ε values found in the page text: {expected}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
