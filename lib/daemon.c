/*
 * daemon.c: options, pidfile, signals, reload, status socket, sd_notify.
 */
#include "config.h"

#include "lib/daemon.h"
#include "lib/cstate.h"
#include "lib/durable.h"
#include "lib/log.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

static void
notify(const char *what)
{
#ifdef HAVE_SYSTEMD
	sd_notify(0, what);
#else
	(void)what;
#endif
}

static void
usage(const struct st_daemon_ops *ops, FILE *out)
{
	fprintf(out,
		"%s: %s\n"
		"\n"
		"Usage: %s [-c FILE] [-n NODE] [-p PIDFILE] [-D] [-l LEVEL]\n"
		"       %s -t | -T [-c FILE]\n"
		"\n"
		"  -c FILE     cluster configuration (default %s)\n"
		"  -n NODE     this node's name (default: $STANDIN_NODE, else by host name)\n"
		"  -p PIDFILE  pidfile (default RUN_DIR/%s.pid)\n"
		"  -D          detach into the background (default: stay in the foreground)\n"
		"  -l LEVEL    log level: debug, info, notice, warning, error\n"
		"  -t          check the configuration and exit (0 good, 2 bad)\n"
		"  -T          print the effective configuration and exit\n"
		"  -h, --help  this help;  -V, --version  the version\n",
		ops->program, ops->summary, ops->program, ops->program, ST_CONF_DEFAULT_PATH,
		ops->program);
}

