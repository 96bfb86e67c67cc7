/*
 * Copyright (C) Gate authors
 */


#ifndef _NGX_HTTP_GATE_MODULE_H_INCLUDED_
#define _NGX_HTTP_GATE_MODULE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


#define NGX_HTTP_GATE_AUTH_OFF         0
#define NGX_HTTP_GATE_AUTH_TOKEN       1
#define NGX_HTTP_GATE_AUTH_SECRET_KEY  2
#define NGX_HTTP_GATE_AUTH_SESSION     3

#define NGX_HTTP_GATE_FLOW_OFF         0
#define NGX_HTTP_GATE_FLOW_INIT        1
#define NGX_HTTP_GATE_FLOW_CHECK       2

#define NGX_HTTP_GATE_HOOK_NONE        0
#define NGX_HTTP_GATE_HOOK_REGISTRATION  1
#define NGX_HTTP_GATE_HOOK_REGISTERED  2
#define NGX_HTTP_GATE_HOOK_LOGIN       3

/* nginx 1.22 names no constant for it */
#define NGX_HTTP_UNPROCESSABLE_ENTITY  422

#define NGX_HTTP_GATE_API_NONE         0
#define NGX_HTTP_GATE_API_IDENTITIES   1
#define NGX_HTTP_GATE_API_LOGOUT       2
#define NGX_HTTP_GATE_API_TOKENS       3
#define NGX_HTTP_GATE_API_INTROSPECT   4
#define NGX_HTTP_GATE_API_REVOKE       5
#define NGX_HTTP_GATE_API_SETTINGS     6

#define NGX_HTTP_GATE_TENANT_CREDENTIAL  0
#define NGX_HTTP_GATE_TENANT_HEADER      1
#define NGX_HTTP_GATE_TENANT_HOST        2


typedef struct ngx_http_gate_redis_s  ngx_http_gate_redis_t;
typedef struct ngx_http_gate_cache_s  ngx_http_gate_cache_t;
typedef struct ngx_http_gate_pg_s     ngx_http_gate_pg_t;


typedef struct {
    ngx_http_gate_redis_t     *redis;
    ngx_http_gate_pg_t        *pg;
    ngx_http_gate_cache_t     *cache;
    ngx_str_t                  kratos_admin;  /* internal location prefix */
    ngx_str_t                  kratos_public; /* internal location prefix */
} ngx_http_gate_main_conf_t;


typedef struct {
    ngx_flag_t                 active;        /* any gate_ directive here */
    ngx_uint_t                 auth;
    ngx_flag_t                 auth_session;  /* "secret_key session" */
    ngx_array_t               *scopes;        /* of ngx_str_t */
    ngx_str_t                  scope_list;    /* "a b", for WWW-Authenticate */
    ngx_uint_t                 tenant;
    ngx_str_t                  tenant_header; /* lowercased; host suffix */
    ngx_uint_t                 api;           /* NGX_HTTP_GATE_API_* */
    ngx_uint_t                 flow;          /* NGX_HTTP_GATE_FLOW_* */
    ngx_uint_t                 hook;          /* NGX_HTTP_GATE_HOOK_* */
    ngx_str_t                  hook_secret;
} ngx_http_gate_loc_conf_t;


/* A credential record as Redis and the cache hold it. */

typedef struct {
    ngx_str_t                  tenant;
    ngx_str_t                  subject;
    ngx_str_t                  scope;
    ngx_str_t                  id;
    time_t                     exp;
} ngx_http_gate_record_t;


/* Where a request's credential lookup stands. */
#define NGX_HTTP_GATE_STATE_NEW        0
#define NGX_HTTP_GATE_STATE_WAIT       1
#define NGX_HTTP_GATE_STATE_FOUND      2
#define NGX_HTTP_GATE_STATE_UNKNOWN    3
#define NGX_HTTP_GATE_STATE_ERROR      4


typedef struct ngx_http_gate_redis_cmd_s  ngx_http_gate_redis_cmd_t;
typedef struct ngx_http_gate_pg_query_s   ngx_http_gate_pg_query_t;


typedef struct ngx_http_gate_ctx_s  ngx_http_gate_ctx_t;

/* Asks the source of a kind that no table holds (sessions: Kratos). */
typedef ngx_int_t (*ngx_http_gate_miss_pt)(ngx_http_request_t *r,
    ngx_http_gate_ctx_t *ctx);


struct ngx_http_gate_ctx_s {
    ngx_http_request_t        *request;
    ngx_uint_t                 state;
    ngx_uint_t                 kind;          /* NGX_HTTP_GATE_LOOKUP_* */
    ngx_http_gate_redis_cmd_t *cmd;           /* in flight, if any */
    ngx_http_gate_pg_query_t  *query;         /* in flight, if any */
    void                      *kratos;        /* a finished Kratos call */
    void                      *api;           /* the REST API's state */

    ngx_http_gate_record_t     record;
    u_char                     hash[32];      /* SHA-256 of the credential */
    ngx_str_t                  hex;           /* the same, in hex */
    ngx_str_t                  tenant_asked;  /* the gate_tenant header */

    ngx_str_t                  token_id;
    ngx_str_t                  key_id;
    ngx_str_t                  decision;      /* "allow" | "deny" | "error" */
    ngx_str_t                  deny_reason;

    ngx_uint_t                 step;          /* NGX_HTTP_GATE_STEP_* */
    ngx_str_t                  param;         /* looked up by value */
    ngx_http_gate_miss_pt      miss;
    ngx_http_event_handler_pt  resume;        /* outside the access phase */
    ngx_str_t                  tenant_id;     /* the request's tenant */
    ngx_str_t                  flow_id;
    ngx_str_t                  flow_tenant;   /* from gate:flow:{id} */
    ngx_str_t                  flow_type;     /* "api" | "browser" */
    ngx_http_request_t        *kratos_sr;     /* the last Kratos answer */
    ngx_uint_t                 refusal;       /* a login body's status */
    unsigned                   api_flow:1;
    unsigned                   tenant_twice:1;
    unsigned                   guarded:1;
};


extern ngx_module_t  ngx_http_gate_module;


#endif /* _NGX_HTTP_GATE_MODULE_H_INCLUDED_ */
