/*
 * test-conf: the configuration loader, good files and every kind of error.
 */
#include "config.h"

#include "lib/conf.h"
#include "tests/unit/testutil.h"

#include <errno.h>

static char *tmpdir;
static char *secret_ok;	/* a 0600 file */
static char *secret_bad;	/* a 0644 file */

static void
setup(void)
{
	tmpdir = tu_mkdtemp();
	secret_ok = xasprintf("%s/ok.secret", tmpdir);
	secret_bad = xasprintf("%s/bad.secret", tmpdir);
	tu_write(secret_ok, "s3cret\n", 0600);
	tu_write(secret_bad, "s3cret\n", 0644);
}

static void
teardown(void)
{
	tu_rmdir(tmpdir);
	free(tmpdir);
	free(secret_ok);
	free(secret_bad);
}

/* A valid base; tests append to it or replace parts of it. */
static char *
base_conf(const char *extra)
{
	return xasprintf("# test cluster\n"			/* 1 */
			 "[cluster]\n"				/* 2 */
			 "name = test\n"			/* 3 */
			 "\n"					/* 4 */
			 "[node a]\n"				/* 5 */
			 "address = 127.0.0.1\n"		/* 6 */
			 "[node b]\n"				/* 7 */
			 "address = 127.0.0.2\n"		/* 8 */
			 "[pg]\n"				/* 9 */
			 "endpoint.a = 127.0.0.1:5432\n"	/* 10 */
			 "endpoint.b = 127.0.0.2:5432\n"	/* 11 */
			 "dbname = groupware\n"			/* 12 */
			 "user = standin\n"			/* 13 */
			 "%s",
			 extra);
}

static struct st_conf *
parse(const char *text, char **errors)
{
	return st_conf_parse("t.conf", text, strlen(text), errors);
}

/* Parse TEXT, expect failure, and expect EXPECTED among the error lines. */
static void
expect_error(const char *text, const char *expected)
{
	char *errors = NULL;
	struct st_conf *conf = parse(text, &errors);

	ck_assert_msg(conf == NULL, "expected an error containing <%s>, the file loaded", expected);
	ck_assert_ptr_nonnull(errors);
	ck_assert_msg(strstr(errors, expected) != NULL, "expected <%s> in:\n%s", expected, errors);
	free(errors);
}

static void
expect_base_error(const char *extra, const char *expected)
{
	char *text = base_conf(extra);

	expect_error(text, expected);
	free(text);
}

/* Errors found by different passes (the node pass, the key pass) come out in
 * line order, all of them, one a line; past the cap a last line says so. */
START_TEST(test_errors_in_line_order)
{
	char *text = base_conf("colour = blue\n"	/* 14 */
			       "[node a]\n"		/* 15 */
			       "address = x\n");	/* 16 */
	char *errors = NULL;

	ck_assert_ptr_null(parse(text, &errors));
	ck_assert_str_eq(errors,
			 "t.conf:14: [pg] unknown key \"colour\"\n"
			 "t.conf:15: duplicate node \"a\" (first defined on line 5)\n"
			 "t.conf:16: [node a] address: set twice (first on line 6)");
	free(errors);
	free(text);

	struct st_buf many;
	st_buf_init(&many);
	char *base = base_conf("");
	st_buf_puts(&many, base);
	free(base);
	for (int i = 0; i < 80; i++)
		st_buf_printf(&many, "k%d = v\n", i);
	ck_assert_ptr_null(parse(many.data, &errors));
	unsigned lines = 1;
	for (const char *p = errors; *p != '\0'; p++)
		lines += *p == '\n';
	ck_assert_uint_eq(lines, 51);
	ck_assert_msg(strstr(errors, "t.conf:14: [pg] unknown key \"k0\"\n") == errors, "%s", errors);
	ck_assert_msg(strstr(errors, "t.conf: too many errors (80), only the first 50 shown") != NULL,
		      "%s", errors);
	free(errors);
	st_buf_free(&many);
}
END_TEST

