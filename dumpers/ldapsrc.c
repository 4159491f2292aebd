/*
 * ldapsrc.c: contextCSN and LDIF export over LDAP (libldap, synchronous:
 * standinctl is a command, not an event loop).
 */
#include "config.h"

#include "dumpers/ldapsrc.h"
#include "lib/ldconn.h"

#include <ctype.h>
#include <ldap.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int
dump_ldap_context_csn(const struct st_conf *conf, int node_idx, struct dump_csns *r,
		      char **error_r)
{
	char *attrs[] = { "contextCSN", NULL };
	LDAPMessage *res = NULL, *e;
	struct berval **vals;
	LDAP *ld;
	int rc;

	memset(r, 0, sizeof(*r));
	ld = st_ldap_open(conf, conf->nodes[node_idx].name, error_r);
	if (ld == NULL)
		return -1;
	rc = ldap_search_ext_s(ld, conf->ldap.suffix, LDAP_SCOPE_BASE, "(objectClass=*)", attrs, 0,
			       NULL, NULL, NULL, 1, &res);
	if (rc == LDAP_NO_SUCH_OBJECT) {
		/* No suffix entry yet: nothing replicated, no position. */
		ldap_msgfree(res);
		ldap_unbind_ext_s(ld, NULL, NULL);
		return 0;
	}
	if (rc != LDAP_SUCCESS) {
		st_set_error(error_r, "LDAP %s (node %s): read contextCSN of %s: %s",
			     conf->ldap.endpoint[node_idx], conf->nodes[node_idx].name,
			     conf->ldap.suffix, ldap_err2string(rc));
		ldap_msgfree(res);
		ldap_unbind_ext_s(ld, NULL, NULL);
		return -1;
	}
	e = ldap_first_entry(ld, res);
	if (e != NULL && (vals = ldap_get_values_len(ld, e, "contextCSN")) != NULL) {
		for (size_t i = 0; vals[i] != NULL && r->n < DUMP_MAX_CSNS; i++) {
			if (vals[i]->bv_len < sizeof(r->csn[0]))
				snprintf(r->csn[r->n++], sizeof(r->csn[0]), "%.*s", (int)vals[i]->bv_len,
					 vals[i]->bv_val);
		}
		ldap_value_free_len(vals);
	}
	ldap_msgfree(res);
	ldap_unbind_ext_s(ld, NULL, NULL);
	return 0;
}

int
dump_csn_time(const char *csn, long long *ms_r)
{
	struct tm tm;
	int v[6], us = 0;

	/* YYYYmmddHHMMSS.uuuuuuZ#... */
	if (strlen(csn) < 22 || csn[14] != '.' || csn[21] != 'Z')
		return -1;
	for (int i = 0; i < 21; i++) {
		if (i != 14 && !isdigit((unsigned char)csn[i]))
			return -1;
	}
	sscanf(csn, "%4d%2d%2d%2d%2d%2d.%6d", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &us);
	memset(&tm, 0, sizeof(tm));
	tm.tm_year = v[0] - 1900;
	tm.tm_mon = v[1] - 1;
	tm.tm_mday = v[2];
	tm.tm_hour = v[3];
	tm.tm_min = v[4];
	tm.tm_sec = v[5];
	*ms_r = (long long)timegm(&tm) * 1000 + us / 1000;
	return 0;
}

/* The serverID field of a CSN ("...#cnt#SID#mod"), or NULL. */
static const char *
csn_sid(const char *csn, size_t *len_r)
{
	const char *p = strchr(csn, '#');

	if (p == NULL || (p = strchr(p + 1, '#')) == NULL)
		return NULL;
	p++;
	const char *end = strchr(p, '#');
	*len_r = end ? (size_t)(end - p) : strlen(p);
	return p;
}

long long
dump_csn_lag_ms(const struct dump_csns *master, const struct dump_csns *standby)
{
	long long lag = 0;

	for (size_t i = 0; i < master->n; i++) {
		size_t ml, sl;
		const char *msid = csn_sid(master->csn[i], &ml);
		long long mt, st;
		bool found = false;

		if (msid == NULL || dump_csn_time(master->csn[i], &mt) < 0)
			return -1;
		for (size_t k = 0; k < standby->n; k++) {
			const char *ssid = csn_sid(standby->csn[k], &sl);
			if (ssid == NULL || sl != ml || memcmp(ssid, msid, ml) != 0)
				continue;
			if (dump_csn_time(standby->csn[k], &st) < 0)
				return -1;
			found = true;
			/* Behind: at least 1 ms, even within one millisecond. */
			if (strcmp(standby->csn[k], master->csn[i]) < 0) {
				long long d = mt - st > 0 ? mt - st : 1;
				if (d > lag)
					lag = d;
			}
		}
		if (!found)
			return -1;
	}
	return lag;
}