/* Write the pid into PATH, holding an flock on it for the daemon's life. */
static int
pidfile_open(const char *path, char **error_r)
{
	char buf[32];
	int fd, n;

	struct stat sb;

	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0644);
	if (fd < 0) {
		st_set_error(error_r, "pidfile %s: %s", path,
			     errno == ELOOP ? "is a symbolic link (refused)" : strerror(errno));
		return -1;
	}
	if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode) || (sb.st_uid != geteuid() && sb.st_uid != 0)) {
		st_set_error(error_r, "pidfile %s is not a regular file of this user (uid %u) or root",
			     path, (unsigned)geteuid());
		close(fd);
		return -1;
	}
	/* Readable by all, whatever the umask: monitoring reads the pid and tests the lock. */
	(void)fchmod(fd, 0644);
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		n = (int)read(fd, buf, sizeof(buf) - 1);
		buf[n > 0 ? n : 0] = '\0';
		buf[strcspn(buf, "\n")] = '\0';
		st_set_error(error_r, "pidfile %s is locked: already running as pid %s", path,
			     buf[0] ? buf : "?");
		close(fd);
		return -1;
	}
	n = snprintf(buf, sizeof(buf), "%d\n", (int)getpid());
	if (ftruncate(fd, 0) < 0 || pwrite(fd, buf, (size_t)n, 0) != n) {
		st_set_error(error_r, "pidfile %s: %s", path, strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

void
st_daemon_exit(struct st_daemon *d, int exit_code)
{
	d->exit_code = exit_code;
	ev_break(d->loop, EVBREAK_ALL);
}

void
st_daemon_set_error(struct st_daemon *d, const char *fmt, ...)
{
	va_list ap;

	free(d->last_error);
	d->last_error = NULL;
	if (fmt == NULL)
		return;
	va_start(ap, fmt);
	d->last_error = xvasprintf(fmt, ap);
	va_end(ap);
	st_error("%s", d->last_error);
}

void
st_metric(struct st_buf *out, const char *name, const char *type, const char *help,
	  const char *labels, double value)
{
	st_metric_head(out, name, type, help);
	st_metric_sample(out, name, labels, value);
}

void
st_metric_head(struct st_buf *out, const char *name, const char *type, const char *help)
{
	st_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void
st_metric_sample(struct st_buf *out, const char *name, const char *labels, double value)
{
	st_buf_printf(out, "%s%s%s%s %.17g\n", name, labels ? "{" : "", labels ? labels : "",
		      labels ? "}" : "", value);
}

static void
cmd_status(void *ctx, const char *args, struct st_buf *reply)
{
	struct st_daemon *d = ctx;
	json_t *obj = json_object();
	char *s;

	(void)args;
	json_object_set_new(obj, "program", json_string(d->ops->program));
	json_object_set_new(obj, "version", json_string(PACKAGE_VERSION));
	json_object_set_new(obj, "cluster", json_string(d->conf->cluster_name));
	json_object_set_new(obj, "node", json_string(d->node->name));
	json_object_set_new(obj, "pid", json_integer(getpid()));
	json_object_set_new(obj, "uptime_s",
			    json_integer((st_monotonic_ms() - d->started_ms) / 1000));
	json_object_set_new(obj, "config", json_string(d->config_path));
	json_object_set_new(obj, "config_reloads", json_integer(d->reloads));
	json_object_set_new(obj, "state", json_string(d->state ? d->state : "running"));
	json_object_set_new(obj, "last_error",
			    d->last_error ? json_string(d->last_error) : json_null());
	if (d->ops->status != NULL)
		d->ops->status(d, obj);
	s = json_dumps(obj, JSON_COMPACT | JSON_ENSURE_ASCII);
	st_buf_puts(reply, s != NULL ? s : "{\"error\":\"cannot encode status\"}");
	st_buf_puts(reply, "\n");
	free(s);
	json_decref(obj);
}

static void
cmd_metrics(void *ctx, const char *args, struct st_buf *reply)
{
	struct st_daemon *d = ctx;
	char labels[128];

	(void)args;
	snprintf(labels, sizeof(labels), "program=\"%s\",node=\"%s\"", d->ops->program,
		 d->node->name);
	st_metric(reply, "standin_up", "gauge", "1 while the daemon runs.", labels, 1);
	st_metric(reply, "standin_start_time_seconds", "gauge",
		  "Start time of the daemon, seconds since the epoch.", labels,
		  (double)(st_now_ms() - (st_monotonic_ms() - d->started_ms)) / 1000.0);
	st_metric(reply, "standin_config_reloads_total", "counter",
		  "Configuration reloads taken.", labels, d->reloads);
	st_metric(reply, "standin_config_reload_errors_total", "counter",
		  "Configuration reloads refused.", labels, d->reload_errors);
	if (d->ops->metrics != NULL)
		d->ops->metrics(d, reply);
}

static void
stop_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
	struct st_daemon *d = w->data;

	(void)loop;
	(void)revents;
	st_info("stopping signal=%s", strsignal(w->signum));
	notify("STOPPING=1");
	if (d->ops->stop != NULL)
		d->ops->stop(d);
	st_daemon_exit(d, 0);
}

static void
reload_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
	struct st_daemon *d = w->data;
	struct st_conf *conf;
	char *errors = NULL, *error = NULL;

	(void)loop;
	(void)revents;
	notify("RELOADING=1");
	conf = st_conf_load(d->config_path, &errors);
	if (conf == NULL) {
		d->reload_errors++;
		st_error("reload refused, keeping the running configuration: %s", errors);
		free(errors);
		notify("READY=1");
		return;
	}
	const struct st_node *node = st_conf_node(conf, d->node_name);
	if (node == NULL) {
		d->reload_errors++;
		st_error("reload refused: node %s is no longer in %s", d->node_name, d->config_path);
		st_conf_free(&conf);
		notify("READY=1");
		return;
	}
	if (d->ops->reload != NULL && d->ops->reload(d, conf, &error) < 0) {
		d->reload_errors++;
		st_error("reload refused: %s", error ? error : "by the daemon");
		free(error);
		st_conf_free(&conf);
		notify("READY=1");
		return;
	}
	st_conf_free(&d->conf);
	d->conf = conf;
	d->node = node;
	d->reloads++;
	st_log_set_level((enum st_log_level)conf->log_level);
	st_log_set_data(conf->log_data);
	st_info("configuration reloaded path=%s", st_q(d->config_path));
	notify("READY=1");
}

/*
 * Say what PROGRAM reaches on another host without verified TLS: to OUT as
 * "warning: " lines, or with NULL to the log.  The proxy reaches etcd
 * only; the agent every service.
 */
static void
tls_warn(const char *program, const struct st_conf *conf, FILE *out)
{
	unsigned svcs = 0;

	if (strcmp(program, ST_PROGRAM_PGREPL) == 0)
		svcs = 1u << ST_SVC_PG;
	else if (strcmp(program, ST_PROGRAM_LDAPREPL) == 0)
		svcs = 1u << ST_SVC_LDAP;
	else if (strcmp(program, ST_PROGRAM_IMAPREPL) == 0)
		svcs = 1u << ST_SVC_IMAP | (conf->imap.users_ldap_filter != NULL ? 1u << ST_SVC_LDAP : 0);
	else if (strcmp(program, ST_PROGRAM_FAILOVERD) == 0)
		svcs = 1u << ST_SVC_PG | 1u << ST_SVC_LDAP | 1u << ST_SVC_IMAP;
	char *text = st_conf_tls_warnings(conf, svcs), *save = NULL;
	for (char *line = text ? strtok_r(text, "\n", &save) : NULL; line; line = strtok_r(NULL, "\n", &save)) {
		if (out != NULL)
			fprintf(out, "warning: %s\n", line);
		else
			st_warn("%s", line);
	}
	free(text);
}

/*
 * PATH (what: "run_dir") is a directory of this user or root that nobody
 * else may write to: the pidfile, the socket and the state in it are
 * trusted.
 */
static int
dir_check(const char *what, const char *path, char **error_r)
{
	struct stat sb;

	if (stat(path, &sb) < 0) {
		st_set_error(error_r, "%s %s: %s", what, path, strerror(errno));
		return -1;
	}
	if (!S_ISDIR(sb.st_mode)) {
		st_set_error(error_r, "%s %s is not a directory", what, path);
		return -1;
	}
	if (sb.st_uid != geteuid() && sb.st_uid != 0) {
		st_set_error(error_r, "%s %s is owned by uid %u, not by this user (uid %u) or root", what, path,
			     (unsigned)sb.st_uid, (unsigned)geteuid());
		return -1;
	}
	if ((sb.st_mode & 022) != 0) {
		st_set_error(error_r, "%s %s is writable by group or others (mode %04o); run: chmod go-w %s",
			     what, path, (unsigned)(sb.st_mode & 07777), path);
		return -1;
	}
	return 0;
}

static int
detach(char **error_r)
{
	pid_t pid = fork();

	if (pid < 0) {
		st_set_error(error_r, "fork: %s", strerror(errno));
		return -1;
	}
	if (pid > 0)
		_exit(0);
	if (setsid() < 0) {
		st_set_error(error_r, "setsid: %s", strerror(errno));
		return -1;
	}
	pid = fork();
	if (pid < 0) {
		st_set_error(error_r, "fork: %s", strerror(errno));
		return -1;
	}
	if (pid > 0)
		_exit(0);
	int fd = open("/dev/null", O_RDWR);
	if (fd >= 0) {
		dup2(fd, STDIN_FILENO);
		dup2(fd, STDOUT_FILENO);
		dup2(fd, STDERR_FILENO);
		if (fd > STDERR_FILENO)
			close(fd);
	}
	if (chdir("/") < 0) {
		/* not fatal */
	}
	return 0;
}

int
st_daemon_main(int argc, char **argv, const struct st_daemon_ops *ops, void *priv)
{
	static const struct option longopts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	struct st_daemon d = { .ops = ops, .priv = priv };
	const char *level_arg = NULL;
	bool detach_opt = false, test_only = false, print_conf = false;
	char *errors = NULL, *error = NULL;
	ev_signal sig_term, sig_int, sig_hup;
	struct st_ctl_command *commands = NULL;
	struct st_ctl_server *ctl = NULL;
	int opt, pid_fd = -1, ret = 1;
	size_t n_extra = 0;

	/* Files the daemon makes (state, reports, spools) are its own. */
	umask(077);
	d.config_path = xstrdup(ST_CONF_DEFAULT_PATH);
	while ((opt = getopt_long(argc, argv, "c:n:p:Dl:tThV", longopts, NULL)) != -1) {
		switch (opt) {
		case 'c':
			free(d.config_path);
			d.config_path = xstrdup(optarg);
			break;
		case 'n':
			free(d.node_name);
			d.node_name = xstrdup(optarg);
			break;
		case 'p':
			free(d.pidfile);
			d.pidfile = xstrdup(optarg);
			break;
		case 'D':
			detach_opt = true;
			break;
		case 'l':
			level_arg = optarg;
			break;
		case 't':
			test_only = true;
			break;
		case 'T':
			print_conf = true;
			break;
		case 'h':
			usage(ops, stdout);
			ret = 0;
			goto out;
		case 'V':
			printf("%s %s\n", ops->program, PACKAGE_VERSION);
			ret = 0;
			goto out;
		default:
			usage(ops, stderr);
			ret = 2;
			goto out;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "%s: unexpected argument: %s\n", ops->program, argv[optind]);
		usage(ops, stderr);
		ret = 2;
		goto out;
	}
	st_log_open(ops->program, ST_LOG_STDERR);
	if (level_arg != NULL) {
		enum st_log_level lvl;
		if (st_log_parse_level(level_arg, &lvl) < 0) {
			fprintf(stderr, "%s: -l: unknown level %s\n", ops->program, level_arg);
			ret = 2;
			goto out;
		}
		st_log_set_level(lvl);
	}

	d.conf = st_conf_load(d.config_path, &errors);
	if (d.conf == NULL) {
		fprintf(stderr, "%s\n", errors);
		ret = 2;
		goto out;
	}
	if (test_only || print_conf) {
		if (print_conf)
			st_conf_dump(d.conf, stdout);
		else
			printf("%s: configuration is valid\n", d.config_path);
		tls_warn(ops->program, d.conf, stderr);
		ret = 0;
		goto out;
	}
	d.node = st_conf_local_node(d.conf, d.node_name, &error);
	if (d.node == NULL) {
		fprintf(stderr, "%s: %s\n", ops->program, error);
		ret = 2;
		goto out;
	}
	free(d.node_name);
	d.node_name = xstrdup(d.node->name);
	if (level_arg == NULL)
		st_log_set_level((enum st_log_level)d.conf->log_level);
	st_log_set_data(d.conf->log_data);

	if (detach_opt) {
		if (detach(&error) < 0) {
			fprintf(stderr, "%s: %s\n", ops->program, error);
			goto out;
		}
	}
	if (d.conf->log_dest == ST_LOGDEST_SYSLOG ||
	    (d.conf->log_dest == ST_LOGDEST_AUTO && detach_opt))
		st_log_open(ops->program, ST_LOG_SYSLOG);
	tls_warn(ops->program, d.conf, NULL);

	if (st_mkdir_p(d.node->run_dir, 0755, &error) < 0) {
		st_error("cannot create run_dir: %s", error);
		goto out;
	}
	if (dir_check("run_dir", d.node->run_dir, &error) < 0 ||
	    (access(d.node->state_dir, F_OK) == 0 && dir_check("state_dir", d.node->state_dir, &error) < 0)) {
		st_error("%s", error);
		goto out;
	}
	if (geteuid() == 0)
		st_notice("running as root: the systemd units run %s as the standin user, which needs "
			  "no more (standin.conf(5), FILES)", ops->program);
	if (d.pidfile == NULL)
		d.pidfile = xasprintf("%s/%s.pid", d.node->run_dir, ops->program);
	pid_fd = pidfile_open(d.pidfile, &error);
	if (pid_fd < 0) {
		st_error("%s", error);
		goto out;
	}

	/*
	 * Not the default loop: that one reaps every child (SIGCHLD), which
	 * would take the exit status of a command a daemon runs and waits for
	 * itself (pg_dump, pg_restore, slapcat) from under it.
	 */
	d.loop = ev_loop_new(EVFLAG_AUTO);
	if (d.loop == NULL) {
		st_error("cannot create the event loop (libev)");
		goto out;
	}
	d.started_ms = st_monotonic_ms();

	/* status, metrics, then the daemon's own commands. */
	for (const struct st_ctl_command *c = ops->commands; c != NULL && c->name != NULL; c++)
		n_extra++;
	commands = xcalloc(n_extra + 3, sizeof(*commands));
	commands[0] = (struct st_ctl_command){ "status", ST_CTL_READ_ONLY, cmd_status,
					       "one JSON line of status" };
	commands[1] = (struct st_ctl_command){ "metrics", ST_CTL_READ_ONLY, cmd_metrics,
					       "Prometheus text format" };
	for (size_t i = 0; i < n_extra; i++)
		commands[2 + i] = ops->commands[i];
	d.socket_path = st_ctl_socket_path(d.node, ops->program);
	ctl = st_ctl_listen(d.loop, d.socket_path, d.conf->admin_group, commands, &d, &error);
	if (ctl == NULL) {
		st_error("cannot open the status socket: %s", error);
		goto out;
	}
	char *epoch_file = st_cstate_path(d.node);
	st_ctl_set_epoch_file(ctl, epoch_file);
	free(epoch_file);

	ev_signal_init(&sig_term, stop_cb, SIGTERM);
	ev_signal_init(&sig_int, stop_cb, SIGINT);
	ev_signal_init(&sig_hup, reload_cb, SIGHUP);
	sig_term.data = sig_int.data = sig_hup.data = &d;
	ev_signal_start(d.loop, &sig_term);
	ev_signal_start(d.loop, &sig_int);
	ev_signal_start(d.loop, &sig_hup);
	signal(SIGPIPE, SIG_IGN);

	if (ops->start != NULL && ops->start(&d, &error) < 0) {
		st_error("cannot start: %s", error ? error : "unknown error");
		goto out;
	}
	st_info("started version=%s node=%s config=%s socket=%s", PACKAGE_VERSION, d.node->name,
		st_q(d.config_path), st_q(d.socket_path));
	notify("READY=1");

	ev_run(d.loop, 0);
	ret = d.exit_code;
	st_info("stopped exit_code=%d", ret);
out:
	st_ctl_close(&ctl);
	free(commands);
	if (pid_fd >= 0) {
		unlink(d.pidfile);
		close(pid_fd);
	}
	if (d.loop != NULL)
		ev_loop_destroy(d.loop);
	st_conf_free(&d.conf);
	free(d.config_path);
	free(d.node_name);
	free(d.pidfile);
	free(d.socket_path);
	free(d.last_error);
	free(errors);
	free(error);
	st_log_close();
	return ret;
}
