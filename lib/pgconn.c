/*
 * pgconn.c: connections to a node's PostgreSQL (see pgconn.h).
 */
#include "config.h"

#include "lib/pgconn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"

char *
pgc_describe(const struct st_conf *conf, const char *node)
{
	int i = st_conf_node_index(conf, node);
	const char *ep = i >= 0 ? conf->pg.endpoint[i] : NULL;

	return xasprintf("node %s (%s)", node, ep != NULL ? ep : "no endpoint");
}

const char *
pgc_errmsg(PGconn *c)
{
	static __thread char buf[1024];
	const char *msg = c != NULL ? PQerrorMessage(c) : "out of memory";
	size_t n = 0;

	/* One line: newlines and tabs become spaces, the last one is dropped. */
	for (const char *p = msg; *p != '\0' && n < sizeof(buf) - 1; p++)
		buf[n++] = (*p == '\n' || *p == '\t' || *p == '\r') ? ' ' : *p;
	while (n > 0 && buf[n - 1] == ' ')
		n--;
	buf[n] = '\0';
	return buf;
}

char *
pgc_result_error(const PGresult *res)
{
	const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
	const char *detail = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL);
	const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

	if (primary == NULL)
		primary = PQresultErrorMessage(res);
	if (primary == NULL || *primary == '\0')
		primary = PQresStatus(PQresultStatus(res));
	/*
	 * Integrity and data errors (classes 23 and 22) quote the row or the
	 * value in their detail ("Key (id)=(7) already exists."): hidden
	 * unless [cluster] log_data or debug, the primary message says enough.
	 */
	if (detail != NULL && state != NULL && (strncmp(state, "23", 2) == 0 || strncmp(state, "22", 2) == 0) &&
	    !st_log_data())
		detail = "detail with the row's data hidden: [cluster] log_data = yes shows it";
	char *msg = detail != NULL ? xasprintf("%s (%s) [SQLSTATE %s]", primary, detail,
					       state != NULL ? state : "?")
				   : xasprintf("%s [SQLSTATE %s]", primary,
					       state != NULL ? state : "?");
	for (char *p = msg; *p != '\0'; p++)
		if (*p == '\n' || *p == '\r' || *p == '\t')
			*p = ' ';
	return msg;
}

PGconn *
pgc_connect(const struct st_conf *conf, const char *node, enum pgc_kind kind,
	    const char *application_name, char **error_r)
{
	return pgc_connect_db(conf, node, conf->pg.dbname, kind, application_name, error_r);
}

PGconn *
pgc_connect_db(const struct st_conf *conf, const char *node, const char *dbname,
	       enum pgc_kind kind, const char *application_name, char **error_r)
{
	const struct st_endpoint *ep =
		st_conf_endpoint(conf, ST_SVC_PG, st_conf_node_index(conf, node));
	char port[16], timeout[32];
	PGconn *c = NULL;

	if (ep->host == NULL) {
		st_set_error(error_r, "node %s has no [pg] endpoint", node);
		return NULL;
	}
	const char *host = ep->host;
	snprintf(port, sizeof(port), "%d", ep->port);
	snprintf(timeout, sizeof(timeout), "%ld",
		 conf->pg.connect_timeout_ms > 0 ? (conf->pg.connect_timeout_ms + 999) / 1000 : 10);

	const char *keys[16], *vals[16];
	int n = 0;
#define KV(k, v) do { keys[n] = (k); vals[n] = (v); n++; } while (0)
	KV("host", host);
	KV("port", port);
	KV("dbname", dbname);
	KV("user", conf->pg.user);
	if (conf->pg.passfile != NULL)
		KV("passfile", conf->pg.passfile);
	KV("sslmode", st_conf_pg_sslmode(conf, st_conf_node_index(conf, node)));
	if (conf->pg.sslrootcert != NULL)
		KV("sslrootcert", conf->pg.sslrootcert);
	KV("connect_timeout", timeout);
	KV("application_name", application_name);
	/* default_transaction_read_only=off: a fenced node (read-only by
	 * default_transaction_read_only, as standin-failoverd's fence leaves
	 * the old master) is still written by standin as its standby. */
	KV("options", "-c datestyle=ISO -c intervalstyle=postgres -c extra_float_digits=3 "
		      "-c default_transaction_read_only=off");
	KV("keepalives", "1");
	KV("keepalives_idle", "30");
	if (kind == PGC_REPLICATION)
		KV("replication", "database");
	keys[n] = NULL;
	vals[n] = NULL;
#undef KV

	c = PQconnectdbParams(keys, vals, 0);
	if (c == NULL || PQstatus(c) != CONNECTION_OK) {
		char *who = pgc_describe(conf, node);
		st_set_error(error_r, "cannot connect to PostgreSQL on %s as %s to database %s: %s",
			     who, conf->pg.user, dbname, pgc_errmsg(c));
		free(who);
		PQfinish(c);
		c = NULL;
	}
	return c;
}

int
pgc_exec(PGconn *c, const char *sql, char **error_r)
{
	PGresult *res = PQexec(c, sql);
	ExecStatusType st = PQresultStatus(res);
	int rc = 0;

	if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
		char *why = res != NULL ? pgc_result_error(res) : xstrdup(pgc_errmsg(c));
		st_set_error(error_r, "%s", why);
		free(why);
		rc = -1;
	}
	PQclear(res);
	return rc;
}

int
pgc_value(PGconn *c, const char *sql, char **value_r, char **error_r)
{
	PGresult *res = PQexec(c, sql);
	int rc = 0;

	*value_r = NULL;
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		char *why = res != NULL ? pgc_result_error(res) : xstrdup(pgc_errmsg(c));
		st_set_error(error_r, "%s", why);
		free(why);
		rc = -1;
	} else if (PQntuples(res) > 0 && !PQgetisnull(res, 0, 0)) {
		*value_r = xstrdup(PQgetvalue(res, 0, 0));
	}
	PQclear(res);
	return rc;
}

/* S between two Q, each Q in it doubled: SQL's quoting of identifiers and
 * of literals (standard_conforming_strings on: PostgreSQL's default). */
static char *
quoted(const char *s, char q)
{
	struct st_buf b;

	st_buf_init(&b);
	st_buf_append(&b, &q, 1);
	for (const char *p = s; *p != '\0'; p++) {
		st_buf_append(&b, p, 1);
		if (*p == q)
			st_buf_append(&b, p, 1);
	}
	st_buf_append(&b, &q, 1);
	char *out = st_buf_steal(&b);
	st_buf_free(&b);
	return out;
}

char *
pgc_ident(const char *name)
{
	return quoted(name, '"');
}

char *
pgc_literal(const char *value)
{
	return quoted(value, '\'');
}
