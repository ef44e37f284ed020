"""``streamtoll gateway``: the audit journal and writer, the audit topic, and the proxy, until
SIGTERM. An audit cluster that is unavailable at start does not stop the gateway: its events
wait in the journal, and the writer creates the topic when the cluster answers.

SIGTERM (or SIGINT) drains: the listeners close, no new request is read, requests in flight get
their responses (and are metered), every open throttle or block episode is ended and published
(``gateway.episodes``), then the audit writer flushes every event it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from collections.abc import Callable
from contextlib import AbstractContextManager

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from gateway.audit import AuditWriter
from gateway.control import EntitlementStore, ensure_control_topic
from gateway.credentials import CredentialStore
from gateway.episodes import EpisodePublisher
from gateway.errors import UpstreamError
from gateway.journal import Journal
from gateway.proxy import Gateway
from gateway.settings import GatewaySettings
from metering.engine.topics import topic_specs
from metering.settings import MeteringSettings

__all__ = ["ensure_audit_topic", "run_gateway"]

log = logging.getLogger(__name__)


def ensure_audit_topic(metering: MeteringSettings, timeout: float = 15.0) -> None:
    """Create the proxy audit topic if it is missing, as the worker would (same partitions,
    replication and settings), so no event waits for a worker to start first."""
    admin = AdminClient(metering.kafka_config())
    try:
        existing = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise UpstreamError(f"the audit cluster at {metering.kafka_bootstrap} is unreachable ({exc})") from exc
    if metering.topic_proxy_audit in existing:
        return
    spec = next(s for s in topic_specs(metering) if s.name == metering.topic_proxy_audit)
    new = NewTopic(spec.name, spec.partitions, metering.topic_replication_factor, config=dict(spec.config))
    for topic, fut in admin.create_topics([new], operation_timeout=timeout).items():
        try:
            fut.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise UpstreamError(f"could not create the audit topic {topic} ({exc})") from exc
        else:
            log.info("created topic", extra={"topic": topic})


async def serve(gateway: Gateway) -> None:
    """Run until SIGTERM/SIGINT, then drain."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if gateway.credentials is not None:
        gateway.credentials.loop = loop
        gateway.credentials.on_change = gateway.credential_changed
    await gateway.start()
    await stop.wait()
    log.info("gateway draining", extra={"connections": len(gateway.connections)})
    await gateway.drain()


Observe = Callable[[Gateway, AuditWriter], AbstractContextManager[object]]


def run_gateway(settings: GatewaySettings, metering: MeteringSettings, observe: Observe | None = None) -> None:
    """Run until SIGTERM; ``observe`` wraps the run (the command line serves /metrics with it)."""
    upstream = settings.upstream(metering.kafka_bootstrap)
    if not upstream:
        raise UpstreamError("no upstream cluster is set")
    journal = Journal(settings.journal_dir, settings.journal_max_bytes)
    # the writer checks (creates) the audit topic before its first event, retrying while the
    # audit cluster is unavailable: the gateway serves meanwhile and its events wait on disk
    ensure = functools.partial(ensure_audit_topic, metering, timeout=5.0)
    audit = AuditWriter(
        metering.kafka_config(),
        metering.topic_proxy_audit,
        journal,
        on_full=settings.journal_full,
        fsync=settings.journal_fsync,
        ensure_topic=ensure,
    )
    gateway = Gateway(settings, upstream, audit)
    episodes: EpisodePublisher | None = None
    try:
        if settings.auth == "streamtoll":
            # the credentials streamtoll issued, read to the end before the listeners open, then followed
            store = CredentialStore(metering.kafka_config(), metering.topic_credentials)
            try:
                store.start()
            except KafkaException as exc:
                raise UpstreamError(
                    f"the credentials topic {metering.topic_credentials} cannot be read ({exc})"
                ) from exc
            gateway.credentials = store
            # each account's grants, rates and caps, and the caps fold's decisions
            entitlements = EntitlementStore(
                metering.kafka_config(), metering.topic_entitlements, metering.topic_enforcement
            )
            try:
                entitlements.start()
            except KafkaException as exc:
                raise UpstreamError(
                    f"the entitlements topics {metering.topic_entitlements}, {metering.topic_enforcement} "
                    f"cannot be read ({exc})"
                ) from exc
            gateway.entitlements = entitlements
            # each throttle and block this gateway applies, for partners and ops (gateway.episodes)
            episodes = EpisodePublisher(
                metering.kafka_config(),
                metering.topic_enforcement_events,
                functools.partial(ensure_control_topic, metering.kafka_config(), metering.topic_enforcement_events),
            )
            gateway.quotas.episodes.gateway = settings.instance()
            gateway.quotas.episodes.publish = episodes.publish
            gateway.quotas.episodes.publisher = episodes
        with observe(gateway, audit) if observe else contextlib.nullcontext():
            asyncio.run(serve(gateway))
    finally:
        if episodes is not None:
            closed = gateway.quotas.episodes.close_all()
            left = episodes.close()
            log.info("enforcement episodes published", extra={"ended_at_stop": closed, "not_delivered": left})
        if gateway.credentials is not None:
            gateway.credentials.stop()
        if gateway.entitlements is not None:
            gateway.entitlements.stop()
        left = audit.close()
        log.info(
            "gateway stopped",
            extra={
                "audit_events": audit.written,
                "not_written": left,
                "dropped": audit.dropped,
                "metered": dict(gateway.metered),
            },
        )
