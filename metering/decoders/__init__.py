"""One decoder per input format; the topic a record came from picks the decoder.

Each decoder is pure: bytes + limits in, normalized events (or counter samples) out, or
:class:`~metering.decoders.common.Invalid` with a DLQ reason. No decoder raises anything else.
"""
