/*
 * Copyright (C) Gate authors
 */


#ifndef _NGX_HTTP_GATE_SETTINGS_H_INCLUDED_
#define _NGX_HTTP_GATE_SETTINGS_H_INCLUDED_


#include "ngx_http_gate_module.h"


/* A tenant's token policy when its settings say nothing (seconds). */
#define NGX_HTTP_GATE_TOKEN_TTL          3600
#define NGX_HTTP_GATE_TOKEN_MAX_TTL      86400


ngx_int_t ngx_http_gate_settings_handler(ngx_http_request_t *r);


#endif /* _NGX_HTTP_GATE_SETTINGS_H_INCLUDED_ */
