"""The fedmtl ServerApp: a fedmtl experiment's server side, running in Flower's SuperLink.

The run config (``[tool.flwr.app.config]``, see :class:`FlowerSettings`) names the experiment YAML;
the server builds the model, the aggregation and the server optimiser from it exactly as the
simulation does, evaluates the global model on its own held-out split and writes the usual run
folder (metrics.jsonl, checkpoints/, summary.json).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedmtl.config import ExperimentConfig, load_config
from fedmtl.data import build_federated_data
from fedmtl.data.dataset import FederatedData
from fedmtl.fl.federation import Federation
from fedmtl.integrations.flower.settings import FlowerSettings
from fedmtl.integrations.flower.strategy import FlowerServer, GridLike, stub_client
from fedmtl.mtl import build_model

log = logging.getLogger("fedmtl")


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def server_data(cfg: ExperimentConfig) -> FederatedData:
    """What the server holds of the data: the task list, the input shape and its held-out split.

    The clients' rows are dropped here; the server learns each client's task set at registration.
    """
    data = build_federated_data(cfg.data, cfg.seed)
    names = tuple(data.task_names)
    stubs = tuple(stub_client(c.client_id, names, data) for c in data.clients)
    return FederatedData(data.tasks, data.input_shape, stubs, data.holdout, data.description)


def build_server(settings: FlowerSettings, grid: GridLike, base_dir: Path) -> FlowerServer:
    """The server of the experiment the settings name (config resolved against ``base_dir``)."""
    cfg = load_config(_resolve(base_dir, settings.config), overrides=settings.override_list())
    return server_for(cfg, settings, grid, _resolve(Path.cwd(), settings.output_dir) / settings.run_name)


def server_for(
    cfg: ExperimentConfig, settings: FlowerSettings, grid: GridLike, run_dir: Path, **kwargs: Any
) -> FlowerServer:
    """A :class:`FlowerServer` for ``cfg`` writing to ``run_dir`` (kwargs go to its constructor)."""
    if cfg.runtime.threads is not None:
        import torch

        torch.set_num_threads(cfg.runtime.threads)
    data = server_data(cfg)
    model = build_model(cfg.model, data.input_shape, data.tasks)
    fed = Federation(cfg, data, model)
    return FlowerServer(fed, settings, grid, run_dir, **kwargs)


def make_server_app(base_dir: str | Path | None = None) -> ServerApp:
    """A ServerApp that runs the experiment named by the run config.

    Args:
        base_dir: the folder relative paths in the run config are resolved against (the app's folder).
    """
    app = ServerApp()
    base = Path(base_dir) if base_dir is not None else Path.cwd()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        logger = logging.getLogger("fedmtl")
        logger.setLevel(logging.INFO)
        if not logger.handlers:  # so the run's log (flwr log <run-id>) shows fedmtl's progress and warnings
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(levelname)s fedmtl: %(message)s"))
            logger.addHandler(handler)
        settings = FlowerSettings.from_run_config(context.run_config)
        server = build_server(settings, grid, base)
        summary = server.run()
        log.info("fedmtl run finished: %s", summary.get("final_global"))

    return app


__all__ = ["build_server", "make_server_app", "server_data", "server_for"]
