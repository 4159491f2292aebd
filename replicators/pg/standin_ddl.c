/*
 * standin_ddl: the master's half of standin-pgrepl's DDL replication, a
 * module loaded into PostgreSQL 15 (shared_preload_libraries = 'standin_ddl'
 * on every node; ddl_capture.sql creates its event triggers).
 *
 * Row changes replicate by themselves through the stream.  So the standby
 * must run the DDL itself and nothing else: not the query string that
 * happened to contain it (a DO block, a function body, a multi-statement
 * string with INSERTs in it), whose DML would then arrive twice.  The parser
 * knows where each statement begins and ends in its query string
 * (PlannedStmt's stmt_location and stmt_len), and ProcessUtility sees every
 * utility statement with its query string, whether it came from the client,
 * from PL/pgSQL, an SQL function, EXECUTE or a procedure.  So:
 *
 * - A ProcessUtility_hook keeps a stack of the utility statements running in
 *   this backend (innermost on top), each with its exact text.
 * - The event triggers say which of them are DDL (ddl_command_start marks the
 *   top frame), whether a DROP removed only temporary objects (sql_drop), and
 *   when the command has succeeded (ddl_command_end).  There the statement is
 *   written to the WAL as a transactional logical message "standin.ddl", so
 *   it is decoded at its place among the rows, only if its (sub)transaction
 *   commits.
 * - A DDL run by another DDL is not sent on its own when the standby's run of
 *   the outer one does it too (the script of CREATE/ALTER EXTENSION).  Any
 *   other nested DDL (a user's event trigger, a function called by CREATE
 *   TABLE AS) is sent after the outer one, in the order they ended, unless
 *   its subtransaction was rolled back.
 * - CREATE TABLE AS and SELECT INTO are sent as the plain CREATE TABLE of the
 *   table they made: their rows come through the stream.
 * - CONCURRENTLY is cut out (the standby runs DDL inside its transaction),
 *   found by PostgreSQL's own lexer with the session's settings, and the
 *   settings that change how the text is read (standard_conforming_strings,
 *   search_path, DateStyle...) travel with it.
 * - What cannot be sent exactly (the library was loaded only by the event
 *   trigger, so the hook missed the statement and it did not come straight
 *   from the client) is sent as "uncaptured": the standby stops there with an
 *   error that names it.  The master never refuses a statement because of
 *   standin.
 *
 * Message: hex(HMAC-like SHA-256 of the body with standin.ddl_key) "\n" JSON
 * body (see pgapply.c, apply_ddl).  Anyone may emit a logical message, so
 * the standby runs only signed ones; the key is read as the bootstrap
 * superuser, since the statement's role may not read it.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_class.h"
#include "commands/event_trigger.h"
#include "common/cryptohash.h"
#include "common/keywords.h"
#include "common/kwlookup.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "nodes/nodes.h"
#include "nodes/parsenodes.h"
#include "nodes/pg_list.h"
#include "nodes/plannodes.h"
#include "optimizer/optimizer.h"
#include "parser/scanner.h"
#include "parser/scansup.h"
#include "replication/message.h"
#include "tcop/pquery.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/portal.h"

PG_MODULE_MAGIC;

#define DDL_PREFIX "standin.ddl"
#define DDL_FORMAT 2

/* The settings that change what a DDL statement's text means. */
static const char *const carried_settings[] = {
	"search_path", "standard_conforming_strings", "backslash_quote", "DateStyle",
	"IntervalStyle", "TimeZone", "timezone_abbreviations", "default_tablespace",
	"default_table_access_method", "default_toast_compression", "xmloption",
	"transform_null_equals", "array_nulls",
};

/* A message waiting for the DDL that runs it (see the file comment). */
typedef struct Pending {
	SubTransactionId subid;
	char *text;			/* the whole signed message */
} Pending;