START_TEST(test_minimal)
{
	char *text = base_conf(""), *errors = NULL;
	struct st_conf *conf = parse(text, &errors);

	ck_assert_msg(conf != NULL, "%s", errors);
	ck_assert_str_eq(conf->cluster_name, "test");
	ck_assert_uint_eq(conf->n_nodes, 2);
	ck_assert_str_eq(conf->nodes[0].name, "a");
	ck_assert_str_eq(conf->nodes[1].address, "127.0.0.2");
	ck_assert_str_eq(conf->nodes[1].hostname, "b");
	ck_assert_str_eq(conf->nodes[0].state_dir, "/var/lib/standin");
	ck_assert_str_eq(conf->nodes[0].run_dir, "/run/standin");
	ck_assert(conf->service_enabled[ST_SVC_PG]);
	ck_assert(!conf->service_enabled[ST_SVC_LDAP]);
	ck_assert_str_eq(conf->pg.endpoint[0], "127.0.0.1:5432");
	ck_assert_str_eq(conf->pg.endpoint[1], "127.0.0.2:5432");
	ck_assert_str_eq(st_conf_sslmode_name(conf->pg.sslmode), "auto");
	/* Both endpoints are loopback addresses: TLS if offered, nothing to warn about. */
	ck_assert_str_eq(st_conf_pg_sslmode(conf, 0), "prefer");
	ck_assert_str_eq(st_conf_pg_sslmode(conf, 1), "prefer");
	ck_assert_ptr_null(st_conf_tls_warnings(conf, ~0u));
	ck_assert_int_eq(conf->pg.connect_timeout_ms, 10000);
	ck_assert_int_eq(conf->pg.conflicts, ST_PG_CONFLICTS_STOP);
	ck_assert_str_eq(st_conf_pg_conflicts_name(conf->pg.conflicts), "stop");
	ck_assert_int_eq(conf->log_level, 1);
	ck_assert(!conf->proxy_present);
	st_conf_free(&conf);
	ck_assert_ptr_null(conf);
	free(text);
}
END_TEST

START_TEST(test_all_sections)
{
	char *extra = xasprintf("sslmode = verify-full\n"
				"conflicts = master-wins\n"
				"passfile = %s\n"
				"[ldap]\n"
				"endpoint.a = ldap://127.0.0.1:389\n"
				"endpoint.b = ldaps://[::1]:636/\n"
				"suffix = dc=example,dc=com\n"
				"bind_dn = cn=admin,dc=example,dc=com\n"
				"password_file = %s\n"
				"starttls = demand\n"
				"timeout = 1500ms\n"
				"[imap]\n"
				"endpoint.a = imaps://mail-a.example.com\n"
				"endpoint.b = imap://127.0.0.2:143\n"
				"admin_user = standin\n"
				"password_file = %s\n"
				"users_ldap_filter = (&(objectClass=inetOrgPerson)(mail=*))\n"
				"workers = 16\n"
				"full_pass_interval = 2h\n"
				"[proxy]\n"
				"pg_listen = 0.0.0.0:5432, [::]:5432\n"
				"pg_listen.b = 127.0.0.2:6432\n"
				"imap_listen.a = 127.0.0.1:143\n"
				"imap_proxy_protocol = yes\n"
				"pause_timeout = 1m\n"
				"[dump]\n"
				"dir = /srv/dumps\n"
				"from = master\n"
				"keep = 3\n",
				secret_ok, secret_ok, secret_ok);
	char *text = base_conf(extra), *errors = NULL;
	struct st_conf *conf = parse(text, &errors);

	ck_assert_msg(conf != NULL, "%s", errors);
	ck_assert_str_eq(st_conf_sslmode_name(conf->pg.sslmode), "verify-full");
	ck_assert_int_eq(conf->pg.conflicts, ST_PG_CONFLICTS_MASTER_WINS);
	ck_assert_str_eq(conf->pg.passfile, secret_ok);
	ck_assert_str_eq(conf->ldap.endpoint[1], "ldaps://[::1]:636/");
	ck_assert_int_eq(conf->ldap.starttls, ST_TLS_DEMAND);
	ck_assert_int_eq(conf->ldap.timeout_ms, 1500);
	ck_assert_int_eq(conf->imap.workers, 16);
	ck_assert_int_eq(conf->imap.full_pass_interval_ms, 2 * 3600 * 1000);
	ck_assert_str_eq(conf->imap.master_separator, "*");
	ck_assert_str_eq(conf->imap.users_ldap_attribute, "uid");
	ck_assert(conf->proxy_present);
	ck_assert_str_eq(conf->proxy.listen[ST_SVC_PG][0], "0.0.0.0:5432, [::]:5432");
	ck_assert_str_eq(conf->proxy.listen[ST_SVC_PG][1], "127.0.0.2:6432");
	ck_assert_str_eq(conf->proxy.listen[ST_SVC_IMAP][0], "127.0.0.1:143");
	ck_assert_ptr_null(conf->proxy.listen[ST_SVC_IMAP][1]);
	ck_assert_ptr_null(conf->proxy.listen[ST_SVC_LDAP][0]);
	ck_assert(conf->proxy.proxy_protocol[ST_SVC_IMAP]);
	ck_assert(!conf->proxy.proxy_protocol[ST_SVC_PG]);
	ck_assert_int_eq(conf->proxy.pause_timeout_ms, 60000);
	ck_assert_int_eq(conf->dump.from, ST_DUMP_FROM_MASTER);
	ck_assert_int_eq(conf->dump.keep, 3);
	ck_assert_int_eq(conf->dump.weekly, 4);
	ck_assert_int_eq(conf->dump.compress, ST_COMPRESS_ZSTD);
	/* Endpoints parsed once, for every program: default ports, v6, TLS. */
	const struct st_endpoint *ep = st_conf_endpoint(conf, ST_SVC_PG, 1);
	ck_assert_str_eq(ep->host, "127.0.0.2");
	ck_assert_int_eq(ep->port, 5432);
	ep = st_conf_endpoint(conf, ST_SVC_LDAP, 1);
	ck_assert_str_eq(ep->host, "::1");
	ck_assert_int_eq(ep->port, 636);
	ck_assert(ep->tls);
	ep = st_conf_endpoint(conf, ST_SVC_IMAP, 0);
	ck_assert_str_eq(ep->host, "mail-a.example.com");
	ck_assert_int_eq(ep->port, 993);
	ck_assert(ep->tls);
	ck_assert(!st_conf_endpoint(conf, ST_SVC_IMAP, 1)->tls);
	ck_assert_ptr_null(st_conf_endpoint(conf, ST_SVC_PG, 7)->host);

	/* The printed configuration is itself valid and prints the same again. */
	char *out1 = NULL, *out2 = NULL;
	size_t len1 = 0, len2 = 0;
	FILE *f = open_memstream(&out1, &len1);
	st_conf_dump(conf, f);
	fclose(f);
	struct st_conf *again = st_conf_parse("t.conf", out1, len1, &errors);
	ck_assert_msg(again != NULL, "effective config does not reload: %s\n%s", errors, out1);
	f = open_memstream(&out2, &len2);
	st_conf_dump(again, f);
	fclose(f);
	ck_assert_str_eq(out1, out2);
	st_conf_free(&again);
	free(out1);
	free(out2);
	st_conf_free(&conf);
	free(text);
	free(extra);
}
END_TEST

