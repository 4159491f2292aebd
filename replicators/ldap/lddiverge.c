/*
 * lddiverge.c: the LDAP divergence report of an old master (lddiverge.h).
 */
#include "config.h"

#include "replicators/ldap/lddiverge.h"

#include <errno.h>
#include <stdbool.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lib/durable.h"
#include "lib/ldconn.h"
#include "lib/log.h"

#define SNAPSHOT_MAX (1024L * 1024 * 1024)

static char *
b64(const char *v, size_t len)
{
	char *out = xmalloc(4 * ((len + 2) / 3) + 1);

	EVP_EncodeBlock((unsigned char *)out, (const unsigned char *)v, (int)len);
	return out;
}

/* One search of every entry under SUFFIX: user attributes and entryUUID. */
static int
search_all(LDAP *ld, const char *suffix, LDAPMessage **res_r, char **error_r)
{
	char *attrs[] = { "*", "entryUUID", NULL };
	int rc = ldap_search_ext_s(ld, suffix, LDAP_SCOPE_SUBTREE, "(objectClass=*)", attrs, 0,
				   NULL, NULL, NULL, 0, res_r);

	if (rc == LDAP_NO_SUCH_OBJECT) {
		ldap_msgfree(*res_r);
		*res_r = NULL;
		return 0;
	}
	if (rc != LDAP_SUCCESS) {
		st_set_error(error_r, "reading %s on the standby: %s", suffix, ldap_err2string(rc));
		ldap_msgfree(*res_r);
		*res_r = NULL;
		return -1;
	}
	return 0;
}

/* {"dn","uuid","attrs":{attr:[b64 values]}} of each entry, keyed by uuid. */
static json_t *
entries_of(LDAP *ld, LDAPMessage *res)
{
	json_t *all = json_object();

	for (LDAPMessage *e = res ? ldap_first_entry(ld, res) : NULL; e != NULL;
	     e = ldap_next_entry(ld, e)) {
		char *dn = ldap_get_dn(ld, e), *uuid = NULL;
		BerElement *ber = NULL;
		json_t *attrs = json_object();

		for (char *a = ldap_first_attribute(ld, e, &ber); a != NULL;
		     a = ldap_next_attribute(ld, e, ber)) {
			struct berval **vals = ldap_get_values_len(ld, e, a);
			if (strcasecmp(a, "entryUUID") == 0) {
				if (vals != NULL && vals[0] != NULL)
					uuid = xstrndup(vals[0]->bv_val, vals[0]->bv_len);
			} else {
				json_t *arr = json_array();
				for (size_t i = 0; vals != NULL && vals[i] != NULL; i++) {
					char *v = b64(vals[i]->bv_val, vals[i]->bv_len);
					json_array_append_new(arr, json_string(v));
					free(v);
				}
				json_object_set_new(attrs, a, arr);
			}
			ldap_value_free_len(vals);
			ldap_memfree(a);
		}
		ber_free(ber, 0);
		if (dn != NULL && uuid != NULL)
			json_object_set_new(all, uuid, json_pack("{s:s,s:o}", "dn", dn, "attrs", attrs));
		else
			json_decref(attrs);
		free(uuid);
		ldap_memfree(dn);
	}
	return all;
}

int
ldd_snapshot(LDAP *ld, const char *suffix, const char *path, size_t *n_r, char **error_r)
{
	struct stat sb;
	LDAPMessage *res = NULL;

	*n_r = 0;
	if (stat(path, &sb) == 0)
		return 0;	/* the directory as it was before the first refresh */
	if (search_all(ld, suffix, &res, error_r) < 0)
		return -1;
	json_t *all = entries_of(ld, res);
	ldap_msgfree(res);
	*n_r = json_object_size(all);
	int rc = 0;
	if (*n_r > 0) {
		char *text = json_dumps(all, JSON_COMPACT);
		rc = st_durable_write(path, text, strlen(text), 0600, error_r);
		free(text);
	}
	json_decref(all);
	return rc;
}

/* Append VALUE (base64 in the snapshot) as an LDIF line. */
static void
value_line(struct st_buf *out, const char *attr, const char *value_b64)
{
	size_t n = strlen(value_b64);
	unsigned char *raw = xmalloc(n / 4 * 3 + 1);
	int len = n > 0 ? EVP_DecodeBlock(raw, (const unsigned char *)value_b64, (int)n) : 0;

	if (len < 0) {
		free(raw);
		return;
	}
	if (n > 0 && value_b64[n - 1] == '=')
		len--;
	if (n > 1 && value_b64[n - 2] == '=')
		len--;
	st_ldif_line(out, attr, (const char *)raw, (size_t)len);
	free(raw);
}

/* A DN as a key: lower case (the server's DNs, compared as it gave them). */
static char *
lower_dn(const char *dn)
{
	char *k = xstrdup(dn != NULL ? dn : "");

	for (char *p = k; *p != '\0'; p++)
		if (*p >= 'A' && *p <= 'Z')
			*p = (char)(*p - 'A' + 'a');
	return k;
}

static json_t *
attr_ci(json_t *attrs, const char *name)
{
	const char *key;
	json_t *v;

	json_object_foreach(attrs, key, v) {
		if (strcasecmp(key, name) == 0)
			return v;
	}
	return NULL;
}

