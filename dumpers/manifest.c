/*
 * manifest.c: render, parse and check the manifest of a dump.
 *
 * The parser is strict (it runs on files an operator may have damaged, and
 * under libFuzzer): every line is checked, every problem is reported with
 * its line, and a manifest without its "end N" line is refused.
 */
#include "config.h"

#include "dumpers/manifest.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MANIFEST_MAX_ERRORS 20
#define MANIFEST_MAX_FILES 1000000

void
dump_manifest_init(struct dump_manifest *m)
{
	memset(m, 0, sizeof(*m));
	m->lag_ms = -1;
}

void
dump_manifest_free(struct dump_manifest *m)
{
	free(m->service);
	free(m->node);
	free(m->role);
	free(m->master);
	free(m->format);
	free(m->compress);
	free(m->position);
	for (size_t i = 0; i < m->n_files; i++)
		free(m->files[i].name);
	free(m->files);
	dump_manifest_init(m);
}

void
dump_manifest_add_file(struct dump_manifest *m, const char *name, uint64_t size,
		       const char *sha256)
{
	m->files = xrealloc(m->files, (m->n_files + 1) * sizeof(*m->files));
	m->files[m->n_files].name = xstrdup(name);
	m->files[m->n_files].size = size;
	snprintf(m->files[m->n_files].sha256, sizeof(m->files[m->n_files].sha256), "%s", sha256);
	m->n_files++;
}

void
dump_format_time(time_t t, char out[17])
{
	struct tm tm;

	gmtime_r(&t, &tm);
	strftime(out, 17, "%Y%m%dT%H%M%SZ", &tm);
}

int
dump_parse_time(const char *s, time_t *t_r)
{
	struct tm tm;
	int n[6];
	static const int width[6] = { 4, 2, 2, 2, 2, 2 };
	const char *p = s;

	if (strlen(s) != 16 || s[8] != 'T' || s[15] != 'Z')
		return -1;
	for (int i = 0; i < 6; i++) {
		n[i] = 0;
		for (int k = 0; k < width[i]; k++, p++) {
			if (!isdigit((unsigned char)*p))
				return -1;
			n[i] = n[i] * 10 + (*p - '0');
		}
		if (i == 2)
			p++;	/* the T */
	}
	if (n[0] < 1970 || n[1] < 1 || n[1] > 12 || n[2] < 1 || n[2] > 31 || n[3] > 23 ||
	    n[4] > 59 || n[5] > 60)
		return -1;
	memset(&tm, 0, sizeof(tm));
	tm.tm_year = n[0] - 1900;
	tm.tm_mon = n[1] - 1;
	tm.tm_mday = n[2];
	tm.tm_hour = n[3];
	tm.tm_min = n[4];
	tm.tm_sec = n[5];
	*t_r = timegm(&tm);
	return 0;
}

bool
dump_safe_relpath(const char *s)
{
	const char *comp = s;

	if (*s == '\0' || strlen(s) > 4096)
		return false;
	for (const char *p = s;; p++) {
		if (*p == '/' || *p == '\0') {
			size_t len = (size_t)(p - comp);
			if (len == 0 || (len == 1 && comp[0] == '.') ||
			    (len == 2 && comp[0] == '.' && comp[1] == '.'))
				return false;
			if (*p == '\0')
				return true;
			comp = p + 1;
		} else if ((unsigned char)*p < 0x20 || *p == 0x7f) {
			return false;
		}
	}
}

static bool
one_line(const char *s)
{
	for (; *s; s++) {
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return false;
	}
	return true;
}

