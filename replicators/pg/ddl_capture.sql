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

-- The statement of QUERY, checked to be one statement: trailing ';' and
-- blanks removed, CONCURRENTLY dropped.  NULL if it holds several.  One pass
-- over an array of the characters (linear in the length, even for long
-- function bodies); the usual statement, without ';' inside or CONCURRENTLY,
-- takes the short way.
CREATE OR REPLACE FUNCTION standin.one_statement(query text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $fn$
DECLARE
    trimmed text := rtrim(query, E' \t\r\n;');
    ch text[];
    n int;
    i int := 1;
    j int;
    c text;
    depth int;
    tag text;
    word text;
    stmt_end int;          -- index of the first ';' outside quotes, or NULL
    drops int[] := '{}';   -- start indexes of CONCURRENTLY words (13 characters)
    result text := '';
    from_i int := 1;
BEGIN
    IF strpos(trimmed, ';') = 0 AND trimmed !~* 'concurrently' THEN
        RETURN btrim(trimmed, E' \t\r\n');
    END IF;
    ch := string_to_array(query, NULL);
    n := coalesce(array_length(ch, 1), 0);
    WHILE i <= n LOOP
        c := ch[i];
        IF c = '-' AND i < n AND ch[i + 1] = '-' THEN
            WHILE i <= n AND ch[i] <> E'\n' LOOP i := i + 1; END LOOP;
            CONTINUE;
        ELSIF c = '/' AND i < n AND ch[i + 1] = '*' THEN
            depth := 1;
            i := i + 2;
            WHILE i <= n AND depth > 0 LOOP
                IF ch[i] = '/' AND i < n AND ch[i + 1] = '*' THEN depth := depth + 1; i := i + 2;
                ELSIF ch[i] = '*' AND i < n AND ch[i + 1] = '/' THEN depth := depth - 1; i := i + 2;
                ELSE i := i + 1;
                END IF;
            END LOOP;
            CONTINUE;
        END IF;
        IF stmt_end IS NOT NULL THEN
            -- After the end: only blanks, ';' and comments may follow.
            IF c !~ '\s' AND c <> ';' THEN
                RETURN NULL;
            END IF;
            i := i + 1;
        ELSIF c = ';' THEN
            stmt_end := i;
            i := i + 1;
        ELSIF c = '''' THEN
            -- 'string' ('' inside), or E'string' with backslash escapes
            j := i + 1;
            WHILE j <= n LOOP
                IF ch[j] = '\' AND i > 1 AND upper(ch[i - 1]) = 'E' THEN j := j + 2;
                ELSIF ch[j] = '''' AND j < n AND ch[j + 1] = '''' THEN j := j + 2;
                ELSIF ch[j] = '''' THEN EXIT;
                ELSE j := j + 1;
                END IF;
            END LOOP;
            i := j + 1;
        ELSIF c = '"' THEN
            j := i + 1;
            WHILE j <= n LOOP
                IF ch[j] = '"' AND j < n AND ch[j + 1] = '"' THEN j := j + 2;
                ELSIF ch[j] = '"' THEN EXIT;
                ELSE j := j + 1;
                END IF;
            END LOOP;
            i := j + 1;
        ELSIF c = '$' THEN
            -- $tag$ ... $tag$ (tag empty or an identifier); $1 is a parameter
            j := i + 1;
            WHILE j <= n AND ch[j] ~ '[A-Za-z_0-9]' LOOP j := j + 1; END LOOP;
            IF j <= n AND ch[j] = '$' AND (j = i + 1 OR ch[i + 1] ~ '[A-Za-z_]') THEN
                tag := array_to_string(ch[i:j], '');
                i := j + 1;
                -- find the closing tag
                LOOP
                    EXIT WHEN i > n;
                    IF ch[i] = '$' AND array_to_string(ch[i:i + length(tag) - 1], '') = tag THEN
                        i := i + length(tag);
                        EXIT;
                    END IF;
                    i := i + 1;
                END LOOP;
            ELSE
                i := j;
            END IF;
        ELSIF c ~ '[A-Za-z_]' THEN
            j := i;
            WHILE j <= n AND ch[j] ~ '[A-Za-z_0-9$]' LOOP j := j + 1; END LOOP;
            IF j - i = 12 AND upper(array_to_string(ch[i:j - 1], '')) = 'CONCURRENTLY' THEN
                drops := drops || i;
            END IF;
            i := j;
        ELSE
            i := i + 1;
        END IF;
    END LOOP;
    -- The statement up to its ';' (or the end), without the CONCURRENTLY words.
    n := coalesce(stmt_end - 1, n);
    FOREACH j IN ARRAY drops LOOP
        result := result || array_to_string(ch[from_i:j - 1], '');
        from_i := j + 12;
    END LOOP;
    result := result || array_to_string(ch[from_i:n], '');
    RETURN btrim(result, E' \t\r\n');
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

-- What is installed: pgsync.c compares this to skip the installation (so a
-- read-only, fenced master is still streamed from).  Change it with the SQL.
COMMENT ON SCHEMA standin IS 'standin DDL capture 2';

DO $do$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'standin_ddl') THEN
        CREATE EVENT TRIGGER standin_ddl ON ddl_command_end EXECUTE FUNCTION standin.capture_ddl();
    END IF;
END
$do$;
