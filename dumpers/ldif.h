/*
 * ldif.h: a streaming check of an LDIF dump (RFC 2849 content records, as
 * slapcat and the LDAP export write them): every entry has a DN that parses
 * and an objectClass, every line is "attr: value", "attr:: base64" or
 * "attr:< URL", folded lines continue a line, comments are skipped.
 * Used by dump-verify; fed in chunks of any size, so the whole file is never
 * in memory.
 */
#ifndef STANDIN_DUMP_LDIF_H
#define STANDIN_DUMP_LDIF_H

#include <stdbool.h>
#include <stddef.h>

#include "lib/util.h"

#define DUMP_LDIF_MAX_LINE (16 * 1024 * 1024)

struct dump_ldif {
	unsigned long line;		/* physical lines seen */
	unsigned long entries;		/* complete entries */
	char *error;			/* first error, "line N: ..." */
	struct st_buf phys;		/* current physical line */
	struct st_buf logical;		/* current unfolded line */
	unsigned long logical_line;
	bool in_entry, entry_has_oc, any_line;
	unsigned long entry_line;
};

void dump_ldif_init(struct dump_ldif *p);
void dump_ldif_free(struct dump_ldif *p);
/* Returns 0, or -1 once an error is found (then p->error says where). */
int dump_ldif_feed(struct dump_ldif *p, const char *data, size_t len) ST_WARN_UNUSED;
/* End of input: the last entry is checked.  Returns 0 or -1. */
int dump_ldif_finish(struct dump_ldif *p) ST_WARN_UNUSED;

#endif
