"""A self-contained ``report.html``: configuration, summary table and plots (embedded as data URIs)."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _table(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    return str(v)


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for key in ("rounds_completed", "engine", "wall_seconds", "bytes_down_total", "bytes_up_total"):
        if key in summary:
            rows.append((key, _fmt(summary[key])))
    for task, metrics in (summary.get("final_global") or {}).items():
        rows.append((f"global · {task}", _fmt(metrics)))
    pers = summary.get("final_personalized") or {}
    for key in ("mean", "worst10", "median"):
        if key in pers:
            rows.append((f"personalised · {key}", _fmt(pers[key])))
    for task, value in (pers.get("per_task") or {}).items():
        rows.append((f"personalised · {task}", _fmt(value)))
    return rows


def write_report(run_dir: Path, config_yaml: str, summary: dict[str, Any], plots: Sequence[Path], note: str = "") -> Path:
    """Write ``run_dir/report.html`` and return its path; ``note`` says why plots are missing, if they are."""
    images = []
    for p in plots:
        data = base64.b64encode(p.read_bytes()).decode()
        images.append(f'<figure><img alt="{html.escape(p.stem)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(p.stem)}</figcaption></figure>')
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fedmtl run · {html.escape(run_dir.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; }} th, td {{ border: 1px solid #ddd; padding: .3rem .6rem; text-align: left; }}
th {{ background: #f5f5f5; }} figure {{ display: inline-block; margin: .5rem; }} img {{ max-width: 520px; }}
pre {{ background: #f7f7f7; padding: 1rem; overflow-x: auto; font-size: .85rem; }}
</style></head><body>
<h1>fedmtl run <code>{html.escape(run_dir.name)}</code></h1>
<h2>Summary</h2>{_table(summary_rows(summary))}
<h2>Plots</h2>{''.join(images) or f'<p>No plots. {html.escape(note)}</p>'}
<h2>Data</h2><pre>{html.escape(json.dumps(summary.get('data', {}), indent=2))}</pre>
<h2>Configuration</h2><pre>{html.escape(config_yaml)}</pre>
</body></html>
"""
    out = run_dir / "report.html"
    out.write_text(page)
    return out
