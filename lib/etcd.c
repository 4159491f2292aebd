/*
 * etcd.c: etcd v3 over its JSON gateway (see etcd.h).
 */
#include "config.h"

#include "lib/etcd.h"
#include "lib/durable.h"
#include "lib/log.h"

#include <curl/curl.h>
#include <inttypes.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ETCD_MAX_URLS 8
#define ETCD_MAX_REPLY (64 * 1024 * 1024)

struct st_etcd {
	CURL *curl;
	char *urls[ETCD_MAX_URLS];
	size_t n_urls, cur;
	char *ca_file, *cert_file, *key_file;
	char *user, *password;
	char *token;
	long timeout_ms;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

static void
curl_init_once(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* ------------------------------------------------------------ base64 */

static char *
b64_encode(const void *data, size_t len)
{
	char *out = xmalloc(4 * ((len + 2) / 3) + 1);

	EVP_EncodeBlock((unsigned char *)out, data, (int)len);
	return out;
}

/* NUL-terminated copy in *out_r, its length in *len_r; -1 when not base64. */
static int
b64_decode(const char *text, char **out_r, size_t *len_r)
{
	size_t n = strlen(text);

	if (n % 4 != 0)
		return -1;
	unsigned char *out = xmalloc(n / 4 * 3 + 1);
	int got = n > 0 ? EVP_DecodeBlock(out, (const unsigned char *)text, (int)n) : 0;
	if (got < 0) {
		free(out);
		return -1;
	}
	size_t len = (size_t)got;
	if (n > 0 && text[n - 1] == '=')
		len--;
	if (n > 1 && text[n - 2] == '=')
		len--;
	out[len] = '\0';
	*out_r = (char *)out;
	*len_r = len;
	return 0;
}

/* ------------------------------------------------------------ handle */

char *
st_etcd_key(const struct st_conf *conf, const char *name)
{
	return xasprintf("/standin/%s/%s", conf->cluster_name, name);
}

const char *
st_etcd_url(const struct st_etcd *e)
{
	return e->urls[e->cur];
}

struct st_etcd *
st_etcd_open(const struct st_conf *conf, char **error_r)
{
	if (conf->etcd.urls == NULL) {
		st_set_error(error_r, "%s: [cluster] etcd is not set", conf->path);
		return NULL;
	}
	pthread_once(&curl_once, curl_init_once);
	struct st_etcd *e = xcalloc(1, sizeof(*e));
	char *copy = xstrdup(conf->etcd.urls), *save = NULL;
	for (char *u = strtok_r(copy, ",", &save); u != NULL && e->n_urls < ETCD_MAX_URLS;
	     u = strtok_r(NULL, ",", &save)) {
		while (*u == ' ' || *u == '\t')
			u++;
		size_t len = strlen(u);
		while (len > 0 && (u[len - 1] == ' ' || u[len - 1] == '\t' || u[len - 1] == '/'))
			len--;
		if (len > 0)
			e->urls[e->n_urls++] = xstrndup(u, len);
	}
	free(copy);
	e->timeout_ms = conf->etcd.timeout_ms > 0 ? conf->etcd.timeout_ms : 5000;
	e->ca_file = conf->etcd.ca_file ? xstrdup(conf->etcd.ca_file) : NULL;
	e->cert_file = conf->etcd.cert_file ? xstrdup(conf->etcd.cert_file) : NULL;
	e->key_file = conf->etcd.key_file ? xstrdup(conf->etcd.key_file) : NULL;
	if (conf->etcd.user != NULL) {
		char *data = NULL;
		size_t len = 0;
		if (conf->etcd.password_file == NULL) {
			st_set_error(error_r, "%s: [cluster] etcd_user needs etcd_password_file",
				     conf->path);
			st_etcd_close(&e);
			return NULL;
		}
		if (st_read_file(conf->etcd.password_file, 4096, &data, &len, error_r) < 0) {
			st_etcd_close(&e);
			return NULL;
		}
		data[strcspn(data, "\r\n")] = '\0';
		e->user = xstrdup(conf->etcd.user);
		e->password = data;
	}
	e->curl = curl_easy_init();
	if (e->curl == NULL || e->n_urls == 0) {
		st_set_error(error_r, e->curl == NULL ? "cannot start libcurl"
						     : "[cluster] etcd holds no URL");
		st_etcd_close(&e);
		return NULL;
	}
	return e;
}

void
st_etcd_close(struct st_etcd **ep)
{
	struct st_etcd *e = *ep;

	if (e == NULL)
		return;
	if (e->curl != NULL)
		curl_easy_cleanup(e->curl);
	for (size_t i = 0; i < e->n_urls; i++)
		free(e->urls[i]);
	free(e->ca_file);
	free(e->cert_file);
	free(e->key_file);
	free(e->user);
	if (e->password != NULL) {
		OPENSSL_cleanse(e->password, strlen(e->password));
		free(e->password);
	}
	free(e->token);
	free(e);
	*ep = NULL;
}

/* ------------------------------------------------------------ requests */

static size_t
collect(char *ptr, size_t size, size_t nmemb, void *data)
{
	struct st_buf *b = data;
	size_t n = size * nmemb;

	if (b->len + n > ETCD_MAX_REPLY)
		return 0;	/* libcurl fails the transfer */
	st_buf_append(b, ptr, n);
	return n;
}

/* The handle set for one POST of TEXT to URL, within TIMEOUT_MS, its reply
 * to WRITE(DATA); TLS and the connect timeout from the configuration. */
static void
prepare(struct st_etcd *e, const char *url, const char *text, struct curl_slist *headers,
	size_t (*write)(char *, size_t, size_t, void *), void *data, char *errbuf, long timeout_ms)
{
	curl_easy_reset(e->curl);
	curl_easy_setopt(e->curl, CURLOPT_URL, url);
	curl_easy_setopt(e->curl, CURLOPT_POSTFIELDS, text);
	curl_easy_setopt(e->curl, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(e->curl, CURLOPT_WRITEFUNCTION, write);
	curl_easy_setopt(e->curl, CURLOPT_WRITEDATA, data);
	curl_easy_setopt(e->curl, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(e->curl, CURLOPT_TIMEOUT_MS, timeout_ms);
	curl_easy_setopt(e->curl, CURLOPT_CONNECTTIMEOUT_MS, e->timeout_ms);
	curl_easy_setopt(e->curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e->curl, CURLOPT_PROTOCOLS_STR, "http,https");
	if (e->ca_file != NULL)
		curl_easy_setopt(e->curl, CURLOPT_CAINFO, e->ca_file);
	if (e->cert_file != NULL)
		curl_easy_setopt(e->curl, CURLOPT_SSLCERT, e->cert_file);
	if (e->key_file != NULL)
		curl_easy_setopt(e->curl, CURLOPT_SSLKEY, e->key_file);
}

/* The gateway's error reply: {"error":"...","code":N,"message":"..."}. */
static char *
gateway_error(json_t *reply, long status)
{
	const char *msg = json_string_value(json_object_get(reply, "message"));

	if (msg == NULL)
		msg = json_string_value(json_object_get(reply, "error"));
	return xasprintf("HTTP %ld: %s", status, msg != NULL ? msg : "no message");
}

static int authenticate(struct st_etcd *e, char **error_r);

/*
 * POST BODY (consumed) to PATH on the first URL that answers; *reply_r the
 * JSON object.  HTTP errors are errors; a transport failure moves on to the
 * next URL.
 */
static int
call(struct st_etcd *e, const char *path, json_t *body, json_t **reply_r, char **error_r)
{
	char *text = json_dumps(body, JSON_COMPACT);
	struct st_buf why;
	int ret = -1;
	bool reauth = false;

	json_decref(body);
	*reply_r = NULL;
	st_buf_init(&why);
again:
	for (size_t k = 0; k < e->n_urls; k++) {
		size_t i = (e->cur + k) % e->n_urls;
		char *url = xasprintf("%s%s", e->urls[i], path), *auth = NULL;
		struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
		struct st_buf out;
		char errbuf[CURL_ERROR_SIZE] = "";
		long status = 0;

		if (e->token != NULL && strcmp(path, "/v3/auth/authenticate") != 0) {
			auth = xasprintf("Authorization: %s", e->token);
			headers = curl_slist_append(headers, auth);
		}
		st_buf_init(&out);
		prepare(e, url, text, headers, collect, &out, errbuf, e->timeout_ms);
		CURLcode cc = curl_easy_perform(e->curl);
		curl_slist_free_all(headers);
		free(auth);
		if (cc != CURLE_OK) {
			st_buf_printf(&why, "%s%s: %s", why.len > 0 ? "; " : "", e->urls[i],
				      errbuf[0] != '\0' ? errbuf : curl_easy_strerror(cc));
			st_buf_free(&out);
			free(url);
			continue;
		}
		e->cur = i;
		curl_easy_getinfo(e->curl, CURLINFO_RESPONSE_CODE, &status);
		json_error_t jerr;
		json_t *reply = out.len > 0 ? json_loadb(out.data, out.len, JSON_DISABLE_EOF_CHECK, &jerr)
					    : NULL;
		st_buf_free(&out);
		if (!json_is_object(reply)) {
			st_set_error(error_r, "etcd %s%s: HTTP %ld, not a JSON object", e->urls[i], path,
				     status);
			json_decref(reply);
			free(url);
			goto out;
		}
		if (status != 200) {
			char *msg = gateway_error(reply, status);
			bool bad_token = strstr(msg, "invalid auth token") != NULL ||
					 strstr(msg, "user name is empty") != NULL;
			json_decref(reply);
			free(url);
			if (bad_token && e->user != NULL && !reauth) {
				free(msg);
				reauth = true;
				free(e->token);
				e->token = NULL;
				if (authenticate(e, error_r) < 0)
					goto out;
				goto again;
			}
			st_set_error(error_r, "etcd %s%s: %s", e->urls[e->cur], path, msg);
			free(msg);
			goto out;
		}
		free(url);
		*reply_r = reply;
		ret = 0;
		goto out;
	}
	st_set_error(error_r, "no etcd member answers (%s)", why.data != NULL ? why.data : "no URL");
out:
	st_buf_free(&why);
	free(text);
	return ret;
}

static int
authenticate(struct st_etcd *e, char **error_r)
{
	json_t *reply = NULL;

	if (call(e, "/v3/auth/authenticate",
		 json_pack("{s:s,s:s}", "name", e->user, "password", e->password), &reply,
		 error_r) < 0)
		return -1;
	const char *token = json_string_value(json_object_get(reply, "token"));
	if (token == NULL) {
		st_set_error(error_r, "etcd %s: authentication as %s gave no token", st_etcd_url(e),
			     e->user);
		json_decref(reply);
		return -1;
	}
	free(e->token);
	e->token = xstrdup(token);
	json_decref(reply);
	return 0;
}

/* A request, authenticated first when etcd_user is set. */
static int
request(struct st_etcd *e, const char *path, json_t *body, json_t **reply_r, char **error_r)
{
	if (e->user != NULL && e->token == NULL && authenticate(e, error_r) < 0) {
		json_decref(body);
		return -1;
	}
	return call(e, path, body, reply_r, error_r);
}

/* int64 fields come as JSON strings (or are absent: 0). */
static int64_t
get_i64(json_t *obj, const char *name)
{
	json_t *v = json_object_get(obj, name);

	if (json_is_string(v))
		return strtoll(json_string_value(v), NULL, 10);
	if (json_is_integer(v))
		return (int64_t)json_integer_value(v);
	return 0;
}

static int
kv_from_json(json_t *o, struct st_etcd_kv *kv, char **error_r)
{
	const char *k = json_string_value(json_object_get(o, "key"));
	const char *v = json_string_value(json_object_get(o, "value"));
	size_t klen = 0;

	memset(kv, 0, sizeof(*kv));
	if (k == NULL || b64_decode(k, &kv->key, &klen) < 0 ||
	    b64_decode(v != NULL ? v : "", &kv->value, &kv->len) < 0) {
		st_etcd_kv_clear(kv);
		st_set_error(error_r, "etcd answered a key or value that is not base64");
		return -1;
	}
	kv->create_revision = get_i64(o, "create_revision");
	kv->mod_revision = get_i64(o, "mod_revision");
	kv->version = get_i64(o, "version");
	kv->lease = get_i64(o, "lease");
	return 0;
}

void
st_etcd_kv_clear(struct st_etcd_kv *kv)
{
	free(kv->key);
	free(kv->value);
	memset(kv, 0, sizeof(*kv));
}

void
st_etcd_kvs_free(struct st_etcd_kv *kvs, size_t n)
{
	for (size_t i = 0; i < n; i++)
		st_etcd_kv_clear(&kvs[i]);
	free(kvs);
}

/* ------------------------------------------------------------ operations */

int
st_etcd_get(struct st_etcd *e, const char *key, struct st_etcd_kv *kv_r, int64_t *rev_r,
	    char **error_r)
{
	char *k = b64_encode(key, strlen(key));
	json_t *reply = NULL;
	int ret = -1;

	if (request(e, "/v3/kv/range", json_pack("{s:s}", "key", k), &reply, error_r) < 0)
		goto out;
	if (rev_r != NULL)
		*rev_r = get_i64(json_object_get(reply, "header"), "revision");
	json_t *kvs = json_object_get(reply, "kvs");
	if (!json_is_array(kvs) || json_array_size(kvs) == 0) {
		ret = 0;
		goto out;
	}
	ret = kv_from_json(json_array_get(kvs, 0), kv_r, error_r) < 0 ? -1 : 1;
out:
	json_decref(reply);
	free(k);
	return ret;
}

/* The key just past every key that starts with PREFIX (etcd's range_end). */
static char *
prefix_end(const char *prefix)
{
	size_t n = strlen(prefix);
	char *end = xstrdup(prefix);

	while (n > 0 && (unsigned char)end[n - 1] == 0xff)
		end[--n] = '\0';
	if (n == 0) {
		free(end);
		return xstrdup("");	/* not reached for standin's prefixes */
	}
	end[n - 1]++;
	return end;
}

int
st_etcd_list(struct st_etcd *e, const char *prefix, struct st_etcd_kv **kvs_r, size_t *n_r,
	     int64_t *rev_r, char **error_r)
{
	return st_etcd_list_since(e, prefix, 0, kvs_r, n_r, rev_r, error_r);
}

int
st_etcd_list_since(struct st_etcd *e, const char *prefix, int64_t min_mod_rev, struct st_etcd_kv **kvs_r,
		   size_t *n_r, int64_t *rev_r, char **error_r)
{
	char *end = prefix_end(prefix);
	char *k = b64_encode(prefix, strlen(prefix)), *ke = b64_encode(end, strlen(end));
	json_t *reply = NULL, *body = json_pack("{s:s,s:s}", "key", k, "range_end", ke);
	int ret = -1;

	*kvs_r = NULL;
	*n_r = 0;
	if (min_mod_rev > 0) {
		char rev[32];
		snprintf(rev, sizeof(rev), "%" PRId64, min_mod_rev);
		json_object_set_new(body, "min_mod_revision", json_string(rev));
	}
	if (request(e, "/v3/kv/range", body, &reply, error_r) < 0)
		goto out;
	if (rev_r != NULL)
		*rev_r = get_i64(json_object_get(reply, "header"), "revision");
	json_t *kvs = json_object_get(reply, "kvs");
	size_t n = json_is_array(kvs) ? json_array_size(kvs) : 0;
	struct st_etcd_kv *out = xcalloc(n > 0 ? n : 1, sizeof(*out));
	for (size_t i = 0; i < n; i++) {
		if (kv_from_json(json_array_get(kvs, i), &out[i], error_r) < 0) {
			st_etcd_kvs_free(out, i);
			goto out;
		}
	}
	*kvs_r = out;
	*n_r = n;
	ret = 0;
out:
	json_decref(reply);
	free(k);
	free(ke);
	free(end);
	return ret;
}

int
st_etcd_put_if(struct st_etcd *e, const char *key, const void *value, size_t len, int64_t mod_rev,
	       int64_t lease, int64_t *rev_r, struct st_etcd_kv *current_r, char **error_r)
{
	return st_etcd_put_if_guarded(e, key, value, len, mod_rev, NULL, 0, lease, rev_r, current_r,
				      error_r);
}

int
st_etcd_put_if_guarded(struct st_etcd *e, const char *key, const void *value, size_t len,
		       int64_t mod_rev, const char *guard_key, int64_t guard_create_rev,
		       int64_t lease, int64_t *rev_r, struct st_etcd_kv *current_r, char **error_r)
{
	char *k = b64_encode(key, strlen(key)), *v = b64_encode(value, len), *gk = NULL;
	char rev[32], lid[32];
	json_t *reply = NULL;
	int ret = -1;

	snprintf(rev, sizeof(rev), "%" PRId64, mod_rev);
	snprintf(lid, sizeof(lid), "%" PRId64, lease);
	/* A missing key has create_revision 0; an existing one its mod_revision. */
	json_t *cmp = mod_rev == 0
		? json_pack("{s:s,s:s,s:s,s:s}", "key", k, "result", "EQUAL", "target", "CREATE",
			    "create_revision", "0")
		: json_pack("{s:s,s:s,s:s,s:s}", "key", k, "result", "EQUAL", "target", "MOD",
			    "mod_revision", rev);
	json_t *put = json_pack("{s:s,s:s}", "key", k, "value", v);
	if (lease != 0)
		json_object_set_new(put, "lease", json_string(lid));
	json_t *body = json_pack("{s:[o],s:[{s:o}],s:[{s:{s:s}}]}", "compare", cmp, "success",
				 "request_put", put, "failure", "request_range", "key", k);
	if (guard_key != NULL) {
		/* ...and only while GUARD_KEY is the one created at GUARD_CREATE_REV. */
		char grev[32];
		snprintf(grev, sizeof(grev), "%" PRId64, guard_create_rev);
		gk = b64_encode(guard_key, strlen(guard_key));
		json_array_append_new(json_object_get(body, "compare"),
				      json_pack("{s:s,s:s,s:s,s:s}", "key", gk, "result", "EQUAL",
						"target", "CREATE", "create_revision", grev));
	}
	if (request(e, "/v3/kv/txn", body, &reply, error_r) < 0)
		goto out;
	if (json_is_true(json_object_get(reply, "succeeded"))) {
		if (rev_r != NULL)
			*rev_r = get_i64(json_object_get(reply, "header"), "revision");
		ret = 1;
		goto out;
	}
	ret = 0;
	if (current_r != NULL) {
		memset(current_r, 0, sizeof(*current_r));
		json_t *rr = json_object_get(json_array_get(json_object_get(reply, "responses"), 0),
					     "response_range");
		json_t *kvs = json_object_get(rr, "kvs");
		if (json_is_array(kvs) && json_array_size(kvs) > 0 &&
		    kv_from_json(json_array_get(kvs, 0), current_r, error_r) < 0)
			ret = -1;
	}
out:
	json_decref(reply);
	free(k);
	free(v);
	free(gk);
	return ret;
}

int
st_etcd_put(struct st_etcd *e, const char *key, const void *value, size_t len, int64_t lease,
	    char **error_r)
{
	char *k = b64_encode(key, strlen(key)), *v = b64_encode(value, len);
	char lid[32];
	json_t *reply = NULL;
	json_t *body = json_pack("{s:s,s:s}", "key", k, "value", v);
	int ret;

	if (lease != 0) {
		snprintf(lid, sizeof(lid), "%" PRId64, lease);
		json_object_set_new(body, "lease", json_string(lid));
	}
	ret = request(e, "/v3/kv/put", body, &reply, error_r);
	json_decref(reply);
	free(k);
	free(v);
	return ret;
}

int
st_etcd_delete(struct st_etcd *e, const char *key, char **error_r)
{
	char *k = b64_encode(key, strlen(key));
	json_t *reply = NULL;
	int ret = request(e, "/v3/kv/deleterange", json_pack("{s:s}", "key", k), &reply, error_r);

	json_decref(reply);
	free(k);
	return ret;
}

int
st_etcd_lease_grant(struct st_etcd *e, long ttl_s, int64_t *id_r, char **error_r)
{
	char ttl[32];
	json_t *reply = NULL;

	snprintf(ttl, sizeof(ttl), "%ld", ttl_s);
	if (request(e, "/v3/lease/grant", json_pack("{s:s}", "TTL", ttl), &reply, error_r) < 0)
		return -1;
	*id_r = get_i64(reply, "ID");
	json_decref(reply);
	if (*id_r == 0) {
		st_set_error(error_r, "etcd %s: lease grant gave no ID", st_etcd_url(e));
		return -1;
	}
	return 0;
}

int
st_etcd_lease_keepalive(struct st_etcd *e, int64_t id, long *ttl_r, char **error_r)
{
	char lid[32];
	json_t *reply = NULL;

	snprintf(lid, sizeof(lid), "%" PRId64, id);
	if (request(e, "/v3/lease/keepalive", json_pack("{s:s}", "ID", lid), &reply, error_r) < 0)
		return -1;
	/* A streaming method: one {"result":{...}} per line, the first one read. */
	json_t *res = json_object_get(reply, "result");
	*ttl_r = (long)get_i64(res != NULL ? res : reply, "TTL");
	json_decref(reply);
	return 0;
}

int
st_etcd_lease_revoke(struct st_etcd *e, int64_t id, char **error_r)
{
	char lid[32];
	json_t *reply = NULL;

	snprintf(lid, sizeof(lid), "%" PRId64, id);
	int ret = request(e, "/v3/lease/revoke", json_pack("{s:s}", "ID", lid), &reply, error_r);
	json_decref(reply);
	return ret;
}

/* ------------------------------------------------------------ watch */

/*
 * The watch is a streaming method: the gateway sends one JSON object per
 * line, {"result":{"created":true,...}} first, then one per batch of
 * events.  The transfer is cut (a short write) at the first event.
 */
struct watch_state {
	struct st_buf line;
	int changed;			/* 1 at an event */
	char *error;			/* a cancel or an error message */
};

static size_t
watch_data(char *ptr, size_t size, size_t nmemb, void *data)
{
	struct watch_state *w = data;
	size_t n = size * nmemb;

	for (size_t i = 0; i < n;) {
		const char *nl = memchr(ptr + i, '\n', n - i);
		size_t chunk = nl != NULL ? (size_t)(nl - (ptr + i)) : n - i;
		if (w->line.len + chunk > ETCD_MAX_REPLY)
			return 0;
		st_buf_append(&w->line, ptr + i, chunk);
		i += chunk;
		if (nl == NULL)
			break;
		i++;
		json_error_t jerr;
		json_t *msg = json_loadb(w->line.data != NULL ? w->line.data : "", w->line.len, 0,
					 &jerr);
		w->line.len = 0;
		json_t *res = json_object_get(msg, "result");
		json_t *events = json_object_get(res, "events");
		if (json_is_array(events) && json_array_size(events) > 0) {
			w->changed = 1;
		} else if (json_is_true(json_object_get(res, "canceled")) ||
			   get_i64(res, "compact_revision") > 0 || json_object_get(msg, "error")) {
			const char *why = json_string_value(json_object_get(res, "cancel_reason"));
			if (why == NULL)
				why = json_string_value(json_object_get(json_object_get(msg, "error"),
									"message"));
			free(w->error);
			w->error = xstrdup(why != NULL && *why != '\0' ? why
					   : "the watch was canceled (revision compacted?)");
		}
		json_decref(msg);
		if (w->changed || w->error != NULL)
			return 0;	/* done: cut the stream */
	}
	return n;
}

int
st_etcd_wait(struct st_etcd *e, const char *key, bool prefix, int64_t after_rev, long timeout_ms,
	     char **error_r)
{
	char *end = prefix ? prefix_end(key) : NULL;
	char *k = b64_encode(key, strlen(key)), *ke = end ? b64_encode(end, strlen(end)) : NULL;
	char rev[32];
	struct watch_state w;
	int ret = -1;

	if (e->user != NULL && e->token == NULL && authenticate(e, error_r) < 0)
		goto out;
	snprintf(rev, sizeof(rev), "%" PRId64, after_rev + 1);
	json_t *req = json_pack("{s:s,s:s}", "key", k, "start_revision", rev);
	if (ke != NULL)
		json_object_set_new(req, "range_end", json_string(ke));
	json_t *body = json_pack("{s:o}", "create_request", req);
	char *text = json_dumps(body, JSON_COMPACT);
	json_decref(body);
	char *url = xasprintf("%s/v3/watch", e->urls[e->cur]), *auth = NULL;
	struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
	char errbuf[CURL_ERROR_SIZE] = "";

	if (e->token != NULL) {
		auth = xasprintf("Authorization: %s", e->token);
		headers = curl_slist_append(headers, auth);
	}
	memset(&w, 0, sizeof(w));
	st_buf_init(&w.line);
	prepare(e, url, text, headers, watch_data, &w, errbuf, timeout_ms > 0 ? timeout_ms : 1);
	CURLcode cc = curl_easy_perform(e->curl);
	long status = 0;
	curl_easy_getinfo(e->curl, CURLINFO_RESPONSE_CODE, &status);
	if (w.changed) {
		ret = 1;
	} else if (w.error != NULL) {
		st_set_error(error_r, "etcd %s watch of %s: %s", e->urls[e->cur], key, w.error);
	} else if (cc == CURLE_OPERATION_TIMEDOUT && status == 200) {
		ret = 0;
	} else if (cc == CURLE_OK || cc == CURLE_OPERATION_TIMEDOUT) {
		st_set_error(error_r, "etcd %s watch of %s: HTTP %ld%s", e->urls[e->cur], key, status,
			     cc == CURLE_OK ? ", the stream ended" : ", no answer in time");
	} else {
		st_set_error(error_r, "etcd %s watch of %s: %s", e->urls[e->cur], key,
			     errbuf[0] != '\0' ? errbuf : curl_easy_strerror(cc));
		/* the next call starts from the next URL */
		e->cur = (e->cur + 1) % e->n_urls;
	}
	curl_slist_free_all(headers);
	free(auth);
	free(url);
	free(text);
	st_buf_free(&w.line);
	free(w.error);
out:
	free(k);
	free(ke);
	free(end);
	return ret;
}
