/*
 * fuzz-cstate: libFuzzer target for the cluster state file parser.
 * Anything that parses must format and parse back to the same state.
 */
#include "config.h"

#include "lib/cstate.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct st_cstate st, back;
	char *error = NULL;

	if (st_cstate_parse("fuzz", (const char *)data, size, &st, &error) == 0) {
		struct st_buf b;
		st_buf_init(&b);
		st_cstate_format(&st, &b);
		if (st_cstate_parse("fuzz", b.data, b.len, &back, &error) != 0 ||
		    back.epoch != st.epoch || strcmp(back.master, st.master) != 0)
			abort();
		st_buf_free(&b);
	} else if (error == NULL) {
		abort();
	}
	free(error);
	return 0;
}
