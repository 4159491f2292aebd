/*
 * ldapsrc.h: what a dump needs from a slapd over LDAP: the suffix's
 * contextCSN (the replication position) and, when slapcat cannot be run
 * (the node is not this machine, or no slapcat_config), an LDIF export of
 * the suffix with its operational attributes.
 */
#ifndef STANDIN_DUMP_LDAPSRC_H
#define STANDIN_DUMP_LDAPSRC_H

#include <stdio.h>
#include <time.h>

#include <ldap.h>

#include "lib/conf.h"

#define DUMP_MAX_CSNS 16

struct dump_csns {
	size_t n;
	char csn[DUMP_MAX_CSNS][64];
};

/* The contextCSN values of the suffix on node NODE_IDX.  0 or -1. */
int dump_ldap_context_csn(const struct st_conf *conf, int node_idx, struct dump_csns *r,
			  char **error_r) ST_WARN_UNUSED;

/*
 * How far STANDBY is behind MASTER, in ms: for each serverID of the master's
 * contextCSN, the time of the master's CSN minus the standby's for the same
 * serverID.  -1 when the standby has none for some serverID (never synced).
 */
long long dump_csn_lag_ms(const struct dump_csns *master, const struct dump_csns *standby);

/* The time of a CSN ("20250101031500.123456Z#..."), or (time_t)-1. */
int dump_csn_time(const char *csn, long long *ms_r) ST_WARN_UNUSED;

/* Export the suffix of node NODE_IDX as LDIF to OUT, parents first.
 * Sets *entries_r.  0 or -1. */
int dump_ldap_export(const struct st_conf *conf, int node_idx, FILE *out, unsigned long *entries_r,
		     char **error_r) ST_WARN_UNUSED;

#endif
