/*
 * ldconn.h: the one way standin reaches a slapd: open NODE's [ldap]
 * endpoint, check TLS (ldaps:// or StartTLS as [ldap] starttls says; the
 * server's certificate against ca_file or the system's CAs, and its name),
 * and bind as [ldap] bind_dn with the password from password_file.  Used by
 * standin-ldaprepl, the dumpers and standin-imaprepl's user list.
 *
 * Blocking (each step bounded by [ldap] timeout): call it from a command or
 * a thread, not from an event loop that must go on meanwhile.
 */
#ifndef STANDIN_LDCONN_H
#define STANDIN_LDCONN_H

#include <ldap.h>

#include "lib/conf.h"

/* A bound connection to NODE's slapd, or NULL with a message that names
 * the node, its URI and the step that failed. */
LDAP *st_ldap_open(const struct st_conf *conf, const char *node, char **error_r);

/* The same, bound as BIND_DN with the password in PASSWORD_FILE. */
LDAP *st_ldap_open_as(const struct st_conf *conf, const char *node, const char *bind_dn,
		      const char *password_file, char **error_r);

/* "ATTR: value\n" to B, or "ATTR:: base64\n" when the value is not a safe
 * LDIF string (RFC 2849). */
void st_ldif_line(struct st_buf *b, const char *attr, const char *v, size_t len);

#endif
