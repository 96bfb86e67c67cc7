/*
 * Copyright (C) Gate authors
 */


#ifndef _NGX_HTTP_GATE_KRATOS_H_INCLUDED_
#define _NGX_HTTP_GATE_KRATOS_H_INCLUDED_


#include "ngx_http_gate_module.h"


#define NGX_HTTP_GATE_UUID_LEN         36

#define NGX_HTTP_GATE_KRATOS_GET       0
#define NGX_HTTP_GATE_KRATOS_POST      1
#define NGX_HTTP_GATE_KRATOS_PUT       2
#define NGX_HTTP_GATE_KRATOS_PATCH     3
#define NGX_HTTP_GATE_KRATOS_DELETE    4


/*
 * Called in the main request once Kratos answered: the status (502 when
 * nginx could not get an answer) and the body, in the request's memory.
 */
typedef void (*ngx_http_gate_kratos_done_pt)(ngx_http_request_t *r,
    ngx_uint_t status, ngx_str_t *body);


/* path starts with "/admin/"; args without "?", or NULL; body or NULL */
ngx_int_t ngx_http_gate_kratos_call(ngx_http_request_t *r, ngx_uint_t method,
    ngx_str_t *path, ngx_str_t *args, ngx_str_t *body,
    ngx_http_gate_kratos_done_pt done);
ngx_int_t ngx_http_gate_kratos_request(ngx_http_request_t *r,
    ngx_uint_t public, ngx_uint_t method, ngx_str_t *path, ngx_str_t *args,
    ngx_str_t *body, ngx_http_gate_kratos_done_pt done);


ngx_uint_t ngx_http_gate_kratos_is_uuid(u_char *p, size_t len);
time_t ngx_http_gate_kratos_time(u_char *p, size_t len);


#endif /* _NGX_HTTP_GATE_KRATOS_H_INCLUDED_ */
