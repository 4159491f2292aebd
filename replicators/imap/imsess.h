/*
 * imsess.h: one IMAP session of standin-imaprepl, over libetpan.
 *
 * A thin, blocking layer: every call is one IMAP command (libetpan cannot
 * pipeline), bounded by the session's timeout, and returns 0 or -1 with
 * im_sess_error() naming the server, the user, the command and the
 * server's answer.  Used from worker threads, one session per thread.
 *
 * Every command that carries a mailbox name (STATUS, SELECT, EXAMINE,
 * APPEND, CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE) is written by
 * standin, the name quoted or sent as a literal by im_mailbox_put
 * (imname.h), never by libetpan; a name that cannot be sent (CR or LF in
 * it) fails the call with an error that says so, and the session stays
 * usable.  LIST and LSUB carry only the constant pattern "" "*".
 */
#ifndef STANDIN_IMSESS_H
#define STANDIN_IMSESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/util.h"
#include "replicators/imap/imstate.h"

/* An [imap] endpoint (from the configuration's st_endpoint). */
struct im_endpoint {
	char *host;
	unsigned port;
	bool imaps;
};

void im_endpoint_free(struct im_endpoint *ep);

struct im_login {
	const char *node;		/* for messages */
	const struct im_endpoint *ep;
	int starttls;			/* ST_TLS_NO / TRY / DEMAND */
	const char *ca_file;		/* NULL: the system's CAs */
	const char *admin_user;
	int login;			/* enum st_imap_login */
	const char *separator;		/* "*": log in as USER*ADMIN */
	const char *password;
	long timeout_ms;
};

struct im_sess;

struct im_sess *im_sess_open(const struct im_login *login, const char *user, char **error_r);
void im_sess_close(struct im_sess *s);
const char *im_sess_error(const struct im_sess *s);
bool im_sess_broken(const struct im_sess *s);	/* the connection is unusable */
bool im_sess_has(const struct im_sess *s, const char *capability);

struct im_folder {
	char *name;
	char delim;
	bool noselect;
	char *special;			/* special-use attributes (RFC 6154), "\\Sent"; NULL: none */
};
struct im_folders {
	struct im_folder *v;
	size_t n;
};
void im_folders_free(struct im_folders *f);
int im_list(struct im_sess *s, bool subscribed, struct im_folders *out);

struct im_status {
	uint32_t uidvalidity, uidnext, messages;
	uint64_t highestmodseq;		/* 0: the server has no CONDSTORE */
};
int im_status(struct im_sess *s, const char *mailbox, struct im_status *st);

/* SELECT (with CONDSTORE when the server has it); st->messages is EXISTS. */
int im_select(struct im_sess *s, const char *mailbox, bool readonly, struct im_status *st);
/*
 * UNSELECT (RFC 3691): leave the selected mailbox without expunging, so
 * that a later STATUS of it is not answered from this session's stale
 * view (im_status does it when asked for the selected mailbox).  1 when
 * the server has no UNSELECT.
 */
int im_unselect(struct im_sess *s);
/*
 * At the end of a job: a session may stay with its mailbox selected when
 * the server has UNSELECT (the next SELECT replaces it; im_status of it
 * and tree passes unselect first).  1 when it may not: close it.
 */
int im_sess_park(struct im_sess *s);

struct im_uids {
	uint32_t *v;
	size_t n, cap;
};
void im_uids_free(struct im_uids *u);
void im_uids_add(struct im_uids *u, uint32_t uid);
/* UID SEARCH UID FIRST:* (FIRST 1 for all), sorted ascending. */
int im_search_from(struct im_sess *s, uint32_t first, struct im_uids *out);

struct im_msg {
	uint32_t uid;
	uint64_t size;			/* RFC822.SIZE */
	int64_t date;			/* INTERNALDATE as seconds since the epoch */
	int zone;			/* its zone, +HHMM as an integer */
	char *flags;			/* "\Seen $Label1", sorted, no \Recent */
	unsigned char key[IM_KEY_LEN];	/* identity: size, date and Message-ID */
	char *body;			/* BODY.PEEK[] when asked for */
	size_t body_len;
};
struct im_msgs {
	struct im_msg *v;
	size_t n, cap;
};
void im_msgs_free(struct im_msgs *m);

