"""Run outputs: the metrics log, plots and the HTML report."""

from fedmtl.report.html import write_report
from fedmtl.report.metrics_log import MetricsLog, read_metrics
from fedmtl.report.plots import draw_all

__all__ = ["MetricsLog", "draw_all", "read_metrics", "write_report"]
