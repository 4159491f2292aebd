/*
 * log.h: one line per event, with key=value context.
 *
 * In the foreground lines go to stderr with a timestamp; detached, to syslog
 * (facility daemon).  Control characters in a message are escaped, so a value
 * that came from the network can never split or forge a line.  Use st_q() for
 * values that may contain spaces or quotes.
 */
#ifndef STANDIN_LOG_H
#define STANDIN_LOG_H

#include <stdbool.h>

#include "lib/util.h"

enum st_log_level {
	ST_LOG_DEBUG,
	ST_LOG_INFO,
	ST_LOG_NOTICE,
	ST_LOG_WARNING,
	ST_LOG_ERROR,
};

enum st_log_target {
	ST_LOG_STDERR,
	ST_LOG_SYSLOG,
};

void st_log_open(const char *ident, enum st_log_target target);
void st_log_close(void);
void st_log_set_level(enum st_log_level level);
enum st_log_level st_log_get_level(void);
int st_log_parse_level(const char *s, enum st_log_level *level_r);
const char *st_log_level_name(enum st_log_level level);

void st_log(enum st_log_level level, const char *fmt, ...) ST_PRINTF(2, 3);
_Noreturn void st_fatal_at(const char *file, int line, const char *fmt, ...) ST_PRINTF(3, 4);

#define st_debug(...) st_log(ST_LOG_DEBUG, __VA_ARGS__)
#define st_info(...) st_log(ST_LOG_INFO, __VA_ARGS__)
#define st_notice(...) st_log(ST_LOG_NOTICE, __VA_ARGS__)
#define st_warn(...) st_log(ST_LOG_WARNING, __VA_ARGS__)
#define st_error(...) st_log(ST_LOG_ERROR, __VA_ARGS__)
#define st_fatal(...) st_fatal_at(__FILE__, __LINE__, __VA_ARGS__)

/*
 * A log-safe rendering of S: unchanged when it is a plain token, otherwise in
 * double quotes with \" \\ and \xNN escapes.  The result lives in a small
 * per-thread ring, valid for the next few calls (enough for one log line).
 */
const char *st_q(const char *s);

/*
 * Data (row keys and values, attribute values) in messages: shown when
 * [cluster] log_data = yes (st_log_set_data) or at level debug, otherwise
 * replaced by st_log_datum(): "#" and 8 hex digits of the value's SHA-256,
 * enough to tell two values apart, not to read them.
 */
void st_log_set_data(bool show);
bool st_log_data(void);
/* Append VALUE (LEN bytes) to B as the log may show it (at most MAX bytes, then "..."). */
void st_log_datum(struct st_buf *b, const char *value, size_t len, size_t max);

#endif
