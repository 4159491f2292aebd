/*
 * imtls.h: the check of an IMAP server's certificate.
 *
 * Debian's libetpan does TLS with GnuTLS and checks no certificate, so
 * imsess.c hands the server's certificate here before LOGIN.  Pure (no
 * libetpan), so that it is unit-tested: tests/unit/test-imstate.c.
 */
#ifndef STANDIN_IMTLS_H
#define STANDIN_IMTLS_H

#include <stddef.h>

#include "lib/util.h"

/*
 * Check the DER certificate DER[0..LEN) as OpenSSL's own client checks a
 * server's (SSL_set1_host): it must chain to CA_FILE (NULL: the system's
 * CAs), be fit for a TLS server (purpose sslserver: an extended key usage,
 * where there is one, that allows serverAuth), and name HOST: an IP
 * address (v4 or v6) against its IP entries, a name against its DNS
 * entries, a wildcard only as a whole left-most label, never the subject's
 * CN.  Returns 0, or -1 with a static reason in *WHY_R (OpenSSL's words:
 * "hostname mismatch", "unsuitable certificate purpose", ...).
 */
int im_tls_check(const unsigned char *der, size_t len, const char *ca_file, const char *host,
		 const char **why_r) ST_WARN_UNUSED;

#endif
