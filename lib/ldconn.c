/*
 * ldconn.c: open, check TLS and bind a connection to a node's slapd.
 */
#include "config.h"

#include "lib/ldconn.h"

#include <openssl/evp.h>
#include <stdbool.h>

#include <stdlib.h>
#include <string.h>

#include "lib/log.h"

/* Why a TLS connection or StartTLS failed.  libldap says no more than
 * "Can't contact LDAP server" or "Connect error" when the server's
 * certificate is refused (with GnuTLS the diagnostic is "(unknown error
 * code)"); it sets a diagnostic only when the TCP connection was made and
 * the TLS layer failed, so that is what tells a refused certificate from
 * a server that does not answer. */
static void
tls_failed(char **error_r, const struct st_conf *conf, const char *node, const char *uri,
	   const char *what, int rc, LDAP *ld)
{
	char *diag = NULL;

	ldap_get_option(ld, LDAP_OPT_DIAGNOSTIC_MESSAGE, &diag);
	if (!st_str_empty(diag) && (rc == LDAP_SERVER_DOWN || rc == LDAP_CONNECT_ERROR))
		st_set_error(error_r, "node %s (%s): %s: the TLS handshake failed (%s: %s): the "
			     "server's certificate must be signed by a CA in %s%s and name the host",
			     node, uri, what, ldap_err2string(rc), diag,
			     conf->ldap.ca_file ? "ca_file " : "the system's CAs",
			     conf->ldap.ca_file ? conf->ldap.ca_file : "");
	else
		st_set_error(error_r, "node %s (%s): %s: %s%s%s", node, uri, what,
			     ldap_err2string(rc), !st_str_empty(diag) ? ": " : "",
			     !st_str_empty(diag) ? diag : "");
	ldap_memfree(diag);
}

/* The options of every connection: LDAPv3, the timeouts, no referrals. */
static void
set_options(LDAP *ld, const struct timeval *tv)
{
	int v3 = LDAP_VERSION3;

	ldap_set_option(ld, LDAP_OPT_PROTOCOL_VERSION, &v3);
	ldap_set_option(ld, LDAP_OPT_NETWORK_TIMEOUT, tv);
	ldap_set_option(ld, LDAP_OPT_TIMEOUT, tv);
	ldap_set_option(ld, LDAP_OPT_REFERRALS, LDAP_OPT_OFF);
	ldap_set_option(ld, LDAP_OPT_RESTART, LDAP_OPT_ON);
}

LDAP *
st_ldap_open(const struct st_conf *conf, const char *node, char **error_r)
{
	return st_ldap_open_as(conf, node, conf->ldap.bind_dn, conf->ldap.password_file, error_r);
}

LDAP *
st_ldap_open_as(const struct st_conf *conf, const char *node, const char *bind_dn,
		const char *password_file, char **error_r)
{
	int i = st_conf_node_index(conf, node);
	const char *uri = i >= 0 ? conf->ldap.endpoint[i] : NULL;
	char *password = NULL;
	LDAP *ld = NULL;
	int rc;
	struct timeval tv = { conf->ldap.timeout_ms / 1000, (conf->ldap.timeout_ms % 1000) * 1000 };

	if (uri == NULL) {
		st_set_error(error_r, "no [ldap] endpoint.%s in %s", node, conf->path);
		return NULL;
	}
	if ((rc = ldap_initialize(&ld, uri)) != LDAP_SUCCESS) {
		st_set_error(error_r, "node %s (%s): %s", node, uri, ldap_err2string(rc));
		return NULL;
	}
	set_options(ld, &tv);
	int starttls = st_conf_starttls(conf, ST_SVC_LDAP, i);
	if (conf->ldap.ca_file != NULL || st_str_has_prefix(uri, "ldaps:") || starttls != ST_TLS_NO) {
		int demand = LDAP_OPT_X_TLS_DEMAND, zero = 0;
		if (conf->ldap.ca_file != NULL)
			ldap_set_option(ld, LDAP_OPT_X_TLS_CACERTFILE, conf->ldap.ca_file);
		ldap_set_option(ld, LDAP_OPT_X_TLS_REQUIRE_CERT, &demand);
		ldap_set_option(ld, LDAP_OPT_X_TLS_NEWCTX, &zero);
	}
	if (st_str_has_prefix(uri, "ldaps:") && (rc = ldap_connect(ld)) != LDAP_SUCCESS) {
		/* Connect now, so that a TLS failure is not reported as the bind's. */
		tls_failed(error_r, conf, node, uri, "cannot connect", rc, ld);
		goto fail;
	}
	if (!st_str_has_prefix(uri, "ldaps:") && starttls != ST_TLS_NO) {
		rc = ldap_start_tls_s(ld, NULL, NULL);
		if (rc != LDAP_SUCCESS) {
			if (starttls == ST_TLS_DEMAND) {
				tls_failed(error_r, conf, node, uri, "StartTLS failed", rc, ld);
				goto fail;
			}
			st_warn("StartTLS failed; going on without TLS (starttls = try) uri=%s error=%s",
				 st_q(uri), st_q(ldap_err2string(rc)));
			ldap_unbind_ext_s(ld, NULL, NULL);
			if (ldap_initialize(&ld, uri) != LDAP_SUCCESS) {
				st_set_error(error_r, "node %s (%s): cannot start over without TLS",
					     node, uri);
				return NULL;
			}
			set_options(ld, &tv);
		}
	}
	if (st_secret_read(password_file, &password, error_r) < 0)
		goto fail;
	struct berval cred = { .bv_len = strlen(password), .bv_val = password };
	rc = ldap_sasl_bind_s(ld, bind_dn, LDAP_SASL_SIMPLE, &cred, NULL, NULL, NULL);
	st_secret_free(&password);
	if (rc != LDAP_SUCCESS) {
		char *diag = NULL;
		ldap_get_option(ld, LDAP_OPT_DIAGNOSTIC_MESSAGE, &diag);
		st_set_error(error_r, "node %s (%s): bind as %s failed: %s%s%s", node, uri,
			     bind_dn,
			     ldap_err2string(rc), !st_str_empty(diag) ? ": " : "",
			     !st_str_empty(diag) ? diag : "");
		ldap_memfree(diag);
		goto fail;
	}
	return ld;
fail:
	ldap_unbind_ext_s(ld, NULL, NULL);
	return NULL;
}

/* A value LDIF may carry as it is (RFC 2849 SAFE-STRING), else base64. */
static bool
ldif_safe(const char *v, size_t len)
{
	if (len == 0)
		return true;
	if (v[0] == ' ' || v[0] == ':' || v[0] == '<' || v[len - 1] == ' ')
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)v[i];
		if (c < 0x20 || c >= 0x7f)
			return false;
	}
	return true;
}

void
st_ldif_line(struct st_buf *b, const char *attr, const char *v, size_t len)
{
	if (ldif_safe(v, len)) {
		st_buf_printf(b, "%s: ", attr);
		st_buf_append(b, v, len);
		st_buf_puts(b, "\n");
		return;
	}
	char *enc = xmalloc(4 * ((len + 2) / 3) + 1);
	EVP_EncodeBlock((unsigned char *)enc, (const unsigned char *)v, (int)len);
	st_buf_printf(b, "%s:: %s\n", attr, enc);
	free(enc);
}