void
dump_manifest_format(const struct dump_manifest *m, struct st_buf *out)
{
	char created[17];

	dump_format_time(m->created, created);
	st_buf_printf(out, "standin-dump-manifest %d\n", DUMP_MANIFEST_VERSION);
	st_buf_printf(out, "service %s\n", m->service);
	st_buf_printf(out, "node %s\n", m->node);
	st_buf_printf(out, "role %s\n", m->role);
	if (m->master != NULL)
		st_buf_printf(out, "master %s\n", m->master);
	st_buf_printf(out, "epoch %" PRIu64 "\n", m->epoch);
	st_buf_printf(out, "created %s\n", created);
	st_buf_printf(out, "format %s\n", m->format);
	st_buf_printf(out, "compress %s\n", m->compress);
	st_buf_printf(out, "lag_ms %lld\n", m->lag_ms);
	if (m->position != NULL && m->position[0] != '\0' && one_line(m->position))
		st_buf_printf(out, "position %s\n", m->position);
	for (size_t i = 0; i < m->n_files; i++)
		st_buf_printf(out, "file %" PRIu64 " %s %s\n", m->files[i].size, m->files[i].sha256,
			      m->files[i].name);
	st_buf_printf(out, "end %zu\n", m->n_files);
}

/* ---------------------------------------------------------------------- */

struct mparser {
	const char *name;
	struct st_buf errors;
	unsigned n_errors;
};

static void ST_PRINTF(3, 4)
merr(struct mparser *P, unsigned line, const char *fmt, ...)
{
	va_list ap;

	if (++P->n_errors > MANIFEST_MAX_ERRORS)
		return;
	if (P->errors.len > 0)
		st_buf_puts(&P->errors, "\n");
	if (line > 0)
		st_buf_printf(&P->errors, "%s:%u: ", P->name, line);
	else
		st_buf_printf(&P->errors, "%s: ", P->name);
	va_start(ap, fmt);
	char *msg = xvasprintf(fmt, ap);
	va_end(ap);
	st_buf_puts(&P->errors, msg);
	free(msg);
}

static bool
parse_u64(const char *s, uint64_t *v_r)
{
	uint64_t v = 0;

	if (*s == '\0' || strlen(s) > 20)
		return false;
	for (; *s; s++) {
		if (!isdigit((unsigned char)*s))
			return false;
		if (v > (UINT64_MAX - (uint64_t)(*s - '0')) / 10)
			return false;
		v = v * 10 + (uint64_t)(*s - '0');
	}
	*v_r = v;
	return true;
}

static bool
is_token(const char *s)
{
	if (*s == '\0' || strlen(s) > 64)
		return false;
	for (; *s; s++) {
		if (!isalnum((unsigned char)*s) && *s != '_' && *s != '-' && *s != '.')
			return false;
	}
	return true;
}

static bool
is_sha256_hex(const char *s)
{
	if (strlen(s) != DUMP_SHA256_HEX)
		return false;
	for (; *s; s++) {
		if (!isdigit((unsigned char)*s) && !(*s >= 'a' && *s <= 'f'))
			return false;
	}
	return true;
}

/* A string key: set once, a token unless ANY. */
static void
set_string(struct mparser *P, unsigned line, const char *key, char **field, const char *value,
	   bool any)
{
	if (*field != NULL) {
		merr(P, line, "%s given twice", key);
		return;
	}
	if (any ? (*value == '\0') : !is_token(value)) {
		merr(P, line, "%s: bad value \"%.40s\"", key, value);
		return;
	}
	*field = xstrdup(value);
}

