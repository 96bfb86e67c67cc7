/*
 * Copyright (C) Gate authors
 */


#ifndef _NGX_HTTP_GATE_PG_H_INCLUDED_
#define _NGX_HTTP_GATE_PG_H_INCLUDED_


#include <libpq-fe.h>

#include "ngx_http_gate_module.h"


/* Statements every connection prepares once; see ngx_http_gate_pg.c. */
#define NGX_HTTP_GATE_SQL_TOKEN_LOOKUP   0
#define NGX_HTTP_GATE_SQL_KEY_LOOKUP     1
#define NGX_HTTP_GATE_SQL_KEY_TOUCH      2
#define NGX_HTTP_GATE_SQL_IDN_INSERT     3
#define NGX_HTTP_GATE_SQL_IDN_DELETE     4
#define NGX_HTTP_GATE_SQL_IDN_LIST       5
#define NGX_HTTP_GATE_SQL_TENANT_LOOKUP  6
#define NGX_HTTP_GATE_SQL_IDN_TENANT     7
#define NGX_HTTP_GATE_SQL_TOKEN_INSERT   8
#define NGX_HTTP_GATE_SQL_TOKEN_INSPECT  9
#define NGX_HTTP_GATE_SQL_TOKEN_REVOKE   10
#define NGX_HTTP_GATE_SQL_TOKEN_LIST     11
#define NGX_HTTP_GATE_SQL_TOKEN_REVOKE_SUBJECT  12
#define NGX_HTTP_GATE_SQL_TENANT_SETTINGS       13
#define NGX_HTTP_GATE_SQL_SETTINGS_PUT   14
#define NGX_HTTP_GATE_SQL_N              15


/* The "gate_postgres" directive. */

struct ngx_http_gate_pg_s {
    ngx_str_t                  conninfo;      /* null-terminated */
    ngx_uint_t                 pool;
    ngx_msec_t                 timeout;
};


/*
 * Called once per query that was accepted, unless cancelled first: with
 * the result, or with NULL when PostgreSQL failed, timed out or no
 * connection came free in time.  The result is cleared when the handler
 * returns.
 */
typedef void (*ngx_http_gate_pg_handler_pt)(void *data, PGresult *res);


char *ngx_http_gate_pg_conf(ngx_conf_t *cf, ngx_http_gate_pg_t **pgp);
ngx_int_t ngx_http_gate_pg_init_process(ngx_cycle_t *cycle,
    ngx_http_gate_pg_t *conf);
void ngx_http_gate_pg_exit_process(ngx_cycle_t *cycle);

/*
 * Runs a prepared statement with text parameters (copied).  Returns NULL
 * when PostgreSQL cannot be asked now; the handler is then never called.
 * The handler is never called from within this function.
 */
ngx_http_gate_pg_query_t *ngx_http_gate_pg_query(ngx_log_t *log,
    ngx_uint_t statement, ngx_uint_t nparams, ngx_str_t *params,
    ngx_http_gate_pg_handler_pt handler, void *data);

void ngx_http_gate_pg_cancel(ngx_http_gate_pg_query_t *query);

/*
 * The same on behalf of a request: *slot holds the query while it is in
 * flight (the handler clears it first), and the request pool's cleanup
 * cancels a query the request no longer waits for.
 */
ngx_int_t ngx_http_gate_pg_request(ngx_http_request_t *r,
    ngx_http_gate_pg_query_t **slot, ngx_uint_t statement, ngx_uint_t nparams,
    ngx_str_t *params, ngx_http_gate_pg_handler_pt handler);


#endif /* _NGX_HTTP_GATE_PG_H_INCLUDED_ */
