/*
 * Copyright (C) Gate authors
 */


/*
 * Kratos calls Gate back (gate_hook): web_hooks on the password method,
 * from loopback, with a shared secret in the Gate-Hook-Secret header, and
 * a body of {"flow_id": ..., "identity_id": ...}.
 *
 *   registration  before the identity is saved: binds it to the flow's
 *                 tenant (metadata_admin.gate.tenant_id), or interrupts
 *   registered    after it is saved: indexes identity -> tenant
 *   login         before the session is made: interrupts a login into
 *                 another tenant with the very message a wrong password
 *                 gets, so the two cannot be told apart
 */


#include <jansson.h>

#include "ngx_http_gate_hook.h"
#include "ngx_http_gate_json.h"
#include "ngx_http_gate_kratos.h"
#include "ngx_http_gate_lookup.h"
#include "ngx_http_gate_pg.h"
#include "ngx_http_gate_redis.h"


typedef struct {
    ngx_uint_t                  hook;
    ngx_str_t                   flow_id;
    ngx_str_t                   identity_id;
    ngx_str_t                   tenant;        /* the flow's */
    ngx_http_gate_ctx_t        *ctx;
} ngx_http_gate_hook_t;


static ngx_uint_t ngx_http_gate_hook_from_loopback(ngx_connection_t *c);
static ngx_uint_t ngx_http_gate_hook_secret_ok(ngx_http_request_t *r,
    ngx_str_t *secret);
static void ngx_http_gate_hook_body(ngx_http_request_t *r);
static ngx_int_t ngx_http_gate_hook_field(ngx_http_request_t *r, json_t *root,
    const char *name, ngx_str_t *to);
static void ngx_http_gate_hook_flow(void *data, redisReply *reply);
static void ngx_http_gate_hook_indexed(void *data, PGresult *res);
static void ngx_http_gate_hook_owner(void *data, PGresult *res);
static void ngx_http_gate_hook_answer(ngx_http_request_t *r,
    ngx_uint_t status, const char *body);
static void ngx_http_gate_hook_refuse(ngx_http_request_t *r,
    ngx_uint_t hook);


/* Kratos' own wrong-credentials message (text.ErrorValidationInvalid...) */

static const char  ngx_http_gate_hook_invalid_credentials[] =
    "{\"messages\":[{\"instance_ptr\":\"#/\",\"messages\":[{\"id\":4000006,"
    "\"text\":\"The provided credentials are invalid, check for spelling "
    "mistakes in your password or username, email address, or phone "
    "number.\",\"type\":\"error\"}]}]}";

static const char  ngx_http_gate_hook_unknown_flow[] =
    "{\"messages\":[{\"instance_ptr\":\"#/\",\"messages\":[{\"id\":4000001,"
    "\"text\":\"This registration did not start here; please start "
    "again.\",\"type\":\"error\"}]}]}";


ngx_int_t
ngx_http_gate_hook_handler(ngx_http_request_t *r)
{
    ngx_int_t                  rc;
    ngx_http_gate_ctx_t       *ctx;
    ngx_http_gate_loc_conf_t  *glcf;

    glcf = ngx_http_get_module_loc_conf(r, ngx_http_gate_module);
    ctx = ngx_http_get_module_ctx(r, ngx_http_gate_module);

    if (ctx == NULL || !ngx_http_gate_hook_from_loopback(r->connection)) {
        return ngx_http_gate_json_error(r, NGX_HTTP_FORBIDDEN, "forbidden",
                                        "Hooks are for Kratos on loopback.");
    }

    if (!ngx_http_gate_hook_secret_ok(r, &glcf->hook_secret)) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "gate: hook called without the right secret");
        return ngx_http_gate_json_error(r, NGX_HTTP_UNAUTHORIZED,
                                        "unauthorized", "Wrong hook secret.");
    }

    if (r->method != NGX_HTTP_POST) {
        return ngx_http_gate_json_not_allowed(r, "POST",
                                              "Kratos posts here.");
    }

    rc = ngx_http_read_client_request_body(r, ngx_http_gate_hook_body);
    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static ngx_uint_t
