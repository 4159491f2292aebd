/*
 * retention.c: the retention rule of retention.h.  No I/O: the caller lists
 * the dumps, asks, and deletes what is not kept, only after a new dump
 * succeeded.
 */
#include "config.h"

#include "dumpers/retention.h"

#include "lib/util.h"

#include <stdlib.h>

long long
dump_day_of(time_t t)
{
	long long s = (long long)t;

	return s >= 0 ? s / 86400 : -((-s + 86399) / 86400);
}

long long
dump_week_of(time_t t)
{
	/* 1970-01-01 was a Thursday: day 0 + 3 is the Sunday ending week 0,
	 * so weeks start on Mondays (day -3, day 4, ...). */
	long long d = dump_day_of(t) + 3;

	return d >= 0 ? d / 7 : -((-d + 6) / 7);
}

static const time_t *cmp_times;

static int
newest_first(const void *a, const void *b)
{
	time_t ta = cmp_times[*(const size_t *)a], tb = cmp_times[*(const size_t *)b];

	if (ta != tb)
		return ta > tb ? -1 : 1;
	return *(const size_t *)a < *(const size_t *)b ? -1 : 1;
}

/* Keep the newest of each of the first LIMIT distinct periods. */
static void
keep_per_period(const time_t *times, const size_t *order, size_t n, long limit,
		long long (*period_of)(time_t), bool *keep_r)
{
	long seen = 0;
	long long last = 0;

	for (size_t k = 0; k < n && seen < limit; k++) {
		long long p = period_of(times[order[k]]);

		if (k > 0 && p == last)
			continue;
		keep_r[order[k]] = true;	/* newest of its period: order is newest first */
		last = p;
		seen++;
	}
}

void
dump_retention_select(const time_t *times, size_t n, const struct dump_retention *r, bool *keep_r)
{
	size_t *order;

	for (size_t i = 0; i < n; i++)
		keep_r[i] = false;
	if (n == 0)
		return;
	order = xcalloc(n, sizeof(*order));
	for (size_t i = 0; i < n; i++)
		order[i] = i;
	cmp_times = times;
	qsort(order, n, sizeof(*order), newest_first);
	cmp_times = NULL;

	keep_r[order[0]] = true;
	for (size_t k = 0; k < n && (long)k < r->keep; k++)
		keep_r[order[k]] = true;
	keep_per_period(times, order, n, r->daily, dump_day_of, keep_r);
	keep_per_period(times, order, n, r->weekly, dump_week_of, keep_r);
	free(order);
}
