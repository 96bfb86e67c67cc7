/*
 * Copyright (C) Gate authors
 */


#ifndef _NGX_HTTP_GATE_TOKEN_H_INCLUDED_
#define _NGX_HTTP_GATE_TOKEN_H_INCLUDED_


#include "ngx_http_gate_module.h"


ngx_int_t ngx_http_gate_tokens_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_gate_tokens_client_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_gate_tokens_of_subject(ngx_http_request_t *r,
    ngx_str_t *tenant, ngx_str_t *subject);
ngx_int_t ngx_http_gate_scope_normalize(ngx_pool_t *pool, ngx_str_t *scope);
ngx_int_t ngx_http_gate_scope_next(u_char **pos, u_char *last,
    ngx_str_t *scope);
ngx_int_t ngx_http_gate_tokens_revoke_subject(ngx_http_request_t *r,
    ngx_str_t *tenant, ngx_str_t *subject);


#endif /* _NGX_HTTP_GATE_TOKEN_H_INCLUDED_ */
