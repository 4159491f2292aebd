/*
 * imstate.h: the durable state of one replicated IMAP folder.
 *
 * A folder's state is the source and target UIDVALIDITY, the source UIDNEXT
 * below which every message is handled, the source HIGHESTMODSEQ up to
 * which flags are applied, the map source UID -> target UID, and the
 * pending intents: the messages of the APPEND batch in progress.
 *
 * It lives in two files (NAME from imname.h: the folder name's hex, or for
 * a long name the hex of its SHA-256, the name then kept in the state file
 * on a "name HEX" line): NAME.state, rewritten whole (st_durable_write) at
 * the end of a folder pass, and NAME.journal, appended one line per change
 * and fdatasync'd at the points that matter (before an APPEND batch, after
 * its APPENDUIDs).  Loading reads the state file and replays the journal;
 * a torn last line is ignored.  Every journal record is idempotent, so a
 * crash between the rewrite and the journal truncation is harmless.
 *
 * Journal records (one line each, numbers in decimal):
 *   V SRCVALIDITY TGTVALIDITY   new UIDVALIDITYs; the map is emptied
 *   M SRC TGT                   SRC is copied as TGT
 *   X SRC                       SRC is gone (expunged on the target too)
 *   U UIDNEXT                   source UIDs below UIDNEXT are handled
 *   Q MODSEQ                    source flag changes up to MODSEQ are applied
 *   A TGTUIDNEXT                an APPEND batch starts; target UIDs from
 *                               TGTUIDNEXT on may hold its messages
 *   I SRC SIZE DATE KEY         one message of that batch (KEY: 64 hex digits)
 *   C                           the batch is resolved
 */
#ifndef STANDIN_IMSTATE_H
#define STANDIN_IMSTATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/util.h"

#define IM_KEY_LEN 32		/* SHA-256 of the message's identity */

struct im_pair {
	uint32_t src, tgt;
};

struct im_intent {
	uint32_t src;
	uint64_t size;
	int64_t date;		/* INTERNALDATE, seconds since the epoch */
	unsigned char key[IM_KEY_LEN];
};

struct im_state {
	char *src_node;		/* the node the "src" side refers to */
	char *name;		/* the folder's name, kept in a hashed state file (imname.h); else NULL */
	uint32_t src_uidvalidity, tgt_uidvalidity;
	uint32_t src_uidnext;
	uint64_t src_modseq;

	struct im_pair *map;	/* sorted by src, no duplicates */
	size_t n_map, cap_map;

	bool pending;		/* an APPEND batch was started and not resolved */
	uint32_t intent_tgt_uidnext;
	struct im_intent *intents;
	size_t n_intents, cap_intents;

	/* Files; -1 / NULL for a state held only in memory (tests). */
	char *path;		/* .../NAME.state */
	char *jpath;		/* .../NAME.journal */
	int jfd;
	bool unjournaled;	/* records kept in memory only, until the checkpoint (a first fill, imsync.c) */
	size_t journal_bytes;
};

void im_state_init(struct im_state *st);
void im_state_free(struct im_state *st);

/*
 * Parse a state file's text (LEN bytes, may hold NULs: they are an error)
 * into ST, which must be freshly initialised.  Returns 0, or -1 with a
 * message naming the line.
 */
int im_state_parse(struct im_state *st, const char *text, size_t len, char **error_r) ST_WARN_UNUSED;

/*
 * Replay journal text into ST.  A last line without its newline (a torn
 * write) is ignored; any other bad line is an error naming it.
 */
int im_state_replay(struct im_state *st, const char *text, size_t len, char **error_r) ST_WARN_UNUSED;

/* The state file's text for ST. */
char *im_state_format(const struct im_state *st, size_t *len_r);

/*
 * Open PATH.state and PATH.journal (creating neither if absent: an absent
 * state is an empty one), load and replay them.  A state file may name its
 * folder ("name HEX", written for ST->name): where ST->name is set before
 * the load, a file naming another folder is an error; where it is not, it
 * is taken from the file.  NODE is the current
 * source node: a state written for the other direction is turned around
 * (see im_state_reverse).  Returns 0 or -1 with a message.
 */
int im_state_load(struct im_state *st, const char *path, const char *node, char **error_r) ST_WARN_UNUSED;

/*
 * The state was written with the other node as source (a switchover):
 * swap the two sides of the map and the UIDVALIDITYs; the new source's
 * UIDNEXT is one past its highest mapped UID and its modseq unknown (0),
 * so the next pass compares every message's flags once.
 */
void im_state_reverse(struct im_state *st, const char *node);

/* Apply a record to memory and append it to the journal (no sync). */
int im_state_log(struct im_state *st, char **error_r, const char *fmt, ...) ST_PRINTF(3, 4) ST_WARN_UNUSED;
/* fdatasync the journal. */
int im_state_sync(struct im_state *st, char **error_r) ST_WARN_UNUSED;
/* Rewrite the state file and empty the journal. */
int im_state_checkpoint(struct im_state *st, char **error_r) ST_WARN_UNUSED;
/* Remove both files (the folder is gone). */
int im_state_remove(const char *path, char **error_r) ST_WARN_UNUSED;

/* Map lookups. */
const struct im_pair *im_state_find(const struct im_state *st, uint32_t src);
void im_state_map_set(struct im_state *st, uint32_t src, uint32_t tgt);
void im_state_map_del(struct im_state *st, uint32_t src);
uint32_t im_state_max_src(const struct im_state *st);

void im_key_hex(const unsigned char key[IM_KEY_LEN], char out[2 * IM_KEY_LEN + 1]);
int im_key_parse(const char *hex, unsigned char key[IM_KEY_LEN]);

/* File-name-safe hex form of a user or folder name. */
char *im_name_hex(const char *name);
char *im_name_unhex(const char *hex);

/*
 * One line of Dovecot's replication FIFO (imnotice.h), without its "\n":
 * the user name, tab-unescaped (Dovecot's str_append_tabescaped: \001
 * followed by 1, t, r or n), before the tab and the priority.  NULL when
 * the line names no user standin can log in as (empty, over 255 bytes, a
 * control character or a space, a NUL or a bad escape).  Free the result.
 */
char *im_notice_parse(const char *line, size_t len);

#endif
