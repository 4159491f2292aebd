/*
 * cstore.c: the cluster state in etcd (see cstore.h).
 */
#include "config.h"

#include "lib/cstore.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/durable.h"

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
	return st_cstore_put_guarded(e, conf, st, mod_rev, NULL, 0, new_rev_r, now_r, now_found_r,
				     error_r);
}

int
st_cstore_put_guarded(struct st_etcd *e, const struct st_conf *conf, const struct st_cstate *st,
		      int64_t mod_rev, const char *guard_key, int64_t guard_create_rev,
		      int64_t *new_rev_r, struct st_cstate *now_r, bool *now_found_r,
		      char **error_r)
{
	char *key = st_etcd_key(conf, "state");
	struct st_buf b;
	struct st_etcd_kv cur;

	st_buf_init(&b);
	st_cstate_format(st, &b);
	int rc = st_etcd_put_if_guarded(e, key, b.data, b.len, mod_rev, guard_key, guard_create_rev,
					0, new_rev_r, &cur, error_r);
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

int
st_cstore_pull(struct st_etcd *e, const struct st_conf *conf, const struct st_node *node,
	       struct st_cstate *st_r, char **error_r)
{
	char *path = st_cstate_path(node), *err = NULL;
	struct st_cstate local, in_etcd;
	int lock = -1, ret = -1, rc, erc;

	if (st_mkdir_p(node->state_dir, 0755, error_r) < 0)
		goto out;
	lock = st_cstate_lock(path, true, error_r);
	if (lock < 0)
		goto out;
	rc = st_cstate_load(path, &local, &err);
	free(err);
	err = NULL;
	erc = st_cstore_get(e, conf, &in_etcd, NULL, error_r);
	if (erc < 0)
		goto out;
	if (erc == 0) {
		ret = ST_PULL_NONE;
		goto out;
	}
	if (st_cstate_check(&in_etcd, conf, &err) < 0) {
		st_set_error(error_r, "etcd %s: %s", st_etcd_url(e), err);
		goto out;
	}
	*st_r = in_etcd;
	if (rc == 0 && local.epoch > in_etcd.epoch) {
		st_set_error(error_r, "etcd has epoch %llu, older than this node's %llu: kept this "
			     "node's", (unsigned long long)in_etcd.epoch,
			     (unsigned long long)local.epoch);
		ret = ST_PULL_KEPT;
		goto out;
	}
	if (rc == 0 && local.epoch == in_etcd.epoch) {
		if (st_cstate_same(&local, &in_etcd)) {
			ret = ST_PULL_SAME;
		} else {
			st_set_error(error_r, "etcd has epoch %llu with master %s, this node the same "
				     "epoch with master %s: kept this node's",
				     (unsigned long long)in_etcd.epoch, in_etcd.master, local.master);
			ret = ST_PULL_KEPT;
		}
		goto out;
	}
	if (st_cstate_save(path, &in_etcd, error_r) < 0)
		goto out;
	ret = ST_PULL_TAKEN;
out:
	free(err);
	if (lock >= 0)
		close(lock);
	free(path);
	return ret;
}
