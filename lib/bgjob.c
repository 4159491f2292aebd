/*
 * bgjob.c: a thread for blocking work, its end signalled to the loop with an
 * ev_async (see bgjob.h).
 */
#include "config.h"

#include "lib/bgjob.h"

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

struct st_bgjob {
	ev_async done_w;	/* first: the watcher gives back the job */
	struct ev_loop *loop;
	pthread_t thread;
	st_bgjob_fn *work, *done;
	void *arg;
};

static void *
job_main(void *p)
{
	struct st_bgjob *job = p;

	job->work(job->arg);
	ev_async_send(job->loop, &job->done_w);
	return NULL;
}

static void
job_finish(struct st_bgjob *job)
{
	pthread_join(job->thread, NULL);
	ev_async_stop(job->loop, &job->done_w);
	job->done(job->arg);
	free(job);
}

static void
done_cb(struct ev_loop *loop, ev_async *w, int revents)
{
	(void)loop;
	(void)revents;
	job_finish((struct st_bgjob *)w);
}

struct st_bgjob *
st_bgjob_start(struct ev_loop *loop, st_bgjob_fn *work, st_bgjob_fn *done, void *arg,
	       char **error_r)
{
	struct st_bgjob *job = xcalloc(1, sizeof(*job));
	sigset_t all, old;
	int rc;

	job->loop = loop;
	job->work = work;
	job->done = done;
	job->arg = arg;
	ev_async_init(&job->done_w, done_cb);
	ev_async_start(loop, &job->done_w);
	/* Signals stay with the loop's thread. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	rc = pthread_create(&job->thread, NULL, job_main, job);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0) {
		ev_async_stop(loop, &job->done_w);
		free(job);
		st_set_error(error_r, "cannot start a thread: %s", strerror(rc));
		return NULL;
	}
	return job;
}

void
st_bgjob_wait(struct st_bgjob **job)
{
	if (*job == NULL)
		return;
	job_finish(*job);
	*job = NULL;
}
