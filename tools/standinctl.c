/*
 * standinctl: the administrator's command.
 *
 *   standinctl [-c FILE] [-n NODE] COMMAND [ARGS]
 *
 * The commands, their synopses and what they do are in one table (commands[]
 * at the end), which "standinctl help" prints and main() dispatches from.
 */
#include "config.h"

#include "dumpers/dump.h"
#include "lib/conf.h"
#include "lib/ctl.h"
#include "lib/cstate.h"
#include "lib/cstore.h"
#include "lib/durable.h"
#include "lib/log.h"
#include "tools/status.h"
#include "tools/switchover.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <string.h>
#include <unistd.h>

struct ctl_opts {
	const char *config_path;
	const char *node;
};

static int command_usage(const char *name);
static void usage(FILE *out);

static struct st_conf *
load_conf(const struct ctl_opts *o)
{
	char *errors = NULL;
	struct st_conf *conf = st_conf_load(o->config_path, &errors);

	if (conf == NULL) {
		fprintf(stderr, "%s\n", errors);
		free(errors);
		exit(2);
	}
	return conf;
}

static const struct st_node *
local_node(const struct st_conf *conf, const struct ctl_opts *o)
{
	char *error = NULL;
	const struct st_node *node = st_conf_local_node(conf, o->node, &error);

	if (node == NULL) {
		fprintf(stderr, "standinctl: %s\n", error);
		free(error);
		exit(2);
	}
	return node;
}

