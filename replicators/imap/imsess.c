/*
 * imsess.c: IMAP sessions over libetpan (see imsess.h).
 *
 * libetpan 1.9.4 traps handled here: unsolicited EXPUNGE/VANISHED are not
 * relied upon (expunges are found by UID comparison); every wait is
 * bounded by mailimap_set_timeout; data already in the stream's read
 * buffer when IDLE starts is reported, since the descriptor would not
 * become readable for it.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/select.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <libetpan/libetpan.h>
#include <openssl/evp.h>

#include "lib/conf.h"
#include "lib/log.h"
#include "replicators/imap/imname.h"
#include "replicators/imap/imsess.h"
#include "replicators/imap/imtls.h"

struct im_sess {
	mailimap *imap;
	char *desc;		/* "IMAP server of node b (127.0.0.1:10143) as alice" */
	char *error;
	bool broken;
	bool idling;
	bool qresync;		/* ENABLE QRESYNC done */
	bool no_multiappend;	/* the server refused one: append one by one */
	bool selected;		/* a mailbox is selected */
	char *selected_name;	/* which (when selected) */
	const struct im_login *login;
};

/* -- endpoints ---------------------------------------------------------- */

void
im_endpoint_free(struct im_endpoint *ep)
{
	free(ep->host);
	ep->host = NULL;
}

/* -- errors ------------------------------------------------------------- */

static const char *
etpan_error(int r)
{
	switch (r) {
	case MAILIMAP_ERROR_STREAM:
		return "connection lost or timed out";
	case MAILIMAP_ERROR_PARSE:
		return "reply not understood";
	case MAILIMAP_ERROR_CONNECTION_REFUSED:
		return "connection refused";
	case MAILIMAP_ERROR_MEMORY:
		return "out of memory";
	case MAILIMAP_ERROR_LOGIN:
		return "login refused";
	case MAILIMAP_ERROR_SSL:
		return "TLS handshake failed (certificate not trusted, or not TLS)";
	case MAILIMAP_ERROR_PROTOCOL:
		return "protocol error";
	default:
		return "command refused";
	}
}

static int
fail(struct im_sess *s, int r, const char *fmt, ...) ST_PRINTF(3, 4);

static int
fail(struct im_sess *s, int r, const char *fmt, ...)
{
	va_list ap;
	char *what;
	const char *said = s->imap && s->imap->imap_response ? s->imap->imap_response : NULL;

	va_start(ap, fmt);
	what = xvasprintf(fmt, ap);
	va_end(ap);
	free(s->error);
	if (said && *said && r != MAILIMAP_ERROR_STREAM)
		s->error = xasprintf("%s: %s: %s (server said: %s)", s->desc, what, etpan_error(r), said);
	else
		s->error = xasprintf("%s: %s: %s", s->desc, what, etpan_error(r));
	free(what);
	if (r == MAILIMAP_ERROR_STREAM || r == MAILIMAP_ERROR_PARSE || r == MAILIMAP_ERROR_PROTOCOL ||
	    r == MAILIMAP_ERROR_MEMORY || r == MAILIMAP_ERROR_FATAL)
		s->broken = true;
	return -1;
}

/* -- commands that carry a mailbox name ---------------------------------- */

/*
 * libetpan writes mailbox names itself with CR and LF as they are (issue
 * 30): every command that carries one is written by standin instead, the
 * name through im_mailbox_put (imname.h), and sent and answered here with
 * libetpan's lower-level calls: its tag, then the command, then its parser
 * for the answer, which fills imap_response_info (and imap_selection_info
 * where there is one) as for its own commands.
 */

/* The longest non-synchronising literal the server takes (RFC 7888). */
static size_t
literal_max(const struct im_sess *s)
{
	if (im_sess_has(s, "LITERAL+"))
		return SIZE_MAX;
	return im_sess_has(s, "LITERAL-") ? 4096 : 0;
}

/* MAILBOX into CMD, or the session's error (not a broken one) saying why it cannot be sent. */
static int
put_name(struct im_sess *s, struct st_buf *cmd, const char *verb, const char *mailbox)
{
	const char *why = NULL;

	if (im_mailbox_put(cmd, mailbox, literal_max(s), &why) == 0)
		return 0;
	free(s->error);
	s->error = xasprintf("%s: %s %s not sent: the folder name %s", s->desc, verb, st_q(mailbox), why);
	return -1;
}

/* The tag, then LEN bytes of CMD (no CRLF), flushed. */
static int
send_tagged(struct im_sess *s, const char *cmd, size_t len)
{
	mailstream *fd = s->imap->imap_stream;
	int r;

	if (fd == NULL)
		return MAILIMAP_ERROR_STREAM;
	r = mailimap_send_current_tag(s->imap);
	if (r != MAILIMAP_NO_ERROR)
		return r;
	if (mailstream_write(fd, cmd, len) != (ssize_t)len || mailstream_flush(fd) == -1)
		return MAILIMAP_ERROR_STREAM;
	return MAILIMAP_NO_ERROR;
}

/* Parse the answer from the line already read on: OK, refused (NO) or a libetpan error. */
static int
parse_done(struct im_sess *s)
{
	struct mailimap_response *resp = NULL;
	int r = mailimap_parse_response(s->imap, &resp), code;

	if (r != MAILIMAP_NO_ERROR)
		return r;
	code = resp->rsp_resp_done->rsp_data.rsp_tagged->rsp_cond_state->rsp_type;
	mailimap_response_free(resp);
	return code == MAILIMAP_RESP_COND_STATE_OK ? MAILIMAP_NO_ERROR : MAILIMAP_ERROR_CUSTOM_COMMAND;
}

/* Send CMD (built here: names by put_name) and read its answer. */
static int
run_cmd(struct im_sess *s, struct st_buf *cmd)
{
	int r;

	st_buf_puts(cmd, "\r\n");
	r = send_tagged(s, cmd->data, cmd->len);
	if (r != MAILIMAP_NO_ERROR)
		return r;
	if (mailimap_read_line(s->imap) == NULL)
		return MAILIMAP_ERROR_STREAM;
	return parse_done(s);
}

/* The APPENDUID of the last answer: its UIDVALIDITY, and up to N UIDs into UIDS (*GOT_R: how many, N + 1: more). */
static void appenduid(struct im_sess *s, uint32_t *uidvalidity_r, uint32_t *uids, size_t n, size_t *got_r);

const char *
im_sess_error(const struct im_sess *s)
{
	return s->error ? s->error : "no error";
}

bool
im_sess_broken(const struct im_sess *s)
{
	return s->broken;
}

