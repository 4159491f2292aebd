/*
 * imstate.c: durable per-folder state of standin-imaprepl (see imstate.h).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/durable.h"
#include "replicators/imap/imname.h"
#include "replicators/imap/imstate.h"

#define STATE_MAGIC "standin-imaprepl-folder 1"
#define STATE_MAX (256u << 20)
#define LINE_MAX_LEN 512
/* A state file's lines: the "name" line holds up to IM_MAILBOX_MAX bytes in hex. */
#define STATE_LINE_MAX (2 * IM_MAILBOX_MAX + 16)

void
im_state_init(struct im_state *st)
{
	memset(st, 0, sizeof(*st));
	st->jfd = -1;
}

void
im_state_free(struct im_state *st)
{
	if (st->jfd >= 0)
		close(st->jfd);
	free(st->src_node);
	free(st->name);
	free(st->map);
	free(st->intents);
	free(st->path);
	free(st->jpath);
	im_state_init(st);
}

/* -- the map ------------------------------------------------------------ */

static size_t
map_lower(const struct im_state *st, uint32_t src)
{
	size_t lo = 0, hi = st->n_map;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (st->map[mid].src < src)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

const struct im_pair *
im_state_find(const struct im_state *st, uint32_t src)
{
	size_t i = map_lower(st, src);

	return i < st->n_map && st->map[i].src == src ? &st->map[i] : NULL;
}

void
im_state_map_set(struct im_state *st, uint32_t src, uint32_t tgt)
{
	size_t i = map_lower(st, src);

	if (i < st->n_map && st->map[i].src == src) {
		st->map[i].tgt = tgt;
		return;
	}
	if (st->n_map == st->cap_map) {
		st->cap_map = st->cap_map ? st->cap_map * 2 : 64;
		st->map = xrealloc(st->map, st->cap_map * sizeof(*st->map));
	}
	memmove(&st->map[i + 1], &st->map[i], (st->n_map - i) * sizeof(*st->map));
	st->map[i].src = src;
	st->map[i].tgt = tgt;
	st->n_map++;
}

void
im_state_map_del(struct im_state *st, uint32_t src)
{
	size_t i = map_lower(st, src);

	if (i < st->n_map && st->map[i].src == src) {
		memmove(&st->map[i], &st->map[i + 1], (st->n_map - i - 1) * sizeof(*st->map));
		st->n_map--;
	}
}

uint32_t
im_state_max_src(const struct im_state *st)
{
	return st->n_map ? st->map[st->n_map - 1].src : 0;
}

/* -- keys and names ----------------------------------------------------- */

void
im_key_hex(const unsigned char key[IM_KEY_LEN], char out[2 * IM_KEY_LEN + 1])
{
	static const char digits[] = "0123456789abcdef";

	for (size_t i = 0; i < IM_KEY_LEN; i++) {
		out[2 * i] = digits[key[i] >> 4];
		out[2 * i + 1] = digits[key[i] & 15];
	}
	out[2 * IM_KEY_LEN] = '\0';
}

static int
hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int
im_key_parse(const char *hex, unsigned char key[IM_KEY_LEN])
{
	for (size_t i = 0; i < IM_KEY_LEN; i++) {
		int hi = hexval(hex[2 * i]), lo = hi < 0 ? -1 : hexval(hex[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return -1;
		key[i] = (unsigned char)(hi << 4 | lo);
	}
	return hex[2 * IM_KEY_LEN] == '\0' ? 0 : -1;
}

char *
im_name_hex(const char *name)
{
	static const char digits[] = "0123456789abcdef";
	size_t n = strlen(name);
	char *out = xmalloc(2 * n + 2);

	/* A leading 'x' keeps the empty name a valid file name. */
	out[0] = 'x';
	for (size_t i = 0; i < n; i++) {
		out[1 + 2 * i] = digits[(unsigned char)name[i] >> 4];
		out[2 + 2 * i] = digits[(unsigned char)name[i] & 15];
	}
	out[1 + 2 * n] = '\0';
	return out;
}

char *
im_name_unhex(const char *hex)
{
	size_t n = strlen(hex);

	if (n == 0 || hex[0] != 'x' || (n - 1) % 2 != 0)
		return NULL;
	char *out = xmalloc((n - 1) / 2 + 1);
	for (size_t i = 0; i < (n - 1) / 2; i++) {
		int hi = hexval(hex[1 + 2 * i]), lo = hexval(hex[2 + 2 * i]);
		if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
			free(out);
			return NULL;
		}
		out[i] = (char)(hi << 4 | lo);
	}
	out[(n - 1) / 2] = '\0';
	return out;
}

/* -- parsing ------------------------------------------------------------ */

static bool
parse_u64(const char **p, uint64_t max, uint64_t *out)
{
	const char *s = *p;
	uint64_t v = 0;

	if (*s < '0' || *s > '9')
		return false;
	while (*s >= '0' && *s <= '9') {
		unsigned d = (unsigned)(*s - '0');
		if (v > (max - d) / 10)
			return false;
		v = v * 10 + d;
		s++;
	}
	*out = v;
	*p = s;
	return true;
}

static bool
parse_u32(const char **p, uint32_t *out)
{
	uint64_t v;

	if (!parse_u64(p, UINT32_MAX, &v))
		return false;
	*out = (uint32_t)v;
	return true;
}

static bool
skip_space(const char **p)
{
	if (**p != ' ')
		return false;
	(*p)++;
	return true;
}

static void
intent_add(struct im_state *st, const struct im_intent *in)
{
	if (st->n_intents == st->cap_intents) {
		st->cap_intents = st->cap_intents ? st->cap_intents * 2 : 16;
		st->intents = xrealloc(st->intents, st->cap_intents * sizeof(*st->intents));
	}
	st->intents[st->n_intents++] = *in;
}

/* Apply one journal record (NUL-terminated, no newline). */
static int
apply_record(struct im_state *st, const char *line)
{
	const char *p = line + 1;
	uint32_t a, b;
	uint64_t v;

	switch (line[0]) {
	case 'V':
		if (!skip_space(&p) || !parse_u32(&p, &a) || !skip_space(&p) || !parse_u32(&p, &b) || *p)
			return -1;
		st->src_uidvalidity = a;
		st->tgt_uidvalidity = b;
		st->n_map = 0;
		st->src_uidnext = 0;
		st->src_modseq = 0;
		return 0;
	case 'M':
		if (!skip_space(&p) || !parse_u32(&p, &a) || !skip_space(&p) || !parse_u32(&p, &b) || *p ||
		    a == 0 || b == 0)
			return -1;
		im_state_map_set(st, a, b);
		return 0;
	case 'X':
		if (!skip_space(&p) || !parse_u32(&p, &a) || *p)
			return -1;
		im_state_map_del(st, a);
		return 0;
	case 'U':
		if (!skip_space(&p) || !parse_u32(&p, &a) || *p)
			return -1;
		st->src_uidnext = a;
		return 0;
	case 'Q':
		if (!skip_space(&p) || !parse_u64(&p, INT64_MAX, &v) || *p)
			return -1;
		st->src_modseq = v;
		return 0;
	case 'A':
		if (!skip_space(&p) || !parse_u32(&p, &a) || *p)
			return -1;
		st->pending = true;
		st->intent_tgt_uidnext = a;
		st->n_intents = 0;
		return 0;
	case 'I': {
		struct im_intent in;
		uint64_t date;
		char hex[2 * IM_KEY_LEN + 1];

		if (!st->pending || !skip_space(&p) || !parse_u32(&p, &in.src) || !skip_space(&p) ||
		    !parse_u64(&p, UINT64_MAX, &in.size) || !skip_space(&p) ||
		    !parse_u64(&p, INT64_MAX, &date) || !skip_space(&p) || strlen(p) != 2 * IM_KEY_LEN)
			return -1;
		memcpy(hex, p, sizeof(hex));
		if (im_key_parse(hex, in.key) < 0)
			return -1;
		in.date = (int64_t)date;
		intent_add(st, &in);
		return 0;
	}
	case 'C':
		if (*p)
			return -1;
		st->pending = false;
		st->n_intents = 0;
		return 0;
	default:
		return -1;
	}
}

/*
 * Split TEXT into lines of at most MAX bytes and call FN on each; a last
 * line without a newline is given to FN only when LAST_COMPLETE.  Returns the failing line number
 * (1-based) or 0.
 */
static size_t
for_lines(const char *text, size_t len, bool last_complete, size_t max, void *ctx,
	  int (*fn)(void *ctx, const char *line, size_t lineno))
{
	size_t lineno = 0, pos = 0, bad = 0;
	char *buf = xmalloc(max + 1);

	while (pos < len) {
		const char *nl = memchr(text + pos, '\n', len - pos);
		size_t n = nl ? (size_t)(nl - (text + pos)) : len - pos;

		lineno++;
		if (!nl && !last_complete)
			break;
		if (n > max || memchr(text + pos, '\0', n) != NULL) {
			bad = lineno;
			break;
		}
		memcpy(buf, text + pos, n);
		buf[n] = '\0';
		if (fn(ctx, buf, lineno) < 0) {
			bad = lineno;
			break;
		}
		pos += n + (nl ? 1 : 0);
	}
	free(buf);
	return bad;
}

struct parse_ctx {
	struct im_state *st;
	int section;		/* 0 header, 1 map, 2 intents, 3 after end */
	uint64_t map_left;
	bool saw_end;
	bool saw_name;
};

static int
parse_line(void *ctx_, const char *line, size_t lineno)
{
	struct parse_ctx *ctx = ctx_;
	struct im_state *st = ctx->st;
	const char *p;
	uint64_t v;

	if (ctx->saw_end)
		return -1;
	if (lineno == 1)
		return strcmp(line, STATE_MAGIC) == 0 ? 0 : -1;
	if (ctx->section != 1 && strlen(line) > LINE_MAX_LEN && !st_str_has_prefix(line, "name "))
		return -1;
	if (ctx->section == 1) {
		uint32_t a, b;

		p = line;
		if (!parse_u32(&p, &a) || !skip_space(&p) || !parse_u32(&p, &b) || *p || a == 0 || b == 0)
			return -1;
		if (st->n_map > 0 && st->map[st->n_map - 1].src >= a)
			return -1;	/* written sorted */
		im_state_map_set(st, a, b);
		if (--ctx->map_left == 0)
			ctx->section = 0;
		return 0;
	}
	if (st_str_has_prefix(line, "src ")) {
		p = line + 4;
		if (*p == '\0' || strchr(p, ' ') != NULL || st->src_node != NULL)
			return -1;
		st->src_node = xstrdup(p);
		return 0;
	}
	if (st_str_has_prefix(line, "name ")) {
		char *name = im_name_unhex(line + 5);
		bool same = name != NULL && (st->name == NULL || strcmp(st->name, name) == 0);
		if (!same || ctx->saw_name) {
			free(name);
			return -1;
		}
		free(st->name);
		st->name = name;
		ctx->saw_name = true;
		return 0;
	}
	if (st_str_has_prefix(line, "uidvalidity ")) {
		p = line + 12;
		return parse_u32(&p, &st->src_uidvalidity) && skip_space(&p) &&
		       parse_u32(&p, &st->tgt_uidvalidity) && *p == '\0' ? 0 : -1;
	}
	if (st_str_has_prefix(line, "uidnext ")) {
		p = line + 8;
		return parse_u32(&p, &st->src_uidnext) && *p == '\0' ? 0 : -1;
	}
	if (st_str_has_prefix(line, "modseq ")) {
		p = line + 7;
		if (!parse_u64(&p, INT64_MAX, &v) || *p)
			return -1;
		st->src_modseq = v;
		return 0;
	}
	if (st_str_has_prefix(line, "map ")) {
		p = line + 4;
		if (!parse_u64(&p, UINT32_MAX, &v) || *p || st->n_map > 0)
			return -1;
		ctx->map_left = v;
		ctx->section = v > 0 ? 1 : 0;
		return 0;
	}
	if (line[0] == 'A' || line[0] == 'I')
		return apply_record(st, line);
	if (strcmp(line, "end") == 0) {
		ctx->saw_end = true;
		return 0;
	}
	return -1;
}

int
im_state_parse(struct im_state *st, const char *text, size_t len, char **error_r)
{
	struct parse_ctx ctx = { .st = st };
	size_t bad = for_lines(text, len, true, STATE_LINE_MAX, &ctx, parse_line);

	if (bad == 0 && (!ctx.saw_end || ctx.section == 1))
		bad = (size_t)-1;
	if (bad != 0) {
		if (bad == (size_t)-1)
			st_set_error(error_r, "state file is incomplete (no \"end\" line)");
		else
			st_set_error(error_r, "state file line %zu is not valid", bad);
		return -1;
	}
	return 0;
}

static int
replay_line(void *ctx, const char *line, size_t lineno)
{
	(void)lineno;
	return apply_record(ctx, line);
}

int
im_state_replay(struct im_state *st, const char *text, size_t len, char **error_r)
{
	size_t bad = for_lines(text, len, false, LINE_MAX_LEN, st, replay_line);

	if (bad != 0) {
		st_set_error(error_r, "journal line %zu is not valid", bad);
		return -1;
	}
	return 0;
}

char *
im_state_format(const struct im_state *st, size_t *len_r)
{
	struct st_buf b;

	st_buf_init(&b);
	st_buf_printf(&b, "%s\n", STATE_MAGIC);
	if (st->src_node)
		st_buf_printf(&b, "src %s\n", st->src_node);
	if (st->name) {
		char *hex = im_name_hex(st->name);
		st_buf_printf(&b, "name %s\n", hex);
		free(hex);
	}
	st_buf_printf(&b, "uidvalidity %" PRIu32 " %" PRIu32 "\nuidnext %" PRIu32 "\nmodseq %" PRIu64 "\n",
		      st->src_uidvalidity, st->tgt_uidvalidity, st->src_uidnext, st->src_modseq);
	st_buf_printf(&b, "map %zu\n", st->n_map);
	for (size_t i = 0; i < st->n_map; i++)
		st_buf_printf(&b, "%" PRIu32 " %" PRIu32 "\n", st->map[i].src, st->map[i].tgt);
	if (st->pending) {
		st_buf_printf(&b, "A %" PRIu32 "\n", st->intent_tgt_uidnext);
		for (size_t i = 0; i < st->n_intents; i++) {
			char hex[2 * IM_KEY_LEN + 1];

			im_key_hex(st->intents[i].key, hex);
			st_buf_printf(&b, "I %" PRIu32 " %" PRIu64 " %" PRId64 " %s\n", st->intents[i].src,
				      st->intents[i].size, st->intents[i].date, hex);
		}
	}
	st_buf_puts(&b, "end\n");
	*len_r = b.len;
	char *out = st_buf_steal(&b);
	st_buf_free(&b);
	return out;
}

void
im_state_reverse(struct im_state *st, const char *node)
{
	uint32_t v = st->src_uidvalidity;

	for (size_t i = 0; i < st->n_map; i++) {
		uint32_t t = st->map[i].src;
		st->map[i].src = st->map[i].tgt;
		st->map[i].tgt = t;
	}
	/* Re-sort by the new source UID (insertion sort: usually in order already). */
	for (size_t i = 1; i < st->n_map; i++) {
		struct im_pair x = st->map[i];
		size_t j = i;
		while (j > 0 && st->map[j - 1].src > x.src) {
			st->map[j] = st->map[j - 1];
			j--;
		}
		st->map[j] = x;
	}
	st->src_uidvalidity = st->tgt_uidvalidity;
	st->tgt_uidvalidity = v;
	st->src_uidnext = im_state_max_src(st) + 1;
	st->src_modseq = 0;
	free(st->src_node);
	st->src_node = xstrdup(node);
}

int
im_state_load(struct im_state *st, const char *path, const char *node, char **error_r)
{
	char *text = NULL, *err = NULL;
	size_t len = 0;

	st->path = xasprintf("%s.state", path);
	st->jpath = xasprintf("%s.journal", path);
	if (access(st->path, F_OK) == 0) {
		if (st_read_file(st->path, STATE_MAX, &text, &len, &err) < 0 ||
		    im_state_parse(st, text, len, &err) < 0) {
			st_set_error(error_r, "%s: %s", st->path, err);
			goto fail;
		}
		free(text);
		text = NULL;
	}
	if (access(st->jpath, F_OK) == 0) {
		if (st_read_file(st->jpath, STATE_MAX, &text, &len, &err) < 0 ||
		    im_state_replay(st, text, len, &err) < 0) {
			st_set_error(error_r, "%s: %s", st->jpath, err);
			goto fail;
		}
		free(text);
		text = NULL;
	}
	st->jfd = open(st->jpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (st->jfd < 0) {
		st_set_error(error_r, "cannot open %s: %s", st->jpath, strerror(errno));
		return -1;
	}
	/* A torn last line is dropped: start the next record on a new line. */
	struct stat sb;
	if (fstat(st->jfd, &sb) == 0 && sb.st_size > 0) {
		st->journal_bytes = (size_t)sb.st_size;
		if (im_state_checkpoint(st, error_r) < 0)
			return -1;
	}
	if (st->src_node == NULL)
		st->src_node = xstrdup(node);
	else if (strcmp(st->src_node, node) != 0) {
		im_state_reverse(st, node);
		if (im_state_checkpoint(st, error_r) < 0)
			return -1;
	}
	return 0;
fail:
	free(err);
	free(text);
	return -1;
}

int
im_state_log(struct im_state *st, char **error_r, const char *fmt, ...)
{
	char line[LINE_MAX_LEN + 2];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n > LINE_MAX_LEN || apply_record(st, line) < 0) {
		st_set_error(error_r, "internal error: bad journal record \"%s\"", line);
		return -1;
	}
	if (st->jfd < 0 || st->unjournaled)
		return 0;
	line[n++] = '\n';
	for (int off = 0; off < n;) {
		ssize_t w = write(st->jfd, line + off, (size_t)(n - off));
		if (w < 0) {
			if (errno == EINTR)
				continue;
			st_set_error(error_r, "cannot write %s: %s", st->jpath, strerror(errno));
			return -1;
		}
		off += (int)w;
		st->journal_bytes += (size_t)w;
	}
	return 0;
}

int
im_state_sync(struct im_state *st, char **error_r)
{
	if (st->jfd >= 0 && !st->unjournaled && fdatasync(st->jfd) < 0) {
		st_set_error(error_r, "cannot fdatasync %s: %s", st->jpath, strerror(errno));
		return -1;
	}
	return 0;
}

int
im_state_checkpoint(struct im_state *st, char **error_r)
{
	size_t len;
	char *text;
	int rc;

	if (st->path == NULL)
		return 0;
	text = im_state_format(st, &len);
	rc = st_durable_write(st->path, text, len, 0600, error_r);
	free(text);
	if (rc < 0)
		return -1;
	/* An empty journal (nothing written since it was last emptied) stays. */
	if (st->jfd >= 0 && !st->unjournaled && st->journal_bytes > 0) {
		if (ftruncate(st->jfd, 0) < 0 || fdatasync(st->jfd) < 0) {
			st_set_error(error_r, "cannot empty %s: %s", st->jpath, strerror(errno));
			return -1;
		}
	}
	st->journal_bytes = 0;
	st->unjournaled = false;
	return 0;
}

int
im_state_remove(const char *path, char **error_r)
{
	char *s = xasprintf("%s.state", path), *j = xasprintf("%s.journal", path);
	int rc = 0;

	if ((unlink(j) < 0 && errno != ENOENT) || (unlink(s) < 0 && errno != ENOENT)) {
		st_set_error(error_r, "cannot remove %s: %s", s, strerror(errno));
		rc = -1;
	}
	if (rc == 0 && st_fsync_parent_dir(s, error_r) < 0)
		rc = -1;
	free(s);
	free(j);
	return rc;
}

/* Dovecot's replication FIFO line (imstate.h). */
char *
im_notice_parse(const char *line, size_t len)
{
	const char *tab = memchr(line, '\t', len);
	size_t end = tab ? (size_t)(tab - line) : len;
	char *out = xmalloc(end + 1);
	size_t o = 0;

	for (size_t i = 0; i < end; i++) {
		unsigned char c = (unsigned char)line[i];
		if (c == 0x01) {
			if (++i == end)
				goto bad;
			switch (line[i]) {
			case '1': c = 0x01; break;
			case 't': c = '\t'; break;
			case 'r': c = '\r'; break;
			case 'n': c = '\n'; break;
			default: goto bad;	/* '0' (NUL) and anything else */
			}
		}
		/* A name standin can log in as: no control character or space. */
		if (c <= ' ' || c == 0x7f)
			goto bad;
		out[o++] = (char)c;
	}
	if (o == 0 || o > 255)
		goto bad;
	out[o] = '\0';
	return out;
bad:
	free(out);
	return NULL;
}
