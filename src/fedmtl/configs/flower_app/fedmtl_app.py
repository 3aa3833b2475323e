"""Entry points Flower loads: fedmtl's ServerApp and ClientApp (relative paths resolve against this folder)."""

from pathlib import Path

from fedmtl.integrations.flower import make_client_app, make_server_app

server_app = make_server_app(base_dir=Path(__file__).parent)
client_app = make_client_app()