bool
im_sess_has(const struct im_sess *s, const char *capability)
{
	return mailimap_has_extension(s->imap, (char *)capability) == 1;
}

/* -- connecting --------------------------------------------------------- */

/*
 * Debian's libetpan does TLS with GnuTLS and checks no certificate, so the
 * check is done here, before LOGIN, by im_tls_check (imtls.h): libetpan
 * gives the server's certificate only, so intermediates belong in [imap]
 * ca_file.
 */
static void
tls_setup(struct mailstream_ssl_context *ctx, void *data)
{
	struct im_sess *s = data;

	mailstream_ssl_set_server_name(ctx, s->login->ep->host);
}

static int
tls_verify(struct im_sess *s)
{
	unsigned char *der = NULL;
	ssize_t n = s->imap->imap_stream ? mailstream_ssl_get_certificate(s->imap->imap_stream, &der) : -1;
	const char *why = NULL;
	int rc = im_tls_check(der, n > 0 ? (size_t)n : 0, s->login->ca_file, s->login->ep->host, &why);

	free(der);
	if (rc < 0) {
		free(s->error);
		s->error = xasprintf("%s: TLS certificate not accepted for %s: %s (CA file %s)", s->desc,
				     st_q(s->login->ep->host), why ? why : "unknown reason",
				     s->login->ca_file ? s->login->ca_file : "the system's");
		s->broken = true;
	}
	return rc;
}

struct im_sess *
im_sess_open(const struct im_login *login, const char *user, char **error_r)
{
	struct im_sess *s = xcalloc(1, sizeof(*s));
	const struct im_endpoint *ep = login->ep;
	char *who;
	int r;

	s->login = login;
	s->desc = xasprintf("IMAP server of node %s (%s:%u) for user \"%s\"", login->node, ep->host,
			    ep->port, user);
	s->imap = mailimap_new(0, NULL);
	if (s->imap == NULL) {
		st_set_error(error_r, "%s: out of memory", s->desc);
		im_sess_close(s);
		return NULL;
	}
	mailimap_set_timeout(s->imap, (time_t)((login->timeout_ms + 999) / 1000));
	if (ep->imaps)
		r = mailimap_ssl_connect_with_callback(s->imap, ep->host, (uint16_t)ep->port, tls_setup, s);
	else
		r = mailimap_socket_connect(s->imap, ep->host, (uint16_t)ep->port);
	if (r != MAILIMAP_NO_ERROR_NON_AUTHENTICATED && r != MAILIMAP_NO_ERROR_AUTHENTICATED) {
		/* libetpan calls a socket or pipe it could not make "out of memory":
		 * when no descriptor is left, say that instead. */
		int probe = r == MAILIMAP_ERROR_MEMORY ? open("/dev/null", O_RDONLY | O_CLOEXEC) : -2;
		if (probe == -1 && (errno == EMFILE || errno == ENFILE)) {
			free(s->error);
			s->error = xasprintf("%s: connect: %s (no descriptor left: raise LimitNOFILE, up to %d, "
					   "or lower [imap] workers and idle_users)", s->desc, strerror(errno),
					   FD_SETSIZE);
		} else {
			fail(s, r, "connect");
		}
		if (probe >= 0)
			close(probe);
		goto out_err;
	}
	if (ep->imaps && tls_verify(s) < 0)
		goto out_err;
	if (!ep->imaps && login->starttls != ST_TLS_NO) {
		struct mailimap_capability_data *pre = NULL;
		r = mailimap_capability(s->imap, &pre);
		if (pre)
			mailimap_capability_data_free(pre);
		if (r != MAILIMAP_NO_ERROR) {
			fail(s, r, "CAPABILITY");
			goto out_err;
		}
		bool has = im_sess_has(s, "STARTTLS");
		if (has) {
			r = mailimap_socket_starttls_with_callback(s->imap, tls_setup, s);
			if (r != MAILIMAP_NO_ERROR) {
				fail(s, r, "STARTTLS");
				goto out_err;
			}
			if (tls_verify(s) < 0)
				goto out_err;
		} else if (login->starttls == ST_TLS_DEMAND) {
			free(s->error);
			s->error = xasprintf("%s: the server does not offer STARTTLS, and [imap] starttls demands it "
					     "(demand, or auto to another host): no login in plaintext", s->desc);
			goto out_err;
		} else {
			/* starttls = try: never in silence (the first time a warning). */
			static atomic_bool warned;
			if (!atomic_exchange(&warned, true))
				st_warn("%s: the server does not offer STARTTLS; going on in plaintext "
					"([imap] starttls = try; later ones are logged at debug)", s->desc);
			else
				st_debug("%s: no STARTTLS; plaintext (starttls = try)", s->desc);
		}
	}
	/*
	 * Forget the greeting's capabilities: a server that lists its
	 * post-login ones in the login's OK ([CAPABILITY ...], Dovecot and
	 * Cyrus do) spares the CAPABILITY command below.
	 */
	if (s->imap->imap_connection_info != NULL && s->imap->imap_connection_info->imap_capability != NULL) {
		mailimap_capability_data_free(s->imap->imap_connection_info->imap_capability);
		s->imap->imap_connection_info->imap_capability = NULL;
	}
	if (login->login == ST_IMAP_LOGIN_SASL_PLAIN) {
		/* libetpan's "login" is the authorization identity, "auth_name" the authentication one. */
		r = mailimap_authenticate(s->imap, "PLAIN", login->ep->host, NULL, NULL, user,
					  login->admin_user, login->password, NULL);
		if (r != MAILIMAP_NO_ERROR) {
			fail(s, r, "AUTHENTICATE PLAIN as \"%s\" for \"%s\" (check [imap] admin_user, "
				   "password_file and that the server lets it act for other users)",
			     login->admin_user, user);
			goto out_err;
		}
	} else {
		who = xasprintf("%s%s%s", user, login->separator, login->admin_user);
		r = mailimap_login(s->imap, who, login->password);
		if (r != MAILIMAP_NO_ERROR) {
			fail(s, r, "LOGIN as \"%s\" (check [imap] admin_user, password_file and the "
				   "server's master user setup)", who);
			free(who);
			goto out_err;
		}
		free(who);
	}
	/* Capabilities after login can differ (Dovecot sends more). */
	if (s->imap->imap_connection_info == NULL || s->imap->imap_connection_info->imap_capability == NULL) {
		struct mailimap_capability_data *caps = NULL;
		r = mailimap_capability(s->imap, &caps);
		if (caps)
			mailimap_capability_data_free(caps);
		if (r != MAILIMAP_NO_ERROR) {
			fail(s, r, "CAPABILITY");
			goto out_err;
		}
	}
	if (mailimap_has_qresync(s->imap) && mailimap_has_enable(s->imap)) {
		clist *want = clist_new();
		struct mailimap_capability_data *res = NULL;
		clist_append(want, mailimap_capability_new(MAILIMAP_CAPABILITY_NAME, NULL, xstrdup("QRESYNC")));
		struct mailimap_capability_data *cd = mailimap_capability_data_new(want);
		r = mailimap_enable(s->imap, cd, &res);
		mailimap_capability_data_free(cd);
		if (res)
			mailimap_capability_data_free(res);
		if (r != MAILIMAP_NO_ERROR) {
			fail(s, r, "ENABLE QRESYNC");
			goto out_err;
		}
		s->qresync = true;
	}
	return s;
out_err:
	st_set_error(error_r, "%s", s->error ? s->error : "connect failed");
	im_sess_close(s);
	return NULL;
}