typedef struct Frame {
	struct Frame *outer;
	const char *query;		/* query string (not ours; valid during the call) */
	int location, len;		/* the statement within it (-1 / 0: unknown / to the end) */
	Node *stmt;			/* the utility statement, as handed to the hook */
	bool is_ddl;			/* ddl_command_start fired for it */
	bool ctas_sent;			/* CREATE TABLE AS: its table sent before its rows */
	int drops, temp_drops;		/* sql_drop: objects dropped, temporary ones */
	List *pending;			/* of Pending *: nested DDL to send after this one */
} Frame;

/* What pg_event_trigger_ddl_commands() says the command did. */
struct commands {
	int n, temp;
	Oid table;			/* the first table it made or altered */
	List *objects;			/* of char *: object identities */
};

static Frame *top_frame;
static ProcessUtility_hook_type prev_utility_hook;
static ExecutorRun_hook_type prev_executor_run_hook;
/* A top-level CREATE TABLE AS that the utility hook missed (see standin_run). */
static bool frameless_ctas_sent;

void _PG_init(void);
PG_FUNCTION_INFO_V1(standin_ddl_start);
PG_FUNCTION_INFO_V1(standin_ddl_drop);
PG_FUNCTION_INFO_V1(standin_ddl_end);

static void
standin_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
		ProcessUtilityContext context, ParamListInfo params, QueryEnvironment *queryEnv,
		DestReceiver *dest, QueryCompletion *qc)
{
	Frame frame;

	memset(&frame, 0, sizeof(frame));
	frame.outer = top_frame;
	frame.query = queryString;
	frame.location = pstmt->stmt_location;
	frame.len = pstmt->stmt_len;
	frame.stmt = pstmt->utilityStmt;
	top_frame = &frame;
	PG_TRY();
	{
		if (prev_utility_hook != NULL)
			prev_utility_hook(pstmt, queryString, readOnlyTree, context, params, queryEnv,
					  dest, qc);
		else
			standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
						queryEnv, dest, qc);
	}
	PG_FINALLY();
	{
		top_frame = frame.outer;
	}
	PG_END_TRY();
}

/* A rolled back subtransaction takes the nested DDL it ran with it. */
static void
standin_subxact(SubXactEvent event, SubTransactionId mySubid, SubTransactionId parentSubid,
		void *arg)
{
	if (event != SUBXACT_EVENT_ABORT_SUB)
		return;
	for (Frame *f = top_frame; f != NULL; f = f->outer) {
		ListCell *lc;

		foreach (lc, f->pending) {
			Pending *p = lfirst(lc);

			/* Subtransactions begun after mySubid, while it was open, are its own. */
			if (p->subid >= mySubid)
				f->pending = foreach_delete_current(f->pending, lc);
		}
	}
}

/*
 * CREATE TABLE AS and SELECT INTO: the table is made when the executor
 * starts sending rows to it (the DestIntoRel receiver's startup), its rows
 * are written to the WAL as they come, and ddl_command_end fires only after
 * the last one.  The standby must have the table before the first row, so
 * its definition is sent from a receiver wrapped around that one, right
 * after the table is made.
 */
typedef struct CtasReceiver {
	DestReceiver pub;
	DestReceiver *inner;
	CreateTableAsStmt *stmt;
	Frame *frame;			/* NULL: the statement came in before this module */
} CtasReceiver;

static char *table_definition(Oid relid);
static char *ddl_key(void);
static char *sign(const char *key, const char *body);
static void emit(const char *text);
static char *message_body(const char *kind, CommandTag tag, const char *statement,
			  const char *reason, const struct commands *c);

static bool
ctas_receive(TupleTableSlot *slot, DestReceiver *self)
{
	DestReceiver *inner = ((CtasReceiver *)self)->inner;

	return inner->receiveSlot(slot, inner);
}

static void
ctas_shutdown(DestReceiver *self)
{
	DestReceiver *inner = ((CtasReceiver *)self)->inner;

	inner->rShutdown(inner);
}

