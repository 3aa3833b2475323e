"""Wiring: build an experiment from its config, run it, write its outputs, resume it."""

from fedmtl.experiment.experiment import Experiment, Results
from fedmtl.report import render_report
from fedmtl.runloop.checkpoint import CheckpointError

__all__ = ["CheckpointError", "Experiment", "Results", "render_report"]
