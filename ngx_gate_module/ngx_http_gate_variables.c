/*
 * Copyright (C) Gate authors
 */


/*
 * $gate_* variables: what the access phase decided, for proxy_set_header,
 * log_format and map.  Empty (not found) where Gate made no decision.
 */


#include "ngx_http_gate_variables.h"


static ngx_int_t ngx_http_gate_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);


static ngx_http_variable_t  ngx_http_gate_variables[] = {

    { ngx_string("gate_tenant_id"), NULL, ngx_http_gate_variable,
      offsetof(ngx_http_gate_ctx_t, tenant_id),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("gate_subject"), NULL, ngx_http_gate_variable,
      offsetof(ngx_http_gate_ctx_t, record.subject),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("gate_scopes"), NULL, ngx_http_gate_variable,
      offsetof(ngx_http_gate_ctx_t, record.scope),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("gate_token_id"), NULL, ngx_http_gate_variable,
      offsetof(ngx_http_gate_ctx_t, token_id),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("gate_key_id"), NULL, ngx_http_gate_variable,
      offsetof(ngx_http_gate_ctx_t, key_id),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("gate_decision"), NULL, ngx_http_gate_variable,
      offsetof(ngx_http_gate_ctx_t, decision),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("gate_deny_reason"), NULL, ngx_http_gate_variable,
      offsetof(ngx_http_gate_ctx_t, deny_reason),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


ngx_int_t
ngx_http_gate_variables_add(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_gate_variables; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_gate_variable(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    uintptr_t data)
{
    ngx_str_t            *s;
    ngx_http_gate_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r->main, ngx_http_gate_module);

    if (ctx == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    s = (ngx_str_t *) ((char *) ctx + data);

    if (s->len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->len = s->len;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
    v->data = s->data;

    return NGX_OK;
}
