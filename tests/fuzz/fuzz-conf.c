/*
 * fuzz-conf: libFuzzer target for the configuration parser.
 *     ./configure CC=clang --enable-fuzzers && make tests/fuzz/fuzz-conf
 *     tests/fuzz/fuzz-conf tests/fuzz/corpus/conf
 * Any input must give a configuration or an error message, never a crash,
 * a leak or undefined behaviour; a configuration that loads must print.
 */
#include "config.h"

#include "lib/conf.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *errors = NULL;
	struct st_conf *conf = st_conf_parse("fuzz.conf", (const char *)data, size, &errors);

	if (conf != NULL) {
		FILE *f = fopen("/dev/null", "w");
		if (f != NULL) {
			st_conf_dump(conf, f);
			fclose(f);
		}
		st_conf_free(&conf);
	} else if (errors == NULL) {
		abort();	/* failure must always say why */
	}
	free(errors);
	return 0;
}