static int
cmd_config(const struct ctl_opts *o, int argc, char **argv)
{
	struct st_conf *conf;

	if (argc != 2 || (strcmp(argv[1], "check") != 0 && strcmp(argv[1], "show") != 0))
		return command_usage("config");
	conf = load_conf(o);
	if (strcmp(argv[1], "show") == 0)
		st_conf_dump(conf, stdout);
	else
		printf("%s: configuration is valid (%zu nodes)\n", conf->path, conf->n_nodes);
	char *warn = st_conf_tls_warnings(conf, 1u << ST_SVC_PG | 1u << ST_SVC_LDAP | 1u << ST_SVC_IMAP);
	if (warn != NULL)
		for (char *save = NULL, *line = strtok_r(warn, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
			fprintf(stderr, "warning: %s\n", line);
	free(warn);
	st_conf_free(&conf);
	return 0;
}

/* This node's copy, or with FROM_ETCD the state in etcd. */
static int
state_show(const struct ctl_opts *o, bool json, bool from_etcd)
{
	struct st_conf *conf = load_conf(o);
	const struct st_node *node = local_node(conf, o);
	char *path = st_cstate_path(node), *error = NULL;
	struct st_etcd *etcd = NULL;
	struct st_cstate st;
	struct st_buf b;
	int64_t rev = 0;
	int rc, ret = 0;

	if (from_etcd) {
		if (conf->etcd.urls == NULL) {
			fprintf(stderr, "standinctl: %s sets no [cluster] etcd\n", conf->path);
			ret = 2;
			goto out;
		}
		etcd = st_etcd_open(conf, &error);
		rc = etcd == NULL ? -1 : st_cstore_get(etcd, conf, &st, &rev, &error);
		if (rc == 0) {
			fprintf(stderr, "standinctl: there is no cluster state in etcd (%s); create it "
				"with: standinctl state init --master NODE\n", st_etcd_url(etcd));
			ret = 1;
			goto out;
		}
		rc = rc == 1 ? 0 : -1;
	} else {
		rc = st_cstate_load(path, &st, &error);
	}
	if (rc == 1) {
		fprintf(stderr, "standinctl: %s does not exist; create it with: standinctl state init "
			"--master NODE\n", path);
		ret = 1;
	} else if (rc < 0) {
		fprintf(stderr, "standinctl: %s\n", error);
		ret = 1;
	} else if (json) {
		st_buf_init(&b);
		st_status_cstate_json(&st, &b);
		puts(b.data);
		st_buf_free(&b);
	} else {
		st_buf_init(&b);
		st_cstate_format(&st, &b);
		if (etcd != NULL)
			printf("# etcd %s, mod_revision %lld\n", st_etcd_url(etcd), (long long)rev);
		fputs(b.data, stdout);
		st_buf_free(&b);
		if (st_cstate_check(&st, conf, &error) < 0) {
			fprintf(stderr, "standinctl: warning: %s\n", error);
			ret = 1;
		}
	}
out:
	st_etcd_close(&etcd);
	free(error);
	free(path);
	st_conf_free(&conf);
	return ret;
}

/* Write ST as this node's copy (under the lock held) if it is newer than
 * LOCAL (LOCAL_RC: st_cstate_load's); 0, or -1 with a message. */
static int
save_local(const char *path, const struct st_cstate *st, int local_rc,
	   const struct st_cstate *local)
{
	char *error = NULL;

	if (local_rc == 0 && local->epoch >= st->epoch)
		return 0;
	if (st_cstate_save(path, st, &error) < 0) {
		fprintf(stderr, "standinctl: cannot write the cluster state: %s\n", error);
		free(error);
		return -1;
	}
	return 0;
}

/*
 * state init: the first state, epoch 1.  --force replaces an existing one;
 * a readable one gives its epoch + 1, so that the epoch never goes back on
 * this node (its daemons refuse an older one).
 * state set: MASTER at the epoch after the current one, every other node
 * following it: moving the master by hand when no switchover can run.
 *
 * With [cluster] etcd the state is etcd's (one txn that compares the
 * revision read: of two writers exactly one wins) and this node's copy
 * follows; other nodes take it with "state pull" (or standin-failoverd).
 * Without etcd, this node's file only: run it on every node.
 */
static int
state_write(const struct ctl_opts *o, const char *master, bool set, bool force)
{
	struct st_conf *conf = load_conf(o);
	const struct st_node *node = local_node(conf, o);
	char *path = st_cstate_path(node), *error = NULL;
	struct st_cstate st, old, in_etcd;
	struct st_etcd *etcd = NULL;
	int64_t rev = 0;
	int lock = -1, ret = 1, rc, erc = 0;

	if (st_conf_node(conf, master) == NULL) {
		fprintf(stderr, "standinctl: --master %s: no such node in %s\n", master, conf->path);
		ret = 2;
		goto out;
	}
	if (st_mkdir_p(node->state_dir, 0755, &error) < 0) {
		fprintf(stderr, "standinctl: %s\n", error);
		goto out;
	}
	lock = st_cstate_lock(path, false, &error);
	if (lock < 0) {
		fprintf(stderr, "standinctl: %s\n", error);
		goto out;
	}
	rc = st_cstate_load(path, &old, &error);
	if (conf->etcd.urls != NULL) {
		etcd = st_etcd_open(conf, &error);
		if (etcd == NULL || (erc = st_cstore_get(etcd, conf, &in_etcd, &rev, &error)) < 0) {
			fprintf(stderr, "standinctl: %s\n", error);
			goto out;
		}
		if (set && erc == 0) {
			fprintf(stderr, "standinctl: there is no cluster state in etcd (%s); create it "
				"with: standinctl state init --master NODE\n", st_etcd_url(etcd));
			goto out;
		}
		if (!set && erc == 1 && !force) {
			fprintf(stderr, "standinctl: the cluster state already exists in etcd (%s): "
				"epoch %llu, master %s; use state set to move the master, --force to "
				"replace it\n", st_etcd_url(etcd), (unsigned long long)in_etcd.epoch,
				in_etcd.master);
			goto out;
		}
	} else {
		if (set && rc != 0) {
			if (rc > 0)
				fprintf(stderr, "standinctl: %s does not exist; create it with: "
					"standinctl state init --master NODE\n", path);
			else
				fprintf(stderr, "standinctl: %s\nstandinctl: replace it with: standinctl "
					"state init --master NODE --force\n", error);
			goto out;
		}
		if (!set && rc == 0 && !force) {
			fprintf(stderr, "standinctl: %s already exists (epoch %llu, master %s); "
				"use state set to move the master, --force to replace it\n", path,
				(unsigned long long)old.epoch, old.master);
			goto out;
		}
		if (!set && rc < 0 && !force) {
			fprintf(stderr, "standinctl: %s\nstandinctl: use --force to replace it\n", error);
			goto out;
		}
	}
	/* The next epoch after every one known here: never back, never twice. */
	uint64_t top = 0;
	if (rc == 0)
		top = old.epoch;
	if (erc == 1 && in_etcd.epoch > top)
		top = in_etcd.epoch;
	if (top == UINT64_MAX) {
		fprintf(stderr, "standinctl: the epoch cannot grow past %llu\n", (unsigned long long)top);
		goto out;
	}
	st_cstate_init(&st, conf, master);
	st.epoch = top + 1;
	if (etcd != NULL) {
		struct st_cstate now;
		bool now_found = false;
		int prc = st_cstore_put(etcd, conf, &st, erc == 1 ? rev : 0, NULL, &now, &now_found,
					&error);
		if (prc < 0) {
			fprintf(stderr, "standinctl: %s\n", error);
			goto out;
		}
		if (prc == 0) {
			if (now_found)
				fprintf(stderr, "standinctl: the cluster state in etcd changed while this "
					"ran (it is now epoch %llu, master %s): nothing written\n",
					(unsigned long long)now.epoch, now.master);
			else
				fprintf(stderr, "standinctl: the cluster state in etcd changed while this "
					"ran: nothing written\n");
			goto out;
		}
		printf("etcd %s: epoch %llu, master %s\n", st_etcd_url(etcd),
		       (unsigned long long)st.epoch, st.master);
	}
	if (save_local(path, &st, rc, &old) < 0)
		goto out;
	printf("%s: epoch %llu, master %s\n", path, (unsigned long long)st.epoch, st.master);
	ret = 0;
out:
	st_etcd_close(&etcd);
	if (lock >= 0)
		close(lock);
	free(error);
	free(path);
	st_conf_free(&conf);
	return ret;
}

/*
 * state pull: take etcd's state into this node's copy when its epoch is
 * higher (st_cstore_pull).  0 taken or already there, 1 etcd is behind this
 * node, differs at the same epoch, or cannot be reached.
 */
static int
state_pull(const struct ctl_opts *o)
{
	struct st_conf *conf = load_conf(o);
	const struct st_node *node = local_node(conf, o);
	char *path = st_cstate_path(node), *error = NULL;
	struct st_cstate st;
	struct st_etcd *etcd = NULL;
	int ret = 1, rc;

	if (conf->etcd.urls == NULL) {
		fprintf(stderr, "standinctl: %s sets no [cluster] etcd: nothing to pull from\n",
			conf->path);
		ret = 2;
		goto out;
	}
	etcd = st_etcd_open(conf, &error);
	rc = etcd == NULL ? -1 : st_cstore_pull(etcd, conf, node, &st, &error);
	switch (rc) {
	case ST_PULL_TAKEN:
		printf("%s: epoch %llu, master %s (from etcd %s)\n", path,
		       (unsigned long long)st.epoch, st.master, st_etcd_url(etcd));
		ret = 0;
		break;
	case ST_PULL_SAME:
		printf("%s: epoch %llu, master %s (already)\n", path, (unsigned long long)st.epoch,
		       st.master);
		ret = 0;
		break;
	case ST_PULL_NONE:
		fprintf(stderr, "standinctl: there is no cluster state in etcd (%s); create it with: "
			"standinctl state init --master NODE\n", st_etcd_url(etcd));
		break;
	default:
		fprintf(stderr, "standinctl: %s\n", error);
		break;
	}
out:
	st_etcd_close(&etcd);
	free(error);
	free(path);
	st_conf_free(&conf);
	return ret;
}

static int
cmd_state(const struct ctl_opts *o, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "master", required_argument, NULL, 'm' },
		{ "force", no_argument, NULL, 'f' },
		{ "json", no_argument, NULL, 'j' },
		{ "etcd", no_argument, NULL, 'e' },
		{ NULL, 0, NULL, 0 },
	};
	const char *master = NULL;
	bool force = false, json = false, from_etcd = false;
	int opt;

	if (argc < 2)
		return command_usage("state");
	const char *sub = argv[1];
	argc--;
	argv++;
	optind = 0;
	while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (opt) {
		case 'm':
			master = optarg;
			break;
		case 'f':
			force = true;
			break;
		case 'j':
			json = true;
			break;
		case 'e':
			from_etcd = true;
			break;
		default:
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "standinctl: unexpected argument: %s\n", argv[optind]);
		return 2;
	}
	if (strcmp(sub, "show") == 0)
		return state_show(o, json, from_etcd);
	if (from_etcd) {
		fprintf(stderr, "standinctl: --etcd is for state show\n");
		return 2;
	}
	if (strcmp(sub, "pull") == 0) {
		if (master != NULL || force || json) {
			fprintf(stderr, "standinctl: state pull takes no option\n");
			return 2;
		}
		return state_pull(o);
	}
	if (strcmp(sub, "init") == 0 || strcmp(sub, "set") == 0) {
		if (master == NULL) {
			fprintf(stderr, "standinctl: state %s needs --master NODE\n", sub);
			return 2;
		}
		if (force && strcmp(sub, "set") == 0) {
			fprintf(stderr, "standinctl: state set takes no --force\n");
			return 2;
		}
		return state_write(o, master, strcmp(sub, "set") == 0, force);
	}
	fprintf(stderr, "standinctl: unknown state command: %s\n", sub);
	return 2;
}

