"""The fedmtl ClientApp: one SuperNode is one fedmtl client.

The node's ``node_config`` says which client it is (``partition-id``; ``num-partitions`` must match
the experiment's ``data.num_clients`` when given). At registration the server sends the resolved
experiment config; the node builds the federation's data deterministically from it (same seed,
same partition as the simulation), keeps only its own partition, and caches that on its disk.
Per-client state (objective state, ``local`` and personal parameters, codec error-feedback residuals)
lives in a file on the node's disk (:mod:`~fedmtl.integrations.flower.node_state`), written after every
round, so it survives between rounds and across the SuperNode restarting.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import pickle
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp
from torch import Tensor

from fedmtl.atomic import atomic_write
from fedmtl.comm.delta import build_delta_link, copy_digest
from fedmtl.config import ExperimentConfig, config_from_dict
from fedmtl.data import build_federated_data
from fedmtl.data.dataset import ClientData
from fedmtl.fl.algorithm import build_algorithm, with_server
from fedmtl.fl.client import LocalTrainer
from fedmtl.fl.client_state import ClientState
from fedmtl.fl.federation import initial_parameters
from fedmtl.fl.node import ClientNode, downlink_copy
from fedmtl.integrations.flower import messages as msgs
from fedmtl.integrations.flower import secagg_client
from fedmtl.integrations.flower import secagg_messages as sm
from fedmtl.integrations.flower.node_state import NodeStateStore, experiment_key, state_folder
from fedmtl.mtl import MultiTaskModel, build_model
from fedmtl.runloop.evaluation import personal_metric_sums
from fedmtl.tasks import Task

log = logging.getLogger("fedmtl")


@dataclass(frozen=True)
class Partition:
    """What a node keeps of the federation: its own client and what the model needs to be built."""

    client: ClientData
    tasks: tuple[Task, ...]
    input_shape: tuple[int, ...]


def partition_id(context: Context, cfg: ExperimentConfig) -> int:
    nc = context.node_config
    if "partition-id" not in nc:
        raise ValueError(
            "this SuperNode has no 'partition-id' in its --node-config; start it with --node-config 'partition-id=0 num-partitions=N'"
        )
    pid = int(nc["partition-id"])  # type: ignore[arg-type]
    if "num-partitions" in nc and int(nc["num-partitions"]) != cfg.data.num_clients:  # type: ignore[arg-type]
        raise ValueError(
            f"num-partitions={nc['num-partitions']} but the experiment has data.num_clients={cfg.data.num_clients}"
        )
    if not 0 <= pid < cfg.data.num_clients:
        raise ValueError(f"partition-id={pid} outside 0..{cfg.data.num_clients - 1}")
    return pid


def load_partition(cfg: ExperimentConfig, pid: int, cache_dir: str | Path | None) -> Partition:
    """This node's partition, built once and cached (the node's own data only)."""
    key = hashlib.sha256((cfg.data.model_dump_json() + f"|{cfg.seed}").encode()).hexdigest()[:16]
    folder = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "fedmtl-flower-cache"
    path = folder / f"{key}-client{pid}.pkl"
    if path.exists():
        try:
            with open(path, "rb") as fh:
                part = pickle.load(fh)  # our own file, written below
            if isinstance(part, Partition):
                return part
        except Exception:  # a damaged cache is rebuilt
            log.warning("rebuilding damaged partition cache %s", path)
    data = build_federated_data(cfg.data, cfg.seed)
    part = Partition(data.clients[pid], data.tasks, data.input_shape)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: p.write_bytes(pickle.dumps(part)))
    return part


def _config(context: Context) -> ExperimentConfig:
    if msgs.CONFIG not in context.state.config_records:
        raise RuntimeError(
            "this node has not been registered by the server (no experiment config in its state)"
        )
    return config_from_dict(json.loads(str(context.state.config_records[msgs.CONFIG]["experiment"])))


def _cache_dir(context: Context) -> str | None:
    value = context.node_config.get("cache-dir") or os.environ.get("FEDMTL_FLOWER_CACHE")
    return str(value) if value else None


def make_client_app() -> ClientApp:
    """The fedmtl ClientApp (handles ``query`` = registration, ``train`` and ``evaluate`` = personalised evaluation,
    and the secure-aggregation stages ``query.secagg_share``, ``query.secagg_mask``, ``query.secagg_unmask``)."""
    app = ClientApp()

    @app.query()
    def register(message: Message, context: Context) -> Message:
        experiment = str(message.content.config_records[msgs.CONFIG]["experiment"])
        cfg = config_from_dict(json.loads(experiment))
        pid = partition_id(context, cfg)
        part = load_partition(cfg, pid, _cache_dir(context))
        run_key = str(message.content.config_records[msgs.CONFIG].get("run-key", ""))
        context.state[msgs.CONFIG] = ConfigRecord({"experiment": experiment, "run-key": run_key})
        return Message(
            msgs.registration_reply(pid, part.client.tasks, part.client.num_train), reply_to=message
        )

    @app.train()
    def train(message: Message, context: Context) -> Message:
        cfg, pid, part, model, node, init, state, payload, round_index = _node_for(message, context)
        check_base(message, state)
        server_state = msgs.read_server_state(message.content)
        reply, new_state = node.run(payload, part.client, state, round_index, server_state, base=init)
        store = _store(context, cfg, pid)
        _saved[store.path] = store.save(new_state, round_index + 1)
        if sm.read_offer(message.content) is not None:  # secure aggregation: the update stays here
            return Message(secagg_client.withhold(message.content, context, reply), reply_to=message)
        return Message(msgs.reply_content(reply), reply_to=message)

    @app.query("secagg_share")
    def secagg_share(message: Message, context: Context) -> Message:
        return Message(secagg_client.share_keys(message.content, context), reply_to=message)

    @app.query("secagg_mask")
    def secagg_mask(message: Message, context: Context) -> Message:
        cfg = _config(context)
        experiment = str(context.state.config_records[msgs.CONFIG]["experiment"])
        part, model, node, _ = _built(experiment, partition_id(context, cfg), _cache_dir(context))
        content = secagg_client.masked_input(message.content, context, cfg, model, node, part.client)
        return Message(content, reply_to=message)

    @app.query("secagg_unmask")
    def secagg_unmask(message: Message, context: Context) -> Message:
        return Message(secagg_client.unmask(message.content, context), reply_to=message)

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        """The personalised model (the algorithm's ``personal_params`` with this node's state) on the local test split."""
        cfg, pid, part, model, node, init, state, payload, _ = _node_for(message, context)
        check_base(message, state)
        params = {**init, **node.receive(payload, part.client, downlink_copy(state))}
        sums = personal_metric_sums(
            model, node.algorithm, params, part.client, _with_server_view(node, state, message), cfg.evaluation.batch_size
        )
        return Message(msgs.evaluate_reply(pid, sums), reply_to=message)

    return app


def check_base(message: Message, state: ClientState) -> None:
    """A model difference must be taken against this node's copy: refuse it (an error reply; the server then
    forgets its mirror and sends the full model next time) when the copy is missing or another one (state lost,
    a reply lost after the state was saved, a server restarted from an older checkpoint)."""
    base = msgs.read_base(message.content)
    if not base:
        return
    copy = downlink_copy(state)
    mine = copy_digest(copy) if copy else "none"
    if mine != base:
        raise ValueError(
            f"the server sent a model difference against copy {base}, this node holds copy {mine}; "
            "the server will send the full model next time"
        )


def _with_server_view(node: ClientNode, state: ClientState, message: Message) -> ClientState:
    """As Federation.client_view: the node's state plus its decoded view of the algorithm's server state."""
    return with_server(state, node.receive_state(msgs.read_server_state(message.content)))


@functools.lru_cache(maxsize=1)
def _built(
    experiment: str, pid: int, cache_dir: str | None
) -> tuple[Partition, MultiTaskModel, ClientNode, dict[str, Tensor]]:
    """This node's partition, model, client node and initial parameters, built on its first message and
    reused by the later ones (all deterministic in the config; the client's state lives in the Context)."""
    cfg = config_from_dict(json.loads(experiment))
    part = load_partition(cfg, pid, cache_dir)
    model = build_model(cfg.model, part.input_shape, part.tasks)
    return part, model, build_node(cfg, model, part.input_shape), initial_parameters(model, cfg.seed)


def _node_for(message: Message, context: Context):  # type: ignore[no-untyped-def]
    """What a train or evaluate message needs on this node: config, partition, model, client node, the
    initial parameters (the values of what a broadcast does not carry), stored state, and the message's
    payload and round.

    The message must be addressed to this node's partition; one for another client is an error.
    """
    cfg = _config(context)
    if cfg.runtime.threads is not None:
        import torch

        torch.set_num_threads(cfg.runtime.threads)
    payload, round_index, client_id = msgs.read_train_content(message.content)
    pid = partition_id(context, cfg)
    if client_id != pid:
        raise ValueError(f"message for client {client_id} reached the node of client {pid}")
    experiment = str(context.state.config_records[msgs.CONFIG]["experiment"])
    part, model, node, init = _built(experiment, pid, _cache_dir(context))
    return cfg, pid, part, model, node, init, _load_state(_store(context, cfg, pid)), payload, round_index


#: the checksum of the state this process last wrote for each client: a load that finds another one
#: (a restarted node, a resubmitted run) is logged as a restore
_saved: dict[Path, str] = {}


def _store(context: Context, cfg: ExperimentConfig, pid: int) -> NodeStateStore:
    run_key = str(context.state.config_records[msgs.CONFIG].get("run-key", ""))
    folder = state_folder(dict(context.node_config), _cache_dir(context))
    return NodeStateStore(folder, pid, experiment_key(cfg, run_key))


def _load_state(store: NodeStateStore) -> ClientState:
    restored = store.load()
    if restored is None:
        return ClientState()
    if _saved.get(store.path) != restored.checksum:
        log.info(
            "client %d: restored its state after %d round(s) from %s (sha256 %s; %s)",
            store.partition,
            restored.rounds,
            store.path,
            restored.checksum,
            ", ".join(sorted(restored.state.to_tree())),
        )
        _saved[store.path] = restored.checksum
    return restored.state


def build_node(cfg: ExperimentConfig, model, input_shape: Sequence[int]) -> ClientNode:  # type: ignore[no-untyped-def]
    from fedmtl.comm import build_links

    algorithm = build_algorithm(cfg.algorithm, functools.partial(build_model, cfg.model, input_shape))
    trainer = LocalTrainer(model, cfg.client, cfg.mtl, cfg.privacy.dp_sgd)
    up, down = build_links(cfg.comm)
    return ClientNode(model, trainer, algorithm, down, up, cfg.seed, build_delta_link(cfg.comm))


__all__ = ["Partition", "build_node", "load_partition", "make_client_app", "partition_id"]