static void
parse_file_line(struct mparser *P, unsigned line, char *value, struct dump_manifest *m)
{
	char *size_s = value, *sha, *name;
	uint64_t size;

	sha = strchr(size_s, ' ');
	if (sha == NULL) {
		merr(P, line, "file: expected \"file SIZE SHA256 NAME\"");
		return;
	}
	*sha++ = '\0';
	name = strchr(sha, ' ');
	if (name == NULL) {
		merr(P, line, "file: expected \"file SIZE SHA256 NAME\"");
		return;
	}
	*name++ = '\0';
	if (!parse_u64(size_s, &size)) {
		merr(P, line, "file: bad size \"%.24s\"", size_s);
		return;
	}
	if (!is_sha256_hex(sha)) {
		merr(P, line, "file: bad SHA-256 \"%.70s\" (64 lowercase hex digits)", sha);
		return;
	}
	if (!dump_safe_relpath(name)) {
		merr(P, line, "file: unsafe name \"%.80s\"", name);
		return;
	}
	if (m->n_files >= MANIFEST_MAX_FILES) {
		merr(P, line, "too many files");
		return;
	}
	for (size_t i = 0; i < m->n_files; i++) {
		if (strcmp(m->files[i].name, name) == 0) {
			merr(P, line, "file %.80s listed twice", name);
			return;
		}
	}
	dump_manifest_add_file(m, name, size, sha);
}

int
dump_manifest_parse(const char *name, const char *data, size_t len, struct dump_manifest *m,
		    char **error_r)
{
	struct mparser P = { .name = name };
	bool have_epoch = false, have_created = false, have_lag = false, ended = false;
	unsigned line = 0;
	size_t pos = 0;

	dump_manifest_init(m);
	st_buf_init(&P.errors);
	if (len > DUMP_MANIFEST_MAX) {
		merr(&P, 0, "larger than %d bytes", DUMP_MANIFEST_MAX);
		goto out;
	}
	if (memchr(data, '\0', len) != NULL) {
		merr(&P, 0, "contains a NUL byte");
		goto out;
	}
	if (len == 0) {
		merr(&P, 0, "empty");
		goto out;
	}
	if (data[len - 1] != '\n')
		merr(&P, 0, "does not end with a newline (truncated?)");
	while (pos < len && P.n_errors <= MANIFEST_MAX_ERRORS) {
		const char *nl = memchr(data + pos, '\n', len - pos);
		size_t llen = nl ? (size_t)(nl - (data + pos)) : len - pos;
		char *text = xstrndup(data + pos, llen), *key = text, *value;

		pos += llen + (nl ? 1 : 0);
		line++;
		value = strchr(text, ' ');
		if (value != NULL)
			*value++ = '\0';
		else
			value = text + strlen(text);
		if (!one_line(value)) {
			merr(&P, line, "control character in the value");
		} else if (ended) {
			merr(&P, line, "text after the end line");
		} else if (line == 1) {
			if (strcmp(key, "standin-dump-manifest") != 0)
				merr(&P, line, "not a standin dump manifest");
			else if (strcmp(value, "1") != 0)
				merr(&P, line, "unsupported manifest version \"%.20s\" (this standinctl "
				     "reads version %d)", value, DUMP_MANIFEST_VERSION);
		} else if (strcmp(key, "service") == 0) {
			set_string(&P, line, key, &m->service, value, false);
		} else if (strcmp(key, "node") == 0) {
			set_string(&P, line, key, &m->node, value, false);
		} else if (strcmp(key, "role") == 0) {
			set_string(&P, line, key, &m->role, value, false);
		} else if (strcmp(key, "master") == 0) {
			set_string(&P, line, key, &m->master, value, false);
		} else if (strcmp(key, "format") == 0) {
			set_string(&P, line, key, &m->format, value, false);
		} else if (strcmp(key, "compress") == 0) {
			set_string(&P, line, key, &m->compress, value, false);
		} else if (strcmp(key, "position") == 0) {
			set_string(&P, line, key, &m->position, value, true);
		} else if (strcmp(key, "epoch") == 0) {
			if (have_epoch || !parse_u64(value, &m->epoch))
				merr(&P, line, have_epoch ? "epoch given twice" : "epoch: bad number");
			have_epoch = true;
		} else if (strcmp(key, "created") == 0) {
			if (have_created || dump_parse_time(value, &m->created) < 0)
				merr(&P, line, have_created ? "created given twice" :
				     "created: expected YYYYmmddTHHMMSSZ");
			have_created = true;
		} else if (strcmp(key, "lag_ms") == 0) {
			uint64_t v;
			if (have_lag)
				merr(&P, line, "lag_ms given twice");
			else if (strcmp(value, "-1") == 0)
				m->lag_ms = -1;
			else if (parse_u64(value, &v) && v <= INT64_MAX / 2)
				m->lag_ms = (long long)v;
			else
				merr(&P, line, "lag_ms: bad number");
			have_lag = true;
		} else if (strcmp(key, "file") == 0) {
			parse_file_line(&P, line, value, m);
		} else if (strcmp(key, "end") == 0) {
			uint64_t n;
			if (!parse_u64(value, &n) || n != m->n_files)
				merr(&P, line, "end: %.20s files announced, %zu listed", value,
				     m->n_files);
			ended = true;
		} else {
			merr(&P, line, "unknown key \"%.40s\"", key);
		}
		free(text);
	}
	if (P.n_errors > 0)
		goto out;
	if (!ended)
		merr(&P, 0, "no end line (truncated?)");
	if (m->service == NULL)
		merr(&P, 0, "missing service");
	if (m->node == NULL)
		merr(&P, 0, "missing node");
	if (m->role == NULL)
		merr(&P, 0, "missing role");
	if (!have_created)
		merr(&P, 0, "missing created");
	if (m->format == NULL)
		merr(&P, 0, "missing format");
	if (m->compress == NULL)
		merr(&P, 0, "missing compress");
	if (m->n_files == 0)
		merr(&P, 0, "lists no file");
out:
	if (P.n_errors > MANIFEST_MAX_ERRORS)
		st_buf_printf(&P.errors, "\n%s: %u more errors", name, P.n_errors - MANIFEST_MAX_ERRORS);
	if (P.n_errors > 0) {
		dump_manifest_free(m);
		if (error_r != NULL) {
			free(*error_r);
			*error_r = st_buf_steal(&P.errors);
		}
		st_buf_free(&P.errors);
		return -1;
	}
	st_buf_free(&P.errors);
	return 0;
}