/* --timeout SECONDS: 1 to 3600; -1 with a message. */
static int
parse_timeout(const char *arg, double *out)
{
	char *end;

	*out = strtod(arg, &end);
	if (*end != '\0' || end == arg || !(*out >= 1 && *out <= 3600)) {
		fprintf(stderr, "standinctl: --timeout %s: expected seconds (1 to 3600)\n", arg);
		return -1;
	}
	return 0;
}

static int
cmd_switchover(const struct ctl_opts *o, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "to", required_argument, NULL, 't' },
		{ "max-lag", required_argument, NULL, 'm' },
		{ "dry-run", no_argument, NULL, 'n' },
		{ "timeout", required_argument, NULL, 'T' },
		{ "service", required_argument, NULL, 's' },
		{ NULL, 0, NULL, 0 },
	};
	struct st_switchover_opts so = { .max_lag_s = 10.0, .timeout_s = 30.0, .service = -1 };
	int opt;

	optind = 0;
	while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (opt) {
		case 't':
			so.to = optarg;
			break;
		case 'm': {
			char *end;
			so.max_lag_s = strtod(optarg, &end);
			if (*end != '\0' || end == optarg || so.max_lag_s < 0) {
				fprintf(stderr, "standinctl: --max-lag %s: expected seconds\n", optarg);
				return 2;
			}
			break;
		}
		case 'n':
			so.dry_run = true;
			break;
		case 'T':
			if (parse_timeout(optarg, &so.timeout_s) < 0)
				return 2;
			break;
		case 's': {
			enum st_service s;
			if (st_service_parse(optarg, &s) < 0) {
				fprintf(stderr, "standinctl: --service %s: pg, ldap or imap\n", optarg);
				return 2;
			}
			so.service = (int)s;
			break;
		}
		default:
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "standinctl: unexpected argument: %s\n", argv[optind]);
		return 2;
	}
	struct st_conf *conf = load_conf(o);
	int ret = st_switchover(conf, &so, stdout);
	st_conf_free(&conf);
	return ret;
}

