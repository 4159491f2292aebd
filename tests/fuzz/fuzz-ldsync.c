/*
 * fuzz-ldsync: libFuzzer target for the RFC 4533 values the master sends
 * (Sync State control, Sync Info message, Sync Done control) and for the
 * cookie and CSN text helpers.
 *     ./configure CC=clang --enable-fuzzers && make tests/fuzz/fuzz-ldsync
 *     tests/fuzz/fuzz-ldsync tests/fuzz/corpus/ldsync
 * Any input must decode or give an error message, never a crash, a leak or
 * a read outside the buffer.  What decodes is encoded again where the codec
 * allows it (a request value with the cookie), and the UUIDs go through
 * their text form and back.
 */
#include "config.h"

#include "replicators/ldap/ldsync.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
uuid_round_trip(const uint8_t *uuid)
{
	char text[LDSYNC_UUID_TEXT];
	uint8_t back[LDSYNC_UUID_LEN];

	ldsync_uuid_text(uuid, text);
	if (ldsync_uuid_parse(text, back) != 0 || memcmp(back, uuid, LDSYNC_UUID_LEN) != 0)
		abort();
}

static void
cookie_checks(const struct ldsync_cookie *c)
{
	char csn[64];
	struct berval out;
	char *err = NULL;

	if (ldsync_cookie_csn(c, csn, sizeof(csn)) == 0) {
		if (strlen(csn) >= sizeof(csn))
			abort();
		(void)ldsync_csn_ms(csn);
	}
	if (ldsync_request_value(3, c, true, &out, &err) == 0)
		ber_memfree(out.bv_val);
	free(err);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *copy = malloc(size > 0 ? size : 1);
	struct berval bv = { .bv_len = size, .bv_val = (char *)copy };
	char *err = NULL;

	if (size > 0)
		memcpy(copy, data, size);

	struct ldsync_state st;
	if (ldsync_parse_state(&bv, &st, &err) == 0) {
		uuid_round_trip(st.uuid);
		if (st.has_cookie)
			cookie_checks(&st.cookie);
		ldsync_state_clear(&st);
	} else if (err == NULL) {
		abort();
	}
	free(err);
	err = NULL;

	struct ldsync_info info;
	if (ldsync_parse_info(&bv, &info, &err) == 0) {
		for (size_t i = 0; i < info.n_uuids; i++)
			uuid_round_trip(info.uuids[i]);
		if (info.has_cookie)
			cookie_checks(&info.cookie);
		ldsync_info_clear(&info);
	} else if (err == NULL) {
		abort();
	}
	free(err);
	err = NULL;

	struct ldsync_done done;
	if (ldsync_parse_done(&bv, &done, &err) == 0)
		ldsync_done_clear(&done);
	else if (err == NULL)
		abort();
	free(err);

	/* The bytes as a cookie and as a CSN. */
	struct ldsync_cookie c = { 0 };
	ldsync_cookie_set(&c, copy, size);
	cookie_checks(&c);
	(void)ldsync_csn_ms((const char *)c.data);
	uint8_t u[LDSYNC_UUID_LEN];
	if (ldsync_uuid_parse((const char *)c.data, u) == 0)
		uuid_round_trip(u);
	ldsync_cookie_clear(&c);
	free(copy);
	return 0;
}