static void
ctas_destroy(DestReceiver *self)
{
	(void)self;			/* the executor's caller destroys the inner one */
}

static void
ctas_startup(DestReceiver *self, int operation, TupleDesc typeinfo)
{
	CtasReceiver *r = (CtasReceiver *)self;
	RangeVar *rv = r->stmt->into->rel;
	MemoryContext caller = CurrentMemoryContext;

	r->inner->rStartup(r->inner, operation, typeinfo);

	Oid nsp = RangeVarGetCreationNamespace(rv);
	Oid relid = get_relname_relid(rv->relname, nsp);
	if (!OidIsValid(relid) || get_rel_persistence(relid) == RELPERSISTENCE_TEMP)
		return;		/* temporary: ddl_command_end leaves it out */
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "standin_ddl: SPI_connect failed");
	char *statement = table_definition(relid);
	if (statement == NULL) {
		SPI_finish();
		return;		/* sent as "uncaptured" at ddl_command_end */
	}
	struct commands c = {
		.n = 1, .table = relid,
		.objects = list_make1(quote_qualified_identifier(get_namespace_name(nsp),
								  rv->relname)),
	};
	char *body = message_body("statement",
				  r->stmt->is_select_into ? CMDTAG_SELECT_INTO : CMDTAG_CREATE_TABLE_AS,
				  statement, NULL, &c);
	char *text = MemoryContextStrdup(caller, sign(ddl_key(), body));
	SPI_finish();
	emit(text);
	pfree(text);
	if (r->frame != NULL)
		r->frame->ctas_sent = true;
	else
		frameless_ctas_sent = true;
}

/* The CREATE TABLE AS (of a table) that this executor run fills, if any. */
static CreateTableAsStmt *
running_ctas(QueryDesc *qd, Frame **frame_r)
{
	Node *stmt = NULL;

	*frame_r = NULL;
	if (qd->dest == NULL || qd->dest->mydest != DestIntoRel)
		return NULL;
	if (top_frame != NULL) {
		/* Only the outermost DDL sends at once; nested ones wait for it. */
		for (Frame *f = top_frame->outer; f != NULL; f = f->outer)
			if (f->is_ddl)
				return NULL;
		if (!top_frame->is_ddl)
			return NULL;
		stmt = top_frame->stmt;
		*frame_r = top_frame;
	} else if (ActivePortal != NULL && list_length(ActivePortal->stmts) == 1) {
		PlannedStmt *ps = linitial_node(PlannedStmt, ActivePortal->stmts);

		if (ps->commandType == CMD_UTILITY)
			stmt = ps->utilityStmt;
	}
	if (stmt == NULL || !IsA(stmt, CreateTableAsStmt) ||
	    ((CreateTableAsStmt *)stmt)->objtype != OBJECT_TABLE)
		return NULL;
	return (CreateTableAsStmt *)stmt;
}

static void
standin_run(QueryDesc *qd, ScanDirection direction, uint64 count, bool execute_once)
{
	Frame *frame;
	CreateTableAsStmt *ctas = running_ctas(qd, &frame);
	DestReceiver *dest = qd->dest;

	if (ctas != NULL) {
		CtasReceiver *r = palloc0(sizeof(*r));

		r->pub.receiveSlot = ctas_receive;
		r->pub.rStartup = ctas_startup;
		r->pub.rShutdown = ctas_shutdown;
		r->pub.rDestroy = ctas_destroy;
		r->pub.mydest = dest->mydest;
		r->inner = dest;
		r->stmt = ctas;
		r->frame = frame;
		frameless_ctas_sent = false;
		qd->dest = &r->pub;
	}
	PG_TRY();
	{
		if (prev_executor_run_hook != NULL)
			prev_executor_run_hook(qd, direction, count, execute_once);
		else
			standard_ExecutorRun(qd, direction, count, execute_once);
	}
	PG_FINALLY();
	{
		qd->dest = dest;
	}
	PG_END_TRY();
}

