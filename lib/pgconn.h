/*
 * pgconn.h: libpq connections to the PostgreSQL of a node, as the config
 * describes it ([pg] endpoint.NODE, dbname, user, passfile, sslmode,
 * sslrootcert, connect_timeout): the one way standin-pgrepl, the dumps and
 * dump-verify reach a server.
 *
 * Connections are made with PQconnectdbParams (keyword arrays: no conninfo
 * string is ever built, so no quoting mistakes), with the session settings
 * the text values of the stream need on both ends (DateStyle ISO,
 * IntervalStyle postgres, extra_float_digits 3), like PostgreSQL's own
 * logical replication worker.  Every error names the node and its endpoint.
 */
#ifndef STANDIN_PGCONN_H
#define STANDIN_PGCONN_H

#include <libpq-fe.h>
#include <stdbool.h>

#include "lib/conf.h"

enum pgc_kind {
	PGC_NORMAL,
	PGC_REPLICATION,	/* replication=database */
};

/* Connect to NODE's PostgreSQL, database [pg] dbname.  NULL with *error_r
 * on failure. */
PGconn *pgc_connect(const struct st_conf *conf, const char *node, enum pgc_kind kind,
		    const char *application_name, char **error_r) ST_WARN_UNUSED;

/* The same, to database DBNAME. */
PGconn *pgc_connect_db(const struct st_conf *conf, const char *node, const char *dbname,
		       enum pgc_kind kind, const char *application_name,
		       char **error_r) ST_WARN_UNUSED;

/* "node b (127.0.0.1:5433)" for messages; the caller frees it. */
char *pgc_describe(const struct st_conf *conf, const char *node);

/* libpq's last error on C, one line, without the trailing newline. */
const char *pgc_errmsg(PGconn *c);

/* The message of a failed result, one line (primary message, detail). */
char *pgc_result_error(const PGresult *res);

/* Run SQL; 0 when it succeeded (command or rows), -1 with *error_r. */
int pgc_exec(PGconn *c, const char *sql, char **error_r) ST_WARN_UNUSED;

/*
 * Run SQL returning at most one row of one column; *value_r is a copy
 * (NULL for SQL NULL or no row).  0 or -1 with *error_r.
 */
int pgc_value(PGconn *c, const char *sql, char **value_r, char **error_r) ST_WARN_UNUSED;

/* A quoted identifier ("My Table"), or a quoted literal ('it''s'). */
char *pgc_ident(const char *name);
char *pgc_literal(const char *value);

#endif
