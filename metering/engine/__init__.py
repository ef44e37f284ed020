"""The metering hot path: input topics → (decode, dedup, window) → outputs, exactly once.

One loop per worker process, on confluent-kafka (the Faust stream layer tops out near 12k
events/s here; this loop does hundreds of thousands):

1. ``consume`` a batch from the input topics (consumer group, ``read_committed``);
2. fold each input partition's records into its :class:`~metering.fold.shard.ShardState`;
3. in **one Kafka transaction**: the DLQ records, the changed hourly window totals (usage
   windows topic), the per-minute partials (live topic), one changelog entry per shard (state
   topic), and the consumed input offsets (``send_offsets_to_transaction``); every
   ``STATE_SNAPSHOT_INTERVAL`` (or when a shard holds too many changed cold windows) also the
   segments of its changed cold hours and a checkpoint naming where they are (a flush inside
   the transaction tells their offsets before the checkpoint is written).

Either all of a batch's effects become visible or none do. After a crash (``kill -9``) the
restarted worker's producer aborts the open transaction (same ``transactional.id``), the
consumer resumes from the committed offsets, and each shard's state is rebuilt by replaying its
changelog entries, which were committed in the same transactions as those offsets: from its
last checkpoint, with the dedup keys from the checkpoint's ``dedup_from`` offset (by position, not
by the wall clock). So every input record is folded exactly once into the state that produced
the published totals.

Any error inside a batch aborts it and restarts the loop from committed state: crash-only.

Group membership: static (``group.instance.id`` from the instance id) unless
``STATIC_MEMBERSHIP=false`` — the embedded dev broker never expels a dead static member. Partitions
moving between workers change who folds them, never what is folded: the new owner restores the
shard from the state topic before its first batch. A graceful stop lets a rebalance in progress
end before leaving the group (``Engine._finish_rebalance``).
"""

from metering.engine.loop import Engine

__all__ = ["Engine"]
