/*
 * Copyright (C) Gate authors
 */


#ifndef _NGX_HTTP_GATE_LOGIN_H_INCLUDED_
#define _NGX_HTTP_GATE_LOGIN_H_INCLUDED_


#include "ngx_http_gate_module.h"


ngx_int_t ngx_http_gate_login_check(ngx_http_request_t *r,
    ngx_http_gate_loc_conf_t *glcf, ngx_http_gate_ctx_t *ctx);


#endif /* _NGX_HTTP_GATE_LOGIN_H_INCLUDED_ */
