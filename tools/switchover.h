/*
 * switchover.h: standinctl switchover and failover (doc/architecture.md,
 * section 4), from any node, through etcd alone: the checks (the cluster
 * state and every node's member record), then one order per node and step
 * for the nodes' standin-failoverd (lib/order.h), a rollback before the
 * point of no return; failover fences the lost master with [failover]
 * fence_command first.
 */
#ifndef STANDIN_SWITCHOVER_H
#define STANDIN_SWITCHOVER_H

#include <stdbool.h>
#include <stdio.h>

#include "lib/conf.h"

struct st_switchover_opts {
	const char *to;			/* the new master, or NULL: the one standby */
	double max_lag_s;		/* the target's replicators' lag bound */
	double timeout_s;		/* each step's bound (drain, reverse...) */
	int service;			/* one service (enum st_service) or -1: all */
	bool dry_run;
};

/* 0 when every check passed (and, with dry_run, the plan printed), 1 when
 * one failed (each failure printed, naming node and daemon), 2 usage. */
int st_switchover(const struct st_conf *conf, const struct st_switchover_opts *opts, FILE *out);

struct st_failover_opts {
	const char *to;			/* the new master */
	bool force;			/* without a fence, a live agent, or etcd */
	double timeout_s;
};

/*
 * The master is gone: fence it ([failover] fence_command, required unless
 * force), then epoch + 1 with TO the master, in etcd (or, with force and
 * etcd away, in HERE's file, HERE being TO), then TO unfenced and the other
 * nodes told.  0 done, 1 failed or refused (said why), 2 usage.
 */
int st_failover(const struct st_conf *conf, const struct st_node *here,
		const struct st_failover_opts *opts, FILE *out);

#endif