void
im_sess_close(struct im_sess *s)
{
	if (s == NULL)
		return;
	if (s->imap) {
		/* LOGOUT in the middle of IDLE would wait for the server's timeout. */
		if (!s->broken && !s->idling && s->imap->imap_stream)
			mailimap_logout(s->imap);
		mailimap_free(s->imap);
	}
	free(s->desc);
	free(s->error);
	free(s->selected_name);
	free(s);
}

/* -- folders ------------------------------------------------------------ */

void
im_folders_free(struct im_folders *f)
{
	for (size_t i = 0; i < f->n; i++) {
		free(f->v[i].name);
		free(f->v[i].special);
	}
	free(f->v);
	f->v = NULL;
	f->n = 0;
}

/* RFC 6154 and RFC 8457 (\\Important); libetpan gives them without the backslash. */
static bool
is_special_use(const char *name)
{
	static const char *const uses[] = { "All", "Archive", "Drafts", "Flagged", "Junk", "Sent", "Trash",
					    "Important", NULL };

	for (size_t i = 0; uses[i]; i++)
		if (strcasecmp(name, uses[i]) == 0)
			return true;
	return false;
}

int
im_list(struct im_sess *s, bool subscribed, struct im_folders *out)
{
	clist *list = NULL;
	int r = subscribed ? mailimap_lsub(s->imap, "", "*", &list) : mailimap_list(s->imap, "", "*", &list);

	memset(out, 0, sizeof(*out));
	if (r != MAILIMAP_NO_ERROR)
		return fail(s, r, subscribed ? "LSUB \"\" *" : "LIST \"\" *");
	out->v = xcalloc((size_t)clist_count(list) + 1, sizeof(*out->v));
	for (clistiter *it = clist_begin(list); it; it = clist_next(it)) {
		struct mailimap_mailbox_list *mb = clist_content(it);
		struct im_folder *f = &out->v[out->n];
		bool nonexistent = false;

		if (mb->mb_name == NULL)
			continue;
		f->name = xstrdup(mb->mb_name);
		f->delim = mb->mb_delimiter;
		if (mb->mb_flag) {
			if (mb->mb_flag->mbf_type == MAILIMAP_MBX_LIST_FLAGS_SFLAG &&
			    mb->mb_flag->mbf_sflag == MAILIMAP_MBX_LIST_SFLAG_NOSELECT)
				f->noselect = true;
			for (clistiter *o = mb->mb_flag->mbf_oflags ? clist_begin(mb->mb_flag->mbf_oflags) : NULL;
			     o; o = clist_next(o)) {
				struct mailimap_mbx_list_oflag *of = clist_content(o);
				if (of->of_type != MAILIMAP_MBX_LIST_OFLAG_FLAG_EXT || of->of_flag_ext == NULL)
					continue;
				if (strcasecmp(of->of_flag_ext, "NonExistent") == 0)
					nonexistent = true;
				else if (is_special_use(of->of_flag_ext)) {
					char *old = f->special;
					f->special = old ? xasprintf("%s \\%s", old, of->of_flag_ext)
							 : xasprintf("\\%s", of->of_flag_ext);
					free(old);
				}
			}
		}
		if (nonexistent)
			f->noselect = true;
		out->n++;
	}
	mailimap_list_result_free(list);
	return 0;
}

static void
status_from_info(clist *infos, struct im_status *st)
{
	for (clistiter *it = infos ? clist_begin(infos) : NULL; it; it = clist_next(it)) {
		struct mailimap_status_info *i = clist_content(it);

		switch (i->st_att) {
		case MAILIMAP_STATUS_ATT_MESSAGES:
			st->messages = i->st_value;
			break;
		case MAILIMAP_STATUS_ATT_UIDNEXT:
			st->uidnext = i->st_value;
			break;
		case MAILIMAP_STATUS_ATT_UIDVALIDITY:
			st->uidvalidity = i->st_value;
			break;
		case MAILIMAP_STATUS_ATT_HIGHESTMODSEQ:
			if (st->highestmodseq == 0)
				st->highestmodseq = i->st_value;
			break;
		case MAILIMAP_STATUS_ATT_EXTENSION:
			if (i->st_ext_data && i->st_ext_data->ext_extension &&
			    i->st_ext_data->ext_extension->ext_id == MAILIMAP_EXTENSION_CONDSTORE &&
			    i->st_ext_data->ext_type == MAILIMAP_CONDSTORE_TYPE_STATUS_INFO) {
				struct mailimap_condstore_status_info *c = i->st_ext_data->ext_data;
				st->highestmodseq = c->cs_highestmodseq_value;
			}
			break;
		default:
			break;
		}
	}
}

/* Names of one mailbox: equal, or INBOX in any case (RFC 3501 5.1). */
static bool
same_mailbox(const char *a, const char *b)
{
	return strcmp(a, b) == 0 || (strcasecmp(a, "INBOX") == 0 && strcasecmp(b, "INBOX") == 0);
}

int
im_status(struct im_sess *s, const char *mailbox, struct im_status *st)
{
	struct mailimap_mailbox_data_status *res;
	struct st_buf cmd;
	int r;

	memset(st, 0, sizeof(*st));
	st_buf_init(&cmd);
	st_buf_puts(&cmd, "STATUS ");
	if (put_name(s, &cmd, "STATUS", mailbox) < 0) {
		st_buf_free(&cmd);
		return -1;
	}
	st_buf_printf(&cmd, " (MESSAGES UIDNEXT UIDVALIDITY%s)",
		      mailimap_has_condstore(s->imap) ? " HIGHESTMODSEQ" : "");
	/* The selected mailbox would be answered from this session's view. */
	if (s->selected && same_mailbox(s->selected_name, mailbox) && im_unselect(s) < 0) {
		st_buf_free(&cmd);
		return -1;
	}
	r = run_cmd(s, &cmd);
	st_buf_free(&cmd);
	if (r != MAILIMAP_NO_ERROR)
		return fail(s, r, "STATUS %s", st_q(mailbox));
	res = s->imap->imap_response_info ? s->imap->imap_response_info->rsp_status : NULL;
	if (res == NULL)
		return fail(s, MAILIMAP_ERROR_PROTOCOL, "STATUS %s gave no STATUS answer", st_q(mailbox));
	status_from_info(res->st_info_list, st);
	return 0;
}

