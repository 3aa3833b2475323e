"""Configuration of the engine that executes a cohort's local training."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from fedmtl.config.base import Size, StrictModel, Width


class SequentialEngine(StrictModel):
    """One client after another: the reference every other engine is tested against."""

    name: Literal["sequential"] = "sequential"


class VectorizedEngine(StrictModel):
    """A chunk of clients' local training as one batched computation (torch.func over stacked parameters).

    Any model of vmappable operations, every algorithm, balancer and scheme, sample-level DP-SGD included.
    Falls back to the sequential engine, with one warning naming the reason, for per-task gradients of the
    shared representation and for models whose operations vmap cannot batch.
    """

    name: Literal["vectorized"] = "vectorized"
    chunk_clients: Size | None = Field(
        default=None,
        description="Clients per batched computation (default: as many as memory_budget_mb allows).",
    )
    memory_budget_mb: Size = Field(default=512, description="Working memory of one chunk, in MiB.")
    one_step: bool = Field(
        default=True,
        description=(
            "Where every client of a streamed round takes one plain SGD step from the same start, reduce the"
            " chunk from one shared reverse pass (exact); false runs the general stacked path (to measure it)."
        ),
    )


LocalEngine = Annotated[SequentialEngine | VectorizedEngine, Field(discriminator="name")]


class DistributedEngine(StrictModel):
    """torch.distributed: each rank (launched by ``torchrun``) trains a slice of the cohort with ``local``.

    The round's aggregate is a collective reduction (all-reduce of weighted sums) when the aggregator is
    the weighted mean, and an all-gather of the decoded updates otherwise.
    """

    name: Literal["distributed"] = "distributed"
    local: LocalEngine = Field(
        default_factory=VectorizedEngine, description="The engine each rank runs on its slice."
    )
    backend: Literal["auto", "gloo", "nccl"] = Field(
        default="auto", description="auto: nccl with CUDA, gloo otherwise."
    )


Engine = Annotated[VectorizedEngine | SequentialEngine | DistributedEngine, Field(discriminator="name")]

#: The engine an experiment uses when its config names none (the vectorised one, with automatic fallback).
DefaultEngine = VectorizedEngine


class RuntimeConfig(StrictModel):
    """Process-level settings."""

    threads: Width | None = Field(
        default=None, description="torch threads (default: torch's own choice)."
    )
    device: str = Field(
        default="cpu",
        pattern=r"^(auto|cpu|cuda|cuda:\d{1,2})$",
        description="Where the vectorised engine computes: cpu, auto (a GPU when there is one), cuda or cuda:N. "
        "cpu by default: the CUDA path has not yet been run on a GPU (docs/engines.md).",
    )
