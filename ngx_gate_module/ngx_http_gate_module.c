/*
 * Copyright (C) Gate authors
 */


/*
 * ngx_http_gate_module: directives, configuration and registration.  The
 * work itself lives in one file per concern (access, token, redis, cache,
 * credential, headers, json, variables).
 */


#include "ngx_http_gate_module.h"
#include "ngx_http_gate_access.h"
#include "ngx_http_gate_api.h"
#include "ngx_http_gate_settings.h"
#include "ngx_http_gate_flow.h"
#include "ngx_http_gate_hook.h"
#include "ngx_http_gate_session.h"
#include "ngx_http_gate_token.h"
#include "ngx_http_gate_cache.h"
#include "ngx_http_gate_credential.h"
#include "ngx_http_gate_redis.h"
#include "ngx_http_gate_lookup.h"
#include "ngx_http_gate_pg.h"
#include "ngx_http_gate_variables.h"


static ngx_int_t ngx_http_gate_preconfiguration(ngx_conf_t *cf);
static ngx_int_t ngx_http_gate_postconfiguration(ngx_conf_t *cf);
static void *ngx_http_gate_create_main_conf(ngx_conf_t *cf);
static void *ngx_http_gate_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_gate_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_gate_redis(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_gate_postgres(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_gate_cache(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_gate_auth(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_gate_scope(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_gate_tenant(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_gate_api(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_gate_flow(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_gate_hook(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_gate_merge_checks(ngx_conf_t *cf,
    ngx_http_gate_loc_conf_t *conf);
static char *ngx_http_gate_tenant_host(ngx_conf_t *cf,
    ngx_http_gate_loc_conf_t *glcf, ngx_str_t *value);
static ngx_int_t ngx_http_gate_init_process(ngx_cycle_t *cycle);
static void ngx_http_gate_exit_process(ngx_cycle_t *cycle);


static ngx_command_t  ngx_http_gate_commands[] = {

    { ngx_string("gate_redis"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_gate_redis,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("gate_postgres"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_gate_postgres,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("gate_cache"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_gate_cache,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("gate_kratos_admin"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_gate_main_conf_t, kratos_admin),
      NULL },

    { ngx_string("gate_kratos_public"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_gate_main_conf_t, kratos_public),
      NULL },

    { ngx_string("gate_flow"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_gate_flow,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("gate_hook"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_gate_hook,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("gate_hook_secret"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_gate_loc_conf_t, hook_secret),
      NULL },

    { ngx_string("gate_api"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_gate_api,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("gate_auth"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE12,
      ngx_http_gate_auth,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("gate_scope"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_gate_scope,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("gate_tenant"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE12,
      ngx_http_gate_tenant,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_gate_module_ctx = {
    ngx_http_gate_preconfiguration,        /* preconfiguration */
    ngx_http_gate_postconfiguration,       /* postconfiguration */

    ngx_http_gate_create_main_conf,        /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_gate_create_loc_conf,         /* create location configuration */
    ngx_http_gate_merge_loc_conf           /* merge location configuration */
};


ngx_module_t  ngx_http_gate_module = {
    NGX_MODULE_V1,
    &ngx_http_gate_module_ctx,             /* module context */
    ngx_http_gate_commands,                /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_gate_init_process,            /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_gate_exit_process,            /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_int_t
ngx_http_gate_preconfiguration(ngx_conf_t *cf)
{
    return ngx_http_gate_variables_add(cf);
}


static ngx_int_t
ngx_http_gate_postconfiguration(ngx_conf_t *cf)
{
    ngx_http_handler_pt        *h;
    ngx_http_core_main_conf_t  *cmcf;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_ACCESS_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_gate_access_handler;

    return NGX_OK;
}


static void *
ngx_http_gate_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_gate_main_conf_t  *gmcf;

    /*
     * set by ngx_pcalloc():
     *
     *     gmcf->redis = NULL;
     *     gmcf->pg = NULL;
     *     gmcf->cache = NULL;
     *     gmcf->kratos_admin = { 0, NULL };
     *     gmcf->kratos_public = { 0, NULL };
     */

    gmcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_gate_main_conf_t));
    if (gmcf == NULL) {
        return NULL;
    }

    return gmcf;
}


static void *
ngx_http_gate_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_gate_loc_conf_t  *glcf;

    glcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_gate_loc_conf_t));
    if (glcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     glcf->scope_list = { 0, NULL };
     *     glcf->tenant_header = { 0, NULL };
     *     glcf->hook_secret = { 0, NULL };
     */

    glcf->active = NGX_CONF_UNSET;
    glcf->auth = NGX_CONF_UNSET_UINT;
    glcf->auth_session = NGX_CONF_UNSET;
    glcf->scopes = NGX_CONF_UNSET_PTR;
    glcf->tenant = NGX_CONF_UNSET_UINT;
    glcf->api = NGX_CONF_UNSET_UINT;
    glcf->flow = NGX_CONF_UNSET_UINT;
    glcf->hook = NGX_CONF_UNSET_UINT;

    return glcf;
}


static char *
ngx_http_gate_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_gate_loc_conf_t *prev = parent;
    ngx_http_gate_loc_conf_t *conf = child;

    ngx_conf_merge_value(conf->active, prev->active, 0);
    ngx_conf_merge_uint_value(conf->auth, prev->auth, NGX_HTTP_GATE_AUTH_OFF);
    ngx_conf_merge_value(conf->auth_session, prev->auth_session, 0);
    ngx_conf_merge_ptr_value(conf->scopes, prev->scopes, NULL);
    ngx_conf_merge_uint_value(conf->tenant, prev->tenant,
                              NGX_HTTP_GATE_TENANT_CREDENTIAL);

    ngx_conf_merge_uint_value(conf->api, prev->api, NGX_HTTP_GATE_API_NONE);
    ngx_conf_merge_uint_value(conf->flow, prev->flow, NGX_HTTP_GATE_FLOW_OFF);
    ngx_conf_merge_uint_value(conf->hook, prev->hook, NGX_HTTP_GATE_HOOK_NONE);
    ngx_conf_merge_str_value(conf->hook_secret, prev->hook_secret, "");

    if (conf->scope_list.data == NULL) {
        conf->scope_list = prev->scope_list;
    }

    if (conf->tenant_header.data == NULL) {
        conf->tenant_header = prev->tenant_header;
    }

    return ngx_http_gate_merge_checks(cf, conf);
}


/* What a location asks for must have what it needs, said at nginx -t. */

static char *
ngx_http_gate_merge_checks(ngx_conf_t *cf, ngx_http_gate_loc_conf_t *conf)
{
    const char                 *need;
    ngx_http_gate_main_conf_t  *gmcf;

    gmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_gate_module);
    need = NULL;

    if (conf->auth != NGX_HTTP_GATE_AUTH_OFF
        && gmcf->redis == NULL && gmcf->pg == NULL)
    {
        need = "\"gate_auth\" requires \"gate_redis\" or \"gate_postgres\" "
               "at the http level";

    } else if (conf->auth == NGX_HTTP_GATE_AUTH_SESSION
               && (gmcf->pg == NULL || gmcf->kratos_public.len == 0))
    {
        need = "\"gate_auth session\" requires \"gate_postgres\" and "
               "\"gate_kratos_public\" at the http level";

    } else if (conf->api == NGX_HTTP_GATE_API_IDENTITIES
               && conf->auth != NGX_HTTP_GATE_AUTH_SECRET_KEY)
    {
        need = "\"gate_api identities\" requires \"gate_auth secret_key\"";

    } else if (conf->api == NGX_HTTP_GATE_API_IDENTITIES
               && (gmcf->pg == NULL || gmcf->kratos_admin.len == 0))
    {
        need = "\"gate_api identities\" requires \"gate_postgres\" and "
               "\"gate_kratos_admin\" at the http level";

    } else if (conf->api == NGX_HTTP_GATE_API_SETTINGS
               && (conf->auth != NGX_HTTP_GATE_AUTH_SECRET_KEY
                   || conf->auth_session || gmcf->pg == NULL))
    {
        need = "\"gate_api settings\" requires \"gate_auth secret_key\" "
               "and \"gate_postgres\" at the http level";

    } else if (conf->api == NGX_HTTP_GATE_API_LOGOUT
               && (gmcf->redis == NULL || gmcf->kratos_public.len == 0))
    {
        need = "\"gate_api logout\" requires \"gate_redis\" and "
               "\"gate_kratos_public\" at the http level";

    } else if (conf->api == NGX_HTTP_GATE_API_TOKENS
               && (conf->auth != NGX_HTTP_GATE_AUTH_SECRET_KEY
                   && conf->auth != NGX_HTTP_GATE_AUTH_SESSION))
    {
        need = "\"gate_api tokens\" requires \"gate_auth secret_key\", "
               "\"gate_auth session\" or \"gate_auth secret_key session\"";

    } else if ((conf->api == NGX_HTTP_GATE_API_INTROSPECT
                || conf->api == NGX_HTTP_GATE_API_REVOKE)
               && conf->auth != NGX_HTTP_GATE_AUTH_OFF)
    {
        need = "\"gate_api introspect\" and \"revoke\" authenticate the "
               "OAuth client themselves: remove \"gate_auth\"";

    } else if ((conf->api == NGX_HTTP_GATE_API_TOKENS
                || conf->api == NGX_HTTP_GATE_API_INTROSPECT
                || conf->api == NGX_HTTP_GATE_API_REVOKE)
               && (gmcf->pg == NULL || gmcf->redis == NULL))
    {
        need = "the token API requires \"gate_postgres\" and \"gate_redis\" "
               "at the http level";

    } else if ((conf->auth == NGX_HTTP_GATE_AUTH_SESSION || conf->auth_session)
               && (gmcf->pg == NULL || gmcf->kratos_public.len == 0))
    {
        need = "\"gate_auth session\" requires \"gate_postgres\" and "
               "\"gate_kratos_public\" at the http level";

    } else if (conf->flow != NGX_HTTP_GATE_FLOW_OFF
               && conf->tenant == NGX_HTTP_GATE_TENANT_CREDENTIAL
               && conf->auth != NGX_HTTP_GATE_AUTH_SESSION)
    {
        need = "\"gate_flow\" requires \"gate_tenant header\" or "
               "\"gate_tenant host\" (or \"gate_auth session\")";

    } else if (conf->flow != NGX_HTTP_GATE_FLOW_OFF && gmcf->redis == NULL) {
        need = "\"gate_flow\" requires \"gate_redis\" at the http level";

    } else if (conf->flow == NGX_HTTP_GATE_FLOW_INIT
               && gmcf->kratos_public.len == 0)
    {
        need = "\"gate_flow init\" requires \"gate_kratos_public\" at the "
               "http level";

    } else if (conf->tenant != NGX_HTTP_GATE_TENANT_CREDENTIAL
               && gmcf->pg == NULL && gmcf->redis == NULL)
    {
        need = "\"gate_tenant\" requires \"gate_postgres\"";

    } else if (conf->hook != NGX_HTTP_GATE_HOOK_NONE
               && (conf->hook_secret.len < 16 || gmcf->redis == NULL
                   || gmcf->pg == NULL))
    {
        need = "\"gate_hook\" requires \"gate_hook_secret\" (16 characters "
               "or more), \"gate_redis\" and \"gate_postgres\"";
    }

    if (need) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, need);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_gate_redis(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_gate_main_conf_t  *gmcf = conf;

    return ngx_http_gate_redis_conf(cf, &gmcf->redis);
}


static char *
ngx_http_gate_postgres(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_gate_main_conf_t  *gmcf = conf;

    return ngx_http_gate_pg_conf(cf, &gmcf->pg);
}


static char *
ngx_http_gate_cache(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_gate_main_conf_t  *gmcf = conf;

    if (gmcf->cache) {
        return "is duplicate";
    }

    return ngx_http_gate_cache_conf(cf, &gmcf->cache);
}


static char *
ngx_http_gate_auth(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_gate_loc_conf_t  *glcf = conf;

    ngx_str_t  *value;

    if (glcf->auth != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "off") == 0) {
        glcf->auth = NGX_HTTP_GATE_AUTH_OFF;

    } else if (ngx_strcmp(value[1].data, "token") == 0) {
        glcf->auth = NGX_HTTP_GATE_AUTH_TOKEN;

    } else if (ngx_strcmp(value[1].data, "secret_key") == 0) {
        glcf->auth = NGX_HTTP_GATE_AUTH_SECRET_KEY;

    } else if (ngx_strcmp(value[1].data, "session") == 0) {
        glcf->auth = NGX_HTTP_GATE_AUTH_SESSION;

    } else {
        goto invalid;
    }

    /* "secret_key session": a tenant's backend, or an end user's session */

    glcf->auth_session = 0;

    if (cf->args->nelts == 3) {
        if (glcf->auth != NGX_HTTP_GATE_AUTH_SECRET_KEY
            || ngx_strcmp(value[2].data, "session") != 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid value \"%V\" in \"%V\" directive, "
                               "only \"secret_key session\" may be "
                               "combined", &value[2], &cmd->name);
            return NGX_CONF_ERROR;
        }

        glcf->auth_session = 1;
    }

    glcf->active = 1;

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid value \"%V\" in \"%V\" directive, "
                       "it must be \"off\", \"token\", "
                       "\"secret_key\" or \"session\"",
                       &value[1], &cmd->name);

    return NGX_CONF_ERROR;
}


/* RFC 6749, section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ) */

static char *
ngx_http_gate_scope(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_gate_loc_conf_t  *glcf = conf;

    u_char      *p;
    size_t       len;
    ngx_str_t   *value, *scope;
    ngx_uint_t   i, j;

    if (glcf->scopes != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;

    glcf->scopes = ngx_array_create(cf->pool, cf->args->nelts - 1,
                                    sizeof(ngx_str_t));
    if (glcf->scopes == NULL) {
        return NGX_CONF_ERROR;
    }

    len = 0;

    for (i = 1; i < cf->args->nelts; i++) {

        for (j = 0; j < value[i].len; j++) {
            p = &value[i].data[j];

            if (*p < 0x21 || *p == 0x22 || *p == 0x5c || *p > 0x7e) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid scope \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }
        }

        if (value[i].len == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "empty scope");
            return NGX_CONF_ERROR;
        }

        scope = ngx_array_push(glcf->scopes);
        if (scope == NULL) {
            return NGX_CONF_ERROR;
        }

        *scope = value[i];
        len += value[i].len + 1;
    }

    glcf->scope_list.data = ngx_pnalloc(cf->pool, len);
    if (glcf->scope_list.data == NULL) {
        return NGX_CONF_ERROR;
    }

    p = glcf->scope_list.data;
    scope = glcf->scopes->elts;

    for (i = 0; i < glcf->scopes->nelts; i++) {
        if (i) {
            *p++ = ' ';
        }

        p = ngx_cpymem(p, scope[i].data, scope[i].len);
    }

    glcf->scope_list.len = p - glcf->scope_list.data;
    glcf->active = 1;

    return NGX_CONF_OK;
}


static char *
ngx_http_gate_tenant(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_gate_loc_conf_t  *glcf = conf;

    ngx_str_t  *value;

    if (glcf->tenant != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (cf->args->nelts == 2 && ngx_strcmp(value[1].data, "credential") == 0)
    {
        glcf->tenant = NGX_HTTP_GATE_TENANT_CREDENTIAL;
        glcf->active = 1;
        return NGX_CONF_OK;
    }

    if (ngx_strcmp(value[1].data, "host") == 0) {
        return ngx_http_gate_tenant_host(cf, glcf, value);
    }

    if (ngx_strcmp(value[1].data, "header") != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\" in \"%V\" directive, it "
                           "must be \"credential\", \"header NAME\" or "
                           "\"host SUFFIX\"", &value[1], &cmd->name);
        return NGX_CONF_ERROR;
    }

    if (cf->args->nelts != 3 || value[2].len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"gate_tenant header\" needs a header name");
        return NGX_CONF_ERROR;
    }

    glcf->tenant = NGX_HTTP_GATE_TENANT_HEADER;

    glcf->tenant_header.len = value[2].len;
    glcf->tenant_header.data = ngx_pnalloc(cf->pool, value[2].len);
    if (glcf->tenant_header.data == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_strlow(glcf->tenant_header.data, value[2].data, value[2].len);
    glcf->active = 1;

    return NGX_CONF_OK;
}


static char *
ngx_http_gate_api(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_gate_loc_conf_t  *glcf = conf;

    ngx_str_t                 *value;
    ngx_http_core_loc_conf_t  *clcf;

    if (glcf->api != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (ngx_strcmp(value[1].data, "identities") == 0) {
        glcf->api = NGX_HTTP_GATE_API_IDENTITIES;
        clcf->handler = ngx_http_gate_api_handler;

    } else if (ngx_strcmp(value[1].data, "logout") == 0) {
        glcf->api = NGX_HTTP_GATE_API_LOGOUT;
        clcf->handler = ngx_http_gate_logout_handler;

    } else if (ngx_strcmp(value[1].data, "tokens") == 0) {
        glcf->api = NGX_HTTP_GATE_API_TOKENS;
        clcf->handler = ngx_http_gate_tokens_handler;

    } else if (ngx_strcmp(value[1].data, "introspect") == 0) {
        glcf->api = NGX_HTTP_GATE_API_INTROSPECT;
        clcf->handler = ngx_http_gate_tokens_client_handler;

    } else if (ngx_strcmp(value[1].data, "revoke") == 0) {
        glcf->api = NGX_HTTP_GATE_API_REVOKE;
        clcf->handler = ngx_http_gate_tokens_client_handler;

    } else if (ngx_strcmp(value[1].data, "settings") == 0) {
        glcf->api = NGX_HTTP_GATE_API_SETTINGS;
        clcf->handler = ngx_http_gate_settings_handler;

    } else {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\" in \"%V\" directive, it "
                           "must be \"identities\", \"tokens\", "
                           "\"introspect\", \"revoke\", \"settings\" or "
                           "\"logout\"",
                           &value[1], &cmd->name);
        return NGX_CONF_ERROR;
    }

    glcf->active = 1;

    return NGX_CONF_OK;
}


/* "acme.auth.example.com" with suffix "auth.example.com": tenant "acme" */

static char *
ngx_http_gate_tenant_host(ngx_conf_t *cf, ngx_http_gate_loc_conf_t *glcf,
    ngx_str_t *value)
{
    u_char  *p;

    if (cf->args->nelts != 3 || value[2].len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"gate_tenant host\" needs a domain suffix");
        return NGX_CONF_ERROR;
    }

    glcf->tenant = NGX_HTTP_GATE_TENANT_HOST;

    p = ngx_pnalloc(cf->pool, value[2].len + 1);
    if (p == NULL) {
        return NGX_CONF_ERROR;
    }

    glcf->tenant_header.data = p;

    if (value[2].data[0] != '.') {
        *p++ = '.';
    }

    ngx_strlow(p, value[2].data, value[2].len);
    glcf->tenant_header.len = p + value[2].len - glcf->tenant_header.data;
    glcf->active = 1;

    return NGX_CONF_OK;
}


static char *
ngx_http_gate_flow(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_gate_loc_conf_t  *glcf = conf;

    ngx_str_t                 *value;
    ngx_http_core_loc_conf_t  *clcf;

    if (glcf->flow != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "off") == 0) {
        glcf->flow = NGX_HTTP_GATE_FLOW_OFF;
        return NGX_CONF_OK;
    }

    if (ngx_strcmp(value[1].data, "check") == 0) {
        glcf->flow = NGX_HTTP_GATE_FLOW_CHECK;
        glcf->active = 1;
        return NGX_CONF_OK;
    }

    if (ngx_strcmp(value[1].data, "init") != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\" in \"%V\" directive, "
                           "it must be \"off\", \"init\" or \"check\"",
                           &value[1], &cmd->name);
        return NGX_CONF_ERROR;
    }

    /* creation goes through Gate's own handler, not proxy_pass */

    glcf->flow = NGX_HTTP_GATE_FLOW_INIT;
    glcf->active = 1;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_gate_flow_init_handler;

    return NGX_CONF_OK;
}


static char *
ngx_http_gate_hook(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_gate_loc_conf_t  *glcf = conf;

    ngx_str_t                 *value;
    ngx_http_core_loc_conf_t  *clcf;

    if (glcf->hook != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "registration") == 0) {
        glcf->hook = NGX_HTTP_GATE_HOOK_REGISTRATION;

    } else if (ngx_strcmp(value[1].data, "registered") == 0) {
        glcf->hook = NGX_HTTP_GATE_HOOK_REGISTERED;

    } else if (ngx_strcmp(value[1].data, "login") == 0) {
        glcf->hook = NGX_HTTP_GATE_HOOK_LOGIN;

    } else {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\" in \"%V\" directive, it "
                           "must be \"registration\", \"registered\" or "
                           "\"login\"", &value[1], &cmd->name);
        return NGX_CONF_ERROR;
    }

    glcf->active = 1;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_gate_hook_handler;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_gate_init_process(ngx_cycle_t *cycle)
{
    ngx_http_gate_main_conf_t  *gmcf;

    /* cache manager and loader processes serve no requests */

    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }

    gmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_gate_module);

    if (gmcf == NULL) {
        return NGX_OK;
    }

    if (gmcf->pg
        && ngx_http_gate_pg_init_process(cycle, gmcf->pg) != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (gmcf->redis
        && ngx_http_gate_redis_init_process(cycle, gmcf->redis,
                                            ngx_http_gate_lookup_invalidate,
                                            ngx_http_gate_lookup_resync)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void
ngx_http_gate_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_gate_redis_exit_process(cycle);
    ngx_http_gate_pg_exit_process(cycle);
    ngx_http_gate_credential_exit();
}
