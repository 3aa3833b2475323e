"""A round that reduces updates as they are produced: bounded memory, and the torch.distributed collective.

:class:`fedmtl.fl.federation.Federation` keeps every client's result, payload and decoded update of a
round in memory, then stacks them per group: O(cohort x parameters). When the aggregator is the
weighted mean, the aggregate is ``sum_i w_i u_i / sum_i w_i`` per group, and both sums can be
accumulated one chunk of clients at a time and, across ``torchrun`` ranks, added with one
``all_reduce``. :class:`ReducingFederation` does exactly that, with the same steps in the same order
per client (broadcast, train, encode, decode, weigh) as the base round. Other aggregators (which
need every update at once) use the base round: locally as it is, across ranks by all-gathering the
decoded updates (:mod:`fedmtl.engine.distributed`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from fedmtl.fl.aggregation import weighted_mean
from fedmtl.fl.cohort import CohortJob, Engine
from fedmtl.fl.federation import Federation, RoundReport, ServerState
from fedmtl.fl.seeding import generator
from fedmtl.comm import PayloadError
from fedmtl.fl.update import ClientUpdate

log = logging.getLogger("fedmtl")


def rank_slice(items: Sequence[int], rank: int, world: int) -> list[int]:
    """A contiguous, near-equal share of ``items`` for ``rank`` (the first ranks take one more)."""
    q, r = divmod(len(items), world)
    lo = rank * q + min(rank, r)
    return list(items[lo : lo + q + (1 if rank < r else 0)])


class ReducingFederation(Federation):
    """:class:`Federation` whose round streams the cohort in chunks and reduces updates on the fly.

    Args:
        chunk_clients: clients trained, encoded and reduced at a time (bounds the round's memory).
        distributed: when True (and torch.distributed is initialised), this process trains only its
            rank's slice of the cohort and the sums are all-reduced; every rank ends the round with
            the same global model and the same client states.
    """

    def __init__(self, cfg, data, model, engine: Engine, chunk_clients: int = 1024, distributed: bool = False):  # type: ignore[no-untyped-def]
        super().__init__(cfg, data, model, engine)
        self.chunk_clients = chunk_clients
        self.distributed = distributed and dist.is_available() and dist.is_initialized()
        self.reduces = self.aggregator is weighted_mean

    def round(self, state: ServerState) -> tuple[ServerState, RoundReport]:
        if not self.reduces:
            if self.distributed:
                from fedmtl.engine.distributed import gathered_round

                return gathered_round(self, state)
            return super().round(state)
        t0 = time.perf_counter()
        r = state.round
        cohort = self.cohort(r)
        rank, world = (dist.get_rank(), dist.get_world_size()) if self.distributed else (0, 1)
        mine = rank_slice(cohort, rank, world)
        names_of = {g: list(ns) for g, ns in self.groups.items()}
        sizes = {g: sum(self.shapes[n].numel() for n in ns) for g, ns in names_of.items()}
        sums = {g: torch.zeros(sizes[g], dtype=torch.float64) for g in names_of}
        wsum = torch.zeros(len(names_of), dtype=torch.float64)
        tasks = [t.name for t in self.data.tasks]
        loss_sum = torch.zeros(len(tasks), dtype=torch.float64)
        loss_cnt = torch.zeros(len(tasks), dtype=torch.float64)
        counters = torch.zeros(2, dtype=torch.float64)  # bytes down, bytes up
        client_states: dict[int, object] = {}
        dropped: dict[int, str] = {}
        for lo in range(0, len(mine), self.chunk_clients):
            chunk = mine[lo : lo + self.chunk_clients]
            starts, bytes_down = self.broadcast(state.params, chunk, r)
            counters[0] += bytes_down
            jobs = [
                CohortJob(
                    start={**state.params, **start},
                    client=self.data.clients[cid],
                    state=state.client_states.get(cid, {}),
                    generator=generator(self.cfg.seed, "client", r, cid),
                )
                for cid, start in zip(chunk, starts)
            ]
            results = self.engine.run_cohort(self.algorithm, self.trainer, jobs)
            for cid, job, start, res in zip(chunk, jobs, starts, results):
                update, cstate, nbytes, why = self._client_update(r, cid, job, start, res)
                client_states[cid] = cstate
                counters[1] += nbytes
                if update is None:
                    dropped[cid] = why
                    continue
                for gi, (g, ns) in enumerate(names_of.items()):
                    present = [n in update.delta for n in ns]
                    if any(present) and not all(present):
                        raise ValueError(f"clients [{cid}] sent only part of parameter group {g!r}")
                    w = update.weight_for(g)
                    if all(present) and ns and w > 0:
                        sums[g] += w * torch.cat([update.delta[n].reshape(-1) for n in ns]).double()
                        wsum[gi] += w
                for ti, t in enumerate(tasks):
                    if f"loss/{t}" in update.metrics:
                        loss_sum[ti] += update.metrics[f"loss/{t}"]
                        loss_cnt[ti] += 1
            del results, jobs, starts
        if self.distributed:
            flat = torch.cat([*sums.values(), wsum, loss_sum, loss_cnt, counters])
            on_gpu = dist.get_backend() == "nccl"  # NCCL reduces CUDA tensors only
            flat = flat.cuda() if on_gpu else flat
            dist.all_reduce(flat)  # one collective: every rank gets the cohort's sums
            flat = flat.cpu()
            parts = flat.split([*sizes.values(), len(wsum), len(tasks), len(tasks), 2])
            sums = dict(zip(names_of, parts[: len(sizes)]))
            wsum, loss_sum, loss_cnt, counters = parts[len(sizes) :]
            gathered: list[object] = [None] * world
            dist.all_gather_object(gathered, (client_states, dropped))
            client_states, dropped = {}, {}
            for cs, dr in gathered:  # type: ignore[misc]
                client_states.update(cs)
                dropped.update(dr)
        aggregate: dict[str, Tensor] = {}
        for gi, (g, ns) in enumerate(names_of.items()):
            if wsum[gi] <= 0:
                continue
            flat_g = (sums[g] / wsum[gi]).to(torch.float32)
            offset = 0
            for n in ns:
                k = self.shapes[n].numel()
                aggregate[n] = flat_g[offset : offset + k].view(self.shapes[n])
                offset += k
        params, opt_state = state.params, state.opt_state
        if aggregate:
            params, opt_state = self.server_opt.step(state.params, aggregate, state.opt_state)
        new_states = dict(state.client_states)
        new_states.update(client_states)  # type: ignore[arg-type]
        report = RoundReport(
            round=r,
            cohort=cohort,
            dropped=dropped,
            bytes_down=int(counters[0]),
            bytes_up=int(counters[1]),
            train_loss={t: float(loss_sum[i] / loss_cnt[i]) for i, t in enumerate(tasks) if loss_cnt[i] > 0},
            seconds=time.perf_counter() - t0,
        )
        return ServerState(r + 1, params, opt_state, new_states), report

    def _client_update(self, r: int, cid: int, job: CohortJob, start, res):  # type: ignore[no-untyped-def]
        """Delta, uplink encode/decode and weights of one client, as :meth:`Federation.round` does them."""
        client = job.client
        names = self.algorithm.uploaded_names(self.model, client)
        delta = {n: res.params[n] - start[n] for n in names}
        cstate = dict(res.state)
        payload, codec_state = self.up.encode(delta, cstate.get("codec", {}), generator(self.cfg.seed, "codec", r, cid))
        if self.up.stateful:
            cstate["codec"] = codec_state
        try:
            received = self.up.decode(payload, expected={n: self.shapes[n] for n in names})
        except PayloadError as exc:
            log.warning("round %d: dropped client %d's update: %s", r, cid, exc)
            return None, cstate, len(payload), str(exc)
        task_rows = {t: int(client.train.y[t].shape[0]) for t in client.tasks}
        return ClientUpdate(cid, received, client.num_train, task_rows, res.metrics), cstate, len(payload), ""