/* ---------------------------------------------------------------------- */

/* Attributes computed by slapd, which slapadd would refuse. */
static bool
dynamic_attr(const char *a)
{
	static const char *const dyn[] = { "hasSubordinates", "entryDN", "subschemaSubentry",
					   "numSubordinates", NULL };
	for (int i = 0; dyn[i]; i++) {
		if (strcasecmp(a, dyn[i]) == 0)
			return true;
	}
	return false;
}

struct exported {
	int depth;
	size_t seq;
	char *text;
};

static int
by_depth(const void *a, const void *b)
{
	const struct exported *x = a, *y = b;

	if (x->depth != y->depth)
		return x->depth < y->depth ? -1 : 1;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

int
dump_ldap_export(const struct st_conf *conf, int node_idx, FILE *out, unsigned long *entries_r,
		 char **error_r)
{
	char *attrs[] = { "*", "+", NULL };
	LDAPMessage *res = NULL;
	struct exported *ents = NULL;
	size_t n = 0, cap = 0;
	LDAP *ld;
	int rc, ret = -1;

	ld = st_ldap_open(conf, conf->nodes[node_idx].name, error_r);
	if (ld == NULL)
		return -1;
	rc = ldap_search_ext_s(ld, conf->ldap.suffix, LDAP_SCOPE_SUBTREE, "(objectClass=*)", attrs, 0,
			       NULL, NULL, NULL, 0, &res);
	if (rc != LDAP_SUCCESS) {
		st_set_error(error_r, "LDAP %s (node %s): export of %s: %s",
			     conf->ldap.endpoint[node_idx], conf->nodes[node_idx].name,
			     conf->ldap.suffix, ldap_err2string(rc));
		goto out;
	}
	for (LDAPMessage *e = ldap_first_entry(ld, res); e != NULL; e = ldap_next_entry(ld, e)) {
		struct st_buf b;
		BerElement *ber = NULL;
		char *dn = ldap_get_dn(ld, e);
		LDAPDN parsed = NULL;
		int depth = 0;

		if (dn == NULL)
			continue;
		if (ldap_str2dn(dn, &parsed, LDAP_DN_FORMAT_LDAPV3) == LDAP_SUCCESS && parsed != NULL) {
			while (parsed[depth] != NULL)
				depth++;
			ldap_dnfree(parsed);
		}
		st_buf_init(&b);
		st_ldif_line(&b, "dn", dn, strlen(dn));
		for (char *a = ldap_first_attribute(ld, e, &ber); a != NULL;
		     a = ldap_next_attribute(ld, e, ber)) {
			struct berval **vals = dynamic_attr(a) ? NULL : ldap_get_values_len(ld, e, a);
			for (size_t i = 0; vals != NULL && vals[i] != NULL; i++)
				st_ldif_line(&b, a, vals[i]->bv_val, vals[i]->bv_len);
			ldap_value_free_len(vals);
			ldap_memfree(a);
		}
		ber_free(ber, 0);
		ldap_memfree(dn);
		st_buf_puts(&b, "\n");
		if (n == cap) {
			cap = cap ? cap * 2 : 1024;
			ents = xrealloc(ents, cap * sizeof(*ents));
		}
		ents[n].depth = depth;
		ents[n].seq = n;
		ents[n].text = st_buf_steal(&b);
		st_buf_free(&b);
		n++;
	}
	qsort(ents, n, sizeof(*ents), by_depth);
	for (size_t i = 0; i < n; i++) {
		if (fputs(ents[i].text, out) == EOF) {
			st_set_error(error_r, "write of the LDIF export failed");
			goto out;
		}
	}
	*entries_r = n;
	ret = 0;
out:
	for (size_t i = 0; i < n; i++)
		free(ents[i].text);
	free(ents);
	ldap_msgfree(res);
	ldap_unbind_ext_s(ld, NULL, NULL);
	return ret;
}
