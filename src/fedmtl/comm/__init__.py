"""Communication: codecs, wire format, byte accounting, secure aggregation."""

from fedmtl.comm.link import Link, build_link
from fedmtl.comm.wire import PayloadError, bytes_to_tensors, tensors_to_bytes

__all__ = ["Link", "PayloadError", "build_link", "bytes_to_tensors", "tensors_to_bytes"]
