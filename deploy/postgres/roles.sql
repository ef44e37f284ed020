-- Database roles for streamtoll: least privilege per process. Run as a superuser (or the
-- database owner with CREATEROLE) after `streamtoll db upgrade`, and again after each upgrade
-- that adds tables (it is idempotent). Then give each process its own login, e.g.
--   CREATE ROLE streamtoll_api_login LOGIN PASSWORD '…' IN ROLE streamtoll_api;
-- (logins.sql does it for both) and its STREAMTOLL_DATABASE_URL with that user.
--
--   streamtoll_sink  the usage sink: writes usage rows and enforcement episodes (and their
--                    quota webhook events), reads nothing else it does not need
--   streamtoll_api   the HTTP API: reads everything; drafts, finalizes and voids invoices
--                    (POST /v1/billing/runs …); issues, rotates and revokes Kafka credentials
--                    (POST /v1/credentials …); can never write usage rows or the catalog, and
--                    — like everyone — never change a finalized invoice but to void it (triggers)
--                    writes the webhook events of what it does, manages webhook endpoints and
--                    replays deliveries (POST /v1/webhooks …)
--   the owner        `streamtoll db upgrade`, `accounts load`, `plans load`, `keys create`,
--                    `bill`, `invoices send`, `webhooks send`, `jobs` and `usage import|remeter`
--                    (amendments: the API only reads them) from an operator's shell
--
-- (tested: tests/integration/test_security.py applies this file and tries what each role must
-- not do on a real PostgreSQL)

DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'streamtoll_sink') THEN
    CREATE ROLE streamtoll_sink NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'streamtoll_api') THEN
    CREATE ROLE streamtoll_api NOLOGIN;
  END IF;
END
$$;

REVOKE ALL ON ALL TABLES IN SCHEMA public FROM streamtoll_sink, streamtoll_api;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM streamtoll_sink, streamtoll_api;
GRANT USAGE ON SCHEMA public TO streamtoll_sink, streamtoll_api;

-- the sink: upserts usage rows (INSERT … ON CONFLICT DO UPDATE) and checks the schema version;
-- the triggers on usage_shard_rows keep usage_daily and usage_period_marks as their owner
-- (SECURITY DEFINER, migrations 0007 and 0008), so the sink needs no grant on those
GRANT SELECT, INSERT, UPDATE ON usage_shard_rows TO streamtoll_sink;
-- … and the throttle and block episodes the gateways publish (migration 0013; its triggers move
-- usage_period_marks as their owner too)
GRANT SELECT, INSERT, UPDATE ON enforcement_episodes TO streamtoll_sink;
-- … with their quota webhook events (migration 0019): once per episode and type
-- (episode_events), queued to the account's endpoints, whose secrets it cannot read
GRANT SELECT, INSERT ON episode_events TO streamtoll_sink;
GRANT INSERT ON webhook_events TO streamtoll_sink;
GRANT INSERT, SELECT (event_id, endpoint_id) ON webhook_deliveries TO streamtoll_sink;  -- ON CONFLICT reads its key
GRANT USAGE ON SEQUENCE webhook_deliveries_id_seq TO streamtoll_sink;
GRANT SELECT (id, account_code, event_types, active) ON webhook_endpoints TO streamtoll_sink;
GRANT SELECT ON alembic_version TO streamtoll_sink;

-- the API: reads everything …
GRANT SELECT ON ALL TABLES IN SCHEMA public TO streamtoll_api;
-- … writes invoices (drafts are recomputed in place: their lines are replaced), numbers them
GRANT INSERT, UPDATE ON invoices TO streamtoll_api;
GRANT INSERT, DELETE ON invoice_lines TO streamtoll_api;
GRANT INSERT, UPDATE ON invoice_numbers TO streamtoll_api;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO streamtoll_api;
-- … and stores the statements it computes (a read model: migration 0008)
GRANT INSERT, UPDATE ON statement_docs TO streamtoll_api;
-- … and the first answers to POSTs with an Idempotency-Key (migration 0009; expired ones deleted)
GRANT INSERT, UPDATE, DELETE ON idempotency_keys TO streamtoll_api;
-- … and issues, rotates and revokes Kafka credentials (POST /v1/credentials …, for finance and
-- ops keys; migration 0011): salted keys only, never deleted (a revoked one keeps its row)
GRANT INSERT, UPDATE ON credentials TO streamtoll_api;
GRANT INSERT, UPDATE ON credential_keys TO streamtoll_api;
-- … and writes the webhook event of a finalize, void or revoke with its queued deliveries, in the
-- same transaction (migration 0014); finance adds and removes endpoints (removing one cancels
-- its queued deliveries) and replays deliveries. Sending them is `webhooks send`'s, not the API's.
GRANT INSERT ON webhook_events TO streamtoll_api;
GRANT INSERT, UPDATE ON webhook_deliveries TO streamtoll_api;
GRANT INSERT, UPDATE ON webhook_endpoints TO streamtoll_api;
-- and nothing else: no INSERT/UPDATE/DELETE/TRUNCATE on usage_shard_rows, accounts,
-- client_rules, plans, plan_versions, subscriptions or api_keys; no DELETE of an invoice.
