/*
 * test-imstate: standin-imaprepl's durable folder state (imstate.c): the
 * state file, the journal and its torn last line, a crash between the
 * checkpoint and the journal truncation, the reverse direction, names;
 * mailbox names on the wire and long folder names' state files (imname.c);
 * the server certificate check (imtls.c) on certificates made with openssl.
 */
#include "config.h"

#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>

#include "lib/durable.h"
#include "replicators/imap/imname.h"
#include "replicators/imap/imstate.h"
#include "replicators/imap/imtls.h"
#include "tests/unit/testutil.h"

static const char KEY[] = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

static void
append_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0600);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
}

START_TEST(parse_format_roundtrip)
{
	const char *text = "standin-imaprepl-folder 1\nsrc a\nuidvalidity 17 42\nuidnext 5\nmodseq 9\n"
			   "map 2\n1 1\n3 2\nend\n";
	struct im_state st, again;
	char *err = NULL, *out;
	size_t len;

	im_state_init(&st);
	ck_assert_int_eq(im_state_parse(&st, text, strlen(text), &err), 0);
	ck_assert_str_eq(st.src_node, "a");
	ck_assert_uint_eq(st.src_uidvalidity, 17);
	ck_assert_uint_eq(st.tgt_uidvalidity, 42);
	ck_assert_uint_eq(st.n_map, 2);
	ck_assert_uint_eq(im_state_find(&st, 3)->tgt, 2);
	ck_assert_ptr_null(im_state_find(&st, 2));
	out = im_state_format(&st, &len);
	ck_assert_str_eq(out, text);
	im_state_init(&again);
	ck_assert_int_eq(im_state_parse(&again, out, len, &err), 0);
	ck_assert_uint_eq(again.n_map, 2);
	free(out);
	im_state_free(&again);
	im_state_free(&st);
}
END_TEST

START_TEST(parse_errors_name_the_line)
{
	static const char *const bad[] = {
		"standin-imaprepl-folder 2\nend\n",
		"standin-imaprepl-folder 1\nuidvalidity x 1\nend\n",
		"standin-imaprepl-folder 1\nmap 2\n1 1\nend\n",
		"standin-imaprepl-folder 1\nmap 2\n3 1\n2 2\nend\n",	/* not sorted */
		"standin-imaprepl-folder 1\nuidnext 99999999999\nend\n",
		"standin-imaprepl-folder 1\nuidnext 5\n",		/* no end */
		"standin-imaprepl-folder 1\nend\nuidnext 5\n",
		"standin-imaprepl-folder 1\nI 1 2 3 abc\nend\n",	/* I outside a batch */
	};
	for (size_t i = 0; i < ST_ARRAY_SIZE(bad); i++) {
		struct im_state st;
		char *err = NULL;

		im_state_init(&st);
		ck_assert_msg(im_state_parse(&st, bad[i], strlen(bad[i]), &err) < 0, "accepted case %zu", i);
		ck_assert_ptr_nonnull(err);
		ck_assert_msg(strstr(err, "line") != NULL || strstr(err, "incomplete") != NULL, "%s", err);
		free(err);
		im_state_free(&st);
	}
	/* A NUL byte. */
	struct im_state st;
	char *err = NULL;
	im_state_init(&st);
	ck_assert_int_lt(im_state_parse(&st, "standin-imaprepl-folder 1\n\0end\n", 31, &err), 0);
	free(err);
	im_state_free(&st);
}
END_TEST

START_TEST(journal_replay_and_torn_line)
{
	struct im_state st;
	char *err = NULL;
	char *j = xasprintf("V 17 42\nM 1 1\nM 3 2\nU 4\nQ 12\nA 3\nI 4 120 1700000000 %s\nM 4 3\nC\nX 1\nM 5 4",
			    KEY);

	im_state_init(&st);
	ck_assert_int_eq(im_state_replay(&st, j, strlen(j), &err), 0);
	/* "M 5 4" has no newline: a torn write, ignored. */
	ck_assert_uint_eq(st.n_map, 2);
	ck_assert_ptr_null(im_state_find(&st, 1));
	ck_assert_uint_eq(im_state_find(&st, 4)->tgt, 3);
	ck_assert_ptr_null(im_state_find(&st, 5));
	ck_assert(!st.pending);
	ck_assert_uint_eq(st.src_uidnext, 4);
	ck_assert_uint_eq(st.src_modseq, 12);
	im_state_free(&st);
	free(j);

	im_state_init(&st);
	ck_assert_int_lt(im_state_replay(&st, "M 1 1\nZ 2\n", 10, &err), 0);
	ck_assert_ptr_nonnull(strstr(err, "line 2"));
	free(err);
	im_state_free(&st);
}
END_TEST

