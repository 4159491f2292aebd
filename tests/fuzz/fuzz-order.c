/*
 * fuzz-order: libFuzzer target for a switchover's order as an agent reads
 * it from etcd (lib/order.c).  What parses must format and parse back the same.
 */
#include "config.h"

#include "lib/order.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct st_order o, back;
	char *error = NULL;

	if (st_order_parse((const char *)data, size, &o, &error) == 0) {
		char *text = st_order_format(&o);
		if (text == NULL || st_order_parse(text, strlen(text), &back, &error) != 0 ||
		    strcmp(back.id, o.id) != 0 || strcmp(back.op, o.op) != 0 ||
		    back.seq != o.seq || back.epoch != o.epoch || !json_equal(back.args, o.args) ||
		    !st_order_acked(text, strlen(text), &o))
			abort();
		free(text);
		st_order_clear(&back);
		st_order_clear(&o);
	} else if (error == NULL) {
		abort();
	}
	free(error);
	return 0;
}
