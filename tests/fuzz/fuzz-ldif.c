/*
 * fuzz-ldif: libFuzzer target for the LDIF check of dump-verify.
 *     ./configure CC=clang --enable-fuzzers && make tests/fuzz/fuzz-ldif
 *     tests/fuzz/fuzz-ldif tests/fuzz/corpus/ldif
 * The input is fed in two chunks split at its first byte's value, so chunk
 * boundaries are fuzzed too; an error must always say where.
 */
#include "config.h"

#include "dumpers/ldif.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct dump_ldif p;
	size_t split = size > 0 ? data[0] % (size + 1) : 0;
	int rc;

	dump_ldif_init(&p);
	rc = dump_ldif_feed(&p, (const char *)data, split);
	if (rc == 0)
		rc = dump_ldif_feed(&p, (const char *)data + split, size - split);
	if (rc == 0)
		rc = dump_ldif_finish(&p);
	if (rc < 0 && p.error == NULL)
		abort();
	dump_ldif_free(&p);
	return 0;
}