START_TEST(pending_batch_survives)
{
	struct im_state st;
	char *err = NULL;
	char *j = xasprintf("V 1 2\nA 10\nI 7 100 5 %s\nI 8 200 6 %s\nM 7 10\n", KEY, KEY);

	im_state_init(&st);
	ck_assert_int_eq(im_state_replay(&st, j, strlen(j), &err), 0);
	ck_assert(st.pending);
	ck_assert_uint_eq(st.intent_tgt_uidnext, 10);
	ck_assert_uint_eq(st.n_intents, 2);
	ck_assert_uint_eq(st.intents[1].size, 200);
	/* The state file keeps the batch. */
	size_t len;
	char *text = im_state_format(&st, &len);
	struct im_state again;
	im_state_init(&again);
	ck_assert_int_eq(im_state_parse(&again, text, len, &err), 0);
	ck_assert(again.pending);
	ck_assert_uint_eq(again.n_intents, 2);
	ck_assert_int_eq(memcmp(again.intents[0].key, st.intents[0].key, IM_KEY_LEN), 0);
	free(text);
	free(j);
	im_state_free(&again);
	im_state_free(&st);
}
END_TEST

START_TEST(files_checkpoint_and_crash_between)
{
	char *dir = tu_mkdtemp(), *base = xasprintf("%s/f", dir), *err = NULL;
	struct im_state st;

	im_state_init(&st);
	ck_assert_int_eq(im_state_load(&st, base, "a", &err), 0);
	ck_assert_int_eq(im_state_log(&st, &err, "V 5 6"), 0);
	ck_assert_int_eq(im_state_log(&st, &err, "M 1 1"), 0);
	ck_assert_int_eq(im_state_log(&st, &err, "M 2 2"), 0);
	ck_assert_int_eq(im_state_sync(&st, &err), 0);
	im_state_free(&st);		/* "crash": no checkpoint */

	im_state_init(&st);
	ck_assert_int_eq(im_state_load(&st, base, "a", &err), 0);
	ck_assert_uint_eq(st.n_map, 2);
	ck_assert_int_eq(im_state_log(&st, &err, "X 1"), 0);
	ck_assert_int_eq(im_state_checkpoint(&st, &err), 0);
	im_state_free(&st);

	/* A crash after the state file was rewritten but before the journal was emptied. */
	char *jpath = xasprintf("%s.journal", base);
	append_file(jpath, "M 2 2\nX 1\nM 3 3\n");
	im_state_init(&st);
	ck_assert_int_eq(im_state_load(&st, base, "a", &err), 0);
	ck_assert_uint_eq(st.n_map, 2);
	ck_assert_ptr_null(im_state_find(&st, 1));
	ck_assert_uint_eq(im_state_find(&st, 3)->tgt, 3);
	ck_assert_int_eq(im_state_log(&st, &err, "M 4 9"), 0);
	im_state_free(&st);

	/* A journal line the daemon cannot have written is refused, naming the file. */
	append_file(jpath, "garbage\n");
	im_state_init(&st);
	ck_assert_int_lt(im_state_load(&st, base, "a", &err), 0);
	ck_assert_ptr_nonnull(strstr(err, jpath));
	free(err);
	err = NULL;
	im_state_free(&st);

	ck_assert_int_eq(im_state_remove(base, &err), 0);
	ck_assert_int_ne(access(jpath, F_OK), 0);
	free(jpath);
	free(base);
	tu_rmdir(dir);
	free(dir);
}
END_TEST

