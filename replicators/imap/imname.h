/*
 * imname.h: IMAP mailbox names as standin-imaprepl sends them, and the
 * file names of their state.
 *
 * Folder names come from the master's LIST: whatever bytes its server
 * hands out.  libetpan writes a quoted string with CR and LF in it as they
 * are, so a name holding "\r\n" would end standin's command and start one
 * of the master's choosing on the standby.  Every command that carries a
 * mailbox name is therefore written here: a quoted string with "\\" and
 * "\"" escaped, or a literal where the name has bytes a quoted string
 * cannot hold; and a name with CR or LF (never a valid mailbox name: RFC
 * 3501 quoted strings exclude them, and servers refuse them) is refused.
 *
 * Pure (no libetpan), so that it is unit-tested: tests/unit/test-imstate.c.
 */
#ifndef STANDIN_IMNAME_H
#define STANDIN_IMNAME_H

#include <stdbool.h>
#include <stddef.h>

#include "lib/util.h"

/* Longest folder name standin replicates (its state file keeps it on one line). */
#define IM_MAILBOX_MAX 16384

/*
 * Why NAME cannot be sent to a server (a static string: "contains a CR
 * (carriage return)", ...), or NULL when it can.  NAME is a C string, so
 * it holds no NUL.
 */
const char *im_mailbox_refusal(const char *name);

/*
 * Append NAME to B as an IMAP astring: a quoted string where every byte is
 * printable ASCII, else a non-synchronising literal "{N+}\r\n" followed by
 * the bytes (8-bit names; RFC 7888), which the server must take:
 * LITERAL_MAX is the longest literal it takes that way (SIZE_MAX with
 * LITERAL+, 4096 with LITERAL-, 0 with neither).  Returns 0, or -1 with a
 * static reason in *WHY_R (and B unchanged) when NAME cannot be sent.
 */
int im_mailbox_put(struct st_buf *b, const char *name, size_t literal_max, const char **why_r)
	ST_WARN_UNUSED;

/*
 * The file name (no suffix) of a folder's state in its user's directory:
 * "x" and the hex of the name where that and ".journal" fit in NAME_MAX
 * (names up to 123 bytes, the only ones earlier versions could keep), else
 * "h" and the hex of the name's SHA-256, and the state file then keeps the
 * name itself (im_state's name).  Free the result.
 */
char *im_state_file_name(const char *folder);
/* Whether im_state_file_name(FOLDER) is a hashed one. */
bool im_state_file_hashed(const char *folder);
/* The directory name of a user's states: the same rule, for a directory. */
char *im_state_dir_name(const char *user);

#endif
