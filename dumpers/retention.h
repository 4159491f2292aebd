/*
 * retention.h: which dumps to keep (a pure function, unit-tested over a
 * simulated month).
 *
 * Of the good dumps of one service, times in seconds (UTC), keep:
 *   - the KEEP newest;
 *   - the newest dump of each of the DAILY most recent UTC days that have
 *     a dump;
 *   - the newest dump of each of the WEEKLY most recent ISO weeks (Monday
 *     to Sunday, UTC) that have a dump;
 *   - always the newest one, whatever the numbers say.
 * Days and weeks without a dump do not count, so a dump that stopped for a
 * while does not make the old dumps disappear.
 */
#ifndef STANDIN_DUMP_RETENTION_H
#define STANDIN_DUMP_RETENTION_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

struct dump_retention {
	long keep;
	long daily;
	long weekly;
};

/* Set keep_r[i] for each of TIMES[0..N) to keep; TIMES in any order. */
void dump_retention_select(const time_t *times, size_t n, const struct dump_retention *r,
			   bool *keep_r);

/* The UTC day and the ISO week (Monday-based) a time falls in. */
long long dump_day_of(time_t t);
long long dump_week_of(time_t t);

#endif