START_TEST(reverse_direction)
{
	char *dir = tu_mkdtemp(), *base = xasprintf("%s/f", dir), *err = NULL;
	struct im_state st;

	im_state_init(&st);
	ck_assert_int_eq(im_state_load(&st, base, "a", &err), 0);
	ck_assert_int_eq(im_state_log(&st, &err, "V 5 6"), 0);
	ck_assert_int_eq(im_state_log(&st, &err, "M 1 3"), 0);
	ck_assert_int_eq(im_state_log(&st, &err, "M 2 1"), 0);
	ck_assert_int_eq(im_state_log(&st, &err, "M 7 2"), 0);
	ck_assert_int_eq(im_state_log(&st, &err, "Q 40"), 0);
	ck_assert_int_eq(im_state_checkpoint(&st, &err), 0);
	im_state_free(&st);

	/* Node b is the source now. */
	im_state_init(&st);
	ck_assert_int_eq(im_state_load(&st, base, "b", &err), 0);
	ck_assert_str_eq(st.src_node, "b");
	ck_assert_uint_eq(st.src_uidvalidity, 6);
	ck_assert_uint_eq(st.tgt_uidvalidity, 5);
	ck_assert_uint_eq(st.n_map, 3);
	ck_assert_uint_eq(st.map[0].src, 1);
	ck_assert_uint_eq(st.map[0].tgt, 2);
	ck_assert_uint_eq(st.map[2].src, 3);
	ck_assert_uint_eq(st.map[2].tgt, 1);
	ck_assert_uint_eq(st.src_uidnext, 4);
	ck_assert_uint_eq(st.src_modseq, 0);
	im_state_free(&st);
	free(base);
	tu_rmdir(dir);
	free(dir);
}
END_TEST

START_TEST(names_and_keys)
{
	static const char *const names[] = { "INBOX", "", "a/b c", "Entw\xc3\xbcrfe", "../x", "&AOQ-" };
	for (size_t i = 0; i < ST_ARRAY_SIZE(names); i++) {
		char *h = im_name_hex(names[i]), *back = im_name_unhex(h);
		ck_assert_ptr_null(strchr(h, '/'));
		ck_assert_ptr_nonnull(back);
		ck_assert_str_eq(back, names[i]);
		free(h);
		free(back);
	}
	ck_assert_ptr_null(im_name_unhex("y41"));
	ck_assert_ptr_null(im_name_unhex("x4"));
	ck_assert_ptr_null(im_name_unhex("x00"));
	unsigned char key[IM_KEY_LEN];
	char hex[2 * IM_KEY_LEN + 1];
	ck_assert_int_eq(im_key_parse(KEY, key), 0);
	im_key_hex(key, hex);
	ck_assert_str_eq(hex, KEY);
	ck_assert_int_lt(im_key_parse("0011", key), 0);
}
END_TEST

/* What im_mailbox_put writes for NAME (NULL: refused, *WHY_R says why). */
static char *
put(const char *name, size_t literal_max, const char **why_r)
{
	struct st_buf b;
	char *out = NULL;

	st_buf_init(&b);
	st_buf_puts(&b, "");
	*why_r = NULL;
	if (im_mailbox_put(&b, name, literal_max, why_r) == 0)
		out = st_buf_steal(&b);
	else
		ck_assert_uint_eq(b.len, 0);
	st_buf_free(&b);
	return out;
}

