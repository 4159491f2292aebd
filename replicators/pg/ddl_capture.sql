-- DDL capture, installed on the master by standin-pgrepl (pgsync.c,
-- pgs_ensure_ddl_capture).  The work is done by the PostgreSQL module
-- standin_ddl (replicators/pg/standin_ddl.c), which must be in the server's
-- shared_preload_libraries: its event triggers emit each DDL statement as a
-- signed transactional logical message "standin.ddl" at its place in the WAL.
--
-- The key that signs them is in standin.ddl_key, readable only by
-- superusers: pg_logical_emit_message is open to every user, so an unsigned
-- message could be forged.
SET LOCAL search_path = pg_catalog;
SET LOCAL standard_conforming_strings = on;
SET LOCAL client_min_messages = warning;

CREATE SCHEMA IF NOT EXISTS standin;
REVOKE ALL ON SCHEMA standin FROM PUBLIC;
GRANT USAGE ON SCHEMA standin TO PUBLIC;

CREATE TABLE IF NOT EXISTS standin.ddl_key (
    id int PRIMARY KEY CHECK (id = 1),
    key text NOT NULL
);
REVOKE ALL ON standin.ddl_key FROM PUBLIC;
INSERT INTO standin.ddl_key
    SELECT 1, pg_catalog.replace(pg_catalog.gen_random_uuid()::text || pg_catalog.gen_random_uuid()::text, '-', '')
    ON CONFLICT (id) DO NOTHING;

-- Capture 2 (a PL/pgSQL trigger that sent the whole query string) goes.
DROP EVENT TRIGGER IF EXISTS standin_ddl;
DROP FUNCTION IF EXISTS standin.capture_ddl();
DROP FUNCTION IF EXISTS standin.sign_ddl(text, text);
DROP FUNCTION IF EXISTS standin.one_statement(text);

CREATE OR REPLACE FUNCTION standin.ddl_start() RETURNS event_trigger
    LANGUAGE c AS 'standin_ddl', 'standin_ddl_start';
CREATE OR REPLACE FUNCTION standin.ddl_drop() RETURNS event_trigger
    LANGUAGE c AS 'standin_ddl', 'standin_ddl_drop';
CREATE OR REPLACE FUNCTION standin.ddl_end() RETURNS event_trigger
    LANGUAGE c AS 'standin_ddl', 'standin_ddl_end';

DROP EVENT TRIGGER IF EXISTS standin_ddl_start;
DROP EVENT TRIGGER IF EXISTS standin_ddl_drop;
DROP EVENT TRIGGER IF EXISTS standin_ddl_end;
CREATE EVENT TRIGGER standin_ddl_start ON ddl_command_start EXECUTE FUNCTION standin.ddl_start();
CREATE EVENT TRIGGER standin_ddl_drop ON sql_drop EXECUTE FUNCTION standin.ddl_drop();
CREATE EVENT TRIGGER standin_ddl_end ON ddl_command_end EXECUTE FUNCTION standin.ddl_end();

-- What is installed: pgsync.c compares this to skip the installation (so a
-- read-only, fenced master is still streamed from).  Change it with the SQL.
COMMENT ON SCHEMA standin IS 'standin DDL capture 3';
