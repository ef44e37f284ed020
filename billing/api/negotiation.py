"""Which media type to answer with: the ``Accept`` header with its q-values (RFC 9110 §12.5.1).

Each offered type gets the weight of the most specific range that names it (``text/csv`` before
``text/*`` before ``*/*``; ``q=0`` means "not this"). The offer with the highest weight above 0
wins; on a tie, the one named more specifically, then the one the client listed first, then the
server's order (its first offer is its default). Without the header, or with an empty one, the
first offer. A range that does not parse counts for nothing; when nothing offered is acceptable
the answer is ``None`` (the caller answers 406).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["negotiate"]

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_RANGE = re.compile(rf"\s*({_TOKEN})/({_TOKEN})\s*((?:;[^;]*)*)")
_Q = re.compile(r"\s*[qQ]\s*=\s*(0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)\s*")


def _ranges(accept: str) -> list[tuple[str, str, float]]:
    """(type, subtype, q) of each range that parses, lower case, in the client's order."""
    out = []
    for part in accept.split(","):
        m = _RANGE.fullmatch(part)
        if m is None:
            continue
        q = 1.0
        for param in m.group(3).split(";")[1:]:
            if "=" in param and param.split("=", 1)[0].strip().lower() == "q":
                weight = _Q.fullmatch(param)
                if weight is None:
                    break  # a q that is not a q-value: the range counts for nothing
                q = float(weight.group(1))
        else:
            out.append((m.group(1).lower(), m.group(2).lower(), q))
    return out


def negotiate(accept: str | None, offers: Sequence[str]) -> str | None:
    """The one of ``offers`` (``type/subtype``, the server's preference first) to answer
    ``accept`` with; ``None`` when the header accepts none of them."""
    if accept is None or not accept.strip():
        return offers[0]
    ranges = _ranges(accept)
    best: tuple[float, int, int, int] | None = None
    chosen = None
    for rank, offer in enumerate(offers):
        kind, sub = offer.lower().split("/")
        match: tuple[int, int, float] | None = None  # (specificity, client position, q)
        for position, (t, s, q) in enumerate(ranges):
            if (t, s) == (kind, sub):
                specificity = 2
            elif (t, s) == (kind, "*"):
                specificity = 1
            elif (t, s) == ("*", "*"):
                specificity = 0
            else:
                continue
            if match is None or specificity > match[0]:
                match = (specificity, position, q)
        if match is None or match[2] <= 0:
            continue
        key = (match[2], match[0], -match[1], -rank)
        if best is None or key > best:
            best, chosen = key, offer
    return chosen