START_TEST(mailbox_names_on_the_wire)
{
	static const struct {
		const char *name, *wire;
	} ok[] = {
		{ "INBOX", "\"INBOX\"" },
		{ "", "\"\"" },
		{ "Say \"hi\" \\ there", "\"Say \\\"hi\\\" \\\\ there\"" },
		{ "{5}", "\"{5}\"" },
		{ "a) (b %*", "\"a) (b %*\"" },
		{ "Entw&APw-rfe", "\"Entw&APw-rfe\"" },
		/* 8-bit and control characters: a non-synchronising literal. */
		{ "Entw\xc3\xbcrfe", "{9+}\r\nEntw\xc3\xbcrfe" },
		{ "tab\there", "{8+}\r\ntab\there" },
	};
	const char *why;

	for (size_t i = 0; i < ST_ARRAY_SIZE(ok); i++) {
		char *w = put(ok[i].name, SIZE_MAX, &why);
		ck_assert_msg(w != NULL, "%s refused: %s", ok[i].name, why);
		ck_assert_str_eq(w, ok[i].wire);
		ck_assert_ptr_null(im_mailbox_refusal(ok[i].name));
		free(w);
	}
	/* The captured injection, and CR or LF alone: refused, whatever the server takes. */
	static const char *const bad[] = { "foo\r\nX1 DELETE INBOX\r\n", "a\rb", "a\nb", "\r\n", "x\n" };
	for (size_t i = 0; i < ST_ARRAY_SIZE(bad); i++) {
		ck_assert_ptr_null(put(bad[i], SIZE_MAX, &why));
		ck_assert_ptr_nonnull(why);
		ck_assert_ptr_nonnull(strstr(why, strchr(bad[i], '\r') ? "CR" : "LF"));
		ck_assert_ptr_nonnull(im_mailbox_refusal(bad[i]));
	}
	/* 8-bit where the server takes no LITERAL+ (or too long for LITERAL-): refused, not sent raw. */
	ck_assert_ptr_null(put("Entw\xc3\xbcrfe", 0, &why));
	ck_assert_ptr_nonnull(strstr(why, "LITERAL+"));
	char *w = put("Entw\xc3\xbcrfe", 4096, &why);
	ck_assert_ptr_nonnull(w);
	free(w);
	/* Too long to keep in a state file line. */
	char *huge = xmalloc(IM_MAILBOX_MAX + 2);
	memset(huge, 'a', IM_MAILBOX_MAX + 1);
	huge[IM_MAILBOX_MAX + 1] = '\0';
	ck_assert_ptr_nonnull(im_mailbox_refusal(huge));
	huge[IM_MAILBOX_MAX] = '\0';
	ck_assert_ptr_null(im_mailbox_refusal(huge));
	free(huge);
}
END_TEST

/* A name of N bytes. */
static char *
long_name(size_t n, char c)
{
	char *s = xmalloc(n + 1);

	memset(s, c, n);
	s[n] = '\0';
	return s;
}

START_TEST(long_folder_names_hashed_state_files)
{
	/* Up to 123 bytes: the hex name of earlier versions, unchanged (their states are found). */
	char *n123 = long_name(123, 'a'), *n124 = long_name(124, 'a'), *n300 = long_name(300, 'b');
	char *f = im_state_file_name(n123), *hex = im_name_hex(n123);
	ck_assert_str_eq(f, hex);
	ck_assert(!im_state_file_hashed(n123));
	ck_assert_uint_le(strlen(f) + strlen(".journal"), NAME_MAX);
	free(f);
	free(hex);
	f = im_state_file_name(n124);
	ck_assert(im_state_file_hashed(n124));
	ck_assert_uint_eq(strlen(f), 65);
	ck_assert_int_eq(f[0], 'h');
	free(f);
	char *d = im_state_dir_name("alice"), *d2 = im_state_dir_name(n300);
	ck_assert_str_eq(d, "x616c696365");
	ck_assert_uint_eq(strlen(d2), 65);
	free(d);
	free(d2);

	/* The state of a 300-byte name: the name is kept inside, and checked. */
	char *dir = tu_mkdtemp(), *file = im_state_file_name(n300), *base = xasprintf("%s/%s", dir, file);
	char *err = NULL;
	struct im_state st;
	im_state_init(&st);
	st.name = xstrdup(n300);
	ck_assert_int_eq(im_state_load(&st, base, "a", &err), 0);
	ck_assert_int_eq(im_state_log(&st, &err, "V 5 6"), 0);
	ck_assert_int_eq(im_state_log(&st, &err, "M 1 1"), 0);
	ck_assert_int_eq(im_state_checkpoint(&st, &err), 0);
	im_state_free(&st);
	/* Read back without knowing the name (the tree pass's listing of states). */
	im_state_init(&st);
	ck_assert_int_eq(im_state_load(&st, base, "a", &err), 0);
	ck_assert_ptr_nonnull(st.name);
	ck_assert_str_eq(st.name, n300);
	ck_assert_uint_eq(st.n_map, 1);
	im_state_free(&st);
	/* Expected to be another folder's: refused. */
	im_state_init(&st);
	st.name = xstrdup(n124);
	ck_assert_int_lt(im_state_load(&st, base, "a", &err), 0);
	free(err);
	err = NULL;
	im_state_free(&st);
	ck_assert_int_eq(im_state_remove(base, &err), 0);

	/* Short names keep no name line: files that earlier versions read. */
	size_t len;
	im_state_init(&st);
	char *text = im_state_format(&st, &len);
	ck_assert_ptr_null(strstr(text, "name "));
	free(text);
	im_state_free(&st);
	free(base);
	free(file);
	tu_rmdir(dir);
	free(dir);
	free(n123);
	free(n124);
	free(n300);
}
END_TEST