void
_PG_init(void)
{
	prev_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = standin_utility;
	prev_executor_run_hook = ExecutorRun_hook;
	ExecutorRun_hook = standin_run;
	RegisterSubXactCallback(standin_subxact, NULL);
}

static EventTriggerData *
trigger_data(FunctionCallInfo fcinfo)
{
	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		ereport(ERROR, (errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				errmsg("standin_ddl: not called by an event trigger")));
	return (EventTriggerData *)fcinfo->context;
}

Datum
standin_ddl_start(PG_FUNCTION_ARGS)
{
	(void)trigger_data(fcinfo);
	if (top_frame != NULL)
		top_frame->is_ddl = true;
	else
		frameless_ctas_sent = false;
	PG_RETURN_VOID();
}

/* sql_drop: were the dropped objects all temporary? */
Datum
standin_ddl_drop(PG_FUNCTION_ARGS)
{
	(void)trigger_data(fcinfo);
	if (top_frame == NULL)
		PG_RETURN_VOID();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "standin_ddl: SPI_connect failed");
	if (SPI_execute("SELECT pg_catalog.count(*)::pg_catalog.int4, "
			"(pg_catalog.count(*) FILTER (WHERE is_temporary))::pg_catalog.int4 "
			"FROM pg_catalog.pg_event_trigger_dropped_objects()",
			true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "standin_ddl: reading the dropped objects failed");
	bool isnull;
	top_frame->drops = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
						       SPI_tuptable->tupdesc, 1, &isnull));
	top_frame->temp_drops = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
							    SPI_tuptable->tupdesc, 2, &isnull));
	SPI_finish();
	PG_RETURN_VOID();
}

/* The statement's text within its query string, blanks and ';' trimmed. */
static char *
cut_statement(const char *query, int location, int len)
{
	size_t qlen = strlen(query);

	if (location < 0 || (size_t)location > qlen) {
		location = 0;
		len = 0;
	}
	if (len <= 0 || (size_t)(location + len) > qlen)
		len = (int)(qlen - location);
	const char *s = query + location, *e = s + len;
	while (s < e && scanner_isspace(*s))
		s++;
	while (e > s && (scanner_isspace(e[-1]) || e[-1] == ';'))
		e--;
	return pnstrdup(s, e - s);
}

/* Top-level statements are found without the hook too: each runs in a portal
 * of its own that holds the query string and the statement's place in it. */
static char *
statement_from_portal(Node *parsetree)
{
	ListCell *lc;

	if (ActivePortal == NULL || ActivePortal->sourceText == NULL)
		return NULL;
	foreach (lc, ActivePortal->stmts) {
		PlannedStmt *ps = lfirst_node(PlannedStmt, lc);

		if (ps->commandType == CMD_UTILITY &&
		    (ps->utilityStmt == parsetree || equal(ps->utilityStmt, parsetree)))
			return cut_statement(ActivePortal->sourceText, ps->stmt_location, ps->stmt_len);
	}
	return NULL;
}

/* The statement without its CONCURRENTLY keywords, found by the server's own
 * lexer with this session's settings (standard_conforming_strings...). */
static char *
drop_concurrently(const char *stmt)
{
	int kw = ScanKeywordLookup("concurrently", &ScanKeywords);
	int token_concurrently = kw >= 0 ? ScanKeywordTokens[kw] : -1;
	core_yy_extra_type extra;
	core_YYSTYPE yylval;
	YYLTYPE yylloc;
	core_yyscan_t scanner = scanner_init(stmt, &extra, &ScanKeywords, ScanKeywordTokens);
	StringInfoData out;
	int from = 0, tok;

	initStringInfo(&out);
	while ((tok = core_yylex(&yylval, &yylloc, scanner)) != 0) {
		if (tok == token_concurrently) {
			appendBinaryStringInfo(&out, stmt + from, yylloc - from);
			from = yylloc + (int)strlen("concurrently");
		}
	}
	scanner_finish(scanner);
	appendStringInfoString(&out, stmt + from);
	return out.data;
}

