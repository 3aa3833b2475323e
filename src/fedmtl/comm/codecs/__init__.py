"""Codecs by role; each registers itself (:mod:`fedmtl.registry`, kind ``codec``) with its chain stage."""

from __future__ import annotations

from typing import Any

import torch

from fedmtl import registry
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
from fedmtl.config import comm as cc
from fedmtl.registry import register

# the built-in codecs; ``stage`` places a codec in a chain, ``update_only`` keeps it off the downlink
register("codec", "identity", lambda cfg: Cast(torch.float32), cc.IdentityCodec, stage="quantiser")
register("codec", "fp16", lambda cfg: Cast(torch.float16), cc.FP16Codec, stage="quantiser")
register("codec", "bf16", lambda cfg: Cast(torch.bfloat16), cc.BF16Codec, stage="quantiser")
register("codec", "int8", lambda cfg: Int8(per_channel=cfg.per_channel), cc.Int8Codec, stage="quantiser")
register("codec", "qsgd", lambda cfg: QSGD(levels=cfg.levels, bucket_size=cfg.bucket_size), cc.QSGDCodec, stage="quantiser")
register("codec", "sign", lambda cfg: ScaledSign(cfg.block_size), cc.SignCodec, stage="quantiser", update_only=True)
register("codec", "topk", lambda cfg: TopK(cfg.fraction), cc.TopKCodec, stage="sparsifier", update_only=True)
register("codec", "randk", lambda cfg: RandK(cfg.fraction), cc.RandKCodec, stage="sparsifier", update_only=True)
register("codec", "dgc", lambda cfg: DGCTopK(cfg.fraction, cfg.momentum, cfg.warmup, cfg.index_coding), cc.DGCCodec, stage="sparsifier", update_only=True)
register(
    "codec", "sketch", lambda cfg: CountSketch(cfg.fraction, cfg.rows, cfg.topk, cfg.seed), cc.SketchCodec, stage="sparsifier", update_only=True
)
register("codec", "powersgd", lambda cfg: PowerSGD(cfg.rank, cfg.bits), cc.PowerSGDCodec, stage="quantiser", update_only=True)
register("codec", "blockq", lambda cfg: BlockQuantiser(cfg.bits, cfg.block_size), cc.BlockQCodec, stage="quantiser")
register("codec", "zstd", lambda cfg: Zstd(cfg.level, cfg.dictionary), cc.ZstdCodec, stage="byte")
register("codec", "lz4", lambda cfg: LZ4(), cc.LZ4Codec, stage="byte")


def build_codec(cfg: Any) -> Any:
    """The codec a chain entry describes (any registered codec, by ``cfg.name``)."""
    return registry.build("codec", cfg)


__all__ = [
    "build_codec",
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