ngx_http_gate_hook_from_loopback(ngx_connection_t *c)
{
    struct sockaddr_in   *sin;
#if (NGX_HAVE_INET6)
    struct sockaddr_in6  *sin6;
#endif

    switch (c->sockaddr->sa_family) {

    case AF_INET:
        sin = (struct sockaddr_in *) c->sockaddr;
        return (ntohl(sin->sin_addr.s_addr) >> 24) == 127;

#if (NGX_HAVE_INET6)
    case AF_INET6:
        sin6 = (struct sockaddr_in6 *) c->sockaddr;
        return IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr);
#endif

#if (NGX_HAVE_UNIX_DOMAIN)
    case AF_UNIX:
        return 1;
#endif

    default:
        return 0;
    }
}


/* Compared in constant time: how much matched must not show in timing. */

static ngx_uint_t
ngx_http_gate_hook_secret_ok(ngx_http_request_t *r, ngx_str_t *secret)
{
    size_t            i;
    u_char            diff;
    ngx_uint_t        n;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h, *found;

    found = NULL;
    n = 0;

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == sizeof("Gate-Hook-Secret") - 1
            && ngx_strncasecmp(h[i].key.data, (u_char *) "Gate-Hook-Secret",
                               h[i].key.len) == 0)
        {
            found = &h[i];
            n++;
        }
    }

    if (n != 1 || secret->len == 0 || found->value.len != secret->len) {
        return 0;
    }

    diff = 0;

    for (i = 0; i < secret->len; i++) {
        diff |= found->value.data[i] ^ secret->data[i];
    }

    return diff == 0;
}