int
im_select(struct im_sess *s, const char *mailbox, bool readonly, struct im_status *st)
{
	const char *verb = readonly ? "EXAMINE" : "SELECT";
	uint64_t modseq = 0;
	struct st_buf cmd;
	int r;

	memset(st, 0, sizeof(*st));
	st_buf_init(&cmd);
	st_buf_printf(&cmd, "%s ", verb);
	if (put_name(s, &cmd, verb, mailbox) < 0) {
		st_buf_free(&cmd);
		return -1;
	}
	if (mailimap_has_condstore(s->imap))
		st_buf_puts(&cmd, " (CONDSTORE)");
	/* libetpan's parser keeps what the answer says of the mailbox here. */
	if (s->imap->imap_selection_info != NULL)
		mailimap_selection_info_free(s->imap->imap_selection_info);
	s->imap->imap_selection_info = mailimap_selection_info_new();
	r = run_cmd(s, &cmd);
	st_buf_free(&cmd);
	for (clistiter *it = r == MAILIMAP_NO_ERROR && s->imap->imap_response_info
				     ? clist_begin(s->imap->imap_response_info->rsp_extension_list) : NULL;
	     it; it = clist_next(it)) {
		struct mailimap_extension_data *ext = clist_content(it);
		if (ext->ext_extension->ext_id != MAILIMAP_EXTENSION_CONDSTORE ||
		    ext->ext_type != MAILIMAP_CONDSTORE_TYPE_RESP_TEXT_CODE)
			continue;
		struct mailimap_condstore_resptextcode *code = ext->ext_data;
		modseq = code->cs_type == MAILIMAP_CONDSTORE_RESPTEXTCODE_HIGHESTMODSEQ ? code->cs_data.cs_modseq_value : 0;
	}
	s->selected = r == MAILIMAP_NO_ERROR;
	s->imap->imap_state = s->selected ? MAILIMAP_STATE_SELECTED : MAILIMAP_STATE_AUTHENTICATED;
	if (!s->selected && s->imap->imap_selection_info != NULL) {
		mailimap_selection_info_free(s->imap->imap_selection_info);
		s->imap->imap_selection_info = NULL;
	}
	free(s->selected_name);
	s->selected_name = s->selected ? xstrdup(mailbox) : NULL;
	if (r != MAILIMAP_NO_ERROR)
		return fail(s, r, "%s %s", verb, st_q(mailbox));
	struct mailimap_selection_info *si = s->imap->imap_selection_info;
	if (si) {
		st->uidvalidity = si->sel_uidvalidity;
		st->uidnext = si->sel_uidnext;
		st->messages = si->sel_exists;
	}
	st->highestmodseq = modseq;
	if (st->uidvalidity == 0)
		return fail(s, MAILIMAP_ERROR_PROTOCOL, "%s %s gave no UIDVALIDITY", verb, st_q(mailbox));
	return 0;
}

int
im_unselect(struct im_sess *s)
{
	int r;

	if (!s->selected)
		return 0;
	if (!im_sess_has(s, "UNSELECT"))
		return 1;
	/* libetpan has no UNSELECT of its own. */
	r = mailimap_custom_command(s->imap, "UNSELECT");
	s->selected = false;
	free(s->selected_name);
	s->selected_name = NULL;
	if (r != MAILIMAP_NO_ERROR)
		return fail(s, r, "UNSELECT");
	return 0;
}

int
im_sess_park(struct im_sess *s)
{
	if (!s->selected || im_sess_has(s, "UNSELECT"))
		return 0;
	return 1;
}

/* -- UID lists ---------------------------------------------------------- */

void
im_uids_free(struct im_uids *u)
{
	free(u->v);
	memset(u, 0, sizeof(*u));
}

void
im_uids_add(struct im_uids *u, uint32_t uid)
{
	if (u->n == u->cap) {
		u->cap = u->cap ? u->cap * 2 : 256;
		u->v = xrealloc(u->v, u->cap * sizeof(*u->v));
	}
	u->v[u->n++] = uid;
}

static int
cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

int
im_search_from(struct im_sess *s, uint32_t first, struct im_uids *out)
{
	clist *res = NULL;
	struct mailimap_search_key *key =
		mailimap_search_key_new_uid(mailimap_set_new_interval(first ? first : 1, 0));
	int r = mailimap_uid_search(s->imap, NULL, key, &res);

	mailimap_search_key_free(key);
	memset(out, 0, sizeof(*out));
	if (r != MAILIMAP_NO_ERROR)
		return fail(s, r, "UID SEARCH UID %" PRIu32 ":*", first);
	for (clistiter *it = clist_begin(res); it; it = clist_next(it)) {
		uint32_t uid = *(uint32_t *)clist_content(it);
		/* "N:*" matches the highest UID even when it is below N. */
		if (uid >= first)
			im_uids_add(out, uid);
	}
	mailimap_search_result_free(res);
	if (out->n > 1)
		qsort(out->v, out->n, sizeof(*out->v), cmp_u32);
	return 0;
}

/* A set of ranges from UIDS (sorted copy). */
static struct mailimap_set *
set_from_uids(const uint32_t *uids, size_t n)
{
	uint32_t *v = xmalloc((n ? n : 1) * sizeof(*v));
	struct mailimap_set *set = mailimap_set_new_empty();

	memcpy(v, uids, n * sizeof(*v));
	qsort(v, n, sizeof(*v), cmp_u32);
	for (size_t i = 0; i < n;) {
		size_t j = i;
		while (j + 1 < n && (v[j + 1] == v[j] || v[j + 1] == v[j] + 1))
			j++;
		mailimap_set_add_interval(set, v[i], v[j]);
		i = j + 1;
	}
	free(v);
	return set;
}

/* -- flags -------------------------------------------------------------- */

static int
cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