START_TEST(test_unknown_key)
{
	expect_base_error("colour = blue\n", "t.conf:14: [pg] unknown key \"colour\"");
}
END_TEST

START_TEST(test_unknown_key_in_node)
{
	expect_error("[cluster]\nname=x\n[node a]\naddress=h\nport=1\n[node b]\naddress=i\n",
		     "t.conf:5: [node a] unknown key \"port\"");
}
END_TEST

START_TEST(test_missing_key)
{
	expect_error("[cluster]\nname = x\n[node a]\naddress = h\n[node b]\naddress = i\n"
		     "[pg]\nendpoint.a = h:1\nendpoint.b = i:1\nuser = u\n",
		     "t.conf:7: [pg] missing required key \"dbname\"");
}
END_TEST

START_TEST(test_missing_node_address)
{
	expect_error("[cluster]\nname = x\n[node a]\n[node b]\naddress = i\n",
		     "t.conf:3: [node a] missing required key \"address\"");
}
END_TEST

START_TEST(test_missing_endpoint_for_node)
{
	expect_error("[cluster]\nname = x\n[node a]\naddress = h\n[node b]\naddress = i\n"
		     "[pg]\nendpoint.a = h:1\ndbname = d\nuser = u\n",
		     "t.conf:7: [pg] missing endpoint.b");
}
END_TEST

START_TEST(test_duplicate_node)
{
	expect_error("[cluster]\nname = x\n[node a]\naddress = h\n[node b]\naddress = i\n"
		     "[node a]\naddress = j\n",
		     "t.conf:7: duplicate node \"a\" (first defined on line 3)");
}
END_TEST

START_TEST(test_duplicate_key)
{
	expect_base_error("dbname = other\n", "t.conf:14: [pg] dbname: set twice (first on line 12)");
}
END_TEST

START_TEST(test_duplicate_section)
{
	expect_base_error("[pg]\n", "t.conf:14: section [pg] appears twice (first on line 9)");
}
END_TEST

START_TEST(test_unknown_section)
{
	expect_base_error("[mysql]\nhost = x\n", "t.conf:14: unknown section [mysql]");
}
END_TEST