static int
cmd_failover(const struct ctl_opts *o, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "to", required_argument, NULL, 't' },
		{ "force", no_argument, NULL, 'f' },
		{ "timeout", required_argument, NULL, 'T' },
		{ NULL, 0, NULL, 0 },
	};
	struct st_failover_opts fo = { .timeout_s = 30.0 };
	int opt;

	optind = 0;
	while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (opt) {
		case 't':
			fo.to = optarg;
			break;
		case 'f':
			fo.force = true;
			break;
		case 'T':
			if (parse_timeout(optarg, &fo.timeout_s) < 0)
				return 2;
			break;
		default:
			return 2;
		}
	}
	if (optind < argc || fo.to == NULL) {
		fprintf(stderr, "standinctl: usage: failover --to NODE [--force] [--timeout SECONDS]\n");
		return 2;
	}
	struct st_conf *conf = load_conf(o);
	const struct st_node *here = local_node(conf, o);
	int ret = st_failover(conf, here, &fo, stdout);
	st_conf_free(&conf);
	return ret;
}

static int
cmd_status(const struct ctl_opts *o, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ NULL, 0, NULL, 0 },
	};
	bool json = false;
	int opt;

	optind = 0;
	while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		if (opt != 'j')
			return 2;
		json = true;
	}
	if (optind < argc) {
		fprintf(stderr, "standinctl: unexpected argument: %s\n", argv[optind]);
		return 2;
	}
	struct st_conf *conf = load_conf(o);
	struct st_status st;
	char *error = NULL;
	/* With etcd the other nodes come from there; this one from its own files. */
	const struct st_node *me = st_conf_local_node(conf, o->node, &error);
	free(error);
	st_status_collect(conf, me != NULL ? me->name : NULL, &st);
	st_status_print(conf, &st, json, stdout);
	st_status_free(&st);
	st_conf_free(&conf);
	return 0;
}