char *
im_flags_normalise(const char *flags)
{
	char *copy = xstrdup(flags), **v = NULL, *save = NULL;
	size_t n = 0, cap = 0;
	struct st_buf b;

	for (char *t = strtok_r(copy, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
		if (strcasecmp(t, "\\Recent") == 0)
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 8;
			v = xrealloc(v, cap * sizeof(*v));
		}
		v[n++] = t;
	}
	if (n > 1)
		qsort(v, n, sizeof(*v), cmp_str);
	st_buf_init(&b);
	st_buf_puts(&b, "");
	for (size_t i = 0; i < n; i++) {
		if (i > 0 && strcmp(v[i], v[i - 1]) == 0)
			continue;
		if (b.len)
			st_buf_puts(&b, " ");
		st_buf_puts(&b, v[i]);
	}
	free(v);
	free(copy);
	char *out = st_buf_steal(&b);
	st_buf_free(&b);
	return out;
}

static void
flag_to_buf(struct st_buf *b, const struct mailimap_flag *f)
{
	const char *name = NULL;

	switch (f->fl_type) {
	case MAILIMAP_FLAG_ANSWERED: name = "\\Answered"; break;
	case MAILIMAP_FLAG_FLAGGED: name = "\\Flagged"; break;
	case MAILIMAP_FLAG_DELETED: name = "\\Deleted"; break;
	case MAILIMAP_FLAG_SEEN: name = "\\Seen"; break;
	case MAILIMAP_FLAG_DRAFT: name = "\\Draft"; break;
	case MAILIMAP_FLAG_KEYWORD:
		if (f->fl_data.fl_keyword) {
			if (b->len)
				st_buf_puts(b, " ");
			st_buf_puts(b, f->fl_data.fl_keyword);
		}
		return;
	case MAILIMAP_FLAG_EXTENSION:
		if (f->fl_data.fl_extension) {
			if (b->len)
				st_buf_puts(b, " ");
			st_buf_printf(b, "\\%s", f->fl_data.fl_extension);
		}
		return;
	default:
		return;
	}
	if (b->len)
		st_buf_puts(b, " ");
	st_buf_puts(b, name);
}