START_TEST(test_unknown_endpoint_node)
{
	expect_base_error("endpoint.c = 127.0.0.3:5432\n",
			  "t.conf:14: [pg] endpoint.c: unknown node \"c\" (nodes: a, b)");
}
END_TEST

START_TEST(test_not_per_node)
{
	expect_base_error("dbname.a = x\n", "t.conf:14: [pg] dbname cannot be set per node");
}
END_TEST

START_TEST(test_bad_values)
{
	static const struct {
		const char *line;
		const char *error;
	} cases[] = {
		{ "sslmode = maybe\n", "t.conf:14: [pg] sslmode: expected one of: disable, allow, prefer" },
		{ "conflicts = last-writer-wins\n",
		  "t.conf:14: [pg] conflicts: expected one of: stop, master-wins" },
		{ "connect_timeout = soon\n", "t.conf:14: [pg] connect_timeout: expected a duration" },
		{ "connect_timeout = 10ms\n", "t.conf:14: [pg] connect_timeout: must be between" },
		{ "connect_timeout = 99999999999999999999d\n", "[pg] connect_timeout: expected a duration" },
		{ "sslrootcert = relative/ca.pem\n", "t.conf:14: [pg] sslrootcert: expected an absolute path" },
		{ "[dump]\ndir =\n", "t.conf:15: [dump] dir: expected an absolute path" },
		{ "[node c]\naddress =\n", "t.conf:15: [node c] address: empty value" },
		{ "[proxy]\npg_listen = localhost\n", "t.conf:15: [proxy] pg_listen: localhost: expected host:port" },
		{ "[proxy]\npg_listen = h:0\n", "[proxy] pg_listen: h:0: port must be a number from 1 to 65535" },
		{ "[proxy]\npg_listen = h:70000\n", "port must be a number from 1 to 65535" },
		{ "[proxy]\npg_listen = ::1:5432\n", "an IPv6 address must be written [address]:port" },
		{ "[proxy]\npg_listen = h:1\nmax_clients = -5\n", "t.conf:16: [proxy] max_clients: expected a whole number from 1 to 1000000" },
		{ "[proxy]\npg_listen = h:1\nmax_clients = 12abc\n", "[proxy] max_clients: expected a whole number" },
		{ "[proxy]\npg_listen = h:1\npg_proxy_protocol = perhaps\n", "[proxy] pg_proxy_protocol: expected yes or no" },
		{ "[proxy]\nldap_listen = h:1\n", "[proxy] ldap_listen is set but there is no [ldap] section" },
		{ "[proxy]\n", "t.conf:14: [proxy] no pg_listen, ldap_listen or imap_listen" },
		{ "[dump]\nfrom = backup\n", "[dump] from: expected one of: standby, master" },
	};

	for (size_t i = 0; i < ST_ARRAY_SIZE(cases); i++)
		expect_base_error(cases[i].line, cases[i].error);
}
END_TEST

START_TEST(test_bad_ldap_values)
{
	char *extra = xasprintf("[ldap]\nendpoint.a = http://h\nendpoint.b = ldap://i\n"
				"suffix = not a dn\nbind_dn = cn=admin\npassword_file = %s\n"
				"starttls = sometimes\n", secret_ok);
	char *text = base_conf(extra);

	expect_error(text, "t.conf:15: [ldap] endpoint.a: scheme must be ldap:// or ldaps://");
	expect_error(text, "t.conf:17: [ldap] suffix: not a valid LDAP DN");
	expect_error(text, "t.conf:20: [ldap] starttls: expected one of: no, try, demand");
	free(text);
	free(extra);
}
END_TEST

START_TEST(test_secret_mode)
{
	char *extra = xasprintf("passfile = %s\n", secret_bad);
	char *expected = xasprintf("t.conf:14: [pg] passfile: secret file %s is readable or "
				   "writable by group or others (mode 0644); run: chmod 600 %s",
				   secret_bad, secret_bad);

	expect_base_error(extra, expected);
	free(extra);
	free(expected);
}
END_TEST

START_TEST(test_secret_missing)
{
	expect_base_error("passfile = /nonexistent/pgpass\n",
			  "t.conf:14: [pg] passfile: secret file /nonexistent/pgpass: No such file");
}
END_TEST

START_TEST(test_same_endpoints)
{
	expect_error("[cluster]\nname = x\n[node a]\naddress = h\n[node b]\naddress = i\n"
		     "[pg]\nendpoint = h:1\ndbname = d\nuser = u\n",
		     "t.conf:7: [pg] endpoint.a and endpoint.b are the same (h:1)");
}
END_TEST