/* Pass one command to this node's standin-proxy; print its JSON answer. */
static int
cmd_proxy(const struct ctl_opts *o, int argc, char **argv)
{
	struct st_buf line;
	char *path, *reply = NULL, *error = NULL;
	int ret = 1;

	if (argc < 2)
		return command_usage("proxy");
	struct st_conf *conf = load_conf(o);
	const struct st_node *node = local_node(conf, o);
	st_buf_init(&line);
	for (int i = 1; i < argc; i++) {
		if (strpbrk(argv[i], " \t\r\n") != NULL || argv[i][0] == '\0') {
			fprintf(stderr, "standinctl: proxy: bad argument %s\n", st_q(argv[i]));
			ret = 2;
			goto out;
		}
		st_buf_printf(&line, "%s%s", i > 1 ? " " : "", argv[i]);
	}
	path = st_ctl_socket_path(node, ST_PROGRAM_PROXY);
	if (st_ctl_query(path, line.data, 10000, &reply, &error) < 0) {
		fprintf(stderr, "standinctl: standin-proxy on node %s (%s): %s\n", node->name, path,
			error);
		free(path);
		goto out;
	}
	free(path);
	fputs(reply, stdout);
	/* The proxy answers {"ok":false,"error":...} to a command it refused. */
	ret = strstr(reply, "\"ok\":false") != NULL || strstr(reply, "\"error\"") == reply + 1 ? 1 : 0;
out:
	free(reply);
	free(error);
	st_buf_free(&line);
	st_conf_free(&conf);
	return ret;
}

/*
 * "pg ddl-done LSN": tell this node's standin-pgrepl that the DDL statement
 * it stopped on at LSN has been applied by hand, so it goes on past it.
 */
