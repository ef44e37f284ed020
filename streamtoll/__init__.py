"""streamtoll's composition root: the command line and the embedded dev parts.

``metering`` and ``billing`` never import this package; it imports both. The developer tooling
(demo, ``streamtoll up``, benchmarks, traffic generator) is the subpackage ``streamtoll.dev``,
which no production module imports (see its docstring).
"""