static void
ngx_http_gate_hook_body(ngx_http_request_t *r)
{
    u_char                    *key;
    size_t                     argvlen[2];
    json_t                    *root;
    ngx_buf_t                 *b;
    ngx_str_t                  text;
    const char                *argv[2];
    ngx_http_gate_ctx_t       *ctx;
    ngx_http_gate_hook_t      *hook;
    ngx_http_gate_loc_conf_t  *glcf;

    glcf = ngx_http_get_module_loc_conf(r, ngx_http_gate_module);
    ctx = ngx_http_get_module_ctx(r, ngx_http_gate_module);

    hook = ngx_pcalloc(r->pool, sizeof(ngx_http_gate_hook_t));
    if (hook == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    hook->hook = glcf->hook;
    hook->ctx = ctx;
    ctx->api = hook;

    ngx_str_null(&text);

    if (r->request_body && r->request_body->bufs
        && r->request_body->bufs->next == NULL
        && !r->request_body->bufs->buf->in_file)
    {
        b = r->request_body->bufs->buf;
        text.data = b->pos;
        text.len = b->last - b->pos;
    }

    root = text.len ? json_loadb((char *) text.data, text.len, 0, NULL) : NULL;

    if (ngx_http_gate_hook_field(r, root, "flow_id", &hook->flow_id)
           != NGX_OK
        || (hook->hook != NGX_HTTP_GATE_HOOK_REGISTRATION
            && ngx_http_gate_hook_field(r, root, "identity_id",
                                        &hook->identity_id) != NGX_OK))
    {
        json_decref(root);
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "gate: hook body without a usable flow_id or "
                      "identity_id");
        ngx_http_gate_hook_refuse(r, hook->hook);
        return;
    }

    json_decref(root);

    key = ngx_pnalloc(r->pool, sizeof("gate:flow:") - 1 + hook->flow_id.len);
    if (key == NULL || ngx_http_gate_lookup_guard(r, ctx) != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    ngx_memcpy(ngx_cpymem(key, "gate:flow:", sizeof("gate:flow:") - 1),
               hook->flow_id.data, hook->flow_id.len);

    argv[0] = "GET";
    argvlen[0] = 3;
    argv[1] = (char *) key;
    argvlen[1] = sizeof("gate:flow:") - 1 + hook->flow_id.len;

    ctx->cmd = ngx_http_gate_redis_send(r->connection->log,
                                        ngx_http_gate_hook_flow, r,
                                        2, argv, argvlen);
    if (ctx->cmd == NULL) {
        ngx_http_gate_hook_answer(r, NGX_HTTP_SERVICE_UNAVAILABLE, NULL);
    }
}


static ngx_int_t
ngx_http_gate_hook_field(ngx_http_request_t *r, json_t *root,
    const char *name, ngx_str_t *to)
{
    json_t  *v;

    v = json_object_get(root, name);

    if (!json_is_string(v)
        || !ngx_http_gate_kratos_is_uuid((u_char *) json_string_value(v),
                                         json_string_length(v)))
    {
        return NGX_ERROR;
    }

    to->len = json_string_length(v);
    to->data = ngx_pnalloc(r->pool, to->len);
    if (to->data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(to->data, json_string_value(v), to->len);

    return NGX_OK;
}


static void
ngx_http_gate_hook_flow(void *data, redisReply *reply)
{
    u_char                *space;
    char                  *body;
    ngx_str_t              params[2];
    ngx_connection_t      *c;
    ngx_http_request_t    *r = data;
    ngx_http_gate_hook_t  *hook;

    c = r->connection;
    hook = ((ngx_http_gate_ctx_t *)
                ngx_http_get_module_ctx(r, ngx_http_gate_module))->api;
    hook->ctx->cmd = NULL;

    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        ngx_http_gate_hook_answer(r, NGX_HTTP_SERVICE_UNAVAILABLE, NULL);
        goto done;
    }

    if (reply->type != REDIS_REPLY_STRING) {
        ngx_log_error(NGX_LOG_WARN, c->log, 0,
                      "gate: %s hook for a flow Gate did not create",
                      hook->hook == NGX_HTTP_GATE_HOOK_LOGIN ? "login"
                                                             : "registration");
        ngx_http_gate_hook_refuse(r, hook->hook);
        goto done;
    }

    space = ngx_strlchr((u_char *) reply->str,
                        (u_char *) reply->str + reply->len, ' ');

    hook->tenant.len = space ? (size_t) (space - (u_char *) reply->str)
                             : reply->len;
    hook->tenant.data = ngx_pnalloc(r->pool, hook->tenant.len);
    if (hook->tenant.data == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        goto done;
    }

    ngx_memcpy(hook->tenant.data, reply->str, hook->tenant.len);

    switch (hook->hook) {

    case NGX_HTTP_GATE_HOOK_REGISTRATION:

        /* Kratos replaces metadata_admin with this: it was empty anyway */

        body = ngx_pnalloc(r->pool, hook->tenant.len + 64);
        if (body == NULL) {
            ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
            goto done;
        }

        *ngx_sprintf((u_char *) body,
                     "{\"identity\":{\"metadata_admin\":{\"gate\":"
                     "{\"tenant_id\":\"%V\"}}}}", &hook->tenant) = '\0';

        ngx_http_gate_hook_answer(r, NGX_HTTP_OK, body);
        goto done;

    case NGX_HTTP_GATE_HOOK_REGISTERED:
        params[0] = hook->identity_id;
        params[1] = hook->tenant;

        hook->ctx->query = ngx_http_gate_pg_query(c->log,
                                                  NGX_HTTP_GATE_SQL_IDN_INSERT,
                                                  2, params,
                                                  ngx_http_gate_hook_indexed,
                                                  r);
        break;

    default: /* NGX_HTTP_GATE_HOOK_LOGIN */
        params[0] = hook->identity_id;

        hook->ctx->query = ngx_http_gate_pg_query(c->log,
                                                  NGX_HTTP_GATE_SQL_IDN_TENANT,
                                                  1, params,
                                                  ngx_http_gate_hook_owner, r);
        break;
    }

    if (hook->ctx->query == NULL) {
        ngx_http_gate_hook_answer(r, NGX_HTTP_SERVICE_UNAVAILABLE, NULL);
    }

done:

    ngx_http_run_posted_requests(c);
}


static void
ngx_http_gate_hook_indexed(void *data, PGresult *res)
{
    u_char                *key;
    size_t                 argvlen[3];
    const char            *argv[3];
    ngx_connection_t      *c;
    ngx_http_request_t    *r = data;
    ngx_http_gate_hook_t  *hook;

    c = r->connection;
    hook = ((ngx_http_gate_ctx_t *)
                ngx_http_get_module_ctx(r, ngx_http_gate_module))->api;
    hook->ctx->query = NULL;

    if (res == NULL) {
        /* the identity is bound in Kratos; only the index is behind */
        ngx_log_error(NGX_LOG_ERR, c->log, 0,
                      "gate: cannot index identity %V", &hook->identity_id);
        ngx_http_gate_hook_answer(r, NGX_HTTP_SERVICE_UNAVAILABLE, NULL);
        ngx_http_run_posted_requests(c);
        return;
    }

    key = ngx_pnalloc(r->pool, sizeof("gate:idn:") - 1
                               + hook->identity_id.len);
    if (key != NULL) {
        ngx_memcpy(ngx_cpymem(key, "gate:idn:", sizeof("gate:idn:") - 1),
                   hook->identity_id.data, hook->identity_id.len);

        argv[0] = "SET";
        argvlen[0] = 3;
        argv[1] = (char *) key;
        argvlen[1] = sizeof("gate:idn:") - 1 + hook->identity_id.len;
        argv[2] = (char *) hook->tenant.data;
        argvlen[2] = hook->tenant.len;

        (void) ngx_http_gate_redis_send(c->log, NULL, NULL, 3, argv,
                                        argvlen);
    }

    ngx_http_gate_hook_answer(r, NGX_HTTP_OK, "{}");
    ngx_http_run_posted_requests(c);
}


static void
ngx_http_gate_hook_owner(void *data, PGresult *res)
{
    ngx_connection_t      *c;
    ngx_http_request_t    *r = data;
    ngx_http_gate_hook_t  *hook;

    c = r->connection;
    hook = ((ngx_http_gate_ctx_t *)
                ngx_http_get_module_ctx(r, ngx_http_gate_module))->api;
    hook->ctx->query = NULL;

    if (res == NULL) {
        ngx_http_gate_hook_answer(r, NGX_HTTP_SERVICE_UNAVAILABLE, NULL);

    } else if (PQntuples(res) == 1
               && (size_t) PQgetlength(res, 0, 0) == hook->tenant.len
               && ngx_strncmp(PQgetvalue(res, 0, 0), hook->tenant.data,
                              hook->tenant.len) == 0)
    {
        ngx_http_gate_hook_answer(r, NGX_HTTP_OK, "{}");

    } else {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, c->log, 0,
                       "gate: login into another tenant refused for %V",
                       &hook->identity_id);
        ngx_http_gate_hook_refuse(r, hook->hook);
    }

    ngx_http_run_posted_requests(c);
}