static struct mailimap_flag_list *
flag_list_from(const char *flags)
{
	struct mailimap_flag_list *fl = mailimap_flag_list_new_empty();
	char *copy = xstrdup(flags ? flags : ""), *save = NULL;

	for (char *t = strtok_r(copy, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
		struct mailimap_flag *f;

		if (strcasecmp(t, "\\Seen") == 0)
			f = mailimap_flag_new_seen();
		else if (strcasecmp(t, "\\Answered") == 0)
			f = mailimap_flag_new_answered();
		else if (strcasecmp(t, "\\Flagged") == 0)
			f = mailimap_flag_new_flagged();
		else if (strcasecmp(t, "\\Deleted") == 0)
			f = mailimap_flag_new_deleted();
		else if (strcasecmp(t, "\\Draft") == 0)
			f = mailimap_flag_new_draft();
		else if (strcasecmp(t, "\\Recent") == 0)
			continue;
		else if (t[0] == '\\')
			f = mailimap_flag_new_flag_extension(xstrdup(t + 1));
		else
			f = mailimap_flag_new_flag_keyword(xstrdup(t));
		mailimap_flag_list_add(fl, f);
	}
	free(copy);
	return fl;
}

/* -- fetching ----------------------------------------------------------- */

void
im_msg_key(uint64_t size, int64_t date, const char *msgid, size_t msgid_len, unsigned char key[IM_KEY_LEN])
{
	char head[64];
	int n = snprintf(head, sizeof(head), "%" PRIu64 " %" PRId64 " ", size, date);
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	unsigned int len = IM_KEY_LEN;

	/* Header lines are compared without their line ends and folding. */
	EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
	EVP_DigestUpdate(ctx, head, (size_t)n);
	for (size_t i = 0; i < msgid_len; i++) {
		char c = msgid[i];
		if (c == '\r' || c == '\n' || c == ' ' || c == '\t')
			continue;
		EVP_DigestUpdate(ctx, &c, 1);
	}
	EVP_DigestFinal_ex(ctx, key, &len);
	EVP_MD_CTX_free(ctx);
}

static int64_t
date_to_epoch(const struct mailimap_date_time *dt, int *zone_r)
{
	struct tm tm = {
		.tm_year = dt->dt_year - 1900, .tm_mon = dt->dt_month - 1, .tm_mday = dt->dt_day,
		.tm_hour = dt->dt_hour, .tm_min = dt->dt_min, .tm_sec = dt->dt_sec,
	};
	int z = dt->dt_zone, az = z < 0 ? -z : z;
	int64_t off = (int64_t)((az / 100) * 3600 + (az % 100) * 60) * (z < 0 ? -1 : 1);

	*zone_r = z;
	return (int64_t)timegm(&tm) - off;
}

void
im_msgs_free(struct im_msgs *m)
{
	for (size_t i = 0; i < m->n; i++) {
		free(m->v[i].flags);
		free(m->v[i].body);
	}
	free(m->v);
	memset(m, 0, sizeof(*m));
}

static int
cmp_msg(const void *a, const void *b)
{
	uint32_t x = ((const struct im_msg *)a)->uid, y = ((const struct im_msg *)b)->uid;
	return x < y ? -1 : x > y;
}

static void
msg_from_att(const struct mailimap_msg_att *att, int what, struct im_msg *m)
{
	const char *mid = NULL;
	size_t mid_len = 0;
	struct st_buf fb;
	bool have_date = false;

	memset(m, 0, sizeof(*m));
	st_buf_init(&fb);
	st_buf_puts(&fb, "");
	for (clistiter *it = clist_begin(att->att_list); it; it = clist_next(it)) {
		struct mailimap_msg_att_item *item = clist_content(it);

		if (item->att_type == MAILIMAP_MSG_ATT_ITEM_DYNAMIC) {
			clist *fl = item->att_data.att_dyn->att_list;
			for (clistiter *f = fl ? clist_begin(fl) : NULL; f; f = clist_next(f)) {
				struct mailimap_flag_fetch *ff = clist_content(f);
				if (ff->fl_type == MAILIMAP_FLAG_FETCH_OTHER && ff->fl_flag)
					flag_to_buf(&fb, ff->fl_flag);
			}
			continue;
		}
		if (item->att_type != MAILIMAP_MSG_ATT_ITEM_STATIC)
			continue;
		struct mailimap_msg_att_static *st = item->att_data.att_static;
		switch (st->att_type) {
		case MAILIMAP_MSG_ATT_UID:
			m->uid = st->att_data.att_uid;
			break;
		case MAILIMAP_MSG_ATT_RFC822_SIZE:
			m->size = st->att_data.att_rfc822_size;
			break;
		case MAILIMAP_MSG_ATT_INTERNALDATE:
			if (st->att_data.att_internal_date) {
				m->date = date_to_epoch(st->att_data.att_internal_date, &m->zone);
				have_date = true;
			}
			break;
		case MAILIMAP_MSG_ATT_BODY_SECTION: {
			struct mailimap_msg_att_body_section *bs = st->att_data.att_body_section;
			if (bs->sec_section && bs->sec_section->sec_spec) {
				mid = bs->sec_body_part;
				mid_len = bs->sec_body_part ? bs->sec_length : 0;
			} else if (what & IM_F_BODY) {
				m->body_len = bs->sec_body_part ? bs->sec_length : 0;
				m->body = xmalloc(m->body_len + 1);
				if (m->body_len)
					memcpy(m->body, bs->sec_body_part, m->body_len);
				m->body[m->body_len] = '\0';
			}
			break;
		}
		default:
			break;
		}
	}
	char *norm = im_flags_normalise(fb.data);
	st_buf_free(&fb);
	m->flags = norm;
	if (what & IM_F_META)
		im_msg_key(m->size, have_date ? m->date : 0, mid, mid_len, m->key);
}

int
im_fetch(struct im_sess *s, const uint32_t *uids, size_t n, uint32_t first, int what,
	 uint64_t changedsince, struct im_msgs *out)
{
	struct mailimap_fetch_type *ft = mailimap_fetch_type_new_fetch_att_list_empty();
	struct mailimap_set *set = uids ? set_from_uids(uids, n) : mailimap_set_new_interval(first ? first : 1, 0);
	clist *res = NULL;
	int r;

	memset(out, 0, sizeof(*out));
	if (uids && n == 0) {
		mailimap_set_free(set);
		mailimap_fetch_type_free(ft);
		return 0;
	}
	mailimap_fetch_type_new_fetch_att_list_add(ft, mailimap_fetch_att_new_uid());
	if (what & IM_F_FLAGS)
		mailimap_fetch_type_new_fetch_att_list_add(ft, mailimap_fetch_att_new_flags());
	if (what & IM_F_META) {
		clist *hdrs = clist_new();
		clist_append(hdrs, xstrdup("Message-ID"));
		mailimap_fetch_type_new_fetch_att_list_add(ft, mailimap_fetch_att_new_rfc822_size());
		mailimap_fetch_type_new_fetch_att_list_add(ft, mailimap_fetch_att_new_internaldate());
		mailimap_fetch_type_new_fetch_att_list_add(ft, mailimap_fetch_att_new_body_peek_section(
			mailimap_section_new_header_fields(mailimap_header_list_new(hdrs))));
	}
	if (what & IM_F_BODY)
		mailimap_fetch_type_new_fetch_att_list_add(ft, mailimap_fetch_att_new_body_peek_section(
			mailimap_section_new(NULL)));
	if (changedsince > 0)
		r = mailimap_uid_fetch_changedsince(s->imap, set, ft, changedsince, &res);
	else
		r = mailimap_uid_fetch(s->imap, set, ft, &res);
	mailimap_fetch_type_free(ft);
	mailimap_set_free(set);
	if (r != MAILIMAP_NO_ERROR)
		return fail(s, r, "UID FETCH%s", changedsince ? " CHANGEDSINCE" : "");
	out->cap = (size_t)clist_count(res) + 1;
	out->v = xcalloc(out->cap, sizeof(*out->v));
	for (clistiter *it = clist_begin(res); it; it = clist_next(it)) {
		struct im_msg m;

		msg_from_att(clist_content(it), what, &m);
		if (m.uid == 0 || (!uids && m.uid < first)) {
			free(m.flags);
			free(m.body);
			continue;
		}
		out->v[out->n++] = m;
	}
	mailimap_fetch_list_free(res);
	if (out->n > 1)
		qsort(out->v, out->n, sizeof(*out->v), cmp_msg);
	return 0;
}

bool
im_sess_qresync(const struct im_sess *s)
{
	return s->qresync;
}

int
im_vanished(struct im_sess *s, uint64_t modseq, uint32_t uidnext, struct im_uids *out)
{
	struct mailimap_fetch_type *ft;
	struct mailimap_set *set;
	struct mailimap_qresync_vanished *van = NULL;
	clist *res = NULL;
	int r;

	memset(out, 0, sizeof(*out));
	if (!s->qresync || modseq == 0)
		return fail(s, MAILIMAP_ERROR_PROTOCOL, "VANISHED needs QRESYNC and a known modseq");
	ft = mailimap_fetch_type_new_fetch_att_list_empty();
	mailimap_fetch_type_new_fetch_att_list_add(ft, mailimap_fetch_att_new_uid());
	set = mailimap_set_new_interval(1, 0);
	r = mailimap_uid_fetch_qresync(s->imap, set, ft, modseq, &res, &van);
	mailimap_fetch_type_free(ft);
	mailimap_set_free(set);
	if (r != MAILIMAP_NO_ERROR)
		return fail(s, r, "UID FETCH (CHANGEDSINCE %" PRIu64 " VANISHED)", modseq);
	if (res)
		mailimap_fetch_list_free(res);
	if (van != NULL && van->qr_known_uids != NULL) {
		for (clistiter *it = clist_begin(van->qr_known_uids->set_list); it; it = clist_next(it)) {
			struct mailimap_set_item *item = clist_content(it);
			uint32_t first = item->set_first, last = item->set_last ? item->set_last : uidnext - 1;
			if (first > last) {
				uint32_t t = first;
				first = last;
				last = t;
			}
			if (last >= uidnext)
				last = uidnext - 1;
			for (uint64_t u = first; u <= last && u > 0; u++)
				im_uids_add(out, (uint32_t)u);
		}
	}
	if (van)
		mailimap_qresync_vanished_free(van);
	if (out->n > 1)
		qsort(out->v, out->n, sizeof(*out->v), cmp_u32);
	return 0;
}

/* -- changing ----------------------------------------------------------- */

/* An IMAP atom as a flag: "\\Seen", "$Label1"; nothing that needs quoting. */
static bool
flag_is_atom(const char *t, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)t[i];
		if (c <= ' ' || c >= 0x7f || strchr("(){%*\"]", c) || (c == '\\' && i > 0))
			return false;
	}
	return len > 0 && !(len == 1 && t[0] == '\\');
}