START_TEST(test_imap_users_source)
{
	char *extra = xasprintf("[imap]\nendpoint.a = imap://h\nendpoint.b = imap://i\n"
				"admin_user = standin\npassword_file = %s\n", secret_ok);

	expect_base_error(extra, "t.conf:14: [imap] set exactly one of users_file and users_ldap_filter");
	free(extra);
	extra = xasprintf("[imap]\nendpoint.a = imap://h\nendpoint.b = imap://i\n"
			  "admin_user = standin\npassword_file = %s\n"
			  "users_ldap_filter = (uid=*\n", secret_ok);
	expect_base_error(extra, "[imap] users_ldap_filter: unbalanced parentheses");
	free(extra);
	extra = xasprintf("[imap]\nendpoint.a = imap://h\nendpoint.b = imap://i\n"
			  "admin_user = standin\npassword_file = %s\n"
			  "users_ldap_filter = (uid=*)\n", secret_ok);
	expect_base_error(extra, "[imap] users_ldap_filter needs an [ldap] section");
	free(extra);
}
END_TEST

START_TEST(test_loopback_hosts)
{
	const char *yes[] = { "127.0.0.1", "127.1.2.3", "localhost", "LocalHost", "::1", "[::1]",
			      "::ffff:127.0.0.1", "/var/run/postgresql" };
	const char *no[] = { "", "128.0.0.1", "10.0.0.1", "192.0.2.10", "::2", "[2001:db8::1]",
			     "mail.example.com", "localhost.example.com", "127.0.0.1.example.com" };

	for (size_t i = 0; i < ST_ARRAY_SIZE(yes); i++)
		ck_assert_msg(st_host_is_loopback(yes[i]), "%s", yes[i]);
	for (size_t i = 0; i < ST_ARRAY_SIZE(no); i++)
		ck_assert_msg(!st_host_is_loopback(no[i]), "%s", no[i]);
	ck_assert(!st_host_is_loopback(NULL));
}
END_TEST

/* TLS is verified by default to another host, optional to loopback; what is not is named. */
START_TEST(test_tls_defaults)
{
	const char *nodes = "[cluster]\nname = t\netcd = http://127.0.0.1:2379, http://192.0.2.12:2379\n"
			    "[node a]\naddress = 127.0.0.1\n[node b]\naddress = 192.0.2.11\n";
	char *text = xasprintf("%s[pg]\nendpoint.a = 127.0.0.1:5432\nendpoint.b = 192.0.2.11:5432\n"
			       "dbname = g\nuser = s\n"
			       "[ldap]\nendpoint.a = ldap://localhost\nendpoint.b = ldap://ldap-b.example.com\n"
			       "suffix = dc=x\nbind_dn = cn=a,dc=x\npassword_file = %s\n"
			       "[imap]\nendpoint.a = imap://[::1]\nendpoint.b = imaps://192.0.2.11\n"
			       "admin_user = s\npassword_file = %s\nusers_file = /dev/null\n",
			       nodes, secret_ok, secret_ok);
	char *errors = NULL, *warn;
	struct st_conf *conf = parse(text, &errors);

	ck_assert_msg(conf != NULL, "%s", errors);
	ck_assert_str_eq(st_conf_pg_sslmode(conf, 0), "prefer");
	ck_assert_str_eq(st_conf_pg_sslmode(conf, 1), "verify-full");
	ck_assert_int_eq(st_conf_starttls(conf, ST_SVC_LDAP, 0), ST_TLS_NO);
	ck_assert_int_eq(st_conf_starttls(conf, ST_SVC_LDAP, 1), ST_TLS_DEMAND);
	ck_assert_int_eq(st_conf_starttls(conf, ST_SVC_IMAP, 0), ST_TLS_NO);
	/* Only the plaintext etcd URL to another host is left to say. */
	warn = st_conf_tls_warnings(conf, ~0u);
	ck_assert_str_eq(warn, "[cluster] etcd http://192.0.2.12:2379 is plaintext to another host: "
			       "use https:// and etcd_ca\n");
	free(warn);
	st_conf_free(&conf);
	free(text);

	/* Explicit weaker settings are taken, and each connection they leave unverified is named. */
	text = xasprintf("%s[pg]\nendpoint.a = 127.0.0.1:5432\nendpoint.b = 192.0.2.11:5432\n"
			 "dbname = g\nuser = s\nsslmode = require\n"
			 "[ldap]\nendpoint.a = ldap://localhost\nendpoint.b = ldap://ldap-b.example.com\n"
			 "suffix = dc=x\nbind_dn = cn=a,dc=x\npassword_file = %s\nstarttls = try\n"
			 "[imap]\nendpoint.a = imap://[::1]\nendpoint.b = imap://192.0.2.11\n"
			 "admin_user = s\npassword_file = %s\nusers_file = /dev/null\nstarttls = no\n",
			 "[cluster]\nname = t\n[node a]\naddress = 127.0.0.1\n[node b]\naddress = 192.0.2.11\n",
			 secret_ok, secret_ok);
	conf = parse(text, &errors);
	ck_assert_msg(conf != NULL, "%s", errors);
	ck_assert_str_eq(st_conf_pg_sslmode(conf, 0), "require");
	ck_assert_int_eq(st_conf_starttls(conf, ST_SVC_LDAP, 0), ST_TLS_TRY);
	warn = st_conf_tls_warnings(conf, ~0u);
	ck_assert_str_eq(warn,
		"[pg] sslmode = require: node b's PostgreSQL (192.0.2.11) is encrypted but its certificate "
		"is not checked\n"
		"[ldap] starttls = try: node b's LDAP server (ldap-b.example.com) is reached in plaintext "
		"if StartTLS fails\n"
		"[imap] starttls = no: node b's IMAP server (192.0.2.11) is reached in plaintext\n");
	free(warn);
	/* Only the services asked for. */
	warn = st_conf_tls_warnings(conf, 1u << ST_SVC_IMAP);
	ck_assert_str_eq(warn, "[imap] starttls = no: node b's IMAP server (192.0.2.11) is reached in plaintext\n");
	free(warn);
	st_conf_free(&conf);
	free(text);
}
END_TEST

