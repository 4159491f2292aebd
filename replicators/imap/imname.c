/*
 * imname.c: mailbox names on the wire and state file names (see imname.h).
 */
#include "config.h"

#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "replicators/imap/imname.h"
#include "replicators/imap/imstate.h"

const char *
im_mailbox_refusal(const char *name)
{
	if (strchr(name, '\r') != NULL)
		return "contains a CR (carriage return), which no IMAP mailbox name may hold";
	if (strchr(name, '\n') != NULL)
		return "contains a LF (line feed), which no IMAP mailbox name may hold";
	if (strlen(name) > IM_MAILBOX_MAX)
		return "is longer than the 16384 bytes standin replicates";
	return NULL;
}

int
im_mailbox_put(struct st_buf *b, const char *name, size_t literal_max, const char **why_r)
{
	const char *why = im_mailbox_refusal(name);
	bool quotable = true;
	size_t len = strlen(name);

	if (why != NULL) {
		*why_r = why;
		return -1;
	}
	for (const unsigned char *p = (const unsigned char *)name; *p; p++)
		if (*p < ' ' || *p >= 0x7f)
			quotable = false;
	if (!quotable) {
		if (len > literal_max) {
			*why_r = "has 8-bit or control characters, so it must be sent as a literal, and the "
				 "server takes no non-synchronising literal (LITERAL+) of that size";
			return -1;
		}
		st_buf_printf(b, "{%zu+}\r\n", len);
		st_buf_append(b, name, len);
		return 0;
	}
	st_buf_puts(b, "\"");
	for (const char *p = name; *p; p++) {
		if (*p == '"' || *p == '\\')
			st_buf_puts(b, "\\");
		st_buf_append(b, p, 1);
	}
	st_buf_puts(b, "\"");
	return 0;
}

/* "x" + hex + ".journal" in NAME_MAX: names up to (NAME_MAX - 9) / 2 bytes. */
#define HEX_FILE_MAX ((NAME_MAX - 1 - (sizeof(".journal") - 1)) / 2)
#define HEX_DIR_MAX ((NAME_MAX - 1) / 2)

static char *
hashed(const char *name)
{
	unsigned char md[IM_KEY_LEN];
	unsigned len = 0;
	char hex[2 * IM_KEY_LEN + 1];
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();

	if (ctx == NULL || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1 ||
	    EVP_DigestUpdate(ctx, name, strlen(name)) != 1 || EVP_DigestFinal_ex(ctx, md, &len) != 1) {
		fprintf(stderr, "standin: out of memory (SHA-256)\n");
		abort();
	}
	EVP_MD_CTX_free(ctx);
	im_key_hex(md, hex);
	return xasprintf("h%s", hex);
}

bool
im_state_file_hashed(const char *folder)
{
	return strlen(folder) > HEX_FILE_MAX;
}

char *
im_state_file_name(const char *folder)
{
	return im_state_file_hashed(folder) ? hashed(folder) : im_name_hex(folder);
}

char *
im_state_dir_name(const char *user)
{
	return strlen(user) > HEX_DIR_MAX ? hashed(user) : im_name_hex(user);
}
