/*
 * bgjob.h: blocking work (an LDAP connect and bind, a search) taken off a
 * daemon's event loop.  WORK runs in a thread of its own; DONE runs on the
 * loop once it has finished, with the same ARG, and the job is freed.
 *
 * The loop must not free what WORK reads (the configuration, say) while a
 * job runs: st_bgjob_wait() first (a reload, a stop).
 */
#ifndef STANDIN_BGJOB_H
#define STANDIN_BGJOB_H

#include <ev.h>

#include "lib/util.h"

struct st_bgjob;

typedef void st_bgjob_fn(void *arg);

/* Start WORK(ARG) in a thread; DONE(ARG) follows on LOOP.  NULL with
 * *error_r when no thread could be made. */
struct st_bgjob *st_bgjob_start(struct ev_loop *loop, st_bgjob_fn *work, st_bgjob_fn *done,
				void *arg, char **error_r) ST_WARN_UNUSED;

/* Wait until the job's WORK has returned, then run its DONE now (on the
 * loop's thread, the caller) and free it; *JOB becomes NULL. */
void st_bgjob_wait(struct st_bgjob **job);

#endif
