/*
 * pgspool.c: large transactions streamed while in progress (see pgspool.h).
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "replicators/pg/pgspool.h"

#define WBUF_SIZE (256 * 1024)
/* pgoutput cannot send more in one message (MaxAllocSize). */
#define MAX_RECORD (1024u * 1024 * 1024)

struct sub {
	uint32_t xid;
	uint64_t offset;		/* where its first record starts */
};

struct txn {
	uint32_t xid;
	uint64_t size;			/* bytes in its file, buffered ones included */
	struct sub *subs;		/* in the order they first wrote */
	size_t nsubs, subs_cap;
	uint32_t max_sub;		/* largest subxid in subs */
	struct txn *next;
};

struct pgsp {
	char *dir;
	struct txn *txns;		/* spooled, not yet committed or aborted */
	struct txn *cur;		/* in a block: the one written to */
	int fd;				/* cur's file */
	uint8_t *wbuf;
	size_t wlen;			/* bytes in wbuf not yet written */
	uint64_t replayed;
};

static char *
txn_path(const struct pgsp *sp, uint32_t xid)
{
	return xasprintf("%s/%u.spool", sp->dir, xid);
}

static struct txn *
txn_find(const struct pgsp *sp, uint32_t xid)
{
	for (struct txn *t = sp->txns; t != NULL; t = t->next)
		if (t->xid == xid)
			return t;
	return NULL;
}

/* Unlink T from the list, remove its file, free it. */
static void
txn_drop(struct pgsp *sp, struct txn *t)
{
	for (struct txn **pp = &sp->txns; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == t) {
			*pp = t->next;
			break;
		}
	}
	char *path = txn_path(sp, t->xid);
	(void)unlink(path);	/* if it stays, the next session removes it */
	free(path);
	free(t->subs);
	free(t);
}

struct pgsp *
pgsp_new(const char *dir, char **error_r)
{
	if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
		st_set_error(error_r, "cannot create the spool directory %s: %s", dir,
			     strerror(errno));
		return NULL;
	}
	DIR *d = opendir(dir);
	if (d == NULL) {
		st_set_error(error_r, "cannot open the spool directory %s: %s", dir, strerror(errno));
		return NULL;
	}
	struct dirent *e;
	int rc = 0;
	while (rc == 0 && (e = readdir(d)) != NULL) {
		size_t n = strlen(e->d_name);
		if (n <= 6 || strcmp(e->d_name + n - 6, ".spool") != 0)
			continue;
		if (unlinkat(dirfd(d), e->d_name, 0) < 0 && errno != ENOENT) {
			st_set_error(error_r, "cannot remove %s/%s, left by an earlier session: %s",
				     dir, e->d_name, strerror(errno));
			rc = -1;
		}
	}
	closedir(d);
	if (rc < 0)
		return NULL;

	struct pgsp *sp = xcalloc(1, sizeof(*sp));
	sp->dir = xstrdup(dir);
	sp->fd = -1;
	sp->wbuf = xmalloc(WBUF_SIZE);
	return sp;
}

void
pgsp_free(struct pgsp **spp)
{
	struct pgsp *sp = *spp;

	if (sp == NULL)
		return;
	if (sp->fd >= 0)
		close(sp->fd);
	while (sp->txns != NULL)
		txn_drop(sp, sp->txns);
	free(sp->wbuf);
	free(sp->dir);
	free(sp);
	*spp = NULL;
}

static int
write_all(int fd, const uint8_t *p, size_t n, const char *dir, uint32_t xid, char **error_r)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			st_set_error(error_r, "writing %s/%u.spool: %s", dir, xid, strerror(errno));
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static int
wflush(struct pgsp *sp, char **error_r)
{
	if (sp->wlen == 0)
		return 0;
	int rc = write_all(sp->fd, sp->wbuf, sp->wlen, sp->dir, sp->cur->xid, error_r);
	sp->wlen = 0;
	return rc;
}

