/*
 * bench/ldap/latency.c: change latency master -> standby, for bench/ldap/run.py.
 *
 *   latency MASTER_URI STANDBY_URI BIND_DN PASSWORD_FILE ENTRY_DN TAG COUNT POLL_US TIMEOUT_S
 *
 * Two persistent connections (simple bind as BIND_DN on both servers).  For
 * i = 1..COUNT: replace description of ENTRY_DN on the master with
 * "TAG-i" (ldap_modify_ext_s), then search the standby (base scope,
 * filter (description=TAG-i), no attributes) every POLL_US microseconds
 * until the entry matches.  Prints "i write_us latency_us" per change, where
 * write_us is the master's modify round trip and latency_us runs from the
 * moment the modify returned to the first search that saw the value.
 * Exit 2 on an LDAP error, 3 when a change is not visible within TIMEOUT_S.
 * Bench-only; built by run.py with cc -O2 latency.c -lldap -llber.
 */
#define LDAP_DEPRECATED 0
#include <ldap.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double
now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static LDAP *
connect_bind(const char *uri, const char *dn, const char *pw)
{
	LDAP *ld = NULL;
	int version = LDAP_VERSION3, rc;
	struct berval cred = { strlen(pw), (char *)pw };

	if ((rc = ldap_initialize(&ld, uri)) != LDAP_SUCCESS) {
		fprintf(stderr, "ldap_initialize %s: %s\n", uri, ldap_err2string(rc));
		exit(2);
	}
	ldap_set_option(ld, LDAP_OPT_PROTOCOL_VERSION, &version);
	ldap_set_option(ld, LDAP_OPT_REFERRALS, LDAP_OPT_OFF);
	rc = ldap_sasl_bind_s(ld, dn, LDAP_SASL_SIMPLE, &cred, NULL, NULL, NULL);
	if (rc != LDAP_SUCCESS) {
		fprintf(stderr, "bind %s on %s: %s\n", dn, uri, ldap_err2string(rc));
		exit(2);
	}
	return ld;
}

int
main(int argc, char **argv)
{
	if (argc != 10) {
		fprintf(stderr, "usage: %s MASTER_URI STANDBY_URI BIND_DN PASSWORD_FILE ENTRY_DN TAG "
				"COUNT POLL_US TIMEOUT_S\n", argv[0]);
		return 1;
	}
	const char *master = argv[1], *standby = argv[2], *binddn = argv[3], *dn = argv[5],
		   *tag = argv[6];
	int count = atoi(argv[7]);
	long poll_us = atol(argv[8]);
	double timeout_us = atof(argv[9]) * 1e6;
	char pw[512];
	FILE *f = fopen(argv[4], "r");

	if (f == NULL || fgets(pw, sizeof(pw), f) == NULL) {
		perror(argv[4]);
		return 1;
	}
	fclose(f);
	pw[strcspn(pw, "\r\n")] = '\0';

	LDAP *lm = connect_bind(master, binddn, pw), *ls = connect_bind(standby, binddn, pw);
	char *attrs[] = { LDAP_NO_ATTRS, NULL };
	struct timeval tv = { 10, 0 };

	for (int i = 1; i <= count; i++) {
		char value[256], filter[300];
		snprintf(value, sizeof(value), "%s-%d", tag, i);
		snprintf(filter, sizeof(filter), "(description=%s)", value);
		char *vals[] = { value, NULL };
		LDAPMod mod = { .mod_op = LDAP_MOD_REPLACE, .mod_type = "description",
				.mod_values = vals };
		LDAPMod *mods[] = { &mod, NULL };

		double t0 = now_us();
		int rc = ldap_modify_ext_s(lm, dn, mods, NULL, NULL);
		double t1 = now_us();
		if (rc != LDAP_SUCCESS) {
			fprintf(stderr, "modify %s on the master: %s\n", dn, ldap_err2string(rc));
			return 2;
		}
		for (;;) {
			LDAPMessage *res = NULL;
			rc = ldap_search_ext_s(ls, dn, LDAP_SCOPE_BASE, filter, attrs, 1, NULL, NULL,
					       &tv, 1, &res);
			double t2 = now_us();
			int n = rc == LDAP_SUCCESS ? ldap_count_entries(ls, res) : 0;
			if (res != NULL)
				ldap_msgfree(res);
			if (rc != LDAP_SUCCESS && rc != LDAP_NO_SUCH_OBJECT) {
				fprintf(stderr, "search %s on the standby: %s\n", dn, ldap_err2string(rc));
				return 2;
			}
			if (n > 0) {
				printf("%d %.0f %.0f\n", i, t1 - t0, t2 - t1);
				fflush(stdout);
				break;
			}
			if (t2 - t1 > timeout_us) {
				fprintf(stderr, "change %s not visible on the standby after %.1f s\n",
					value, (t2 - t1) / 1e6);
				return 3;
			}
			if (poll_us > 0)
				usleep(poll_us);
		}
	}
	ldap_unbind_ext_s(lm, NULL, NULL);
	ldap_unbind_ext_s(ls, NULL, NULL);
	return 0;
}
