"""A self-contained ``report.html``: what ran (headline, versions, date), results, plots with captions,
a glossary, the data and the full configuration. Plots are embedded as data URIs."""

from __future__ import annotations

import base64
import html
import json
import platform
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from fedmtl.report.labels import GLOSSARY, headline, summary_rows

CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; padding: 0 1rem; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 1rem 0; } th, td { border: 1px solid #ddd; padding: .3rem .6rem; text-align: left; vertical-align: top; }
th { background: #f5f5f5; font-weight: 600; } .meta { color: #555; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 1rem; }
figure { margin: 0; } figure.wide { grid-column: 1 / -1; } img { width: 100%; height: auto; }
figcaption { font-size: .9rem; color: #444; margin-top: .3rem; }
dt { font-weight: 600; } dd { margin: 0 0 .5rem 1.2rem; }
pre { background: #f7f7f7; padding: 1rem; overflow-x: auto; font-size: .85rem; }
"""


def _table(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def versions() -> str:
    """``fedmtl 0.1.0 · torch 2.13.0 · Python 3.11.7``: what rendered the report."""
    import torch

    from fedmtl._version import __version__

    return f"fedmtl {__version__} · torch {torch.__version__} · Python {platform.python_version()}"


def _figure(path: Path) -> str:
    from fedmtl.report.plots import CAPTIONS

    data = base64.b64encode(path.read_bytes()).decode()
    caption = CAPTIONS.get(path.stem, path.stem)
    wide = ' class="wide"' if path.stem == "bytes" else ""
    return (
        f'<figure{wide}><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def write_report(run_dir: Path, config_yaml: str, summary: dict[str, Any], plots: Sequence[Path], note: str = "") -> Path:
    """Write ``run_dir/report.html`` and return its path; ``note`` says why plots are missing, if they are."""
    config = yaml.safe_load(config_yaml) if config_yaml.strip() else {}
    written = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    figures = "".join(_figure(p) for p in plots) or f"<p>No plots. {html.escape(note)}</p>"
    glossary = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in GLOSSARY.items())
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fedmtl run · {html.escape(run_dir.name)}</title>
<style>{CSS}</style></head><body>
<h1>fedmtl run <code>{html.escape(run_dir.name)}</code></h1>
<p class="meta">Report written {written} with {html.escape(versions())}.</p>
<h2>What ran</h2>{_table(headline(config or {}))}
<h2>Results</h2>{_table(summary_rows(summary))}
<h2>Plots</h2><div class="plots">{figures}</div>
<h2>Glossary</h2><dl>{glossary}</dl>
<h2>Data</h2><pre>{html.escape(json.dumps(summary.get('data', {}), indent=2))}</pre>
<h2>Configuration</h2><pre>{html.escape(config_yaml)}</pre>
</body></html>
"""
    out = run_dir / "report.html"
    out.write_text(page)
    return out