/* ---------------------------------------------------------------------- */

int
dump_sha256_file(const char *path, char hex_r[DUMP_SHA256_HEX + 1], uint64_t *size_r,
		 char **error_r)
{
	static const char digits[] = "0123456789abcdef";
	unsigned char md[EVP_MAX_MD_SIZE], *buf = NULL;
	unsigned int mdlen = 0;
	EVP_MD_CTX *ctx = NULL;
	uint64_t size = 0;
	int fd, ret = -1;
	ssize_t n;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		st_set_error(error_r, "%s: %s", path, strerror(errno));
		return -1;
	}
	buf = xmalloc(1 << 20);
	ctx = EVP_MD_CTX_new();
	if (ctx == NULL || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
		st_set_error(error_r, "%s: cannot start SHA-256 (OpenSSL)", path);
		goto out;
	}
	while ((n = read(fd, buf, 1 << 20)) != 0) {
		if (n < 0) {
			if (errno == EINTR)
				continue;
			st_set_error(error_r, "%s: read: %s", path, strerror(errno));
			goto out;
		}
		EVP_DigestUpdate(ctx, buf, (size_t)n);
		size += (uint64_t)n;
	}
	if (EVP_DigestFinal_ex(ctx, md, &mdlen) != 1 || mdlen != 32) {
		st_set_error(error_r, "%s: SHA-256 failed (OpenSSL)", path);
		goto out;
	}
	for (unsigned i = 0; i < mdlen; i++) {
		hex_r[2 * i] = digits[md[i] >> 4];
		hex_r[2 * i + 1] = digits[md[i] & 15];
	}
	hex_r[DUMP_SHA256_HEX] = '\0';
	*size_r = size;
	ret = 0;
out:
	EVP_MD_CTX_free(ctx);
	free(buf);
	close(fd);
	return ret;
}