static bool
has_value(json_t *arr, const char *v)
{
	size_t i;
	json_t *x;

	json_array_foreach(arr, i, x) {
		if (strcmp(json_string_value(x), v) == 0)
			return true;
	}
	return false;
}

int
ldd_report(LDAP *ld, const char *suffix, const char *path, const char *report_dir,
	   const char *peer, struct ldd_result *r, char **error_r)
{
	char *data = NULL;
	size_t len = 0;
	LDAPMessage *res = NULL;
	json_t *before = NULL, *now = NULL, *by_dn = NULL;
	struct st_buf out;
	int ret = -1;

	memset(r, 0, sizeof(*r));
	st_buf_init(&out);
	if (st_read_file(path, SNAPSHOT_MAX, &data, &len, error_r) < 0)
		goto out;
	json_error_t jerr;
	before = json_loadb(data, len, 0, &jerr);
	if (!json_is_object(before)) {
		st_set_error(error_r, "%s: not a snapshot (%s); remove it", path, jerr.text);
		goto out;
	}
	if (search_all(ld, suffix, &res, error_r) < 0)
		goto out;
	now = entries_of(ld, res);
	/* An entry the standby had under another entryUUID (loaded on its own
	 * before the first copy) is the same entry when its DN is. */
	json_t *e;
	by_dn = json_object();
	const char *uuid;
	json_object_foreach(now, uuid, e) {
		char *key = lower_dn(json_string_value(json_object_get(e, "dn")));
		json_object_set(by_dn, key, e);
		free(key);
	}
	json_t *was;
	json_object_foreach(before, uuid, was) {
		const char *dn = json_string_value(json_object_get(was, "dn"));
		json_t *attrs = json_object_get(was, "attrs"), *is = json_object_get(now, uuid);
		const char *attr;
		json_t *vals;
		if (dn == NULL || !json_is_object(attrs))
			continue;
		if (is == NULL) {
			char *key = lower_dn(dn);
			is = json_object_get(by_dn, key);
			free(key);
		}
		if (is == NULL) {
			/* The whole entry: only the old master had it (or it was
			 * deleted on the new master since). */
			st_buf_printf(&out, "# entryUUID %s: not on node %s\n", uuid, peer);
			st_ldif_line(&out, "dn", dn, strlen(dn));
			st_buf_puts(&out, "changetype: add\n");
			json_object_foreach(attrs, attr, vals) {
				size_t i;
				json_t *v;
				json_array_foreach(vals, i, v)
					value_line(&out, attr, json_string_value(v));
			}
			st_buf_puts(&out, "\n");
			r->entries++;
			continue;
		}
		json_t *now_attrs = json_object_get(is, "attrs");
		const char *now_dn = json_string_value(json_object_get(is, "dn"));
		struct st_buf mod;
		size_t nmod = 0;
		st_buf_init(&mod);
		json_object_foreach(attrs, attr, vals) {
			json_t *have = attr_ci(now_attrs, attr);
			size_t i;
			json_t *v;
			bool any = false;
			json_array_foreach(vals, i, v) {
				if (has_value(have, json_string_value(v)))
					continue;
				if (!any)
					st_buf_printf(&mod, "add: %s\n", attr);
				any = true;
				value_line(&mod, attr, json_string_value(v));
				nmod++;
			}
			if (any)
				st_buf_puts(&mod, "-\n");
		}
		if (nmod > 0) {
			st_buf_printf(&out, "# entryUUID %s: values not on node %s%s%s\n", uuid, peer,
				      strcmp(dn, now_dn) != 0 ? "; its DN on this node was " : "",
				      strcmp(dn, now_dn) != 0 ? dn : "");
			st_ldif_line(&out, "dn", now_dn, strlen(now_dn));
			st_buf_puts(&out, "changetype: modify\n");
			st_buf_append(&out, mod.data, mod.len);
			st_buf_puts(&out, "\n");
			r->values += nmod;
		}
		st_buf_free(&mod);
	}
	if (out.len > 0) {
		char stamp[32];
		time_t t = time(NULL);
		struct tm tm;
		gmtime_r(&t, &tm);
		strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%SZ", &tm);
		r->path = xasprintf("%s/divergence-ldap-%s-%s.ldif", report_dir, peer, stamp);
		char *head = xasprintf("# standin divergence report: what this node's directory held "
				       "before it was copied again\n# from node %s (a refresh from "
				       "scratch) and does not hold now: %zu entries,\n# %zu values. "
				       "Changed or removed on %s since, or only ever here: look before "
				       "you replay it\n# (ldapmodify -f FILE on the master).\n\n",
				       peer, r->entries, r->values, peer);
		struct st_buf file;
		st_buf_init(&file);
		st_buf_puts(&file, head);
		st_buf_append(&file, out.data, out.len);
		free(head);
		int rc = st_durable_write(r->path, file.data, file.len, 0600, error_r);
		st_buf_free(&file);
		if (rc < 0)
			goto out;
	}
	if (unlink(path) < 0 && errno != ENOENT) {
		st_set_error(error_r, "cannot remove %s: %s", path, strerror(errno));
		goto out;
	}
	ret = 0;
out:
	if (ret < 0)
		ldd_result_clear(r);
	st_buf_free(&out);
	json_decref(before);
	json_decref(now);
	json_decref(by_dn);
	ldap_msgfree(res);
	free(data);
	return ret;
}

void
ldd_result_clear(struct ldd_result *r)
{
	free(r->path);
	memset(r, 0, sizeof(*r));
}