static int
cmd_pg(const struct ctl_opts *o, int argc, char **argv)
{
	char *path, *line, *reply = NULL, *error = NULL;
	int ret = 1;

	if (argc != 3 || strcmp(argv[1], "ddl-done") != 0)
		return command_usage("pg");
	if (argv[2][0] == '\0' || strspn(argv[2], "0123456789ABCDEFabcdef/") != strlen(argv[2])) {
		fprintf(stderr, "standinctl: pg ddl-done: bad LSN %s (expected e.g. 0/16B3748)\n",
			st_q(argv[2]));
		return 2;
	}
	struct st_conf *conf = load_conf(o);
	const struct st_node *node = local_node(conf, o);
	path = st_ctl_socket_path(node, ST_PROGRAM_PGREPL);
	line = xasprintf("ddl-done %s", argv[2]);
	if (st_ctl_query(path, line, 10000, &reply, &error) < 0) {
		fprintf(stderr, "standinctl: standin-pgrepl on node %s (%s): %s\n", node->name, path,
			error);
	} else {
		fputs(reply, stdout);
		ret = strstr(reply, "\"error\"") != NULL ? 1 : 0;
	}
	free(line);
	free(path);
	free(reply);
	free(error);
	st_conf_free(&conf);
	return ret;
}

static int
cmd_dump(const struct ctl_opts *o, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "from", required_argument, NULL, 'f' },
		{ "verbose", no_argument, NULL, 'v' },
		{ NULL, 0, NULL, 0 },
	};
	struct dump_opts d = { .from = -1 };
	enum st_service svcs[2];
	size_t n_svcs = 0;
	int opt, lock, ret = 0;
	char *error = NULL;

	optind = 0;
	while ((opt = getopt_long(argc, argv, "v", longopts, NULL)) != -1) {
		switch (opt) {
		case 'f':
			if (strcmp(optarg, "master") == 0) {
				d.from = ST_DUMP_FROM_MASTER;
			} else if (strcmp(optarg, "standby") == 0) {
				d.from = ST_DUMP_FROM_STANDBY;
			} else {
				fprintf(stderr, "standinctl: --from master or --from standby, not %s\n",
					optarg);
				return 2;
			}
			break;
		case 'v':
			d.verbose = true;
			break;
		default:
			return 2;
		}
	}
	if (optind + 1 != argc)
		return command_usage("dump");
	struct st_conf *conf = load_conf(o);
	const char *what = argv[optind];
	if (strcmp(what, "all") == 0) {
		if (conf->service_enabled[ST_SVC_PG])
			svcs[n_svcs++] = ST_SVC_PG;
		if (conf->service_enabled[ST_SVC_LDAP])
			svcs[n_svcs++] = ST_SVC_LDAP;
	} else if (strcmp(what, "pg") == 0 || strcmp(what, "ldap") == 0) {
		(void)st_service_parse(what, &svcs[0]);
		n_svcs = 1;
	} else {
		fprintf(stderr, "standinctl: dump pg, ldap or all, not %s\n", what);
		st_conf_free(&conf);
		return 2;
	}
	if (!conf->dump_present) {
		fprintf(stderr, "standinctl: %s has no [dump] section (see standin.conf(5))\n",
			conf->path);
		st_conf_free(&conf);
		return 2;
	}
	const struct st_node *node = local_node(conf, o);
	lock = dump_lock(conf, &error);
	if (lock < 0) {
		fprintf(stderr, "standinctl: %s\n", error);
		free(error);
		st_conf_free(&conf);
		return 1;
	}
	for (size_t i = 0; i < n_svcs; i++) {
		if (dump_service(conf, node, svcs[i], &d, &error) < 0) {
			fprintf(stderr, "standinctl: %s\n", error);
			free(error);
			error = NULL;
			ret = 1;
		}
	}
	close(lock);
	st_conf_free(&conf);
	return ret;
}

