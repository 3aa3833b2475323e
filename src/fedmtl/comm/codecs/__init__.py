"""Codecs by role and the name -> factory registry that builds them from config."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fedmtl.comm.codecs.base import ByteCodec, Parts, Quantiser, Sparsifier
from fedmtl.comm.codecs.blockq import BlockQuantiser
from fedmtl.comm.codecs.cast import Cast
from fedmtl.comm.codecs.dgc import DGCTopK
from fedmtl.comm.codecs.int8 import Int8
from fedmtl.comm.codecs.lossless import LZ4, Zstd
from fedmtl.comm.codecs.powersgd import PowerSGD
from fedmtl.comm.codecs.qsgd import QSGD
from fedmtl.comm.codecs.sign import ScaledSign
from fedmtl.comm.codecs.sketch import CountSketch
from fedmtl.comm.codecs.sparse import RandK, TopK

CODECS: dict[str, Callable[[Any], object]] = {
    "identity": lambda c: Cast(torch.float32),
    "fp16": lambda c: Cast(torch.float16),
    "bf16": lambda c: Cast(torch.bfloat16),
    "int8": lambda c: Int8(per_channel=c.per_channel),
    "qsgd": lambda c: QSGD(levels=c.levels, bucket_size=c.bucket_size),
    "sign": lambda c: ScaledSign(c.block_size),
    "topk": lambda c: TopK(c.fraction),
    "randk": lambda c: RandK(c.fraction),
    "dgc": lambda c: DGCTopK(c.fraction, c.momentum, c.warmup),
    "sketch": lambda c: CountSketch(c.fraction, c.rows, c.topk, c.seed),
    "powersgd": lambda c: PowerSGD(c.rank, c.bits),
    "blockq": lambda c: BlockQuantiser(c.bits, c.block_size),
    "zstd": lambda c: Zstd(c.level, c.dictionary),
    "lz4": lambda c: LZ4(),
}

__all__ = [
    "CODECS",
    "LZ4",
    "QSGD",
    "BlockQuantiser",
    "ByteCodec",
    "Cast",
    "CountSketch",
    "DGCTopK",
    "Int8",
    "Parts",
    "PowerSGD",
    "Quantiser",
    "RandK",
    "ScaledSign",
    "Sparsifier",
    "TopK",
    "Zstd",
]
