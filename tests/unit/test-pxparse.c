/*
 * test-pxparse: standin-proxy's admin command lines, backend endpoints and
 * PROXY protocol v2 headers.
 */
#include "config.h"

#include "proxy/pxparse.h"
#include "tests/unit/testutil.h"

#include <arpa/inet.h>
#include <netinet/in.h>

static void
expect_cmd(const char *line, enum px_verb verb, int svc, const char *node)
{
	struct px_cmd cmd;
	char *error = NULL;

	ck_assert_msg(px_cmd_parse(line, &cmd, &error) == 0, "%s: %s", line, error);
	ck_assert_int_eq(cmd.verb, verb);
	ck_assert_int_eq(cmd.service, svc);
	ck_assert_str_eq(cmd.node, node);
}

static void
expect_cmd_error(const char *line, const char *msg)
{
	struct px_cmd cmd;
	char *error = NULL;

	ck_assert_int_eq(px_cmd_parse(line, &cmd, &error), -1);
	ck_assert_msg(error != NULL && strstr(error, msg) != NULL, "%s: got %s, want %s", line,
		      error, msg);
	free(error);
}

START_TEST(test_commands)
{
	expect_cmd("status", PX_CMD_STATUS, 0, "");
	expect_cmd("pause pg", PX_CMD_PAUSE, ST_SVC_PG, "");
	expect_cmd("pause all\n", PX_CMD_PAUSE, PX_ALL_SERVICES, "");
	expect_cmd("  resume \t imap\r\n", PX_CMD_RESUME, ST_SVC_IMAP, "");
	expect_cmd("switch ldap b", PX_CMD_SWITCH, ST_SVC_LDAP, "b");
	expect_cmd("switch pg node-2.x_y", PX_CMD_SWITCH, ST_SVC_PG, "node-2.x_y");
	expect_cmd("drop all", PX_CMD_DROP, PX_ALL_SERVICES, "");
	expect_cmd("drop pg ", PX_CMD_DROP, ST_SVC_PG, "");
}
END_TEST

START_TEST(test_command_errors)
{
	expect_cmd_error("", "empty command");
	expect_cmd_error(" \t\r\n", "empty command");
	expect_cmd_error("paws pg", "unknown command");
	expect_cmd_error("pause", "usage: pause SERVICE|all");
	expect_cmd_error("pause pg ldap", "usage: pause SERVICE|all");
	expect_cmd_error("pause mysql", "unknown service mysql: expected pg, ldap, imap or all");
	expect_cmd_error("switch all b", "unknown service all: expected pg, ldap, imap\0");
	expect_cmd_error("switch pg", "usage: switch SERVICE NODE");
	expect_cmd_error("switch pg b;rm", "invalid node name");
	expect_cmd_error("switch pg 123456789012345678901234567890123", "invalid node name");
	expect_cmd_error("status now", "usage: status");
	expect_cmd_error("a b c d e", "too many words");
	/* A line ends at its first CR or LF: what follows is not a command. */
	expect_cmd_error("pause\npg", "usage: pause");
}
END_TEST

static void
expect_ep(enum st_service svc, const char *ep, const char *host, int port, bool tls)
{
	struct st_endpoint e;
	char *error = NULL;

	ck_assert_msg(st_endpoint_parse(svc, ep, &e, &error) == 0, "%s: %s", ep, error);
	ck_assert_str_eq(e.host, host);
	ck_assert_int_eq(e.port, port);
	ck_assert(e.tls == tls);
	free(e.host);
}

static void
expect_ep_error(enum st_service svc, const char *ep, const char *msg)
{
	struct st_endpoint e;
	char *error = NULL;

	ck_assert_int_eq(st_endpoint_parse(svc, ep, &e, &error), -1);
	ck_assert_ptr_null(e.host);
	ck_assert_msg(error != NULL && strstr(error, msg) != NULL, "%s: got %s, want %s", ep,
		      error, msg);
	free(error);
}

