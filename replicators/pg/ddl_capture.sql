-- DDL capture installed on the master by standin-pgrepl (see
-- replicators/pg/pgsync.c).  Every DDL statement that ends well emits a
-- transactional logical message "standin.ddl" at its place in the WAL:
--
--   MAC \n 'standin-ddl-1' \n ROLE \n SEARCH_PATH \n STATEMENT
--
-- MAC = hex(sha256(key || sha256(key || the rest))), key from
-- standin.ddl_key, which only superusers can read: pg_logical_emit_message
-- is open to every user, so an unsigned message could be forged.  ROLE is
-- the role that ran the statement (ownership on the standby); the signing
-- function checks that the session may act as it.  A query string holding
-- more than one statement is refused here, on the master, with a clear
-- error: it could mix DML, which replicates on its own.  CONCURRENTLY is
-- dropped from the statement: the standby applies inside a transaction.
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

-- The statement of QUERY, checked to be one statement: trailing ';', blanks
-- and comments removed, CONCURRENTLY dropped.  NULL if it holds several.
CREATE OR REPLACE FUNCTION standin.one_statement(query text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $fn$
DECLARE
    n int := length(query);
    i int := 1;
    c text;
    out text := '';
    word text;
    tag text;
    j int;
    depth int;
    ended boolean := false;
BEGIN
    WHILE i <= n LOOP
        c := substr(query, i, 1);
        IF c = '-' AND substr(query, i, 2) = '--' THEN
            j := strpos(substr(query, i), E'\n');
            i := CASE WHEN j = 0 THEN n + 1 ELSE i + j END;
            out := out || ' ';
            CONTINUE;
        ELSIF c = '/' AND substr(query, i, 2) = '/*' THEN
            depth := 1;
            i := i + 2;
            WHILE i <= n AND depth > 0 LOOP
                IF substr(query, i, 2) = '/*' THEN depth := depth + 1; i := i + 2;
                ELSIF substr(query, i, 2) = '*/' THEN depth := depth - 1; i := i + 2;
                ELSE i := i + 1;
                END IF;
            END LOOP;
            out := out || ' ';
            CONTINUE;
        END IF;
        IF ended THEN
            IF c !~ '\s' AND c <> ';' THEN
                RETURN NULL;
            END IF;
            i := i + 1;
            CONTINUE;
        END IF;
        IF c = ';' THEN
            ended := true;
            i := i + 1;
        ELSIF c = '''' THEN
            -- 'string', E'string' (backslash escapes), '' inside
            j := i + 1;
            WHILE j <= n LOOP
                IF substr(query, j, 1) = '\' AND i > 1 AND upper(substr(query, i - 1, 1)) = 'E' THEN
                    j := j + 2;
                ELSIF substr(query, j, 2) = '''''' THEN
                    j := j + 2;
                ELSIF substr(query, j, 1) = '''' THEN
                    EXIT;
                ELSE
                    j := j + 1;
                END IF;
            END LOOP;
            out := out || substr(query, i, j - i + 1);
            i := j + 1;
        ELSIF c = '"' THEN
            j := i + 1;
            WHILE j <= n LOOP
                IF substr(query, j, 2) = '""' THEN j := j + 2;
                ELSIF substr(query, j, 1) = '"' THEN EXIT;
                ELSE j := j + 1;
                END IF;
            END LOOP;
            out := out || substr(query, i, j - i + 1);
            i := j + 1;
        ELSIF c = '$' AND substr(query, i) ~ '^\$([A-Za-z_][A-Za-z_0-9]*)?\$' THEN
            tag := substring(substr(query, i) FROM '^(\$(?:[A-Za-z_][A-Za-z_0-9]*)?\$)');
            j := strpos(substr(query, i + length(tag)), tag);
            IF j = 0 THEN
                j := n - i - length(tag) + 2;
            END IF;
            out := out || substr(query, i, length(tag) + j - 1 + length(tag));
            i := i + length(tag) + j - 1 + length(tag);
        ELSIF c ~ '[A-Za-z_]' THEN
            word := substring(substr(query, i) FROM '^([A-Za-z_][A-Za-z_0-9$]*)');
            IF upper(word) <> 'CONCURRENTLY' THEN
                out := out || word;
            END IF;
            i := i + length(word);
        ELSE
            out := out || c;
            i := i + 1;
        END IF;
    END LOOP;
    RETURN btrim(out, E' \t\r\n');
END
$fn$;

CREATE OR REPLACE FUNCTION standin.sign_ddl(p_role text, p_search_path text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
DECLARE
    q text := current_query();
    stmt text;
    sent text;
    k bytea;
    body text;
BEGIN
    -- Only from inside a DDL command's event trigger (errors elsewhere).
    PERFORM 1 FROM pg_event_trigger_ddl_commands() LIMIT 1;
    IF NOT pg_has_role(session_user, p_role, 'MEMBER') THEN
        RAISE EXCEPTION 'standin: % may not act as role %', session_user, p_role;
    END IF;
    sent := txid_current()::text || ':' || md5(q);
    IF current_setting('standin.ddl_sent', true) IS NOT DISTINCT FROM sent THEN
        RETURN;                 -- one message per statement, however many commands it ran
    END IF;
    PERFORM set_config('standin.ddl_sent', sent, true);
    stmt := standin.one_statement(q);
    IF stmt IS NULL THEN
        RAISE EXCEPTION 'standin: a DDL statement must be sent alone, not with other statements in one query string'
            USING HINT = 'standin replicates DDL statement by statement; send each statement as its own query (psql -f does).';
    END IF;
    SELECT convert_to(key, 'UTF8') INTO k FROM standin.ddl_key WHERE id = 1;
    body := 'standin-ddl-1' || E'\n' || p_role || E'\n' || p_search_path || E'\n' || stmt;
    PERFORM pg_logical_emit_message(true, 'standin.ddl',
        encode(sha256(k || sha256(k || convert_to(body, 'UTF8'))), 'hex') || E'\n' || body);
END
$fn$;

CREATE OR REPLACE FUNCTION standin.capture_ddl() RETURNS event_trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM standin.sign_ddl(current_user::text,
        array_to_string(ARRAY(SELECT quote_ident(s) FROM unnest(current_schemas(false)) s), ','));
END
$fn$;

DO $do$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'standin_ddl') THEN
        CREATE EVENT TRIGGER standin_ddl ON ddl_command_end EXECUTE FUNCTION standin.capture_ddl();
    END IF;
END
$do$;