static int
cmd_dump_verify(const struct ctl_opts *o, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "restore", no_argument, NULL, 'r' },
		{ "node", required_argument, NULL, 'n' },
		{ NULL, 0, NULL, 0 },
	};
	struct dump_verify_opts v = { 0 };
	struct st_conf *conf = NULL;
	struct st_buf report;
	char *error = NULL;
	int opt, ret;

	optind = 0;
	while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (opt) {
		case 'r':
			v.restore = true;
			break;
		case 'n':
			v.node = optarg;
			break;
		default:
			return 2;
		}
	}
	if (optind + 1 != argc)
		return command_usage("dump-verify");
	/* The configuration is needed for pg_bindir and --restore only: a dump
	 * copied to another machine can be checked without one. */
	if (v.restore || access(o->config_path, R_OK) == 0)
		conf = load_conf(o);
	if (conf != NULL && !conf->dump_present) {
		fprintf(stderr, "standinctl: %s has no [dump] section (see standin.conf(5))\n",
			conf->path);
		st_conf_free(&conf);
		return 2;
	}
	st_buf_init(&report);
	ret = dump_verify(conf, argv[optind], &v, &report, &error);
	fputs(report.data, stdout);
	if (ret < 0) {
		fprintf(stderr, "standinctl: dump-verify: %s\n", error);
		free(error);
	} else {
		printf("%s: good\n", argv[optind]);
	}
	st_buf_free(&report);
	st_conf_free(&conf);
	return ret < 0 ? 1 : 0;
}

static int
cmd_version(const struct ctl_opts *o, int argc, char **argv)
{
	(void)o;
	(void)argc;
	(void)argv;
	printf("standinctl %s\n", PACKAGE_VERSION);
	return 0;
}

static int
cmd_help(const struct ctl_opts *o, int argc, char **argv)
{
	(void)o;
	(void)argc;
	(void)argv;
	usage(stdout);
	return 0;
}

/*
 * Whether a command only reads the cluster or changes it; the changing ones
 * are for root or the standin user (a daemon refuses its changing socket
 * commands to anyone else, lib/ctl.h).
 */
enum effect {
	READS = 1,
	CHANGES,
};

/* A synopsis, what it does ('\n' continues the text on a new line), and
 * whether it changes the cluster. */
struct usage_line {
	enum effect effect;
	const char *synopsis, *what;
};

static const struct command {
	const char *name;
	int (*fn)(const struct ctl_opts *o, int argc, char **argv);
	struct usage_line lines[5];	/* ends with { 0 } */
} commands[] = {
	{ "status", cmd_status, {
		{ READS, "status [--json]", "roles, replicators, lag and errors of every node" } } },
	{ "switchover", cmd_switchover, {
		{ CHANGES, "switchover [--to NODE] [--service S] [--max-lag SECONDS] [--timeout SECONDS] [--dry-run]",
		  "move the master to NODE with nothing lost: check (agents alive, epochs agree, "
		  "the target caught up), then each node's steps through etcd; a failure before "
		  "the new epoch rolls back. --dry-run: the checks and the plan only" } } },
	{ "failover", cmd_failover, {
		{ CHANGES, "failover --to NODE [--force] [--timeout SECONDS]",
		  "the master is lost: fence it with [failover] fence_command (STONITH), then "
		  "NODE the master at the next epoch; --force without a fence, with its agent "
		  "alive, or with etcd away (then run it on NODE)" } } },
	{ "config", cmd_config, {
		{ READS, "config check", "validate the configuration (exit 0 good, 2 bad)" },
		{ READS, "config show", "print the effective configuration" } } },
	{ "state", cmd_state, {
		{ READS, "state show [--json] [--etcd]",
		  "this node's cluster state (epoch, master, directions), or etcd's" },
		{ CHANGES, "state init --master NODE [--force]",
		  "create this node's first cluster state (epoch 1)" },
		{ CHANGES, "state set --master NODE",
		  "the next epoch with NODE the master (by hand; in etcd when [cluster] etcd is set)" },
		{ CHANGES, "state pull",
		  "take etcd's cluster state into this node's copy if its epoch is higher" } } },
	{ "proxy", cmd_proxy, {
		{ READS, "proxy status", "this node's standin-proxy, as JSON" },
		{ CHANGES, "proxy pause|resume SERVICE|all", "hold new clients / forward them again" },
		{ CHANGES, "proxy switch SERVICE NODE", "send clients of SERVICE to NODE" },
		{ CHANGES, "proxy drop SERVICE|all", "close the service's client sessions" } } },
	{ "pg", cmd_pg, {
		{ CHANGES, "pg ddl-done LSN", "go on past a DDL statement the standby could not\n"
					      "apply, once it is applied there by hand" } } },
	{ "dump", cmd_dump, {
		{ READS, "dump pg|ldap|all [--from master|standby] [-v]",
		  "dump, verify the files and prune old dumps (cron)" } } },
	{ "dump-verify", cmd_dump_verify, {
		{ READS, "dump-verify [--restore [--node NODE]] DUMP",
		  "check a dump: manifest, then pg_restore --list\n"
		  "(or a scratch restore) or an LDIF parse" } } },
	{ "version", cmd_version, { { READS, "version", "print the version" } } },
	{ "help", cmd_help, { { READS, "help", "this help" } } },
};

