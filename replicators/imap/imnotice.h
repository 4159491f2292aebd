/*
 * imnotice.h: [imap] changes = dovecot: which users changed, learnt from
 * the master's Dovecot without a session per user.
 *
 * Dovecot's replication plugin (mail_plugins = notify replication, with
 * plugin { mail_replica } set) writes "USER<TAB>PRIORITY\n" to
 * BASE_DIR/replication-notify-fifo about half a second after a user's
 * mail, flags, folders or subscriptions changed.  On every node
 * standin-imaprepl makes that FIFO ([imap] dovecot_fifo) and reads it; on
 * the IMAP master's node the names go to etcd, in batches, each under
 * /standin/CLUSTER/imap-notices/NODE/SEQ (a JSON object: node, epoch,
 * boot, seq, users, overflow) with a lease of NOTICE_LEASE_S; the standby's
 * daemon watches its source's prefix and hands the names to the main
 * thread.  A batch that went missing (a sequence gap, the master's daemon
 * restarted, notices dropped for overflow) is reported as a gap: the
 * caller starts a pass.  The periodic pass makes up for the rest (notices
 * written while no daemon read the FIFO).
 *
 * Threads: the FIFO is read in the main thread (libev); one relay thread
 * per daemon, one watch thread while a source is followed.  Nothing here
 * keeps a descriptor per user.
 */
#ifndef STANDIN_IMNOTICE_H
#define STANDIN_IMNOTICE_H

#include <stdbool.h>
#include <stdint.h>

#include <ev.h>
#include <jansson.h>

#include "lib/conf.h"

struct im_notices;

/*
 * Called in the main thread with the users named since the last call
 * (N may be 0), and GAP when some notices may have been lost.
 */
typedef void im_notices_cb(void *data, char **users, size_t n, bool gap);

/* Start reading the FIFO and the relay thread (CONF and NODE must outlive it). */
struct im_notices *im_notices_start(const struct st_conf *conf, const char *node, struct ev_loop *loop,
				    im_notices_cb *cb, void *data);
void im_notices_stop(struct im_notices *n);

/* This node is the IMAP master at EPOCH (its FIFO's names are relayed), or not. */
void im_notices_role(struct im_notices *n, bool master, uint64_t epoch);

/* Follow SOURCE's notices (NULL: stop following). */
void im_notices_follow(struct im_notices *n, const char *source);

void im_notices_status(struct im_notices *n, json_t *obj);

#endif
