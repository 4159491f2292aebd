/*
 * pxparse.c: admin command lines, backend endpoints, PROXY v2 headers.
 */
#include "config.h"

#include "proxy/pxparse.h"

#include <ctype.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#define MAX_WORDS 4

static const char *const verb_names[] = {
	[PX_CMD_STATUS] = "status",
	[PX_CMD_PAUSE] = "pause",
	[PX_CMD_RESUME] = "resume",
	[PX_CMD_SWITCH] = "switch",
	[PX_CMD_DROP] = "drop",
};

const char *
px_verb_name(enum px_verb verb)
{
	return verb_names[verb];
}

/* A node name as the configuration allows it: letters, digits, '-', '_', '.'. */
static bool
node_name_ok(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > ST_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)s[i];
		if (!isalnum(ch) && ch != '-' && ch != '_' && ch != '.')
			return false;
	}
	return true;
}

static int
parse_service(const char *word, bool all_ok, int *svc_r, char **error_r)
{
	enum st_service svc;

	if (all_ok && strcmp(word, "all") == 0) {
		*svc_r = PX_ALL_SERVICES;
		return 0;
	}
	if (st_service_parse(word, &svc) < 0) {
		st_set_error(error_r, "unknown service %s: expected pg, ldap, imap%s",
			     strlen(word) <= 32 ? word : "(too long)", all_ok ? " or all" : "");
		return -1;
	}
	*svc_r = (int)svc;
	return 0;
}

int
px_cmd_parse(const char *line, struct px_cmd *cmd_r, char **error_r)
{
	char *copy = xstrdup(line), *words[MAX_WORDS], *p = copy;
	size_t n = 0, want;
	int ret = -1;

	memset(cmd_r, 0, sizeof(*cmd_r));
	copy[strcspn(copy, "\r\n")] = '\0';
	for (;;) {
		while (*p == ' ' || *p == '\t')
			p++;
		if (*p == '\0')
			break;
		if (n == MAX_WORDS) {
			st_set_error(error_r, "too many words");
			goto out;
		}
		words[n++] = p;
		p += strcspn(p, " \t");
		if (*p != '\0')
			*p++ = '\0';
	}
	if (n == 0) {
		st_set_error(error_r, "empty command");
		goto out;
	}
	size_t v;
	for (v = 0; v < ST_ARRAY_SIZE(verb_names); v++) {
		if (strcmp(words[0], verb_names[v]) == 0)
			break;
	}
	if (v == ST_ARRAY_SIZE(verb_names)) {
		st_set_error(error_r, "unknown command: expected status, pause, resume, switch or drop");
		goto out;
	}
	cmd_r->verb = (enum px_verb)v;
	switch (cmd_r->verb) {
	case PX_CMD_STATUS:
		want = 1;
		break;
	case PX_CMD_SWITCH:
		want = 3;
		break;
	default:
		want = 2;
		break;
	}
	if (n != want) {
		static const char *const usage[] = {
			[PX_CMD_STATUS] = "status",
			[PX_CMD_PAUSE] = "pause SERVICE|all",
			[PX_CMD_RESUME] = "resume SERVICE|all",
			[PX_CMD_SWITCH] = "switch SERVICE NODE",
			[PX_CMD_DROP] = "drop SERVICE|all",
		};
		st_set_error(error_r, "usage: %s", usage[cmd_r->verb]);
		goto out;
	}
	if (want >= 2 && parse_service(words[1], cmd_r->verb != PX_CMD_SWITCH, &cmd_r->service,
				       error_r) < 0)
		goto out;
	if (cmd_r->verb == PX_CMD_SWITCH) {
		if (!node_name_ok(words[2])) {
			st_set_error(error_r, "invalid node name");
			goto out;
		}
		memcpy(cmd_r->node, words[2], strlen(words[2]) + 1);
	}
	ret = 0;
out:
	free(copy);
	return ret;
}

static void
put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

size_t
px_proxy_v2(const struct sockaddr *src, const struct sockaddr *dst, uint8_t out[PX_PROXY_V2_MAX])
{
	static const uint8_t sig[12] = { 0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
					 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A };

	memcpy(out, sig, sizeof(sig));
	if (src->sa_family == AF_INET && dst->sa_family == AF_INET) {
		const struct sockaddr_in *s = (const void *)src, *d = (const void *)dst;
		out[12] = 0x21;		/* version 2, PROXY */
		out[13] = 0x11;		/* AF_INET, STREAM */
		put16(out + 14, 12);
		memcpy(out + 16, &s->sin_addr, 4);
		memcpy(out + 20, &d->sin_addr, 4);
		memcpy(out + 24, &s->sin_port, 2);	/* already network order */
		memcpy(out + 26, &d->sin_port, 2);
		return 28;
	}
	if (src->sa_family == AF_INET6 && dst->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s = (const void *)src, *d = (const void *)dst;
		out[12] = 0x21;
		out[13] = 0x21;		/* AF_INET6, STREAM */
		put16(out + 14, 36);
		memcpy(out + 16, &s->sin6_addr, 16);
		memcpy(out + 32, &d->sin6_addr, 16);
		memcpy(out + 48, &s->sin6_port, 2);
		memcpy(out + 50, &d->sin6_port, 2);
		return 52;
	}
	out[12] = 0x20;			/* version 2, LOCAL */
	out[13] = 0x00;
	put16(out + 14, 0);
	return 16;
}