#define SYNOPSIS_WIDTH 32

static void
print_line(FILE *out, const struct usage_line *l)
{
	const char *what = l->what;

	if (strlen(l->synopsis) < SYNOPSIS_WIDTH)
		fprintf(out, "  %-*s", SYNOPSIS_WIDTH, l->synopsis);
	else
		fprintf(out, "  %s\n  %-*s", l->synopsis, SYNOPSIS_WIDTH, "");
	for (const char *nl; (nl = strchr(what, '\n')) != NULL; what = nl + 1)
		fprintf(out, "%.*s\n  %-*s", (int)(nl - what), what, SYNOPSIS_WIDTH, "");
	fprintf(out, "%s\n", what);
}

static void
print_lines(FILE *out, enum effect effect)
{
	for (size_t i = 0; i < ST_ARRAY_SIZE(commands); i++)
		for (const struct usage_line *l = commands[i].lines; l->synopsis != NULL; l++)
			if (l->effect == effect)
				print_line(out, l);
}

static void
usage(FILE *out)
{
	fprintf(out, "standinctl: administer a standin cluster\n\n"
		     "Usage: standinctl [-c FILE] [-n NODE] COMMAND [ARGS]\n\n"
		     "Commands that leave the cluster as it is:\n");
	print_lines(out, READS);
	fprintf(out, "\nCommands that change the cluster (root or the standin user only):\n");
	print_lines(out, CHANGES);
	fprintf(out, "\nOptions:\n"
		     "  -c FILE   cluster configuration (default %s)\n"
		     "  -n NODE   this node's name (default: $STANDIN_NODE, else by host name)\n"
		     "  -h        this help\n", ST_CONF_DEFAULT_PATH);
}

/* A command given the wrong arguments: its synopses on stderr, status 2. */
static int
command_usage(const char *name)
{
	for (size_t i = 0; i < ST_ARRAY_SIZE(commands); i++) {
		if (strcmp(commands[i].name, name) != 0)
			continue;
		for (const struct usage_line *l = commands[i].lines; l->synopsis != NULL; l++)
			fprintf(stderr, "%s standinctl %s\n", l == commands[i].lines ? "usage:" : "      ",
				l->synopsis);
	}
	return 2;
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	struct ctl_opts o = { .config_path = ST_CONF_DEFAULT_PATH };
	int opt;

	/* Dumps, their manifests and state files are standin's alone. */
	umask(077);
	st_log_open("standinctl", ST_LOG_STDERR);
	st_log_set_level(ST_LOG_WARNING);
	while ((opt = getopt_long(argc, argv, "+c:n:hV", longopts, NULL)) != -1) {
		switch (opt) {
		case 'c':
			o.config_path = optarg;
			break;
		case 'n':
			o.node = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		case 'V':
			printf("standinctl %s\n", PACKAGE_VERSION);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	argc -= optind;
	argv += optind;
	if (argc < 1) {
		usage(stderr);
		return 2;
	}
	for (size_t i = 0; i < ST_ARRAY_SIZE(commands); i++)
		if (strcmp(argv[0], commands[i].name) == 0)
			return commands[i].fn(&o, argc, argv);
	fprintf(stderr, "standinctl: unknown command: %s (try standinctl help)\n", argv[0]);
	return 2;
}