static bool
flags_are_atoms(const char *flags)
{
	for (const char *p = flags ? flags : ""; *p;) {
		size_t len = strcspn(p, " ");
		if (len > 0 && !flag_is_atom(p, len))
			return false;
		p += len;
		p += strspn(p, " ");
	}
	return true;
}

static const char *const months[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
				     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };

/* " (FLAGS) \"INTERNALDATE\"" of M for an APPEND: its atoms, without \Recent. */
static void
flags_date_to_buf(struct st_buf *b, const struct im_msg *m)
{
	int zone = m->zone, az = zone < 0 ? -zone : zone;
	int64_t off = (int64_t)((az / 100) * 3600 + (az % 100) * 60) * (zone < 0 ? -1 : 1);
	time_t local = (time_t)(m->date + off);
	bool first = true;
	struct tm tm;

	gmtime_r(&local, &tm);
	st_buf_puts(b, " (");
	for (const char *p = m->flags ? m->flags : ""; *p;) {
		size_t len = strcspn(p, " ");
		if (len > 0 && flag_is_atom(p, len) && !(len == 7 && strncasecmp(p, "\\Recent", 7) == 0)) {
			if (!first)
				st_buf_puts(b, " ");
			st_buf_append(b, p, len);
			first = false;
		}
		p += len;
		p += strspn(p, " ");
	}
	st_buf_printf(b, ") \"%02d-%s-%04d %02d:%02d:%02d %c%04d\"", tm.tm_mday, months[tm.tm_mon],
		      tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec, zone < 0 ? '-' : '+', az);
}

/*
 * One APPEND, written here (the mailbox name by put_name) with a
 * synchronising literal for the message: the server's "+" first, then the
 * message with bare LFs made CRLF, as libetpan's own APPEND sends it.
 */
int
im_append(struct im_sess *s, const char *mailbox, const struct im_msg *m, uint32_t *uidvalidity_r,
	  uint32_t *uid_r)
{
	mailstream *fd = s->imap->imap_stream;
	struct st_buf cmd;
	uint32_t validity = 0, uid = 0;
	size_t got = 0;
	int r;

	st_buf_init(&cmd);
	st_buf_puts(&cmd, "APPEND ");
	if (put_name(s, &cmd, "APPEND to", mailbox) < 0) {
		st_buf_free(&cmd);
		return -1;
	}
	flags_date_to_buf(&cmd, m);
	st_buf_printf(&cmd, " {%zu}\r\n", mailstream_get_data_crlf_size(m->body, m->body_len));
	r = send_tagged(s, cmd.data, cmd.len);
	st_buf_free(&cmd);
	if (r == MAILIMAP_NO_ERROR && mailimap_read_line(s->imap) == NULL)
		r = MAILIMAP_ERROR_STREAM;
	if (r == MAILIMAP_NO_ERROR && s->imap->imap_stream_buffer->str[0] != '+') {
		/* No go-ahead: the answer (NO or BAD) is in the line read. */
		r = parse_done(s);
		if (r == MAILIMAP_NO_ERROR)
			r = MAILIMAP_ERROR_PROTOCOL;
	} else if (r == MAILIMAP_NO_ERROR) {
		if (mailstream_send_data_crlf(fd, m->body, m->body_len, 0, NULL) < 0 ||
		    mailstream_write(fd, "\r\n", 2) != 2 || mailstream_flush(fd) == -1 ||
		    mailimap_read_line(s->imap) == NULL)
			r = MAILIMAP_ERROR_STREAM;
		else
			r = parse_done(s);
	}
	if (r != MAILIMAP_NO_ERROR)
		return fail(s, r, "APPEND to %s (%zu bytes)", st_q(mailbox), m->body_len);
	appenduid(s, &validity, &uid, 1, &got);
	if (got != 1 || uid == 0)
		return fail(s, MAILIMAP_ERROR_PROTOCOL, "APPEND to %s gave no APPENDUID (the server "
			    "needs UIDPLUS)", st_q(mailbox));
	*uidvalidity_r = validity;
	*uid_r = uid;
	return 0;
}

static void
uids_from_set(const struct mailimap_set *set, uint32_t *uids, size_t n, size_t *got_r)
{
	size_t got = 0;

	for (clistiter *it = clist_begin(set->set_list); it; it = clist_next(it)) {
		const struct mailimap_set_item *item = clist_content(it);
		uint32_t first = item->set_first, last = item->set_last;
		if (first == 0 || last < first)
			break;		/* "*" or a descending range: not what APPENDUID gives */
		for (uint64_t u = first; u <= last; u++) {
			if (got == n) {
				*got_r = n + 1;
				return;
			}
			uids[got++] = (uint32_t)u;
		}
	}
	*got_r = got;
}

int
im_append_many(struct im_sess *s, const char *mailbox, const struct im_msg *v, size_t n,
	       uint32_t *uidvalidity_r, uint32_t *uids_r)
{
	struct st_buf cmd;
	uint64_t bytes = 0;
	size_t got = 0;
	int r;

	if (s->no_multiappend || n < 2 || !im_sess_has(s, "MULTIAPPEND") || !im_sess_has(s, "LITERAL+"))
		return 1;
	for (size_t i = 0; i < n; i++) {
		if (memchr(v[i].body, '\0', v[i].body_len) || !flags_are_atoms(v[i].flags))
			return 1;
		bytes += v[i].body_len;
	}
	st_buf_init(&cmd);
	st_buf_puts(&cmd, "APPEND ");
	if (put_name(s, &cmd, "APPEND to", mailbox) < 0) {
		st_buf_free(&cmd);
		return -1;
	}
	for (size_t i = 0; i < n; i++) {
		flags_date_to_buf(&cmd, &v[i]);
		st_buf_printf(&cmd, " {%zu+}\r\n", v[i].body_len);
		st_buf_append(&cmd, v[i].body, v[i].body_len);
	}
	r = run_cmd(s, &cmd);
	st_buf_free(&cmd);
	if (r == MAILIMAP_ERROR_CUSTOM_COMMAND) {
		/* NO or BAD: RFC 3502 says nothing was stored. */
		st_warn("%s: MULTIAPPEND of %zu messages to %s refused (server said: %s); appending one "
			"by one from now on", s->desc, n, st_q(mailbox),
			s->imap->imap_response ? s->imap->imap_response : "nothing");
		s->no_multiappend = true;
		return 1;
	}
	if (r != MAILIMAP_NO_ERROR)
		return fail(s, r, "APPEND of %zu messages to %s (%" PRIu64 " bytes)", n, st_q(mailbox), bytes);
	appenduid(s, uidvalidity_r, uids_r, n, &got);
	if (got != n)
		return fail(s, MAILIMAP_ERROR_PROTOCOL, "APPEND of %zu messages to %s gave %s APPENDUID "
			    "(the server needs UIDPLUS)", n, st_q(mailbox), got == 0 ? "no" : "a wrong");
	return 0;
}

