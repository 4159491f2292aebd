/*
 * ldif.c: the LDIF check of ldif.h.
 */
#include "config.h"

#include "dumpers/ldif.h"

#include <ctype.h>
#include <ldap.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

void
dump_ldif_init(struct dump_ldif *p)
{
	memset(p, 0, sizeof(*p));
	st_buf_init(&p->phys);
	st_buf_init(&p->logical);
}

void
dump_ldif_free(struct dump_ldif *p)
{
	st_buf_free(&p->phys);
	st_buf_free(&p->logical);
	free(p->error);
	p->error = NULL;
}

static int ST_PRINTF(3, 4)
lerr(struct dump_ldif *p, unsigned long line, const char *fmt, ...)
{
	va_list ap;

	if (p->error != NULL)
		return -1;
	va_start(ap, fmt);
	char *msg = xvasprintf(fmt, ap);
	va_end(ap);
	p->error = xasprintf("line %lu: %s", line, msg);
	free(msg);
	return -1;
}

static bool
valid_base64(const char *s, size_t len)
{
	size_t n = 0, pad = 0;

	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == ' ')
			continue;
		if (c == '=') {
			pad++;
		} else if (pad > 0 || !(isalnum(c) || c == '+' || c == '/')) {
			return false;
		}
		n++;
	}
	return n % 4 == 0 && pad <= 2;
}

static bool
valid_attr(const char *s, size_t len)
{
	if (len == 0 || !isalnum((unsigned char)s[0]))
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (!isalnum(c) && c != '-' && c != ';' && c != '.')
			return false;
	}
	return true;
}

static int
end_entry(struct dump_ldif *p)
{
	if (!p->in_entry)
		return 0;
	if (!p->entry_has_oc)
		return lerr(p, p->entry_line, "entry has no objectClass");
	p->entries++;
	p->in_entry = false;
	return 0;
}

/* One unfolded line (not empty, not a comment). */
static int
logical_line(struct dump_ldif *p)
{
	char *s = p->logical.data;
	size_t len = p->logical.len;
	unsigned long line = p->logical_line;
	char *colon = memchr(s, ':', len);
	const char *value;
	size_t alen, vlen;
	bool b64 = false;

	if (colon == NULL)
		return lerr(p, line, "expected \"attribute: value\"");
	alen = (size_t)(colon - s);
	value = colon + 1;
	if (*value == ':') {
		b64 = true;
		value++;
	} else if (*value == '<') {
		value++;
	}
	while (*value == ' ')
		value++;
	vlen = len - (size_t)(value - s);
	if (!valid_attr(s, alen))
		return lerr(p, line, "bad attribute description \"%.*s\"", (int)(alen > 60 ? 60 : alen), s);
	if (b64 && !valid_base64(value, vlen))
		return lerr(p, line, "bad base64 value of %.*s", (int)(alen > 60 ? 60 : alen), s);

	if (!p->in_entry) {
		if (alen == 7 && strncasecmp(s, "version", 7) == 0 && p->entries == 0 && !b64)
			return 0;
		if (!(alen == 2 && strncasecmp(s, "dn", 2) == 0))
			return lerr(p, line, "an entry must start with dn:, not %.*s",
				    (int)(alen > 60 ? 60 : alen), s);
		if (!b64) {
			LDAPDN dn = NULL;
			char *copy = xstrndup(value, vlen);
			int rc = ldap_str2dn(copy, &dn, LDAP_DN_FORMAT_LDAPV3);
			free(copy);
			if (rc != LDAP_SUCCESS)
				return lerr(p, line, "bad DN \"%.*s\"", (int)(vlen > 80 ? 80 : vlen), value);
			ldap_dnfree(dn);
		}
		p->in_entry = true;
		p->entry_has_oc = false;
		p->entry_line = line;
		return 0;
	}
	if (alen == 2 && strncasecmp(s, "dn", 2) == 0)
		return lerr(p, line, "second dn: in one entry (missing blank line?)");
	if (alen == 11 && strncasecmp(s, "objectClass", 11) == 0)
		p->entry_has_oc = true;
	return 0;
}

static int
flush_logical(struct dump_ldif *p)
{
	int rc = 0;

	if (p->logical.len > 0 && p->logical.data[0] != '#')
		rc = logical_line(p);
	st_buf_reset(&p->logical);
	p->any_line = false;
	return rc;
}

static int
physical_line(struct dump_ldif *p)
{
	char *s = p->phys.data;
	size_t len = p->phys.len;

	p->line++;
	if (len > 0 && s[len - 1] == '\r')
		len--;
	if (len > 0 && s[0] == ' ') {
		if (!p->any_line)
			return lerr(p, p->line, "continuation line with no line before it");
		if (p->logical.len + len > DUMP_LDIF_MAX_LINE)
			return lerr(p, p->line, "line longer than %d bytes", DUMP_LDIF_MAX_LINE);
		st_buf_append(&p->logical, s + 1, len - 1);
		return 0;
	}
	if (flush_logical(p) < 0)
		return -1;
	if (len == 0)
		return end_entry(p);
	if (memchr(s, '\0', len) != NULL)
		return lerr(p, p->line, "NUL byte");
	st_buf_append(&p->logical, s, len);
	p->logical_line = p->line;
	p->any_line = true;
	return 0;
}

int
dump_ldif_feed(struct dump_ldif *p, const char *data, size_t len)
{
	if (p->error != NULL)
		return -1;
	while (len > 0) {
		const char *nl = memchr(data, '\n', len);
		size_t chunk = nl ? (size_t)(nl - data) : len;

		if (p->phys.len + chunk > DUMP_LDIF_MAX_LINE)
			return lerr(p, p->line + 1, "line longer than %d bytes", DUMP_LDIF_MAX_LINE);
		st_buf_append(&p->phys, data, chunk);
		data += chunk;
		len -= chunk;
		if (nl != NULL) {
			data++;
			len--;
			if (physical_line(p) < 0)
				return -1;
			st_buf_reset(&p->phys);
		}
	}
	return 0;
}

int
dump_ldif_finish(struct dump_ldif *p)
{
	if (p->error != NULL)
		return -1;
	if (p->phys.len > 0) {
		if (physical_line(p) < 0)
			return -1;
		st_buf_reset(&p->phys);
	}
	if (flush_logical(p) < 0 || end_entry(p) < 0)
		return -1;
	return 0;
}