START_TEST(test_endpoints)
{
	expect_ep(ST_SVC_PG, "10.0.0.1:5432", "10.0.0.1", 5432, false);
	expect_ep(ST_SVC_PG, "[::1]:5433", "::1", 5433, false);
	expect_ep(ST_SVC_LDAP, "ldap://db1", "db1", 389, false);
	expect_ep(ST_SVC_LDAP, "ldap://db1:3890/", "db1", 3890, false);
	expect_ep(ST_SVC_LDAP, "ldaps://db1", "db1", 636, true);
	expect_ep(ST_SVC_LDAP, "ldaps://[fe80::1]", "fe80::1", 636, true);
	expect_ep(ST_SVC_IMAP, "imap://127.0.0.1:1143", "127.0.0.1", 1143, false);
	expect_ep(ST_SVC_IMAP, "imap://mail", "mail", 143, false);
	expect_ep(ST_SVC_IMAP, "imaps://mail", "mail", 993, true);
	expect_ep(ST_SVC_IMAP, "imaps://[::1]:9993", "::1", 9993, true);

	expect_ep_error(ST_SVC_PG, "db1", "pg endpoint db1: expected host:port");
	expect_ep_error(ST_SVC_LDAP, "imap://x", "scheme must be ldap:// or ldaps://");
	expect_ep_error(ST_SVC_LDAP, "ldapi://%2Frun", "scheme must be");
	expect_ep_error(ST_SVC_IMAP, "imap://x:99999", "port must be a number");
	expect_ep_error(ST_SVC_IMAP, "imap://x/INBOX", "nothing may follow host:port");
	expect_ep_error(ST_SVC_IMAP, "imap://", "empty host");
	expect_ep_error(ST_SVC_LDAP, "ldap://[::1", "expected [IPv6]:port");
}
END_TEST

START_TEST(test_proxy_v2)
{
	struct sockaddr_in s4 = { .sin_family = AF_INET, .sin_port = htons(40000) };
	struct sockaddr_in d4 = { .sin_family = AF_INET, .sin_port = htons(143) };
	struct sockaddr_in6 s6 = { .sin6_family = AF_INET6, .sin6_port = htons(1) };
	struct sockaddr_in6 d6 = { .sin6_family = AF_INET6, .sin6_port = htons(2) };
	static const uint8_t sig[12] = "\r\n\r\n\0\r\nQUIT\n";
	uint8_t out[PX_PROXY_V2_MAX];

	inet_pton(AF_INET, "192.0.2.1", &s4.sin_addr);
	inet_pton(AF_INET, "198.51.100.2", &d4.sin_addr);
	ck_assert_uint_eq(px_proxy_v2((void *)&s4, (void *)&d4, out), 28);
	ck_assert(memcmp(out, sig, 12) == 0);
	static const uint8_t v4[16] = { 0x21, 0x11, 0, 12, 192, 0, 2, 1, 198, 51, 100, 2,
					0x9c, 0x40, 0, 143 };
	ck_assert(memcmp(out + 12, v4, 16) == 0);

	inet_pton(AF_INET6, "2001:db8::1", &s6.sin6_addr);
	inet_pton(AF_INET6, "2001:db8::2", &d6.sin6_addr);
	ck_assert_uint_eq(px_proxy_v2((void *)&s6, (void *)&d6, out), 52);
	ck_assert_uint_eq(out[12], 0x21);
	ck_assert_uint_eq(out[13], 0x21);
	ck_assert_uint_eq(out[15], 36);
	ck_assert(memcmp(out + 16, &s6.sin6_addr, 16) == 0);
	ck_assert(memcmp(out + 32, &d6.sin6_addr, 16) == 0);
	ck_assert_uint_eq(out[49], 1);
	ck_assert_uint_eq(out[51], 2);

	/* Mixed families: a LOCAL header, the backend keeps the real addresses. */
	ck_assert_uint_eq(px_proxy_v2((void *)&s4, (void *)&d6, out), 16);
	ck_assert_uint_eq(out[12], 0x20);
	ck_assert_uint_eq(out[15], 0);
}
END_TEST

static Suite *
pxparse_suite(void)
{
	Suite *s = suite_create("pxparse");
	TCase *tc = tcase_create("pxparse");

	tcase_add_test(tc, test_commands);
	tcase_add_test(tc, test_command_errors);
	tcase_add_test(tc, test_endpoints);
	tcase_add_test(tc, test_proxy_v2);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return tu_run(pxparse_suite());
}
