/*
 * Copyright (C) Gate authors
 */


#ifndef _NGX_HTTP_GATE_TOKEN_H_INCLUDED_
#define _NGX_HTTP_GATE_TOKEN_H_INCLUDED_


#include "ngx_http_gate_module.h"


ngx_int_t ngx_http_gate_token_lookup(ngx_http_request_t *r,
    ngx_http_gate_ctx_t *ctx);
void ngx_http_gate_token_invalidate(ngx_str_t *payload);
void ngx_http_gate_token_resync(void);


#endif /* _NGX_HTTP_GATE_TOKEN_H_INCLUDED_ */
