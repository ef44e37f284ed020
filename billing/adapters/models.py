"""SQLAlchemy 2.0 typed models. The schema itself is made only by Alembic migrations
(``migrations/versions``); these classes describe it for queries and must match them
(a test compares the two)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, String, Text, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "UsageShardRow"]


class Base(DeclarativeBase):
    pass


class UsageShardRow(Base):
    """One hourly usage window as one metering shard (input partition) counted it.

    Totals are full totals with a ``version`` that only grows per row key; the sink replaces a
    row only with a newer version. The hourly usage of a window key is the sum over its shards
    (view ``usage_hourly``). Sources stay apart: billing picks one source per meter.
    """

    __tablename__ = "usage_shard_rows"

    source: Mapped[str] = mapped_column(String(32), primary_key=True)
    principal: Mapped[str] = mapped_column(Text, primary_key=True)
    client_id: Mapped[str] = mapped_column(Text, primary_key=True)
    virtual_cluster: Mapped[str] = mapped_column(Text, primary_key=True)
    topic: Mapped[str] = mapped_column(Text, primary_key=True)
    direction: Mapped[str] = mapped_column(String(8), primary_key=True)
    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    shard: Mapped[str] = mapped_column(Text, primary_key=True)
    bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    records: Mapped[int] = mapped_column(BigInteger, nullable=False)
    requests: Mapped[int] = mapped_column(BigInteger, nullable=False)
    denied_requests: Mapped[int] = mapped_column(BigInteger, nullable=False)
    version: Mapped[int] = mapped_column(BigInteger, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
