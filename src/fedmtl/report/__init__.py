"""Run outputs: the metrics log, plots and the HTML report."""

from fedmtl.report.html import write_report
from fedmtl.report.metrics_log import MetricsLog, read_metrics
from fedmtl.report.plots import draw_all
from fedmtl.report.render import render_report

__all__ = ["MetricsLog", "draw_all", "read_metrics", "render_report", "write_report"]
