/*
 * Copyright (C) Gate authors
 */


#ifndef _NGX_HTTP_GATE_LOOKUP_H_INCLUDED_
#define _NGX_HTTP_GATE_LOOKUP_H_INCLUDED_


#include "ngx_http_gate_module.h"


/* What is being looked up; an index into the lookup table. */
#define NGX_HTTP_GATE_LOOKUP_TOKEN     0
#define NGX_HTTP_GATE_LOOKUP_KEY       1
#define NGX_HTTP_GATE_LOOKUP_TENANT    2
#define NGX_HTTP_GATE_LOOKUP_SESSION   3


/*
 * Looks up ctx->hash.  NGX_OK: decided at once (ctx->state says how);
 * NGX_AGAIN: waiting, the phases are re-run when the answer comes;
 * NGX_ERROR: out of memory.
 */
ngx_int_t ngx_http_gate_lookup(ngx_http_request_t *r,
    ngx_http_gate_ctx_t *ctx, ngx_uint_t kind);

/* For kinds whose misses are answered elsewhere (sessions): */
void ngx_http_gate_lookup_found(ngx_http_request_t *r,
    ngx_http_gate_ctx_t *ctx, ngx_uint_t write_back);
void ngx_http_gate_lookup_resume(ngx_http_gate_ctx_t *ctx);
ngx_int_t ngx_http_gate_lookup_guard(ngx_http_request_t *r,
    ngx_http_gate_ctx_t *ctx);

void ngx_http_gate_lookup_invalidate(ngx_str_t *payload);
void ngx_http_gate_lookup_resync(void);


#endif /* _NGX_HTTP_GATE_LOOKUP_H_INCLUDED_ */
