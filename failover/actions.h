/*
 * actions.h: what standin-failoverd does on its own node when a switchover
 * orders it (doc/architecture.md, section 4): fence and unfence the local
 * servers, and pass orders on to the local daemons through their unix
 * sockets.  Every function blocks (a server, a socket, a command): they run
 * in the agent's order thread, never on its loop.
 */
#ifndef STANDIN_FO_ACTIONS_H
#define STANDIN_FO_ACTIONS_H

#include <jansson.h>
#include <stdbool.h>

#include "lib/conf.h"
#include "lib/etcd.h"
#include "lib/order.h"

/*
 * PostgreSQL: FENCE true makes every new transaction read-only
 * (default_transaction_read_only for the whole server, ALTER SYSTEM and a
 * reload), then ends the client sessions that are not standin's (waiting
 * until they are gone) and reads the WAL insert position, which then holds
 * every commit there will ever be: *lsn_r (may be NULL).  FENCE false undoes
 * it.  *ended_r: sessions ended.
 */
int fo_pg_fence(const struct st_conf *conf, const struct st_node *node, bool fence,
		long long *ended_r, char **lsn_r, char **error_r) ST_WARN_UNUSED;

/* The same read-only default for new transactions, without ending any
 * session: a standby, whose clients only read. */
int fo_pg_readonly(const struct st_conf *conf, const struct st_node *node, char **error_r)
	ST_WARN_UNUSED;

/*
 * slapd: olcReadOnly on the database of [ldap] suffix over cn=config, as
 * [ldap] config_bind_dn; 1 when that is not configured (nothing done).
 * With FENCE, *csn_r gets the contextCSN reached (the newest value).
 */
int fo_ldap_fence(const struct st_conf *conf, const struct st_node *node, bool fence,
		  char **csn_r, char **error_r) ST_WARN_UNUSED;

/* Run CMDLINE (words split at spaces, %n replaced by NODE, the first an
 * absolute path) with execve, no shell, within TIMEOUT_MS; WHAT names it in
 * messages.  0 when it exited 0, else -1 with its own words. */
int fo_run_command(const char *cmdline, const char *node, const char *what, long timeout_ms,
		   char **error_r) ST_WARN_UNUSED;

/* [imap] kick_command, run with execve (no shell); 1 when not configured. */
int fo_imap_kick(const struct st_conf *conf, const struct st_node *node, char **error_r)
	ST_WARN_UNUSED;

/*
 * Carry out order O on NODE: its result object (a new reference), or NULL
 * with *error_r naming the step, the service and what failed.  ETCD is the
 * order thread's handle (the "finish" order takes the new state).
 */
json_t *fo_execute(const struct st_conf *conf, const struct st_node *node, struct st_etcd *etcd,
		   const struct st_order *o, char **error_r);

#endif