enum {
	IM_F_FLAGS = 1,
	IM_F_META = 2,			/* size, date, identity key */
	IM_F_BODY = 4,
};
/*
 * UID FETCH of the UIDs in UIDS[0..N) (any order; compressed into ranges),
 * or of FIRST:* when UIDS is NULL, with the parts WHAT asks for; when
 * CHANGEDSINCE > 0 only messages whose flags changed after it.  Results
 * sorted by UID.
 */
int im_fetch(struct im_sess *s, const uint32_t *uids, size_t n, uint32_t first, int what,
	     uint64_t changedsince, struct im_msgs *out);

/*
 * QRESYNC (RFC 7162): UIDs below UIDNEXT expunged since MODSEQ, from
 * UID FETCH 1:* (UID) (CHANGEDSINCE MODSEQ VANISHED).  The server may name
 * more (expunged earlier); libetpan keeps only the first VANISHED response,
 * so callers check the result against the message count.  -1 also when
 * the session has no QRESYNC enabled.
 */
int im_vanished(struct im_sess *s, uint64_t modseq, uint32_t uidnext, struct im_uids *out);
bool im_sess_qresync(const struct im_sess *s);

/* APPEND with flags and INTERNALDATE; *uid_r from APPENDUID. */
int im_append(struct im_sess *s, const char *mailbox, const struct im_msg *m,
	      uint32_t *uidvalidity_r, uint32_t *uid_r);

/*
 * MULTIAPPEND (RFC 3502) of V[0..N) in one command with non-synchronising
 * literals (LITERAL+, RFC 7888): one transaction on the server, so all or
 * none are stored; UIDS_R[i] from APPENDUID.  Returns 1, having sent
 * nothing, where it cannot be used (no MULTIAPPEND or LITERAL+, a NUL byte
 * in a message, a flag that is not an atom; or the server refused an
 * earlier one, which stores nothing): the caller appends one by one.
 */
int im_append_many(struct im_sess *s, const char *mailbox, const struct im_msg *v, size_t n,
		   uint32_t *uidvalidity_r, uint32_t *uids_r);

/* UID STORE FLAGS.SILENT (FLAGS) on the given UIDs. */
int im_store_flags(struct im_sess *s, const uint32_t *uids, size_t n, const char *flags);

/* Mark the given UIDs \Deleted and UID EXPUNGE exactly them. */
int im_expunge_uids(struct im_sess *s, const uint32_t *uids, size_t n);

int im_create(struct im_sess *s, const char *mailbox);
/*
 * CREATE with the special-use attributes SPECIAL ("\\Sent \\Archive") where the
 * server has CREATE-SPECIAL-USE; else a plain CREATE, and *SET_R false.
 */
int im_create_special(struct im_sess *s, const char *mailbox, const char *special, bool *set_r);
int im_delete(struct im_sess *s, const char *mailbox);
int im_rename(struct im_sess *s, const char *from, const char *to);
int im_subscribe(struct im_sess *s, const char *mailbox, bool on);

/* IDLE: start (after SELECT), the descriptor to watch, whether bytes are already buffered, done. */
int im_idle_start(struct im_sess *s);
/*
 * NOTIFY (RFC 5465) for every personal mailbox: new and expunged messages,
 * flag changes, mailboxes created, renamed or deleted, subscriptions; so
 * that an IDLE on INBOX wakes for a change anywhere.  1 when the server has
 * no NOTIFY or refuses it.
 */
int im_notify_set(struct im_sess *s);
int im_idle_fd(struct im_sess *s);
bool im_idle_buffered(struct im_sess *s);
int im_idle_done(struct im_sess *s);

/* The identity key of a message (exposed for tests). */
void im_msg_key(uint64_t size, int64_t date, const char *msgid, size_t msgid_len,
		unsigned char key[IM_KEY_LEN]);
/* Normalise a flag list: split on spaces, drop \Recent, sort, dedupe. */
char *im_flags_normalise(const char *flags);

#endif
