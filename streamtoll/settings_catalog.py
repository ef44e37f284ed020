"""Every ``STREAMTOLL_*`` setting in one list: the source of ``deploy/env.example`` and of the
README's settings table (a test checks the example file is generated from it and that every
name here is one the settings classes read).

Parsing and validation live with the settings classes (``metering.settings``,
``billing.settings``); this list only describes them for people and deployment files.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SETTINGS", "Setting", "env_example", "settings_table"]


@dataclass(frozen=True)
class Setting:
    name: str  # without the STREAMTOLL_ prefix
    default: str  # as a person reads it; "" = unset
    used_by: str  # which processes read it
    meaning: str
    example: str = ""  # a valid value to show in env.example (and to test the name is read)
    secret: bool = False
    production: bool = False  # set it in production (the example line is active, not commented)
    dev: bool = False  # for developers and the test suite only: not in env.example


SETTINGS: list[Setting] = [
    Setting(
        "EMBEDDED",
        "auto",
        "all",
        "auto: where KAFKA_BOOTSTRAP or DATABASE_URL is unset, start an embedded dev broker or PostgreSQL "
        "(and log it); never: an unset one is a start-up error (the production images set never)",
        "never",
        production=True,
    ),
    # --- connections
    Setting(
        "KAFKA_BOOTSTRAP",
        "",
        "all",
        "Kafka bootstrap servers; unset = an embedded dev broker",
        "kafka-0:9092,kafka-1:9092",
        production=True,
    ),
    Setting("KAFKA_SECURITY_PROTOCOL", "", "all", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL", "SASL_SSL"),
    Setting("KAFKA_SASL_MECHANISM", "", "all", "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER", "SCRAM-SHA-512"),
    Setting("KAFKA_SASL_USERNAME", "", "all", "SASL user", "streamtoll"),
    Setting("KAFKA_SASL_PASSWORD", "", "all", "SASL password", "change-me", secret=True),
    Setting(
        "KAFKA_SSL_CA_LOCATION", "", "all", "CA bundle (PEM) for the brokers' certificates", "/etc/streamtoll/ca.pem"
    ),
    Setting("KAFKA_SSL_CERTIFICATE_LOCATION", "", "all", "client certificate (mTLS)", ""),
    Setting("KAFKA_SSL_KEY_LOCATION", "", "all", "client key (mTLS)", "", secret=True),
    Setting("KAFKA_X_<NAME>", "", "all", "any other librdkafka setting, `_` → `.` (e.g. KAFKA_X_CLIENT_RACK)", ""),
    Setting(
        "DATABASE_URL",
        "",
        "sink, api, billing commands",
        "postgresql+psycopg://user:password@host:5432/db (PostgreSQL 14+); unset = embedded",
        "postgresql+psycopg://streamtoll:change-me@postgres:5432/streamtoll",
        secret=True,
        production=True,
    ),
    # --- topics
    Setting(
        "TOPIC_CREDENTIALS",
        "streamtoll.credentials",
        "gateway, credentials",
        "control topic (compacted): each credential's SCRAM salted keys and state, which every gateway follows",
        "streamtoll.credentials",
    ),
    Setting(
        "TOPIC_ENTITLEMENTS",
        "streamtoll.entitlements",
        "gateway, caps, billing",
        "control topic (compacted): each account's topic and group grants, rate limits and monthly caps",
        "streamtoll.entitlements",
    ),
    Setting(
        "TOPIC_ENFORCEMENT",
        "streamtoll.enforcement",
        "gateway, caps, api",
        "control topic (compacted): the caps fold's decision per account and capped meter",
        "streamtoll.enforcement",
    ),
    Setting(
        "TOPIC_ENFORCEMENT_EVENTS",
        "streamtoll.enforcement-events",
        "gateway, sink, api",
        "control topic (compacted): each throttle and block a gateway applied to an account (when, how long, why)",
        "streamtoll.enforcement-events",
    ),
    Setting("TOPIC_PROXY_AUDIT", "proxy-audit", "worker", "input: proxy audit records", "proxy-audit"),
    Setting(
        "TOPIC_BROKER_METRICS", "broker-metrics", "worker", "input: OTLP/JSON broker client metrics", "broker-metrics"
    ),
    Setting(
        "TOPIC_BROKER_AUDIT",
        "confluent-audit-log-events",
        "worker",
        "input: broker audit log",
        "confluent-audit-log-events",
    ),
    Setting("TOPIC_DLQ", "streamtoll.dlq.v1", "worker, api", "rejected records, with the reason", "streamtoll.dlq.v1"),
    Setting("TOPIC_USAGE_WINDOWS", "streamtoll.usage-windows.v1", "worker, sink", "hourly full-total snapshots", ""),
    Setting(
        "TOPIC_USAGE_MINUTES",
        "streamtoll.usage-minutes.v1",
        "worker, api, caps",
        "minute partials (live views, monthly caps)",
        "",
    ),
    Setting("TOPIC_STATE", "streamtoll.metering-state.v1", "worker", "the workers' state changelog", ""),
    Setting("STATE_PARTITIONS", "12", "worker", "partitions of the state topic when streamtoll creates it", ""),
    Setting(
        "TOPIC_PARTITIONS",
        "12",
        "worker, caps",
        "partitions of the input, DLQ, usage windows and usage minutes topics when streamtoll creates them "
        "(workers scale up to the input partitions; the embedded dev broker uses 4), and of the caps "
        "service's own topics",
        "12",
    ),
    Setting(
        "TOPIC_REPLICATION_FACTOR",
        "",
        "worker",
        "replication factor of the topics streamtoll creates; unset = the cluster's default.replication.factor",
        "3",
    ),
    Setting(
        "TOPIC_MIN_INSYNC_REPLICAS",
        "",
        "worker",
        "min.insync.replicas of the topics streamtoll creates; unset = the cluster's default",
        "2",
    ),
    Setting("DLQ_RETENTION", "30d", "worker", "retention of the DLQ topic when streamtoll creates it (≥ 1d)", "30d"),
    Setting(
        "USAGE_MINUTES_RETENTION",
        "1d",
        "worker",
        "retention of the usage minutes topic when streamtoll creates it (≥ 2h: the live views read an hour "
        "back; 32d if `streamtoll caps` may first start mid-month: it counts only what is retained)",
        "",
    ),
    Setting(
        "REPLAY_WINDOW",
        "30d",
        "worker",
        "how far back a re-sink or a database restore must find usage windows (runbook)",
        "30d",
    ),
    Setting(
        "USAGE_WINDOWS_RETENTION",
        "MAX_LATENESS + REPLAY_WINDOW",
        "worker",
        "retention of the usage windows topic when streamtoll creates it; at least MAX_LATENESS + REPLAY_WINDOW, "
        "and an existing topic that keeps less stops the worker",
        "90d",
    ),
    # --- metering
    Setting("DEDUP_HORIZON", "1h", "worker", "duplicates of a record are dropped this long", "1h"),
    Setting("DEDUP_MAX_KEYS", "1000000", "worker", "dedup keys kept per input partition (~106 bytes each)", ""),
    Setting("MAX_LATENESS", "35d", "worker", "older events go to the DLQ as too_old", "35d"),
    Setting("MAX_FUTURE_SKEW", "5m", "worker", "newer events go to the DLQ as future", "5m"),
    Setting("METER_SINCE", "", "worker", "counters that started before this instant are a baseline", ""),
    Setting("COUNTER_MAX_RATE", "1e10", "worker", "bytes/s above which a counter delta is implausible", ""),
    Setting(
        "METERING_GROUP",
        "streamtoll-metering",
        "worker, api, caps",
        "consumer group of the workers (the caps service's is this + `-caps`)",
        "streamtoll-metering",
    ),
    Setting(
        "INSTANCE_ID",
        "0",
        "worker",
        "this worker's id, unique per worker (transactional.id); @hostname = the host name",
        "@hostname",
    ),
    Setting(
        "STATIC_MEMBERSHIP",
        "true",
        "worker",
        "workers join the group as static members (a restart within the session timeout moves no "
        "partitions); `streamtoll up`, the demo and the tests set false for the embedded broker",
        "true",
    ),
    Setting("BATCH_SIZE", "100000", "worker", "records per transaction at most", ""),
    Setting("SESSION_TIMEOUT_MS", "10000", "worker, caps", "consumer group session timeout", ""),
    Setting("STATE_SNAPSHOT_INTERVAL", "10m", "worker", "how often a partition's full state is written", ""),
    Setting(
        "STATE_RETENTION",
        "7d",
        "worker",
        "retention of the state topic when streamtoll creates it, and what an existing one must keep "
        "(cold hours' segments are rewritten at half of it); at least DEDUP_HORIZON + 3 × "
        "STATE_SNAPSHOT_INTERVAL; an existing topic that keeps less (or compacts) stops the worker",
        "",
    ),
    Setting(
        "METRICS_BIND",
        "",
        "worker, sink, gateway",
        "HOST:PORT where the process serves /metrics; unset = off",
        "0.0.0.0:9464",
    ),
    # --- gateway
    Setting(
        "GATEWAY_LISTEN",
        "127.0.0.1:19092",
        "gateway",
        "the gateway's bootstrap listener (HOST:PORT); clients set bootstrap.servers to it",
        "0.0.0.0:19092",
    ),
    Setting(
        "GATEWAY_BROKER_PORTS",
        "",
        "gateway",
        "comma list of the gateway ports of the upstream brokers, by node id order; unset = the ports after "
        "the GATEWAY_LISTEN port",
        "19093,19094,19095",
    ),
    Setting(
        "GATEWAY_ADVERTISED_HOST",
        "the GATEWAY_LISTEN host",
        "gateway",
        "the host clients are told to connect to (required when listening on 0.0.0.0)",
        "gateway.example.com",
    ),
    Setting(
        "GATEWAY_UPSTREAM_BOOTSTRAP",
        "KAFKA_BOOTSTRAP",
        "gateway",
        "the Kafka cluster behind the gateway (HOST:PORT list)",
        "kafka-0:9092,kafka-1:9092",
    ),
    Setting(
        "GATEWAY_AUTH",
        "passthrough",
        "gateway",
        "passthrough: clients' SASL goes to the brokers; streamtoll: the gateway authenticates clients with the "
        "credentials streamtoll issues (streamtoll credentials) and logs in upstream as itself",
        "streamtoll",
    ),
    Setting("GATEWAY_VIRTUAL_CLUSTER", "default", "gateway", "written into every audit event", "prod"),
    Setting(
        "GATEWAY_INSTANCE_ID",
        "<host name>:<listen port>",
        "gateway",
        "names this gateway in the throttle and block episodes it publishes (TOPIC_ENFORCEMENT_EVENTS); "
        "unique per gateway",
        "gw-eu-1",
    ),
    Setting(
        "GATEWAY_MAX_REQUEST_BYTES",
        "104857600",
        "gateway",
        "a client request larger than this closes its connection (Kafka's socket.request.max.bytes)",
        "",
    ),
    Setting(
        "GATEWAY_JOURNAL_DIR",
        ".streamtoll/gateway-journal",
        "gateway",
        "where audit events wait on disk until the audit topic has them (one gateway per directory; "
        "in production a persistent volume: what it holds is replayed at start)",
        "/var/lib/streamtoll/gateway-journal",
    ),
    Setting(
        "GATEWAY_JOURNAL_MAX_BYTES",
        "1073741824",
        "gateway",
        "bound of the audit journal (about 2 million events of ~500 bytes): size it for the longest "
        "audit-cluster outage to ride out at your request rate",
        "4294967296",
    ),
    Setting(
        "GATEWAY_JOURNAL_FULL",
        "refuse",
        "gateway",
        "when the journal is full: refuse (Produce answered NOT_ENOUGH_REPLICAS, Fetch empty, both throttled "
        "1 s; nothing goes unmetered) or drop (traffic flows; events that do not fit are counted and logged as "
        "errors, unmetered)",
        "drop",
    ),
    Setting(
        "GATEWAY_JOURNAL_FSYNC",
        "1s",
        "gateway",
        "always: a Produce response waits for an fsync of its audit events (survives power loss); a duration: "
        "fsync that often in the background (events are written before the response either way, so killing "
        "the process loses none)",
        "always",
    ),
    Setting(
        "GATEWAY_TLS_CERT",
        "",
        "gateway",
        "certificate chain (PEM) of the gateway's TLS on the bootstrap and broker ports; with GATEWAY_TLS_KEY",
        "",
    ),
    Setting("GATEWAY_TLS_KEY", "", "gateway", "private key (PEM) of GATEWAY_TLS_CERT", "", secret=True),
    Setting(
        "GATEWAY_TLS_CLIENT_CA",
        "",
        "gateway",
        "CA bundle (PEM): clients must present a certificate it signed (mutual TLS), and its subject is their "
        "principal (User:CN=…) unless they authenticate with SASL",
        "",
    ),
    Setting(
        "GATEWAY_ALLOW_PLAINTEXT",
        "false",
        "gateway",
        "true lets a GATEWAY_LISTEN that is not a loopback address run without TLS (a private network, TLS "
        "ended in front of the gateway); false: that is a start-up error",
        "true",
    ),
    Setting(
        "GATEWAY_UPSTREAM_SECURITY_PROTOCOL",
        "KAFKA_SECURITY_PROTOCOL if GATEWAY_UPSTREAM_BOOTSTRAP is unset, else PLAINTEXT",
        "gateway",
        "toward the upstream cluster: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL; clients' own SASL passes "
        "through to the brokers, the gateway's SASL identity below is for its own requests. Each "
        "GATEWAY_UPSTREAM_* security setting that is unset takes its KAFKA_* value while "
        "GATEWAY_UPSTREAM_BOOTSTRAP is unset",
        "SSL",
    ),
    Setting(
        "GATEWAY_UPSTREAM_SASL_MECHANISM",
        "",
        "gateway",
        "the gateway's own SASL login upstream: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
        "",
    ),
    Setting("GATEWAY_UPSTREAM_SASL_USERNAME", "", "gateway", "the gateway's SASL user upstream", ""),
    Setting("GATEWAY_UPSTREAM_SASL_PASSWORD", "", "gateway", "the gateway's SASL password upstream", "", secret=True),
    Setting(
        "GATEWAY_UPSTREAM_SSL_CA_LOCATION",
        "",
        "gateway",
        "CA bundle (PEM) for the upstream brokers' certificates (unset: the system's)",
        "",
    ),
    Setting("GATEWAY_UPSTREAM_SSL_CERTIFICATE_LOCATION", "", "gateway", "client certificate upstream (mTLS)", ""),
    Setting("GATEWAY_UPSTREAM_SSL_KEY_LOCATION", "", "gateway", "client key upstream (mTLS)", "", secret=True),
    # --- billing and API
    Setting("INVOICE_NUMBER_PREFIX", "INV", "billing", "invoice numbers are PREFIX-YEAR-NNNNNN", "INV"),
    Setting("SINK_GROUP", "streamtoll-sink", "sink", "consumer group of the usage sink", "streamtoll-sink"),
    Setting(
        "BILLING_SOURCES",
        "bytes=proxy,broker_metrics;records=proxy,broker_metrics;requests=audit_log,proxy",
        "api, bill, statements",
        "per quantity, the sources to bill it from in order of preference (the first the account has usage in)",
        "bytes=proxy,broker_metrics;records=proxy,broker_metrics;requests=audit_log,proxy",
    ),
    Setting(
        "STATEMENT_MAX_STALENESS",
        "60",
        "api",
        "seconds a stored statement is served after its usage changed, while it is recomputed",
        "60",
    ),
    Setting("API_BIND", "127.0.0.1:8080", "api, top", "where the HTTP API listens", "0.0.0.0:8080"),
    Setting(
        "API_TRUSTED_PROXIES",
        "",
        "api",
        "comma list of IPs/CIDRs of the proxies in front of the API (ingress, load balancer): only from "
        "them is X-Forwarded-For believed for the client address (failed-auth limit); empty = none",
        "10.0.0.0/8",
    ),
    Setting(
        "API_LIMITS_PARTNER",
        "rate=5/s,burst=30,concurrent=4",
        "api",
        "per partner key on the expensive endpoints (statements, usage, invoice PDFs): requests per second "
        "(N/s, N/m or N/h), a burst above that rate, requests running at once; over it: 429 with Retry-After. "
        "Any of the three (the rest keep their default), or off",
        "rate=5/s,burst=30,concurrent=4",
    ),
    Setting(
        "API_LIMITS_FINANCE",
        "rate=20/s,burst=100,concurrent=8",
        "api",
        "the same per finance key (also billing runs, finalize, void, the live view)",
        "rate=20/s,burst=100,concurrent=8",
    ),
    Setting(
        "API_LIMITS_OPS",
        "rate=5/s,burst=30,concurrent=4",
        "api",
        "the same per ops key (the live view)",
        "rate=5/s,burst=30,concurrent=4",
    ),
    Setting(
        "PORTAL_SECRET",
        "",
        "api",
        "at least 32 characters: the key the partner portal's session cookies and CSRF tokens are signed "
        "with; the same on every API replica (unset: a random one per process, so sessions end at restart)",
        "output-of-openssl-rand-hex-32-never-this-example",
        secret=True,
    ),
    Setting(
        "PORTAL_HTTPS",
        "false",
        "api",
        "true when partners reach the API over https (a TLS ingress): the portal's cookies are Secure and "
        "__Host- prefixed",
        "true",
    ),
    Setting("PORTAL_SESSION_HOURS", "8", "api", "how long a portal session lasts (0.05 to 168 hours)", "8"),
    Setting(
        "PORTAL_GATEWAY_BOOTSTRAP",
        "",
        "api",
        "the gateway address partners connect to (host:port[,host:port]), named in the portal's client "
        "configurations (streamtoll up sets its own gateway's)",
        "gw.example.com:19092",
    ),
    Setting(
        "PORTAL_GATEWAY_SECURITY_PROTOCOL",
        "",
        "api",
        "SASL_SSL or SASL_PLAINTEXT in the portal's client configurations (unset: SASL_PLAINTEXT toward a "
        "loopback gateway, SASL_SSL otherwise)",
        "SASL_SSL",
    ),
    Setting("API_KEY", "", "top", "the ops or finance key `streamtoll top` uses", "", secret=True),
    Setting("ISSUER_NAME", "streamtoll", "billing", "the invoice issuer's name", "Example Streaming GmbH"),
    Setting(
        "ISSUER_ADDRESS", "", "billing", "the issuer's address, lines separated by |", "Street 1|10115 Berlin|Germany"
    ),
    Setting("ISSUER_EMAIL", "billing@streamtoll.invalid", "billing", "the issuer's email", "billing@example.com"),
    Setting("ISSUER_VAT_ID", "", "billing", "the issuer's VAT id", ""),
    Setting("ISSUER_BANK", "", "billing", "payment details printed on invoices", ""),
    Setting("SMTP_HOST", "127.0.0.1", "invoices send", "mail server", "smtp.example.com"),
    Setting("SMTP_PORT", "25", "invoices send", "mail server port", "587"),
    Setting("SMTP_TLS", "none", "invoices send", "none, starttls or ssl", "starttls"),
    Setting("SMTP_USERNAME", "", "invoices send", "mail server user", ""),
    Setting("SMTP_PASSWORD", "", "invoices send", "mail server password", "", secret=True),
    Setting("SMTP_SENDER", "billing@streamtoll.invalid", "invoices send", "From address", "billing@example.com"),
    Setting("SMTP_SENDER_NAME", "streamtoll billing", "invoices send", "From name", ""),
    Setting("LOG_LEVEL", "INFO", "all", "DEBUG, INFO, WARNING or ERROR (JSON lines on stderr)", "INFO"),
    # --- development and tests only
    Setting("BROKER_LOG", "warn", "embedded broker", "log level of the embedded dev broker (RUST_LOG)", dev=True),
    Setting(
        "CAPS_EMBEDDED_BROKER",
        "false",
        "caps",
        "true on the embedded dev broker (tansu): `streamtoll caps` sends one record per batch (tansu's "
        "ListOffsets is wrong for longer ones, and a restart would recover a stale table; it halves the "
        "fold's throughput); the tests set it",
        dev=True,
    ),
    Setting("TEST_KAFKA_BOOTSTRAP", "", "tests", "run the integration tests against this cluster", dev=True),
    Setting("TEST_DATABASE_URL", "", "tests", "run the tests on this PostgreSQL server", dev=True),
    Setting("FUZZ_EXAMPLES", "150", "tests", "hypothesis examples per fuzz test", dev=True),
    Setting("SOAK_EXAMPLES", "5000", "tests", "fuzz examples in the soak run", dev=True),
    Setting("SOAK_EVENTS", "40", "tests", "worker churn events in the soak run", dev=True),
]


def env_example() -> str:
    """The text of ``deploy/env.example``."""
    out = [
        "# streamtoll settings (generated from streamtoll/settings_catalog.py: edit it there).",
        "# Set the uncommented ones; the rest are optional and take the default shown when unset.",
        "# Secrets are marked: keep them in a secret store (Kubernetes Secret), not in this file.",
        "",
    ]
    for s in SETTINGS:
        if s.dev:
            continue
        if s.name.endswith("<NAME>"):
            out.append(f"# STREAMTOLL_{s.name}: {s.meaning}")
            out.append("")
            continue
        default = f"default {s.default}" if s.default else "unset by default"
        out.append(f"# {s.meaning} ({default}; read by {s.used_by}){' [secret]' if s.secret else ''}")
        line = f"STREAMTOLL_{s.name}={s.example}"
        out.append(line if s.production else "# " + line)
        out.append("")
    return "\n".join(out)


def settings_table() -> str:
    """The README's settings table (markdown)."""
    rows = ["| setting | default | read by | meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        default = f"`{s.default}`" if s.default else "unset"
        rows.append(f"| `{s.name}` | {default} | {s.used_by} | {s.meaning.replace('|', chr(92) + '|')} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(env_example(), end="")
