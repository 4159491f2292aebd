/*
 * order.c: a switchover's orders as they travel through etcd (see order.h).
 */
#include "config.h"

#include "lib/order.h"

#include <string.h>

/* A name: letters, digits and - _ . only (an id, an operation). */
static bool
is_word(const char *s, size_t max)
{
	size_t n = strlen(s);

	if (n == 0 || n >= max)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '_' || c == '.'))
			return false;
	}
	return true;
}

static bool
get_u64(json_t *o, const char *name, uint64_t *v)
{
	json_t *j = json_object_get(o, name);

	if (!json_is_integer(j) || json_integer_value(j) < 0)
		return false;
	*v = (uint64_t)json_integer_value(j);
	return true;
}

int
st_order_parse(const char *text, size_t len, struct st_order *o, char **error_r)
{
	json_error_t jerr;
	json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
	const char *id, *op;

	memset(o, 0, sizeof(*o));
	if (!json_is_object(j)) {
		st_set_error(error_r, "an order that is not a JSON object (%s)",
			     j == NULL ? jerr.text : "another JSON value");
		json_decref(j);
		return -1;
	}
	id = json_string_value(json_object_get(j, "id"));
	op = json_string_value(json_object_get(j, "op"));
	if (id == NULL || !is_word(id, sizeof(o->id))) {
		st_set_error(error_r, "an order without a valid \"id\"");
		goto fail;
	}
	if (op == NULL || !is_word(op, sizeof(o->op))) {
		st_set_error(error_r, "order %s: no valid \"op\"", id);
		goto fail;
	}
	if (!get_u64(j, "seq", &o->seq) || !get_u64(j, "epoch", &o->epoch) || o->epoch == 0) {
		st_set_error(error_r, "order %s %s: \"seq\" and \"epoch\" must be numbers, epoch > 0",
			     id, op);
		goto fail;
	}
	json_t *args = json_object_get(j, "args");
	if (args != NULL && !json_is_object(args)) {
		st_set_error(error_r, "order %s %s: \"args\" is not an object", id, op);
		goto fail;
	}
	memcpy(o->id, id, strlen(id) + 1);
	memcpy(o->op, op, strlen(op) + 1);
	o->args = args != NULL ? json_incref(args) : json_object();
	json_decref(j);
	return 0;
fail:
	json_decref(j);
	memset(o, 0, sizeof(*o));
	return -1;
}

char *
st_order_format(const struct st_order *o)
{
	json_t *args = o->args != NULL ? json_incref(o->args) : json_object();
	json_t *j = json_pack("{s:s,s:I,s:I,s:s,s:o}", "id", o->id, "seq", (json_int_t)o->seq,
			      "epoch", (json_int_t)o->epoch, "op", o->op, "args", args);
	char *text = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);

	json_decref(j);
	return text;
}

void
st_order_clear(struct st_order *o)
{
	json_decref(o->args);
	memset(o, 0, sizeof(*o));
}

bool
st_order_acked(const char *text, size_t len, const struct st_order *o)
{
	json_error_t jerr;
	json_t *j = json_loadb(text, len, 0, &jerr);
	const char *id = json_string_value(json_object_get(j, "id"));
	json_t *seq = json_object_get(j, "seq");
	bool same = id != NULL && strcmp(id, o->id) == 0 && json_is_integer(seq) &&
		    (uint64_t)json_integer_value(seq) == o->seq;

	json_decref(j);
	return same;
}