int
pgsp_block_start(struct pgsp *sp, uint32_t xid, bool first, char **error_r)
{
	if (sp->cur != NULL) {
		st_set_error(error_r, "Stream Start of transaction %u inside the block of %u", xid,
			     sp->cur->xid);
		return -1;
	}
	struct txn *t = txn_find(sp, xid);
	if (first && t != NULL) {
		st_set_error(error_r, "Stream Start: transaction %u has a first block already", xid);
		return -1;
	}
	if (!first && t == NULL) {
		st_set_error(error_r, "Stream Start of transaction %u, whose first block this "
			     "session never received", xid);
		return -1;
	}
	char *path = txn_path(sp, xid);
	int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | (first ? O_TRUNC : O_APPEND), 0600);
	if (fd < 0) {
		st_set_error(error_r, "cannot open %s: %s", path, strerror(errno));
		free(path);
		return -1;
	}
	free(path);
	if (t == NULL) {
		t = xcalloc(1, sizeof(*t));
		t->xid = xid;
		t->next = sp->txns;
		sp->txns = t;
	}
	sp->cur = t;
	sp->fd = fd;
	return 0;
}

bool
pgsp_in_block(const struct pgsp *sp)
{
	return sp->cur != NULL;
}

/* The first record of SUBXID in T starts at T's current end. */
static void
note_sub(struct txn *t, uint32_t subxid)
{
	if (subxid == t->xid || subxid == 0)	/* 0: a message with no xid (Origin) */
		return;
	/* Subtransactions mostly first write in xid order: a new one is larger. */
	if (t->nsubs == 0 || subxid > t->max_sub) {
		t->max_sub = subxid;
	} else {
		for (size_t i = t->nsubs; i-- > 0;)
			if (t->subs[i].xid == subxid)
				return;
	}
	if (t->nsubs == t->subs_cap) {
		t->subs_cap = t->subs_cap ? t->subs_cap * 2 : 16;
		t->subs = xrealloc(t->subs, t->subs_cap * sizeof(*t->subs));
	}
	t->subs[t->nsubs++] = (struct sub){ .xid = subxid, .offset = t->size };
}

int
pgsp_write(struct pgsp *sp, uint32_t subxid, const uint8_t *msg, size_t len, char **error_r)
{
	struct txn *t = sp->cur;

	if (t == NULL) {
		st_set_error(error_r, "a change of transaction %u outside a Stream Start block",
			     subxid);
		return -1;
	}
	if (len > MAX_RECORD) {
		st_set_error(error_r, "a message of %zu bytes in streamed transaction %u", len,
			     t->xid);
		return -1;
	}
	note_sub(t, subxid);
	uint8_t hdr[4] = { (uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8),
			   (uint8_t)len };
	if (sp->wlen + sizeof(hdr) + len > WBUF_SIZE && wflush(sp, error_r) < 0)
		return -1;
	if (sizeof(hdr) + len > WBUF_SIZE) {
		if (write_all(sp->fd, hdr, sizeof(hdr), sp->dir, t->xid, error_r) < 0 ||
		    write_all(sp->fd, msg, len, sp->dir, t->xid, error_r) < 0)
			return -1;
	} else {
		memcpy(sp->wbuf + sp->wlen, hdr, sizeof(hdr));
		memcpy(sp->wbuf + sp->wlen + sizeof(hdr), msg, len);
		sp->wlen += sizeof(hdr) + len;
	}
	t->size += sizeof(hdr) + len;
	return 0;
}

int
pgsp_block_stop(struct pgsp *sp, char **error_r)
{
	if (sp->cur == NULL) {
		st_set_error(error_r, "Stream Stop outside a Stream Start block");
		return -1;
	}
	int rc = wflush(sp, error_r);
	if (close(sp->fd) < 0 && rc == 0) {
		st_set_error(error_r, "closing %s/%u.spool: %s", sp->dir, sp->cur->xid,
			     strerror(errno));
		rc = -1;
	}
	sp->fd = -1;
	sp->cur = NULL;
	return rc;
}

/* Stream Abort and Stream Commit come between blocks. */
static int
outside_block(const struct pgsp *sp, const char *what, uint32_t xid, char **error_r)
{
	if (sp->cur == NULL)
		return 0;
	st_set_error(error_r, "%s of transaction %u inside the block of %u", what, xid,
		     sp->cur->xid);
	return -1;
}

