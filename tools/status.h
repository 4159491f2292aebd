/*
 * status.h: "standinctl status": ask every daemon of every node that can be
 * reached and print one table (or JSON).
 */
#ifndef STANDIN_TOOLS_STATUS_H
#define STANDIN_TOOLS_STATUS_H

#include <stdbool.h>
#include <stdio.h>

#include "lib/conf.h"
#include "lib/cstate.h"

/* The daemons expected on every node for CONF, in display order. */
const char *st_status_daemon_for(enum st_service svc);

int st_status_print(const struct st_conf *conf, bool json, FILE *out);

/* The cluster state as one JSON object. */
void st_status_cstate_json(const struct st_cstate *st, struct st_buf *out);

#endif
