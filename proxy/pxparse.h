/*
 * pxparse.h: the pure parts of standin-proxy, with no sockets and no loop:
 * the admin command line, backend endpoints, and the PROXY protocol v2
 * header.  Unit-tested (tests/unit/test-pxparse.c); the command parser,
 * which reads bytes from the admin socket, is fuzzed (tests/fuzz/fuzz-pxadmin.c).
 *
 * Memory: everything returned belongs to the caller.
 */
#ifndef STANDIN_PXPARSE_H
#define STANDIN_PXPARSE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "lib/conf.h"
#include "lib/util.h"

enum px_verb {
	PX_CMD_STATUS,
	PX_CMD_PAUSE,
	PX_CMD_RESUME,
	PX_CMD_SWITCH,
	PX_CMD_DROP,
};

#define PX_ALL_SERVICES (-1)

struct px_cmd {
	enum px_verb verb;
	int service;			/* enum st_service, or PX_ALL_SERVICES */
	char node[ST_NAME_MAX + 1];	/* switch only */
};

/*
 * Parse one admin command line: "status", "pause SERVICE|all",
 * "resume SERVICE|all", "switch SERVICE NODE", "drop SERVICE|all".  Words are
 * separated by spaces or tabs; a final CR or LF is ignored.  The node name is
 * only checked for shape here (the caller checks it is a node of the
 * configuration).  Returns 0, or -1 with a message for the client.
 */
int px_cmd_parse(const char *line, struct px_cmd *cmd_r, char **error_r) ST_WARN_UNUSED;

const char *px_verb_name(enum px_verb verb);

/* Largest PROXY v2 header px_proxy_v2() writes (IPv6: 16 + 36). */
#define PX_PROXY_V2_MAX 52

/*
 * Write a PROXY protocol v2 header (command PROXY, TCP over IPv4 or IPv6)
 * for a connection from SRC to DST into OUT.  Returns its length, or 0 when
 * the addresses are not both IPv4 or both IPv6 (then a v2 LOCAL header, 16
 * bytes, is written: the backend uses the real connection's addresses).
 */
size_t px_proxy_v2(const struct sockaddr *src, const struct sockaddr *dst,
		   uint8_t out[PX_PROXY_V2_MAX]);

#endif
