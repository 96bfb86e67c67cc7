/*
 * Copyright (C) Gate authors
 */


#ifndef _NGX_HTTP_GATE_JSON_H_INCLUDED_
#define _NGX_HTTP_GATE_JSON_H_INCLUDED_


#include <jansson.h>

#include "ngx_http_gate_module.h"


ngx_int_t ngx_http_gate_json_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *message);
ngx_int_t ngx_http_gate_json_send(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *body);
ngx_int_t ngx_http_gate_json_dump(ngx_pool_t *pool, json_t *value,
    ngx_str_t *out);
ngx_int_t ngx_http_gate_json_allow(ngx_http_request_t *r, const char *methods);
ngx_int_t ngx_http_gate_json_not_allowed(ngx_http_request_t *r,
    const char *methods, const char *message);
ngx_int_t ngx_http_gate_json_body(ngx_http_request_t *r, size_t max,
    ngx_str_t *text);

ngx_int_t ngx_http_gate_json_set_body(ngx_http_request_t *r,
    ngx_str_t *text);

ngx_int_t ngx_http_gate_form_value(ngx_str_t *form, const char *name,
    ngx_pool_t *pool, ngx_str_t *value);
ngx_int_t ngx_http_gate_form_decode(ngx_pool_t *pool, u_char *p, size_t len,
    ngx_str_t *out);


#endif /* _NGX_HTTP_GATE_JSON_H_INCLUDED_ */
