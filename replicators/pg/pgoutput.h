/*
 * pgoutput.h: decoding of PostgreSQL's logical replication stream.
 *
 * Two layers, both pure (no I/O, no libpq), so they are unit-tested and
 * fuzzed without a server:
 *
 *  - pgo_parse_copydata(): one CopyData message of a START_REPLICATION
 *    stream: XLogData ('w'), primary keepalive ('k').
 *  - pgo_parse(): one pgoutput message (protocol 1 and 2): Begin, Commit,
 *    Origin, Relation, Type, Insert, Update, Delete, Truncate, Message,
 *    Stream Start/Stop/Commit/Abort.
 *
 * Text values are copied into one allocation owned by the message, each
 * NUL-terminated (PostgreSQL text values cannot hold NUL; a NUL inside one is
 * a protocol error).  pgo_msg_clear() frees them.  Every length is checked
 * against the buffer: malformed input gives -1 and a message naming the
 * message type and the offset, never a read outside the buffer.
 *
 * See https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html
 */
#ifndef STANDIN_PGOUTPUT_H
#define STANDIN_PGOUTPUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/util.h"

typedef uint64_t pgo_lsn;

/* "16/B374D848" */
#define PGO_LSN_FMT "%X/%X"
#define PGO_LSN_ARGS(l) (unsigned)((l) >> 32), (unsigned)(l)
int pgo_lsn_parse(const char *s, pgo_lsn *lsn_r);

/* Microseconds since 2000-01-01 (PostgreSQL epoch) to Unix milliseconds. */
long long pgo_ts_to_unix_ms(int64_t pg_us);
int64_t pgo_unix_ms_to_ts(long long unix_ms);

/* ------------------------------------------------------------ CopyData */

enum pgo_copy_kind {
	PGO_COPY_XLOGDATA = 'w',
	PGO_COPY_KEEPALIVE = 'k',
};

struct pgo_copydata {
	enum pgo_copy_kind kind;
	pgo_lsn wal_start;		/* 'w': LSN of this message's data */
	pgo_lsn wal_end;		/* current end of WAL on the server */
	int64_t send_time;		/* server clock, PostgreSQL epoch, us */
	bool reply_requested;		/* 'k' */
	const uint8_t *data;		/* 'w': the pgoutput message (inside the input) */
	size_t len;
};

int pgo_parse_copydata(const uint8_t *buf, size_t len, struct pgo_copydata *out,
		       char **error_r) ST_WARN_UNUSED;

/* Standby status update ('r'): 34 bytes written into OUT. */
#define PGO_STATUS_UPDATE_LEN 34
void pgo_build_status_update(uint8_t out[PGO_STATUS_UPDATE_LEN], pgo_lsn written,
			     pgo_lsn flushed, pgo_lsn applied, int64_t now_ts, bool reply);

/* ------------------------------------------------------------ pgoutput */

enum pgo_kind {
	PGO_BEGIN = 'B',
	PGO_COMMIT = 'C',
	PGO_ORIGIN = 'O',
	PGO_RELATION = 'R',
	PGO_TYPE = 'Y',
	PGO_INSERT = 'I',
	PGO_UPDATE = 'U',
	PGO_DELETE = 'D',
	PGO_TRUNCATE = 'T',
	PGO_MESSAGE = 'M',
	PGO_STREAM_START = 'S',
	PGO_STREAM_STOP = 'E',
	PGO_STREAM_COMMIT = 'c',
	PGO_STREAM_ABORT = 'A',
};

/* One column of a tuple. */
enum pgo_value_kind {
	PGO_VAL_NULL = 'n',
	PGO_VAL_UNCHANGED = 'u',	/* unchanged TOAST value: leave it out */
	PGO_VAL_TEXT = 't',
	PGO_VAL_BINARY = 'b',
};

struct pgo_value {
	enum pgo_value_kind kind;
	const char *data;		/* TEXT/BINARY: NUL-terminated copy, else NULL */
	uint32_t len;
};

struct pgo_tuple {
	uint16_t ncols;
	struct pgo_value *cols;
};

struct pgo_column {
	bool key;			/* part of the replica identity */
	char *name;
	uint32_t type_oid;
	int32_t typmod;
};

/* Replica identity, as in pg_class.relreplident. */
enum pgo_identity {
	PGO_IDENT_DEFAULT = 'd',
	PGO_IDENT_NOTHING = 'n',
	PGO_IDENT_FULL = 'f',
	PGO_IDENT_INDEX = 'i',
};

#define PGO_TRUNCATE_CASCADE 1
#define PGO_TRUNCATE_RESTART_IDENTITY 2

struct pgo_msg {
	enum pgo_kind kind;
	bool has_xid;			/* inside a streamed transaction (proto 2) */
	uint32_t xid;			/* has_xid, or BEGIN, STREAM_*: the xid */
	union {
		struct {
			pgo_lsn final_lsn;
			int64_t commit_time;
		} begin;
		struct {
			uint8_t flags;
			pgo_lsn commit_lsn;
			pgo_lsn end_lsn;
			int64_t commit_time;
		} commit;			/* COMMIT and STREAM_COMMIT */
		struct {
			pgo_lsn commit_lsn;
			const char *name;
		} origin;
		struct {
			uint32_t relid;
			const char *nspname;	/* "" for pg_catalog */
			const char *relname;
			enum pgo_identity identity;
			uint16_t ncols;
			struct pgo_column *cols;	/* names point into the message */
		} relation;
		struct {
			uint32_t oid;
			const char *nspname;
			const char *typname;
		} type;
		struct {
			uint32_t relid;
			char old_kind;		/* 0, 'K' (key) or 'O' (old tuple, FULL) */
			struct pgo_tuple old_tuple;
			struct pgo_tuple new_tuple;	/* INSERT, UPDATE */
		} change;			/* INSERT, UPDATE, DELETE */
		struct {
			uint8_t options;	/* PGO_TRUNCATE_* */
			uint32_t nrels;
			uint32_t *relids;
		} truncate;
		struct {
			bool transactional;
			pgo_lsn lsn;
			const char *prefix;
			const char *content;	/* NUL-terminated copy */
			uint32_t len;
		} message;
		struct {
			bool first_segment;
		} stream_start;
		struct {
			uint32_t subxid;
		} stream_abort;
	} u;

	/* Owned storage: strings and values point in here. */
	char *arena;
	size_t arena_len, arena_cap;
	struct pgo_value *values;
	struct pgo_column *columns;
	uint32_t *relids;
};

/*
 * Parse one pgoutput message.  IN_STREAM: between Stream Start and Stream
 * Stop (protocol 2), where data messages carry an xid.  MSG must be zeroed
 * or cleared before the first call; it is reused (and its storage recycled)
 * by later calls.  Returns 0, or -1 with *error_r.
 */
int pgo_parse(const uint8_t *buf, size_t len, bool in_stream, struct pgo_msg *msg,
	      char **error_r) ST_WARN_UNUSED;
void pgo_msg_clear(struct pgo_msg *msg);

const char *pgo_kind_name(enum pgo_kind kind);

#endif
