"""streamtoll's composition root: the command line and the embedded dev parts.

``metering`` and ``billing`` never import this package; it imports both.
"""
