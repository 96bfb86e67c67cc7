/*
 * Copyright (C) Gate authors
 */


#ifndef _NGX_HTTP_GATE_SESSION_H_INCLUDED_
#define _NGX_HTTP_GATE_SESSION_H_INCLUDED_


#include "ngx_http_gate_module.h"


ngx_int_t ngx_http_gate_session_credential(ngx_http_request_t *r,
    ngx_http_gate_ctx_t *ctx, ngx_str_t *credential);
ngx_int_t ngx_http_gate_session_fetch(ngx_http_request_t *r,
    ngx_http_gate_ctx_t *ctx);
ngx_int_t ngx_http_gate_logout_handler(ngx_http_request_t *r);


#endif /* _NGX_HTTP_GATE_SESSION_H_INCLUDED_ */