static void
appenduid(struct im_sess *s, uint32_t *uidvalidity_r, uint32_t *uids, size_t n, size_t *got_r)
{
	*uidvalidity_r = 0;
	*got_r = 0;
	for (clistiter *it = s->imap->imap_response_info ? clist_begin(s->imap->imap_response_info->rsp_extension_list)
							   : NULL;
	     it; it = clist_next(it)) {
		struct mailimap_extension_data *ext = clist_content(it);
		if (ext->ext_extension != &mailimap_extension_uidplus || ext->ext_type != MAILIMAP_UIDPLUS_RESP_CODE_APND)
			continue;
		const struct mailimap_uidplus_resp_code_apnd *apnd = ext->ext_data;
		*uidvalidity_r = apnd->uid_uidvalidity;
		if (apnd->uid_set)
			uids_from_set(apnd->uid_set, uids, n, got_r);
		break;
	}
}

int
im_store_flags(struct im_sess *s, const uint32_t *uids, size_t n, const char *flags)
{
	struct mailimap_set *set = set_from_uids(uids, n);
	struct mailimap_store_att_flags *sf = mailimap_store_att_flags_new_set_flags_silent(flag_list_from(flags));
	int r = mailimap_uid_store(s->imap, set, sf);

	mailimap_store_att_flags_free(sf);
	mailimap_set_free(set);
	if (r != MAILIMAP_NO_ERROR)
		return fail(s, r, "UID STORE FLAGS.SILENT (%s) on %zu message(s)", flags, n);
	return 0;
}

int
im_expunge_uids(struct im_sess *s, const uint32_t *uids, size_t n)
{
	struct mailimap_set *set;
	struct mailimap_store_att_flags *sf;
	int r;

	if (n == 0)
		return 0;
	if (!mailimap_has_extension(s->imap, "UIDPLUS"))
		return fail(s, MAILIMAP_ERROR_PROTOCOL, "the server has no UIDPLUS, so UID EXPUNGE of "
			    "exactly the expunged messages is impossible");
	set = set_from_uids(uids, n);
	sf = mailimap_store_att_flags_new_add_flags_silent(flag_list_from("\\Deleted"));
	r = mailimap_uid_store(s->imap, set, sf);
	mailimap_store_att_flags_free(sf);
	if (r == MAILIMAP_NO_ERROR)
		r = mailimap_uid_expunge(s->imap, set);
	mailimap_set_free(set);
	if (r != MAILIMAP_NO_ERROR)
		return fail(s, r, "UID EXPUNGE of %zu message(s)", n);
	return 0;
}

/* VERB NAME [NAME2] [TAIL], the names written by put_name. */
static int
name_cmd(struct im_sess *s, const char *verb, const char *name, const char *name2, const char *tail)
{
	struct st_buf cmd;
	int r;

	st_buf_init(&cmd);
	st_buf_printf(&cmd, "%s ", verb);
	if (put_name(s, &cmd, verb, name) < 0) {
		st_buf_free(&cmd);
		return -1;
	}
	if (name2 != NULL) {
		st_buf_puts(&cmd, " ");
		if (put_name(s, &cmd, verb, name2) < 0) {
			st_buf_free(&cmd);
			return -1;
		}
	}
	if (tail != NULL)
		st_buf_printf(&cmd, " %s", tail);
	r = run_cmd(s, &cmd);
	st_buf_free(&cmd);
	if (r == MAILIMAP_NO_ERROR)
		return 0;
	if (name2 != NULL)
		return fail(s, r, "%s %s %s", verb, st_q(name), st_q(name2));
	return fail(s, r, "%s %s%s%s", verb, st_q(name), tail ? " " : "", tail ? tail : "");
}

int
im_create(struct im_sess *s, const char *mailbox)
{
	return name_cmd(s, "CREATE", mailbox, NULL, NULL);
}

int
im_create_special(struct im_sess *s, const char *mailbox, const char *special, bool *set_r)
{
	int r;

	*set_r = false;
	if (special == NULL || !im_sess_has(s, "CREATE-SPECIAL-USE") || !flags_are_atoms(special))
		return im_create(s, mailbox);
	char *tail = xasprintf("(USE (%s))", special);
	r = name_cmd(s, "CREATE", mailbox, NULL, tail);
	free(tail);
	if (r == 0)
		*set_r = true;
	return r;
}

int
im_delete(struct im_sess *s, const char *mailbox)
{
	return name_cmd(s, "DELETE", mailbox, NULL, NULL);
}

int
im_rename(struct im_sess *s, const char *from, const char *to)
{
	return name_cmd(s, "RENAME", from, to, NULL);
}

int
im_subscribe(struct im_sess *s, const char *mailbox, bool on)
{
	return name_cmd(s, on ? "SUBSCRIBE" : "UNSUBSCRIBE", mailbox, NULL, NULL);
}

/* -- IDLE --------------------------------------------------------------- */

int
im_idle_start(struct im_sess *s)
{
	int r = mailimap_idle(s->imap);
	if (r != MAILIMAP_NO_ERROR)
		return fail(s, r, "IDLE");
	s->idling = true;
	return 0;
}

int
im_notify_set(struct im_sess *s)
{
	int r;

	if (!im_sess_has(s, "NOTIFY"))
		return 1;
	r = mailimap_custom_command(s->imap, "NOTIFY SET (selected (MessageNew MessageExpunge FlagChange)) "
					     "(personal (MessageNew MessageExpunge FlagChange MailboxName "
					     "SubscriptionChange))");
	if (r == MAILIMAP_ERROR_CUSTOM_COMMAND) {
		st_info("%s: NOTIFY refused (server said: %s); only INBOX is pushed", s->desc,
			s->imap->imap_response ? s->imap->imap_response : "nothing");
		return 1;
	}
	return r == MAILIMAP_NO_ERROR ? 0 : fail(s, r, "NOTIFY SET");
}

int
im_idle_fd(struct im_sess *s)
{
	return mailimap_idle_get_fd(s->imap);
}

bool
im_idle_buffered(struct im_sess *s)
{
	return s->imap->imap_stream && s->imap->imap_stream->read_buffer_len > 0;
}

int
im_idle_done(struct im_sess *s)
{
	int r = mailimap_idle_done(s->imap);
	s->idling = false;
	return r == MAILIMAP_NO_ERROR ? 0 : fail(s, r, "IDLE DONE");
}
