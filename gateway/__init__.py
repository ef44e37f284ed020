"""``streamtoll gateway``: a Kafka-protocol gateway that meters every Produce and Fetch at the wire.

What it owns and what it does not (yet): ``gateway/README.md``.
"""
