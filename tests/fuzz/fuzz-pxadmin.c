/*
 * fuzz-pxadmin: libFuzzer target for standin-proxy's admin command parser
 * (bytes from the admin socket) and its endpoint parser.  A parse either
 * succeeds with a sane command or fails with a message; never a crash.
 */
#include "config.h"

#include "proxy/pxparse.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *line = xstrndup((const char *)data, size), *error = NULL;
	struct px_cmd cmd;

	if (px_cmd_parse(line, &cmd, &error) == 0) {
		if (cmd.verb > PX_CMD_DROP || cmd.service < PX_ALL_SERVICES ||
		    cmd.service >= ST_SVC_COUNT || strlen(cmd.node) > ST_NAME_MAX)
			abort();
		if (cmd.verb == PX_CMD_SWITCH && cmd.node[0] == '\0')
			abort();
	} else if (error == NULL) {
		abort();
	}
	free(error);
	error = NULL;
	for (int s = 0; s < ST_SVC_COUNT; s++) {
		struct st_endpoint ep;
		if (st_endpoint_parse((enum st_service)s, line, &ep, &error) == 0) {
			if (ep.host == NULL || ep.port < 1 || ep.port > 65535)
				abort();
			free(ep.host);
		} else if (error == NULL || ep.host != NULL) {
			abort();
		}
		free(error);
		error = NULL;
	}
	free(line);
	return 0;
}