static bool
uses_concurrently(Node *stmt)
{
	switch (nodeTag(stmt)) {
	case T_IndexStmt:
		return ((IndexStmt *)stmt)->concurrent;
	case T_DropStmt:
		return ((DropStmt *)stmt)->concurrent;
	case T_ReindexStmt:
	case T_AlterTableStmt:		/* DETACH PARTITION ... CONCURRENTLY */
	case T_RefreshMatViewStmt:
		return true;		/* the lexer finds out */
	default:
		return false;
	}
}

/* What pg_event_trigger_ddl_commands() says of the command. */
static void
read_commands(struct commands *c)
{
	memset(c, 0, sizeof(*c));
	if (SPI_execute("SELECT schema_name OPERATOR(pg_catalog.=) 'pg_temp', object_identity, "
			"CASE WHEN object_type OPERATOR(pg_catalog.=) 'table' THEN objid END "
			"FROM pg_catalog.pg_event_trigger_ddl_commands()",
			true, 0) != SPI_OK_SELECT)
		elog(ERROR, "standin_ddl: reading the DDL commands failed");
	for (uint64 i = 0; i < SPI_processed; i++) {
		HeapTuple t = SPI_tuptable->vals[i];
		TupleDesc d = SPI_tuptable->tupdesc;
		bool isnull;
		Datum v;

		c->n++;
		v = SPI_getbinval(t, d, 1, &isnull);
		if (!isnull && DatumGetBool(v))
			c->temp++;
		char *id = SPI_getvalue(t, d, 2);
		if (id != NULL && list_length(c->objects) < 20)
			c->objects = lappend(c->objects, id);
		v = SPI_getbinval(t, d, 3, &isnull);
		if (!isnull && c->table == InvalidOid)
			c->table = DatumGetObjectId(v);
	}
}

/* CREATE TABLE AS / SELECT INTO: the table it made, as a plain CREATE TABLE
 * (read with a new snapshot, not read-only: the table is this statement's). */
static char *
table_definition(Oid relid)
{
	Oid argtypes[1] = { OIDOID };
	Datum args[1] = { ObjectIdGetDatum(relid) };

	if (SPI_execute_with_args(
		    "SELECT pg_catalog.format('CREATE %sTABLE %I.%I (%s)%s%s%s', "
		    " CASE c.relpersistence WHEN 'u' THEN 'UNLOGGED ' ELSE '' END, n.nspname, c.relname, "
		    " (SELECT pg_catalog.string_agg(pg_catalog.format('%I %s%s', a.attname, "
		    "   pg_catalog.format_type(a.atttypid, a.atttypmod), "
		    "   CASE WHEN a.attcollation OPERATOR(pg_catalog.<>) 0 "
		    "    AND a.attcollation OPERATOR(pg_catalog.<>) t.typcollation "
		    "   THEN pg_catalog.format(' COLLATE %I.%I', cn.nspname, co.collname) ELSE '' END), "
		    "   ', ' ORDER BY a.attnum) "
		    "  FROM pg_catalog.pg_attribute a "
		    "  JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) a.atttypid "
		    "  LEFT JOIN pg_catalog.pg_collation co ON co.oid OPERATOR(pg_catalog.=) a.attcollation "
		    "  LEFT JOIN pg_catalog.pg_namespace cn ON cn.oid OPERATOR(pg_catalog.=) co.collnamespace "
		    "  WHERE a.attrelid OPERATOR(pg_catalog.=) c.oid AND a.attnum OPERATOR(pg_catalog.>) 0 "
		    "  AND NOT a.attisdropped), "
		    " CASE WHEN am.amname OPERATOR(pg_catalog.<>) 'heap' "
		    "  THEN pg_catalog.format(' USING %I', am.amname) ELSE '' END, "
		    " CASE WHEN c.reloptions IS NOT NULL "
		    "  THEN ' WITH (' OPERATOR(pg_catalog.||) pg_catalog.array_to_string(c.reloptions, ', ') "
		    "   OPERATOR(pg_catalog.||) ')' ELSE '' END, "
		    " CASE WHEN c.reltablespace OPERATOR(pg_catalog.<>) 0 "
		    "  THEN pg_catalog.format(' TABLESPACE %I', ts.spcname) ELSE '' END) "
		    "FROM pg_catalog.pg_class c "
		    "JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace "
		    "LEFT JOIN pg_catalog.pg_am am ON am.oid OPERATOR(pg_catalog.=) c.relam "
		    "LEFT JOIN pg_catalog.pg_tablespace ts ON ts.oid OPERATOR(pg_catalog.=) c.reltablespace "
		    "WHERE c.oid OPERATOR(pg_catalog.=) $1",
		    1, argtypes, args, NULL, false, 1) != SPI_OK_SELECT || SPI_processed != 1)
		return NULL;
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
}

