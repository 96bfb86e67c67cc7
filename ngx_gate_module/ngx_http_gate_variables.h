/*
 * Copyright (C) Gate authors
 */


#ifndef _NGX_HTTP_GATE_VARIABLES_H_INCLUDED_
#define _NGX_HTTP_GATE_VARIABLES_H_INCLUDED_


#include "ngx_http_gate_module.h"


ngx_int_t ngx_http_gate_variables_add(ngx_conf_t *cf);


#endif /* _NGX_HTTP_GATE_VARIABLES_H_INCLUDED_ */