START_TEST(test_syntax)
{
	expect_base_error("this is not ini\n", "t.conf:14: syntax error");
	expect_base_error("[unclosed\n", "t.conf:14: syntax error");
	expect_error("name = x\n[cluster]\n", "t.conf:1: key \"name\" outside of any section");
	expect_error("", "t.conf: missing section [cluster]");
	expect_error("[cluster]\nname = x\n[node a]\naddress = h\n",
		     "a cluster needs at least two [node NAME] sections (found 1)");
	expect_error("[cluster]\nname = x\n[node]\n", "t.conf:3: [node]: expected [node NAME]");
	expect_error("[cluster]\nname = x\n[node a/b]\n", "t.conf:3: [node a/b]: expected [node NAME]");
	expect_error("[cluster foo]\nname = x\n", "t.conf:1: [cluster foo]: section [cluster] takes no name");
	expect_error("[cluster]\nname = bad name\n", "t.conf:2: [cluster] name: expected a name");
	expect_base_error("user = a\tb\n", "t.conf:14: [pg] user: set twice");
}
END_TEST

START_TEST(test_continuation)
{
	expect_base_error("  more\n", "t.conf:14: [pg] user: continuation lines are not supported");
}
END_TEST

START_TEST(test_long_line)
{
	char *longv = xmalloc(400);
	memset(longv, 'x', 399);
	longv[399] = '\0';
	char *extra = xasprintf("sslrootcert = /%s\n", longv);

	expect_base_error(extra, "t.conf:14: line is longer than 198 characters");
	free(extra);
	free(longv);
}
END_TEST

START_TEST(test_nul_byte)
{
	static const char text[] = "[cluster]\nname = x\0y\n";
	char *errors = NULL;
	struct st_conf *conf = st_conf_parse("t.conf", text, sizeof(text) - 1, &errors);

	ck_assert_ptr_null(conf);
	ck_assert_str_eq(errors, "t.conf:2: NUL byte in the file");
	free(errors);
}
END_TEST

START_TEST(test_control_chars_and_8bit)
{
	/* 8-bit (UTF-8) text is fine in free text; control characters are not. */
	expect_base_error("sslrootcert = /tmp/\x01x\n", "t.conf:14: [pg] sslrootcert: control characters");
	char *text = base_conf("sslrootcert = /etc/ssl/caf\xc3\xa9.pem\n"), *errors = NULL;
	struct st_conf *conf = parse(text, &errors);
	ck_assert_msg(conf != NULL, "%s", errors);
	st_conf_free(&conf);
	free(text);
}
END_TEST

