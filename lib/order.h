/*
 * order.h: the orders a switchover (standinctl) gives the nodes' agents
 * (standin-failoverd) through etcd (doc/architecture.md, section 4).
 *
 *   /standin/CLUSTER/switchover     the one in progress: {"id","from","to",
 *                                   "epoch","phase","by","started_ms"}, under
 *                                   the lease of the standinctl running it
 *   /standin/CLUSTER/orders/NODE    the order for NODE: {"id","seq","epoch",
 *                                   "op","args"}, under the same lease
 *   /standin/CLUSTER/acks/NODE      NODE's answer: {"id","seq","node","ok",
 *                                   "error","result","ms"}
 *
 * One order per node at a time; (id, seq) names it.  An agent carries out
 * an order once (it compares its ack first), and refuses one whose epoch is
 * older than its node's.
 */
#ifndef STANDIN_ORDER_H
#define STANDIN_ORDER_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/util.h"

#define ST_ORDER_ID_MAX 64
#define ST_ORDER_OP_MAX 16

struct st_order {
	char id[ST_ORDER_ID_MAX];	/* the switchover's id */
	uint64_t seq;
	uint64_t epoch;
	char op[ST_ORDER_OP_MAX];
	json_t *args;			/* an object (owned), never NULL after a parse */
};

/* Parse an order's JSON text; -1 with *error_r naming what is wrong. */
int st_order_parse(const char *text, size_t len, struct st_order *o, char **error_r)
	ST_WARN_UNUSED;

/* The JSON text of O (caller frees). */
char *st_order_format(const struct st_order *o);

void st_order_clear(struct st_order *o);

/* The ack's (id, seq) in TEXT: true when it answers O. */
bool st_order_acked(const char *text, size_t len, const struct st_order *o);

#endif