static void
ngx_http_gate_hook_refuse(ngx_http_request_t *r, ngx_uint_t hook)
{
    switch (hook) {

    case NGX_HTTP_GATE_HOOK_LOGIN:
        ngx_http_gate_hook_answer(r, NGX_HTTP_BAD_REQUEST,
                                  ngx_http_gate_hook_invalid_credentials);
        return;

    case NGX_HTTP_GATE_HOOK_REGISTRATION:
        ngx_http_gate_hook_answer(r, NGX_HTTP_BAD_REQUEST,
                                  ngx_http_gate_hook_unknown_flow);
        return;

    default:
        /* after the fact: nothing to interrupt, only to say */
        ngx_http_gate_hook_answer(r, NGX_HTTP_BAD_REQUEST, "{}");
        return;
    }
}


/* A NULL body means Gate could not decide: Kratos must not go on. */

static void
ngx_http_gate_hook_answer(ngx_http_request_t *r, ngx_uint_t status,
    const char *body)
{
    ngx_str_t  text;

    if (body == NULL) {
        ngx_http_finalize_request(r, ngx_http_gate_json_error(r, status,
                                  "unavailable",
                                  "Gate cannot decide now; try again."));
        return;
    }

    text.data = (u_char *) body;
    text.len = ngx_strlen(body);

    ngx_http_finalize_request(r, ngx_http_gate_json_send(r, status, &text));
}