START_TEST(test_many_errors_all_reported)
{
	char *errors = NULL;
	struct st_conf *conf = parse("[cluster]\nname = x\nfoo = 1\nbar = 2\n[node a]\naddress = h\n"
				     "[node b]\naddress = i\nbaz = 3\n", &errors);

	ck_assert_ptr_null(conf);
	ck_assert_ptr_nonnull(strstr(errors, "t.conf:3: [cluster] unknown key \"foo\""));
	ck_assert_ptr_nonnull(strstr(errors, "t.conf:4: [cluster] unknown key \"bar\""));
	ck_assert_ptr_nonnull(strstr(errors, "t.conf:9: [node b] unknown key \"baz\""));
	free(errors);
}
END_TEST

START_TEST(test_load_file)
{
	char *path = xasprintf("%s/standin.conf", tmpdir), *errors = NULL;
	char *text = base_conf("");
	struct st_conf *conf;

	tu_write(path, text, 0644);
	conf = st_conf_load(path, &errors);
	ck_assert_msg(conf != NULL, "%s", errors);
	ck_assert_str_eq(conf->path, path);
	st_conf_free(&conf);

	conf = st_conf_load("/nonexistent/standin.conf", &errors);
	ck_assert_ptr_null(conf);
	ck_assert_str_eq(errors, "/nonexistent/standin.conf: cannot open: No such file or directory");
	free(errors);
	errors = NULL;
	conf = st_conf_load(tmpdir, &errors);
	ck_assert_ptr_null(conf);
	ck_assert_ptr_nonnull(strstr(errors, "not a regular file"));
	free(errors);
	free(text);
	free(path);
}
END_TEST

START_TEST(test_local_node)
{
	char *text = base_conf(""), *errors = NULL, *error = NULL;
	struct st_conf *conf = parse(text, &errors);
	const struct st_node *n;

	ck_assert_ptr_nonnull(conf);
	n = st_conf_local_node(conf, "b", &error);
	ck_assert_ptr_nonnull(n);
	ck_assert_str_eq(n->name, "b");
	n = st_conf_local_node(conf, "z", &error);
	ck_assert_ptr_null(n);
	ck_assert_str_eq(error, "t.conf: no [node z] section");
	setenv("STANDIN_NODE", "a", 1);
	n = st_conf_local_node(conf, NULL, &error);
	ck_assert_ptr_nonnull(n);
	ck_assert_str_eq(n->name, "a");
	unsetenv("STANDIN_NODE");
	free(error);
	st_conf_free(&conf);
	free(text);
}
END_TEST

/* Every option of the table is documented in man/standin.conf.5. */
START_TEST(test_man_page_documents_every_key)
{
	const char *top = getenv("top_srcdir");
	char *path = xasprintf("%s/man/standin.conf.5", top ? top : ".");
	FILE *f = fopen(path, "r");
	char *man = NULL;
	size_t cap = 0;
	ssize_t n;

	ck_assert_msg(f != NULL, "cannot open %s", path);
	n = getdelim(&man, &cap, '\0', f);
	ck_assert(n > 0);
	fclose(f);
	for (size_t i = 0; i < st_conf_option_count(); i++) {
		struct st_conf_option_info info;
		st_conf_option_get(i, &info);
		char *needle = xasprintf("\\fB%s\\fR", info.key);
		ck_assert_msg(strstr(man, needle) != NULL, "%s: [%s] %s is not documented (%s)",
			      path, info.section, info.key, needle);
		ck_assert_msg(info.doc != NULL && info.doc[0] != '\0', "%s has no doc", info.key);
		free(needle);
	}
	free(man);
	free(path);
}
END_TEST

/* The example configuration shipped in contrib/ loads (secrets made 0600). */
START_TEST(test_example_config)
{
	const char *top = getenv("top_srcdir");
	char *path = xasprintf("%s/contrib/standin.conf.example", top ? top : ".");
	FILE *f = fopen(path, "r");
	char *text = NULL, *errors = NULL;
	size_t cap = 0;
	struct st_buf out;

	ck_assert_msg(f != NULL, "cannot open %s", path);
	ck_assert(getdelim(&text, &cap, '\0', f) > 0);
	fclose(f);
	/* Point the secret paths at files of this test. */
	st_buf_init(&out);
	for (char *p = text; *p != '\0';) {
		char *hit = strstr(p, "/etc/standin/");
		if (hit == NULL) {
			st_buf_puts(&out, p);
			break;
		}
		st_buf_append(&out, p, (size_t)(hit - p));
		st_buf_printf(&out, "%s/", tmpdir);
		p = hit + strlen("/etc/standin/");
		size_t len = strcspn(p, " \n");
		char *name = xstrndup(p, len);
		char *secret = xasprintf("%s/%s", tmpdir, name);
		tu_write(secret, "x\n", 0600);
		free(secret);
		free(name);
	}
	struct st_conf *conf = st_conf_parse(path, out.data, out.len, &errors);
	ck_assert_msg(conf != NULL, "%s", errors);
	ck_assert(conf->service_enabled[ST_SVC_PG] && conf->service_enabled[ST_SVC_LDAP] &&
		  conf->service_enabled[ST_SVC_IMAP] && conf->proxy_present && conf->dump_present);
	st_conf_free(&conf);
	st_buf_free(&out);
	free(text);
	free(path);
}
END_TEST

