"""Usage rows: hourly windows per metering shard, and their sum per window key.

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE usage_shard_rows (
            source           varchar(32) NOT NULL CHECK (source IN ('proxy', 'broker_metrics', 'audit_log')),
            principal        text        NOT NULL,
            client_id        text        NOT NULL,
            virtual_cluster  text        NOT NULL,
            topic            text        NOT NULL,
            direction        varchar(8)  NOT NULL CHECK (direction IN ('produce', 'consume')),
            hour             timestamptz NOT NULL CHECK (date_trunc('hour', hour) = hour),
            shard            text        NOT NULL,
            bytes            bigint      NOT NULL CHECK (bytes >= 0),
            records          bigint      NOT NULL CHECK (records >= 0),
            requests         bigint      NOT NULL CHECK (requests >= 0),
            denied_requests  bigint      NOT NULL CHECK (denied_requests >= 0),
            version          bigint      NOT NULL,
            updated_at       timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (source, principal, client_id, virtual_cluster, topic, direction, hour, shard)
        )
        """
    )
    # billing and statements read by time first
    op.execute("CREATE INDEX usage_shard_rows_hour ON usage_shard_rows (hour, principal)")
    op.execute(
        """
        CREATE VIEW usage_hourly AS
        SELECT source, principal, client_id, virtual_cluster, topic, direction, hour,
               sum(bytes)::numeric AS bytes, sum(records)::numeric AS records,
               sum(requests)::numeric AS requests, sum(denied_requests)::numeric AS denied_requests,
               max(updated_at) AS updated_at
        FROM usage_shard_rows
        GROUP BY source, principal, client_id, virtual_cluster, topic, direction, hour
        """
    )


def downgrade() -> None:
    op.execute("DROP VIEW usage_hourly")
    op.execute("DROP TABLE usage_shard_rows")