/* openssl, quietly, in DIR; the command from FMT. */
static void
sh(const char *dir, const char *fmt, ...) ST_PRINTF(2, 3);

static void
sh(const char *dir, const char *fmt, ...)
{
	va_list ap;
	char *what, *cmd;

	va_start(ap, fmt);
	what = xvasprintf(fmt, ap);
	va_end(ap);
	cmd = xasprintf("cd '%s' && %s >/dev/null 2>&1", dir, what);
	ck_assert_msg(system(cmd) == 0, "failed: %s", what);
	free(cmd);
	free(what);
}

/* A key and certificate NAME signed by CA (in DIR) with the extensions EXT; its DER bytes. */
static unsigned char *
make_cert(const char *dir, const char *ca, const char *name, const char *cn, const char *ext, size_t *len_r)
{
	char *extfile = xasprintf("%s/%s.ext", dir, name), *der = xasprintf("%s/%s.der", dir, name);
	char *text = NULL, *err = NULL;
	size_t len = 0;

	tu_write(extfile, ext, 0600);
	sh(dir, "openssl req -newkey rsa:2048 -nodes -subj /CN=%s -keyout %s.key -out %s.csr", cn, name, name);
	sh(dir, "openssl x509 -req -in %s.csr -CA %s.pem -CAkey %s.key -CAcreateserial -days 2 -extfile %s.ext "
		"-outform DER -out %s.der", name, ca, ca, name, name);
	ck_assert_int_eq(st_read_file(der, 1 << 20, &text, &len, &err), 0);
	free(extfile);
	free(der);
	*len_r = len;
	return (unsigned char *)text;
}

START_TEST(server_certificate_checks)
{
	char *dir = tu_mkdtemp(), *ca = xasprintf("%s/ca.pem", dir), *other = xasprintf("%s/other.pem", dir);
	const char *why;
	size_t n = 0;

	sh(dir, "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj '/CN=test CA' -keyout ca.key -out ca.pem");
	sh(dir, "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj '/CN=other CA' -keyout other.key "
		"-out other.pem");
	static const struct {
		const char *name, *cn, *ext, *host, *why;	/* why NULL: accepted */
	} cases[] = {
		{ "good", "imap.example.com", "subjectAltName = DNS:imap.example.com, IP:192.0.2.7, IP:2001:db8::7\n",
		  "imap.example.com", NULL },
		{ "good", NULL, NULL, "192.0.2.7", NULL },
		{ "good", NULL, NULL, "2001:db8::7", NULL },
		{ "good", NULL, NULL, "other.example.com", "hostname mismatch" },
		{ "good", NULL, NULL, "192.0.2.8", "IP address mismatch" },
		{ "good", NULL, NULL, "", "cannot check the certificate against the endpoint's host name" },
		/* A whole left-most label is a wildcard; a part of one is not (f*.example.com). */
		{ "wild", "x", "subjectAltName = DNS:*.example.com\n", "imap.example.com", NULL },
		{ "wild", NULL, NULL, "a.imap.example.com", "hostname mismatch" },
		{ "partial", "x", "subjectAltName = DNS:imap*.example.com\n", "imap1.example.com", "hostname mismatch" },
		/* The CN is never looked at, even without DNS entries. */
		{ "cn", "imap.example.com", "basicConstraints = CA:FALSE\n", "imap.example.com", "hostname mismatch" },
		{ "cnip", "192.0.2.7", "basicConstraints = CA:FALSE\n", "192.0.2.7", "IP address mismatch" },
		/* Not for a TLS server. */
		{ "client", "imap.example.com", "subjectAltName = DNS:imap.example.com\nextendedKeyUsage = clientAuth\n",
		  "imap.example.com", "unsuitable certificate purpose" },
		{ "server", "imap.example.com", "subjectAltName = DNS:imap.example.com\nextendedKeyUsage = serverAuth\n",
		  "imap.example.com", NULL },
	};
	unsigned char *der = NULL;

	for (size_t i = 0; i < ST_ARRAY_SIZE(cases); i++) {
		if (cases[i].ext != NULL) {
			free(der);
			der = make_cert(dir, "ca", cases[i].name, cases[i].cn, cases[i].ext, &n);
		}
		int rc = im_tls_check(der, n, ca, cases[i].host, &why);
		if (cases[i].why == NULL)
			ck_assert_msg(rc == 0, "%s for %s refused: %s", cases[i].name, cases[i].host, why);
		else
			ck_assert_msg(rc < 0 && strcmp(why, cases[i].why) == 0, "%s for %s: %d %s", cases[i].name,
				      cases[i].host, rc, why ? why : "accepted");
	}
	/* Another CA's. */
	ck_assert_int_lt(im_tls_check(der, n, other, "imap.example.com", &why), 0);
	ck_assert_str_eq(why, "unable to get local issuer certificate");
	/* None at all, or garbage. */
	ck_assert_int_lt(im_tls_check(NULL, 0, ca, "imap.example.com", &why), 0);
	ck_assert_str_eq(why, "the server sent no certificate");
	ck_assert_int_lt(im_tls_check((const unsigned char *)"xyz", 3, ca, "imap.example.com", &why), 0);
	free(der);
	free(ca);
	free(other);
	tu_rmdir(dir);
	free(dir);
}
END_TEST

