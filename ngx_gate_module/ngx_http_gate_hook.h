/*
 * Copyright (C) Gate authors
 */


#ifndef _NGX_HTTP_GATE_HOOK_H_INCLUDED_
#define _NGX_HTTP_GATE_HOOK_H_INCLUDED_


#include "ngx_http_gate_module.h"


ngx_int_t ngx_http_gate_hook_handler(ngx_http_request_t *r);


#endif /* _NGX_HTTP_GATE_HOOK_H_INCLUDED_ */
