"""Communication: codecs, wire format, byte accounting."""

from fedmtl.comm.link import Link, build_link, build_links, check_shapes
from fedmtl.comm.wire import PayloadError, bytes_to_tensors, pack, tensors_to_bytes, unpack

__all__ = [
    "Link",
    "PayloadError",
    "build_link",
    "build_links",
    "bytes_to_tensors",
    "check_shapes",
    "pack",
    "tensors_to_bytes",
    "unpack",
]