int
pgsp_abort(struct pgsp *sp, uint32_t xid, uint32_t subxid, char **error_r)
{
	if (outside_block(sp, "Stream Abort", xid, error_r) < 0)
		return -1;
	struct txn *t = txn_find(sp, xid);
	if (t == NULL)
		return 0;
	if (subxid == xid) {
		txn_drop(sp, t);
		return 0;
	}
	size_t i = t->nsubs;
	while (i > 0 && t->subs[i - 1].xid != subxid)
		i--;
	if (i == 0)
		return 0;		/* it spooled nothing */
	i--;
	char *path = txn_path(sp, xid);
	int rc = 0;
	if (truncate(path, (off_t)t->subs[i].offset) < 0) {
		st_set_error(error_r, "cannot cut %s back to %llu bytes (subtransaction %u "
			     "aborted): %s", path, (unsigned long long)t->subs[i].offset, subxid,
			     strerror(errno));
		rc = -1;
	} else {
		t->size = t->subs[i].offset;
		t->nsubs = i;	/* the later ones were its children: gone with it */
		t->max_sub = 0;
		for (size_t k = 0; k < t->nsubs; k++)
			if (t->subs[k].xid > t->max_sub)
				t->max_sub = t->subs[k].xid;
	}
	free(path);
	return rc;
}

/* Read exactly N bytes from F: 1, or 0 at the end of the file, or -1. */
static int
read_full(FILE *f, uint8_t *p, size_t n, const char *path, char **error_r)
{
	size_t got = fread(p, 1, n, f);

	if (got == n)
		return 1;
	if (ferror(f)) {
		st_set_error(error_r, "reading %s: %s", path, strerror(errno));
		return -1;
	}
	if (got == 0)
		return 0;
	st_set_error(error_r, "%s ends inside a record (%zu of %zu bytes)", path, got, n);
	return -1;
}

int
pgsp_replay(struct pgsp *sp, uint32_t xid, pgsp_replay_fn *fn, void *ctx, char **error_r)
{
	if (outside_block(sp, "Stream Commit", xid, error_r) < 0)
		return -1;
	struct txn *t = txn_find(sp, xid);
	if (t == NULL) {
		st_set_error(error_r, "Stream Commit of transaction %u, which this session never "
			     "received a block of", xid);
		return -1;
	}
	char *path = txn_path(sp, xid);
	FILE *f = fopen(path, "rbe");
	if (f == NULL) {
		st_set_error(error_r, "cannot open %s: %s", path, strerror(errno));
		free(path);
		txn_drop(sp, t);
		return -1;
	}
	(void)posix_fadvise(fileno(f), 0, 0, POSIX_FADV_SEQUENTIAL);
	(void)setvbuf(f, NULL, _IOFBF, WBUF_SIZE);
	size_t cap = 64 * 1024;
	uint8_t *buf = xmalloc(cap);
	uint64_t done = 0;
	int rc = 0;
	for (;;) {
		uint8_t hdr[4];
		int r = read_full(f, hdr, sizeof(hdr), path, error_r);
		if (r <= 0) {
			rc = r;
			break;
		}
		uint32_t len = (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 |
			       (uint32_t)hdr[2] << 8 | hdr[3];
		if (len > MAX_RECORD || done + sizeof(hdr) + len > t->size) {
			st_set_error(error_r, "%s: a record of %u bytes at offset %llu, past the "
				     "%llu bytes spooled", path, len, (unsigned long long)done,
				     (unsigned long long)t->size);
			rc = -1;
			break;
		}
		if (len > cap) {
			free(buf);
			cap = len;
			buf = xmalloc(cap);
		}
		if (len > 0 && (r = read_full(f, buf, len, path, error_r)) != 1) {
			if (r == 0)
				st_set_error(error_r, "%s ends inside a record", path);
			rc = -1;
			break;
		}
		done += sizeof(hdr) + len;
		if (fn(ctx, buf, len, error_r) < 0) {
			rc = -1;
			break;
		}
	}
	if (rc == 0 && done != t->size) {
		st_set_error(error_r, "%s holds %llu bytes, %llu were spooled", path,
			     (unsigned long long)done, (unsigned long long)t->size);
		rc = -1;
	}
	free(buf);
	fclose(f);
	free(path);
	txn_drop(sp, t);
	if (rc == 0)
		sp->replayed++;
	return rc;
}

unsigned
pgsp_open_txns(const struct pgsp *sp)
{
	unsigned n = 0;

	for (const struct txn *t = sp->txns; t != NULL; t = t->next)
		n++;
	return n;
}

uint64_t
pgsp_open_bytes(const struct pgsp *sp)
{
	uint64_t n = 0;

	for (const struct txn *t = sp->txns; t != NULL; t = t->next)
		n += t->size;
	return n;
}

uint64_t
pgsp_replayed(const struct pgsp *sp)
{
	return sp->replayed;
}
