/*
 * test-order: the orders a switchover gives the nodes' agents through etcd
 * (lib/order.c): parse, format, acks; bad input named, never half taken.
 */
#include "config.h"

#include <check.h>
#include <string.h>

#include "lib/order.h"
#include "testutil.h"

START_TEST(test_round_trip)
{
	const char *text = "{\"id\":\"1796-ab\",\"seq\":3,\"epoch\":7,\"op\":\"drain\","
			   "\"args\":{\"timeout_ms\":30000,\"positions\":{\"pg\":\"0/16B3748\"}}}";
	struct st_order o, back;
	char *err = NULL;

	ck_assert_int_eq(st_order_parse(text, strlen(text), &o, &err), 0);
	ck_assert_str_eq(o.id, "1796-ab");
	ck_assert_str_eq(o.op, "drain");
	ck_assert_uint_eq(o.seq, 3);
	ck_assert_uint_eq(o.epoch, 7);
	ck_assert_int_eq(json_integer_value(json_object_get(o.args, "timeout_ms")), 30000);
	char *again = st_order_format(&o);
	ck_assert_int_eq(st_order_parse(again, strlen(again), &back, &err), 0);
	ck_assert_str_eq(back.id, o.id);
	ck_assert(json_equal(back.args, o.args));
	/* An ack answers the order with the same id and seq, and only that. */
	ck_assert(st_order_acked("{\"id\":\"1796-ab\",\"seq\":3,\"ok\":true}", 34, &o));
	ck_assert(!st_order_acked("{\"id\":\"1796-ab\",\"seq\":2,\"ok\":true}", 34, &o));
	ck_assert(!st_order_acked("{\"id\":\"other\",\"seq\":3}", 23, &o));
	ck_assert(!st_order_acked("not json", 8, &o));
	free(again);
	st_order_clear(&o);
	st_order_clear(&back);
	/* No args: an empty object. */
	text = "{\"id\":\"x\",\"seq\":0,\"epoch\":1,\"op\":\"pause\"}";
	ck_assert_int_eq(st_order_parse(text, strlen(text), &o, &err), 0);
	ck_assert(json_is_object(o.args) && json_object_size(o.args) == 0);
	st_order_clear(&o);
}
END_TEST

START_TEST(test_refused)
{
	static const struct {
		const char *text, *error;
	} bad[] = {
		{ "", "not a JSON object" },
		{ "[1]", "not a JSON object" },
		{ "{\"seq\":1,\"epoch\":1,\"op\":\"pause\"}", "without a valid \"id\"" },
		{ "{\"id\":\"a b\",\"seq\":1,\"epoch\":1,\"op\":\"pause\"}", "without a valid \"id\"" },
		{ "{\"id\":\"x\",\"seq\":1,\"epoch\":1}", "order x: no valid \"op\"" },
		{ "{\"id\":\"x\",\"seq\":1,\"epoch\":1,\"op\":\"../etc\"}", "no valid \"op\"" },
		{ "{\"id\":\"x\",\"seq\":1,\"epoch\":0,\"op\":\"pause\"}", "epoch > 0" },
		{ "{\"id\":\"x\",\"seq\":-1,\"epoch\":2,\"op\":\"pause\"}", "must be numbers" },
		{ "{\"id\":\"x\",\"seq\":1,\"epoch\":\"2\",\"op\":\"pause\"}", "must be numbers" },
		{ "{\"id\":\"x\",\"seq\":1,\"epoch\":2,\"op\":\"pause\",\"args\":[]}", "not an object" },
		{ "{\"id\":\"x\",\"id\":\"y\",\"seq\":1,\"epoch\":2,\"op\":\"pause\"}",
		  "not a JSON object" },
		{ "{\"id\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\","
		  "\"seq\":1,\"epoch\":2,\"op\":\"pause\"}", "without a valid \"id\"" },
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct st_order o;
		char *err = NULL;
		ck_assert_msg(st_order_parse(bad[i].text, strlen(bad[i].text), &o, &err) < 0, "%s",
			      bad[i].text);
		ck_assert_msg(err != NULL && strstr(err, bad[i].error) != NULL, "%s: %s", bad[i].text,
			      err != NULL ? err : "(no error)");
		ck_assert(o.args == NULL);
		free(err);
	}
	/* A NUL inside the text is not taken as its end. */
	struct st_order o;
	char *err = NULL;
	const char nul[] = "{\"id\":\"x\",\"seq\":1,\"epoch\":1,\"op\":\"pause\"}\0garbage";
	ck_assert_int_lt(st_order_parse(nul, sizeof(nul) - 1, &o, &err), 0);
	free(err);
}
END_TEST

static Suite *
order_suite(void)
{
	Suite *s = suite_create("order");
	TCase *tc = tcase_create("order");

	tcase_add_test(tc, test_round_trip);
	tcase_add_test(tc, test_refused);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return tu_run(order_suite());
}
