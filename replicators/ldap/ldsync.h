/*
 * ldsync.h: the values of RFC 4533 (LDAP Content Synchronization) controls
 * and messages, decoded and encoded with liblber.  No network here: these
 * functions take the bytes libldap hands over (a control's value, an
 * intermediate response's value), so they are unit-tested and fuzzed.
 *
 * Memory: every struct filled here owns its buffers; free it with the
 * matching _clear().  Nothing points into the input.
 */
#ifndef STANDIN_LDSYNC_H
#define STANDIN_LDSYNC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <lber.h>

#include "lib/util.h"

#define LDSYNC_UUID_LEN 16
#define LDSYNC_UUID_TEXT 37		/* 8-4-4-4-12 and a NUL */

/* A cookie: opaque bytes from the provider (slapd's are text). */
struct ldsync_cookie {
	uint8_t *data;
	size_t len;
};

/* Sync State control, attached to each entry (RFC 4533 section 2.3). */
enum ldsync_state_kind {
	LDSYNC_PRESENT = 0,
	LDSYNC_ADD = 1,
	LDSYNC_MODIFY = 2,
	LDSYNC_DELETE = 3,
};

struct ldsync_state {
	enum ldsync_state_kind state;
	uint8_t uuid[LDSYNC_UUID_LEN];
	bool has_cookie;
	struct ldsync_cookie cookie;
};

/* Sync Info message, an intermediate response (section 2.5). */
enum ldsync_info_kind {
	LDSYNC_NEW_COOKIE,
	LDSYNC_REFRESH_DELETE,	/* end of (part of) a delete phase */
	LDSYNC_REFRESH_PRESENT,	/* end of (part of) a present phase */
	LDSYNC_ID_SET,		/* a set of UUIDs, present or deleted */
};

struct ldsync_info {
	enum ldsync_info_kind kind;
	bool has_cookie;
	struct ldsync_cookie cookie;
	bool refresh_done;	/* REFRESH_DELETE / REFRESH_PRESENT; default TRUE */
	bool refresh_deletes;	/* ID_SET: the UUIDs are deleted ones; default FALSE */
	uint8_t (*uuids)[LDSYNC_UUID_LEN];
	size_t n_uuids;
};

/* Sync Done control, on the SearchResultDone (section 2.4). */
struct ldsync_done {
	bool has_cookie;
	struct ldsync_cookie cookie;
	bool refresh_deletes;
};

int ldsync_parse_state(const struct berval *value, struct ldsync_state *out,
		       char **error_r) ST_WARN_UNUSED;
void ldsync_state_clear(struct ldsync_state *s);

int ldsync_parse_info(const struct berval *value, struct ldsync_info *out,
		      char **error_r) ST_WARN_UNUSED;
void ldsync_info_clear(struct ldsync_info *info);

int ldsync_parse_done(const struct berval *value, struct ldsync_done *out,
		      char **error_r) ST_WARN_UNUSED;
void ldsync_done_clear(struct ldsync_done *d);

/*
 * The Sync Request control's value: mode LDAP_SYNC_REFRESH_ONLY or
 * LDAP_SYNC_REFRESH_AND_PERSIST, the cookie (NULL or empty: none) and
 * reloadHint.  *out's bv_val is allocated with ber's allocator: release it
 * with ber_memfree().
 */
int ldsync_request_value(int mode, const struct ldsync_cookie *cookie, bool reload_hint,
			 struct berval *out, char **error_r) ST_WARN_UNUSED;

void ldsync_cookie_set(struct ldsync_cookie *c, const void *data, size_t len);
void ldsync_cookie_copy(struct ldsync_cookie *dst, const struct ldsync_cookie *src);
void ldsync_cookie_clear(struct ldsync_cookie *c);
bool ldsync_cookie_equal(const struct ldsync_cookie *a, const struct ldsync_cookie *b);

/*
 * The newest CSN a cookie carries ("rid=000,csn=A;B" or "...,csn=A,delcsn=..."):
 * copied to OUT (NUL-terminated) and 0, or -1 when it has none.  CSNs
 * ("YYYYmmddHHMMSS.uuuuuuZ#...") sort as strings.
 */
int ldsync_cookie_csn(const struct ldsync_cookie *c, char *out, size_t size);

/*
 * Fold IN into ACC: slapd's cookies in the persist stage carry only the CSN
 * of the change they come with, so a cookie kept as received would forget
 * the other serverIDs of the master's contextCSN (and the next start would
 * be a full refresh).  ACC keeps the newest CSN of every serverID seen, and
 * IN's other fields (rid, sid).
 */
void ldsync_cookie_merge(struct ldsync_cookie *acc, const struct ldsync_cookie *in);

/*
 * Does C hold everything up to CSNS (a contextCSN: ';'-separated, one per
 * serverID)?  True when, for each of them, C has a CSN of the same serverID
 * at or after it.  An empty CSNS is covered; a malformed one is not.
 */
bool ldsync_cookie_covers(const struct ldsync_cookie *c, const char *csns);

/* "rid=000,csn=CSN": the cookie a consumer sends to start right after CSN. */
void ldsync_cookie_from_csn(struct ldsync_cookie *c, const char *csn);

/* The time of a CSN in unix milliseconds, or -1 when it is not one. */
long long ldsync_csn_ms(const char *csn);

void ldsync_uuid_text(const uint8_t uuid[LDSYNC_UUID_LEN], char out[LDSYNC_UUID_TEXT]);
int ldsync_uuid_parse(const char *text, uint8_t uuid[LDSYNC_UUID_LEN]) ST_WARN_UNUSED;

#endif
