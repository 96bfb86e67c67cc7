/*
 * Copyright (C) Gate authors
 */


#ifndef _NGX_HTTP_GATE_HEADERS_H_INCLUDED_
#define _NGX_HTTP_GATE_HEADERS_H_INCLUDED_


#include "ngx_http_gate_module.h"


/* the first one; with n, also how many there are */
ngx_table_elt_t *ngx_http_gate_headers_find(ngx_http_request_t *r,
    ngx_str_t *lowcase_name, ngx_uint_t *n);
ngx_int_t ngx_http_gate_headers_strip(ngx_http_request_t *r);
ngx_int_t ngx_http_gate_headers_remove(ngx_http_request_t *r,
    ngx_str_t *name);
ngx_int_t ngx_http_gate_headers_set(ngx_http_request_t *r, ngx_str_t *name,
    ngx_str_t *value);


#endif /* _NGX_HTTP_GATE_HEADERS_H_INCLUDED_ */
