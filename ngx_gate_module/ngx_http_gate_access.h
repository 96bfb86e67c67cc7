/*
 * Copyright (C) Gate authors
 */


#ifndef _NGX_HTTP_GATE_ACCESS_H_INCLUDED_
#define _NGX_HTTP_GATE_ACCESS_H_INCLUDED_


#include "ngx_http_gate_module.h"


ngx_int_t ngx_http_gate_access_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_gate_access_deny(ngx_http_request_t *r,
    ngx_http_gate_ctx_t *ctx, ngx_uint_t status, const char *code,
    const char *reason, const char *message);


#endif /* _NGX_HTTP_GATE_ACCESS_H_INCLUDED_ */