START_TEST(map_operations)
{
	struct im_state st;

	im_state_init(&st);
	for (uint32_t i = 1000; i > 0; i--)
		im_state_map_set(&st, i * 2, i);
	ck_assert_uint_eq(st.n_map, 1000);
	for (size_t i = 1; i < st.n_map; i++)
		ck_assert_uint_lt(st.map[i - 1].src, st.map[i].src);
	ck_assert_uint_eq(im_state_max_src(&st), 2000);
	im_state_map_del(&st, 2000);
	im_state_map_del(&st, 3);
	ck_assert_uint_eq(st.n_map, 999);
	im_state_map_set(&st, 4, 77);
	ck_assert_uint_eq(im_state_find(&st, 4)->tgt, 77);
	im_state_free(&st);
}
END_TEST

START_TEST(dovecot_notice_lines)
{
	char *u;
	static const char *const bad[] = {
		"", "\tlow", "a b\thigh", "a\x01", "a\x01" "0b\tlow", "a\x01zb", "ctl\x07x\tlow", "del\x7f",
		"tab\x01tname", "cr\x01rx",
	};

	u = im_notice_parse("alice\thigh", 10);
	ck_assert_str_eq(u, "alice");
	free(u);
	u = im_notice_parse("bob@example.com", 15);	/* no priority: still a name */
	ck_assert_str_eq(u, "bob@example.com");
	free(u);
	u = im_notice_parse("we\x01" "1ird\tlow", 10);	/* \001 1: a literal \001 is a control: refused */
	ck_assert_ptr_null(u);
	u = im_notice_parse("J\xc3\xbcrgen\tlow", 11);	/* 8-bit is kept as it is */
	ck_assert_str_eq(u, "J\xc3\xbcrgen");
	free(u);
	for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++)
		ck_assert_msg(im_notice_parse(bad[i], strlen(bad[i])) == NULL, "accepted %s", bad[i]);
	/* A NUL inside the line ends nothing: it is refused. */
	ck_assert_ptr_null(im_notice_parse("a\0b\tlow", 7));
	char longname[300];
	memset(longname, 'x', sizeof(longname));
	ck_assert_ptr_null(im_notice_parse(longname, 256));
	u = im_notice_parse(longname, 255);
	ck_assert_uint_eq(strlen(u), 255);
	free(u);
}
END_TEST

static Suite *
imstate_suite(void)
{
	Suite *s = suite_create("imstate");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, parse_format_roundtrip);
	tcase_add_test(tc, parse_errors_name_the_line);
	tcase_add_test(tc, journal_replay_and_torn_line);
	tcase_add_test(tc, pending_batch_survives);
	tcase_add_test(tc, files_checkpoint_and_crash_between);
	tcase_add_test(tc, reverse_direction);
	tcase_add_test(tc, names_and_keys);
	tcase_add_test(tc, map_operations);
	tcase_add_test(tc, mailbox_names_on_the_wire);
	tcase_add_test(tc, long_folder_names_hashed_state_files);
	tcase_add_test(tc, server_certificate_checks);
	tcase_add_test(tc, dovecot_notice_lines);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(imstate_suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