START_TEST(test_hostport_and_duration)
{
	char *host = NULL, *error = NULL;
	int port = 0;
	long ms = 0;

	ck_assert_int_eq(st_parse_hostport("[2001:db8::1]:5432", &host, &port, &error), 0);
	ck_assert_str_eq(host, "2001:db8::1");
	ck_assert_int_eq(port, 5432);
	free(host);
	ck_assert_int_eq(st_parse_hostport("db.example.com:1", &host, &port, &error), 0);
	ck_assert_str_eq(host, "db.example.com");
	free(host);
	ck_assert_int_eq(st_parse_hostport(":5432", NULL, NULL, &error), -1);
	ck_assert_int_eq(st_parse_hostport("[::1]5432", NULL, NULL, &error), -1);
	ck_assert_int_eq(st_parse_hostport("h:54x", NULL, NULL, &error), -1);
	ck_assert_int_eq(st_parse_hostport("h o:1", NULL, NULL, &error), -1);
	free(error);

	ck_assert_int_eq(st_parse_duration_ms("250ms", &ms), 0);
	ck_assert_int_eq(ms, 250);
	ck_assert_int_eq(st_parse_duration_ms("7", &ms), 0);
	ck_assert_int_eq(ms, 7000);
	ck_assert_int_eq(st_parse_duration_ms("3d", &ms), 0);
	ck_assert_int_eq(ms, 3L * 86400000);
	ck_assert_int_eq(st_parse_duration_ms("-1s", &ms), -1);
	ck_assert_int_eq(st_parse_duration_ms("1 s", &ms), -1);
	ck_assert_int_eq(st_parse_duration_ms("1w", &ms), -1);
	ck_assert_int_eq(st_parse_duration_ms("", &ms), -1);
}
END_TEST

static Suite *
conf_suite(void)
{
	Suite *s = suite_create("conf");
	TCase *tc = tcase_create("conf");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_minimal);
	tcase_add_test(tc, test_all_sections);
	tcase_add_test(tc, test_unknown_key);
	tcase_add_test(tc, test_unknown_key_in_node);
	tcase_add_test(tc, test_missing_key);
	tcase_add_test(tc, test_missing_node_address);
	tcase_add_test(tc, test_missing_endpoint_for_node);
	tcase_add_test(tc, test_duplicate_node);
	tcase_add_test(tc, test_duplicate_key);
	tcase_add_test(tc, test_duplicate_section);
	tcase_add_test(tc, test_unknown_section);
	tcase_add_test(tc, test_unknown_endpoint_node);
	tcase_add_test(tc, test_not_per_node);
	tcase_add_test(tc, test_bad_values);
	tcase_add_test(tc, test_bad_ldap_values);
	tcase_add_test(tc, test_secret_mode);
	tcase_add_test(tc, test_secret_missing);
	tcase_add_test(tc, test_same_endpoints);
	tcase_add_test(tc, test_imap_users_source);
	tcase_add_test(tc, test_loopback_hosts);
	tcase_add_test(tc, test_tls_defaults);
	tcase_add_test(tc, test_syntax);
	tcase_add_test(tc, test_continuation);
	tcase_add_test(tc, test_long_line);
	tcase_add_test(tc, test_nul_byte);
	tcase_add_test(tc, test_control_chars_and_8bit);
	tcase_add_test(tc, test_many_errors_all_reported);
	tcase_add_test(tc, test_load_file);
	tcase_add_test(tc, test_errors_in_line_order);
	tcase_add_test(tc, test_local_node);
	tcase_add_test(tc, test_man_page_documents_every_key);
	tcase_add_test(tc, test_example_config);
	tcase_add_test(tc, test_hostport_and_duration);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return tu_run(conf_suite());
}
