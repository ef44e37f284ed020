-- Login users for the sink and the API, each in its role of roles.sql (run that first). Used by
-- deploy/compose.yaml; elsewhere create the logins your own way (deploy/k8s/README.md).
--
--   psql -v ON_ERROR_STOP=1 -v sink_password=… -v api_password=… -f roles.sql -f logins.sql
--
-- Idempotent: a login that exists keeps its roles and gets the password given.

SELECT 'CREATE ROLE streamtoll_sink_login LOGIN IN ROLE streamtoll_sink'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'streamtoll_sink_login') \gexec
ALTER ROLE streamtoll_sink_login PASSWORD :'sink_password';

SELECT 'CREATE ROLE streamtoll_api_login LOGIN IN ROLE streamtoll_api'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'streamtoll_api_login') \gexec
ALTER ROLE streamtoll_api_login PASSWORD :'api_password';
