/*
 * fuzz-manifest: libFuzzer target for the dump manifest parser.
 *     ./configure CC=clang --enable-fuzzers && make tests/fuzz/fuzz-manifest
 *     tests/fuzz/fuzz-manifest tests/fuzz/corpus/manifest
 * Any input gives a manifest or an error message, never a crash, a leak or
 * undefined behaviour; a manifest that parses renders and parses again the
 * same.
 */
#include "config.h"

#include "dumpers/manifest.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct dump_manifest m, again;
	char *error = NULL;
	struct st_buf b;

	if (dump_manifest_parse("fuzz", (const char *)data, size, &m, &error) < 0) {
		if (error == NULL)
			abort();	/* failure must always say why */
		free(error);
		return 0;
	}
	st_buf_init(&b);
	dump_manifest_format(&m, &b);
	if (dump_manifest_parse("again", b.data, b.len, &again, &error) < 0)
		abort();
	if (again.n_files != m.n_files || strcmp(again.service, m.service) != 0)
		abort();
	dump_manifest_free(&again);
	dump_manifest_free(&m);
	st_buf_free(&b);
	return 0;
}