static char *
ddl_key(void)
{
	Oid save_uid;
	int save_sec;
	char *key = NULL;

	GetUserIdAndSecContext(&save_uid, &save_sec);
	SetUserIdAndSecContext(BOOTSTRAP_SUPERUSERID,
			       save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	if (SPI_execute("SELECT key FROM standin.ddl_key WHERE id OPERATOR(pg_catalog.=) 1", true, 1) ==
		    SPI_OK_SELECT &&
	    SPI_processed == 1)
		key = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	SetUserIdAndSecContext(save_uid, save_sec);
	if (key == NULL || key[0] == '\0')
		ereport(ERROR, (errmsg("standin_ddl: standin.ddl_key is missing"),
				errhint("standin-pgrepl creates it when it starts; "
					"or DROP EVENT TRIGGER standin_ddl_end to stop DDL capture.")));
	return key;
}

static void
sha256(const char *a, size_t alen, const uint8 *b, size_t blen, uint8 out[32])
{
	pg_cryptohash_ctx *ctx = pg_cryptohash_create(PG_SHA256);

	if (ctx == NULL || pg_cryptohash_init(ctx) < 0 ||
	    pg_cryptohash_update(ctx, (const uint8 *)a, alen) < 0 ||
	    pg_cryptohash_update(ctx, b, blen) < 0 || pg_cryptohash_final(ctx, out, 32) < 0)
		elog(ERROR, "standin_ddl: SHA-256 failed");
	pg_cryptohash_free(ctx);
}

/* hex(sha256(key || sha256(key || body))) "\n" body */
static char *
sign(const char *key, const char *body)
{
	uint8 inner[32], mac[32];
	StringInfoData out;

	sha256(key, strlen(key), (const uint8 *)body, strlen(body), inner);
	sha256(key, strlen(key), inner, sizeof(inner), mac);
	initStringInfo(&out);
	for (int i = 0; i < 32; i++)
		appendStringInfo(&out, "%02x", mac[i]);
	appendStringInfoChar(&out, '\n');
	appendStringInfoString(&out, body);
	return out.data;
}

static void
json_field(StringInfo b, const char *name, const char *value)
{
	appendStringInfoChar(b, ',');
	escape_json(b, name);
	appendStringInfoChar(b, ':');
	escape_json(b, value);
}

static char *
message_body(const char *kind, CommandTag tag, const char *statement, const char *reason,
	     const struct commands *c)
{
	StringInfoData b;
	ListCell *lc;

	initStringInfo(&b);
	appendStringInfo(&b, "{\"format\":%d", DDL_FORMAT);
	json_field(&b, "kind", kind);
	json_field(&b, "tag", GetCommandTagName(tag));
	json_field(&b, "role", GetUserNameFromId(GetUserId(), false));
	appendStringInfoString(&b, ",\"objects\":[");
	foreach (lc, c->objects) {
		if (foreach_current_index(lc) > 0)
			appendStringInfoChar(&b, ',');
		escape_json(&b, lfirst(lc));
	}
	appendStringInfoString(&b, "],\"settings\":{");
	for (size_t i = 0; i < lengthof(carried_settings); i++) {
		const char *v = GetConfigOption(carried_settings[i], true, false);

		if (i > 0)
			appendStringInfoChar(&b, ',');
		escape_json(&b, carried_settings[i]);
		appendStringInfoChar(&b, ':');
		escape_json(&b, v != NULL ? v : "");
	}
	appendStringInfoChar(&b, '}');
	if (reason != NULL)
		json_field(&b, "reason", reason);
	if (statement != NULL)
		json_field(&b, "statement", statement);
	appendStringInfoChar(&b, '}');
	return b.data;
}

static void
emit(const char *text)
{
	LogLogicalMessage(DDL_PREFIX, text, strlen(text), true);
}

/*
 * ALTER TABLE ... ADD COLUMN whose existing rows get a value computed as it
 * runs (a default that is not immutable, such as now() or
 * gen_random_uuid(); a serial or identity column): the standby's run would
 * compute values of its own, so such a statement on a table with rows is
 * not run there.  Why, or NULL.
 */
static char *
computed_column(AlterTableStmt *stmt, Oid relid)
{
	ListCell *lc;
	char *column = NULL;

	foreach (lc, stmt->cmds) {
		AlterTableCmd *cmd = lfirst_node(AlterTableCmd, lc);
		Oid argtypes[2] = { OIDOID, TEXTOID };
		Datum args[2];

		if (cmd->subtype != AT_AddColumn || cmd->def == NULL || !IsA(cmd->def, ColumnDef))
			continue;
		args[0] = ObjectIdGetDatum(relid);
		args[1] = CStringGetTextDatum(((ColumnDef *)cmd->def)->colname);
		if (SPI_execute_with_args(
			    "SELECT a.attidentity OPERATOR(pg_catalog.<>) '', d.adbin::pg_catalog.text "
			    "FROM pg_catalog.pg_attribute a LEFT JOIN pg_catalog.pg_attrdef d "
			    "ON d.adrelid OPERATOR(pg_catalog.=) a.attrelid "
			    "AND d.adnum OPERATOR(pg_catalog.=) a.attnum "
			    "WHERE a.attrelid OPERATOR(pg_catalog.=) $1 "
			    "AND a.attname OPERATOR(pg_catalog.=) $2::pg_catalog.name "
			    "AND a.attgenerated OPERATOR(pg_catalog.=) ''",
			    2, argtypes, args, NULL, false, 1) != SPI_OK_SELECT || SPI_processed != 1)
			continue;
		bool isnull;
		Datum identity = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		char *adbin = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
		if (DatumGetBool(identity) ||
		    (adbin != NULL && contain_mutable_functions((Node *)stringToNode(adbin)))) {
			column = ((ColumnDef *)cmd->def)->colname;
			break;
		}
	}
	if (column == NULL)
		return NULL;
	char *table = quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
						 get_rel_name(relid));
	char *query = psprintf("SELECT EXISTS (SELECT FROM %s)", table);
	Oid save_uid;
	int save_sec;
	bool isnull, rows;
	/* As the bootstrap superuser: no row security hides a row. */
	GetUserIdAndSecContext(&save_uid, &save_sec);
	SetUserIdAndSecContext(BOOTSTRAP_SUPERUSERID,
			       save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	if (SPI_execute(query, false, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "standin_ddl: reading %s failed", table);
	rows = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SetUserIdAndSecContext(save_uid, save_sec);
	if (!rows)
		return NULL;	/* no rows: nothing computed */
	return psprintf("column %s of %s was added with a value computed for the rows already "
			"there (a default that is not immutable, such as now() or a random value; "
			"a serial or identity column): run on the standby, it would compute other "
			"values; add it there with the master's values",
			quote_identifier(column), table);
}

/* Sent with the outer DDL's own run on the standby? (extension scripts) */
static bool
replayed_by(Frame *f)
{
	return f->stmt != NULL &&
	       (IsA(f->stmt, CreateExtensionStmt) || IsA(f->stmt, AlterExtensionStmt));
}

Datum
standin_ddl_end(PG_FUNCTION_ARGS)
{
	EventTriggerData *trig = trigger_data(fcinfo);
	Frame *self = top_frame, *outer = NULL;
	struct commands c;
	const char *kind = "statement";
	char *statement = NULL, *reason = NULL;
	MemoryContext caller = CurrentMemoryContext;

	/* The frame of this statement (marked at ddl_command_start); the hook
	 * may have missed it if the library was loaded by the start trigger. */
	if (self != NULL && !self->is_ddl)
		self = NULL;
	for (Frame *f = self != NULL ? self->outer : NULL; f != NULL; f = f->outer) {
		if (f->is_ddl) {
			outer = f;
			break;
		}
	}
	if (outer != NULL && replayed_by(outer))
		PG_RETURN_VOID();
	if (IsA(trig->parsetree, CreateTableAsStmt) &&
	    (self != NULL ? self->ctas_sent : top_frame == NULL && frameless_ctas_sent)) {
		/* Its table went before its rows (ctas_startup); now what ran in it. */
		ListCell *lc;

		frameless_ctas_sent = false;
		if (self != NULL) {
			foreach (lc, self->pending)
				emit(((Pending *)lfirst(lc))->text);
		}
		PG_RETURN_VOID();
	}

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "standin_ddl: SPI_connect failed");
	read_commands(&c);
	/* Temporary objects stay in their session. */
	if ((c.n > 0 && c.temp == c.n) ||
	    (c.n == 0 && self != NULL && self->drops > 0 && self->temp_drops == self->drops)) {
		SPI_finish();
		PG_RETURN_VOID();
	}
	if (IsA(trig->parsetree, CreateTableAsStmt) &&
	    ((CreateTableAsStmt *)trig->parsetree)->objtype == OBJECT_TABLE) {
		/* Nothing made (IF NOT EXISTS): nothing to send. */
		if (c.table == InvalidOid) {
			SPI_finish();
			PG_RETURN_VOID();
		}
		statement = table_definition(c.table);
	} else if (self != NULL && self->query != NULL) {
		statement = cut_statement(self->query, self->location, self->len);
	} else if (self == NULL && top_frame == NULL) {
		statement = statement_from_portal(trig->parsetree);
	}
	if (statement == NULL)
		kind = "uncaptured";
	else if (uses_concurrently(trig->parsetree))
		statement = drop_concurrently(statement);
	if (statement != NULL && IsA(trig->parsetree, AlterTableStmt) && OidIsValid(c.table) &&
	    (reason = computed_column((AlterTableStmt *)trig->parsetree, c.table)) != NULL)
		kind = "unreproducible";

	char *body = message_body(kind, trig->tag, statement, reason, &c);
	/* SPI_finish frees what was made since SPI_connect. */
	char *text = MemoryContextStrdup(caller, sign(ddl_key(), body));
	SPI_finish();

	if (outer != NULL) {
		/* After the outer DDL, in order, with what ran inside this one. */
		MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);
		Pending *p = palloc(sizeof(*p));

		p->subid = GetCurrentSubTransactionId();
		p->text = pstrdup(text);
		outer->pending = lappend(outer->pending, p);
		outer->pending = list_concat(outer->pending, self->pending);
		MemoryContextSwitchTo(old);
	} else {
		ListCell *lc;

		emit(text);
		if (self != NULL) {
			foreach (lc, self->pending)
				emit(((Pending *)lfirst(lc))->text);
		}
	}
	PG_RETURN_VOID();
}
