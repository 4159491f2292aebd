/*
 * fuzz-imstate: libFuzzer target for standin-imaprepl's folder state file
 * and journal parsers.
 *     ./configure CC=clang --enable-fuzzers && make tests/fuzz/fuzz-imstate
 *     tests/fuzz/fuzz-imstate tests/fuzz/corpus/imstate
 * The input's first byte chooses the parser (with bits 1 and 2 set: a line
 * of Dovecot's replication FIFO, im_notice_parse); a state that parses must
 * format back to text that parses to the same state, and a refusal must
 * say why.
 */
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "replicators/imap/imstate.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct im_state st, again;
	char *err = NULL;
	int rc;

	if (size == 0)
		return 0;
	if ((data[0] & 6) == 6) {
		/* A line of Dovecot's replication FIFO: a name standin can use, or NULL. */
		char *u = im_notice_parse((const char *)data + 1, size - 1);
		if (u != NULL) {
			size_t n = strlen(u);
			if (n == 0 || n > 255)
				abort();
			for (size_t i = 0; i < n; i++)
				if ((unsigned char)u[i] <= ' ' || u[i] == 0x7f)
					abort();
		}
		free(u);
		return 0;
	}
	im_state_init(&st);
	if (data[0] & 1)
		rc = im_state_parse(&st, (const char *)data + 1, size - 1, &err);
	else
		rc = im_state_replay(&st, (const char *)data + 1, size - 1, &err);
	if (rc < 0) {
		if (err == NULL)
			abort();
		free(err);
		im_state_free(&st);
		return 0;
	}
	size_t len;
	char *text = im_state_format(&st, &len);
	im_state_init(&again);
	if (im_state_parse(&again, text, len, &err) < 0)
		abort();
	if (again.n_map != st.n_map || again.src_uidnext != st.src_uidnext ||
	    again.src_modseq != st.src_modseq || again.pending != st.pending ||
	    again.n_intents != st.n_intents ||
	    (st.n_map && memcmp(again.map, st.map, st.n_map * sizeof(*st.map)) != 0))
		abort();
	free(text);
	im_state_free(&again);
	im_state_free(&st);
	return 0;
}
