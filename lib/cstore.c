/*
 * cstore.c: the cluster state in etcd (see cstore.h).
 */
#include "config.h"

#include "lib/cstore.h"

#include <stdlib.h>
#include <string.h>

int
st_cstore_get(struct st_etcd *e, const struct st_conf *conf, struct st_cstate *st_r,
	      int64_t *mod_rev_r, char **error_r)
{
	char *key = st_etcd_key(conf, "state");
	struct st_etcd_kv kv;
	int rc = st_etcd_get(e, key, &kv, NULL, error_r);

	if (rc == 1) {
		char *name = xasprintf("etcd %s key %s", st_etcd_url(e), key);
		if (st_cstate_parse(name, kv.value, kv.len, st_r, error_r) < 0)
			rc = -1;
		else if (mod_rev_r != NULL)
			*mod_rev_r = kv.mod_revision;
		free(name);
		st_etcd_kv_clear(&kv);
	}
	free(key);
	return rc;
}

int
st_cstore_put(struct st_etcd *e, const struct st_conf *conf, const struct st_cstate *st,
	      int64_t mod_rev, int64_t *new_rev_r, struct st_cstate *now_r, bool *now_found_r,
	      char **error_r)
{
	char *key = st_etcd_key(conf, "state");
	struct st_buf b;
	struct st_etcd_kv cur;

	st_buf_init(&b);
	st_cstate_format(st, &b);
	int rc = st_etcd_put_if(e, key, b.data, b.len, mod_rev, 0, new_rev_r, &cur, error_r);
	if (rc == 0) {
		if (now_found_r != NULL)
			*now_found_r = cur.key != NULL;
		if (now_r != NULL && cur.key != NULL) {
			char *name = xasprintf("etcd %s key %s", st_etcd_url(e), key);
			if (st_cstate_parse(name, cur.value, cur.len, now_r, error_r) < 0)
				rc = -1;
			free(name);
		}
		st_etcd_kv_clear(&cur);
	}
	st_buf_free(&b);
	free(key);
	return rc;
}
