/*
 * imtls.c: an IMAP server's certificate, checked (see imtls.h).
 */
#include "config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <sys/socket.h>

#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include "replicators/imap/imtls.h"

int
im_tls_check(const unsigned char *der, size_t len, const char *ca_file, const char *host, const char **why_r)
{
	const unsigned char *p = der;
	X509 *leaf = der != NULL && len > 0 ? d2i_X509(NULL, &p, (long)len) : NULL;
	X509_STORE *store = NULL;
	X509_STORE_CTX *ctx = NULL;
	X509_VERIFY_PARAM *param;
	unsigned char addr[sizeof(struct in6_addr)];
	bool is_ip = inet_pton(AF_INET, host, addr) == 1 || inet_pton(AF_INET6, host, addr) == 1;
	int rc = -1;

	*why_r = NULL;
	if (leaf == NULL) {
		*why_r = "the server sent no certificate";
		goto out;
	}
	store = X509_STORE_new();
	ctx = X509_STORE_CTX_new();
	if (store == NULL || ctx == NULL) {
		*why_r = "out of memory";
		goto out;
	}
	if (ca_file ? X509_STORE_load_file(store, ca_file) != 1 : X509_STORE_set_default_paths(store) != 1) {
		*why_r = "cannot load the CA certificates ([imap] ca_file)";
		goto out;
	}
	if (X509_STORE_CTX_init(ctx, store, leaf, NULL) != 1) {
		*why_r = "out of memory";
		goto out;
	}
	param = X509_STORE_CTX_get0_param(ctx);
	X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS |
					       X509_CHECK_FLAG_NEVER_CHECK_SUBJECT);
	if (X509_VERIFY_PARAM_set_purpose(param, X509_PURPOSE_SSL_SERVER) != 1) {
		*why_r = "cannot set the certificate purpose (sslserver)";
		goto out;
	}
	if (is_ip ? X509_VERIFY_PARAM_set1_ip_asc(param, host) != 1
		  : host[0] == '\0' || X509_VERIFY_PARAM_set1_host(param, host, 0) != 1) {
		*why_r = is_ip ? "cannot check the certificate against the endpoint's IP address"
			       : "cannot check the certificate against the endpoint's host name";
		goto out;
	}
	if (X509_verify_cert(ctx) != 1) {
		*why_r = X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx));
		goto out;
	}
	rc = 0;
out:
	X509_STORE_CTX_free(ctx);
	X509_STORE_free(store);
	X509_free(leaf);
	return rc;
}
