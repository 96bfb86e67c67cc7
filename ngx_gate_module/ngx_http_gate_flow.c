/*
 * Copyright (C) Gate authors
 */


/*
 * Kratos' self-service flows belong to no tenant: anyone holding a flow id
 * may fetch and submit it.  Gate records flow -> tenant in Redis when the
 * flow is created through it (gate_flow init), before the client learns
 * the id, and on every fetch or submission (gate_flow check) refuses a flow
 * that is not the request's tenant's with the 404 an unknown flow gets.
 *
 *     gate:flow:{flow id} = "{tenant id} {api|browser}"   EX flow lifespan
 */


#include "ngx_http_gate_flow.h"
#include "ngx_http_gate_access.h"
#include "ngx_http_gate_headers.h"
#include "ngx_http_gate_json.h"
#include "ngx_http_gate_kratos.h"
#include "ngx_http_gate_lookup.h"
#include "ngx_http_gate_redis.h"

#include <jansson.h>


#define NGX_HTTP_GATE_FLOW_TTL_DEFAULT  3600


static ngx_int_t ngx_http_gate_flow_id(ngx_http_request_t *r, ngx_str_t *id);
static void ngx_http_gate_flow_checked(void *data, redisReply *reply);
static void ngx_http_gate_flow_created(ngx_http_request_t *r,
    ngx_uint_t status, ngx_str_t *body);
static ngx_int_t ngx_http_gate_flow_from_answer(ngx_http_request_t *r,
    ngx_uint_t status, ngx_str_t *body, ngx_str_t *id, ngx_str_t *type,
    time_t *ttl);
static void ngx_http_gate_flow_recorded(void *data, redisReply *reply);
static void ngx_http_gate_flow_relay(ngx_http_request_t *r);


static ngx_str_t  ngx_http_gate_flow_cookie = ngx_string("cookie");
static ngx_str_t  ngx_http_gate_flow_origin = ngx_string("origin");


/*
 * The flow id is in "flow" (submissions) or "id" (fetches).  Kratos reads
 * them as Go does: keys percent-decoded, exact case, the first value.  So
 * every "flow" and "id" the query holds, decoded the same way, must name
 * one and the same well-formed id, or the request names no flow at all:
 * otherwise Gate could check one flow while Kratos serves another.
 */

static ngx_int_t
ngx_http_gate_flow_id(ngx_http_request_t *r, ngx_str_t *id)
{
    u_char     *p, *last, *end, *eq, *dst, *src, buf[128];
    size_t      klen;
    ngx_str_t   value;

    ngx_str_null(id);

    p = r->args.data;
    last = p + r->args.len;

    if (ngx_strlchr(p, last, ';') != NULL) {
        /* Go refuses such queries; Gate will not guess what is meant */
        return NGX_DECLINED;
    }

    while (p < last) {
        end = ngx_strlchr(p, last, '&');
        end = end ? end : last;

        eq = ngx_strlchr(p, end, '=');
        klen = (eq ? eq : end) - p;

        if (klen < sizeof(buf)) {
            src = p;
            dst = buf;
            ngx_unescape_uri(&dst, &src, klen, NGX_UNESCAPE_URI);
            klen = dst - buf;

            if ((klen == 4 && ngx_strncmp(buf, "flow", 4) == 0)
                || (klen == 2 && ngx_strncmp(buf, "id", 2) == 0))
            {
                if (eq == NULL || end - eq - 1 > 128) {
                    return NGX_DECLINED;
                }

                value.data = ngx_pnalloc(r->pool, end - eq - 1);
                if (value.data == NULL) {
                    return NGX_ERROR;
                }

                src = eq + 1;
                dst = value.data;
                ngx_unescape_uri(&dst, &src, end - eq - 1, NGX_UNESCAPE_URI);
                value.len = dst - value.data;

                if (!ngx_http_gate_kratos_is_uuid(value.data, value.len)
                    || (id->len && (id->len != value.len
                                    || ngx_strncmp(id->data, value.data,
                                                   value.len) != 0)))
                {
                    return NGX_DECLINED;
                }

                *id = value;
            }
        }

        p = end + 1;
    }

    return id->len ? NGX_OK : NGX_DECLINED;
}


ngx_int_t
ngx_http_gate_flow_check(ngx_http_request_t *r,
    ngx_http_gate_loc_conf_t *glcf, ngx_http_gate_ctx_t *ctx)
{
    u_char      *key;
    size_t       argvlen[2];
    ngx_str_t    id;
    const char  *argv[2];

    if (glcf->flow != NGX_HTTP_GATE_FLOW_CHECK) {
        return NGX_OK;
    }

    switch (ctx->state) {

    case NGX_HTTP_GATE_STATE_NEW:

        if (ngx_http_gate_flow_id(r, &id) != NGX_OK) {
            return ngx_http_gate_access_deny(r, ctx, NGX_HTTP_NOT_FOUND,
                                             "not_found", "unknown_flow",
                                             "No such flow.");
        }

        ctx->flow_id = id;

        key = ngx_pnalloc(r->pool, sizeof("gate:flow:") - 1 + id.len);
        if (key == NULL || ngx_http_gate_lookup_guard(r, ctx) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ngx_memcpy(ngx_cpymem(key, "gate:flow:", sizeof("gate:flow:") - 1),
                   id.data, id.len);

        argv[0] = "GET";
        argvlen[0] = 3;
        argv[1] = (char *) key;
        argvlen[1] = sizeof("gate:flow:") - 1 + id.len;

        ctx->cmd = ngx_http_gate_redis_send(r->connection->log,
                                            ngx_http_gate_flow_checked, ctx,
                                            2, argv, argvlen);
        if (ctx->cmd == NULL) {
            ctx->state = NGX_HTTP_GATE_STATE_ERROR;
            break;
        }

        ctx->state = NGX_HTTP_GATE_STATE_WAIT;
        return NGX_AGAIN;

    case NGX_HTTP_GATE_STATE_WAIT:
        return NGX_AGAIN;

    default:
        break;
    }

    switch (ctx->state) {

    case NGX_HTTP_GATE_STATE_ERROR:
        ngx_str_set(&ctx->decision, "error");
        return ngx_http_gate_access_deny(r, ctx,
                   NGX_HTTP_SERVICE_UNAVAILABLE, "unavailable", "unavailable",
                   "The flow store is unavailable; try again later.");

    case NGX_HTTP_GATE_STATE_UNKNOWN:

        /*
         * Behind a session, a flow Gate did not see created (the settings
         * flow Kratos makes after a recovery) is Kratos' to check: it binds
         * such a flow to the session's identity, whose tenant Gate checked.
         */

        if (glcf->auth == NGX_HTTP_GATE_AUTH_SESSION) {
            return NGX_OK;
        }

        return ngx_http_gate_access_deny(r, ctx, NGX_HTTP_NOT_FOUND,
                                         "not_found", "unknown_flow",
                                         "No such flow.");
    default:
        break;
    }

    /* another tenant's flow is answered as if it did not exist */

    if (ctx->tenant_id.len == 0
        || ctx->flow_tenant.len != ctx->tenant_id.len
        || ngx_strncmp(ctx->flow_tenant.data, ctx->tenant_id.data,
                       ctx->tenant_id.len) != 0)
    {
        return ngx_http_gate_access_deny(r, ctx, NGX_HTTP_NOT_FOUND,
                                         "not_found", "foreign_flow",
                                         "No such flow.");
    }

    /*
     * Kratos refuses an API flow's submission that carries cookies or an
     * Origin: they are what a browser sends, and API flows have no CSRF
     * protection to go with them.
     */

    if (ctx->flow_type.len == 3
        && ngx_strncmp(ctx->flow_type.data, "api", 3) == 0
        && r->method == NGX_HTTP_POST)
    {
        if (ngx_http_gate_headers_remove(r, &ngx_http_gate_flow_cookie)
            != NGX_OK
            || ngx_http_gate_headers_remove(r, &ngx_http_gate_flow_origin)
               != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    return NGX_OK;
}


static void
ngx_http_gate_flow_checked(void *data, redisReply *reply)
{
    u_char               *p, *space;
    ngx_http_gate_ctx_t  *ctx = data;
    ngx_http_request_t   *r;

    ctx->cmd = NULL;
    r = ctx->request;

    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "gate: redis flow lookup failed");
        ctx->state = NGX_HTTP_GATE_STATE_ERROR;
        goto done;
    }

    if (reply->type != REDIS_REPLY_STRING) {
        ctx->state = NGX_HTTP_GATE_STATE_UNKNOWN;
        goto done;
    }

    p = ngx_pnalloc(r->pool, reply->len);
    if (p == NULL) {
        ctx->state = NGX_HTTP_GATE_STATE_ERROR;
        goto done;
    }

    ngx_memcpy(p, reply->str, reply->len);

    space = ngx_strlchr(p, p + reply->len, ' ');

    ctx->flow_tenant.data = p;
    ctx->flow_tenant.len = space ? (size_t) (space - p) : reply->len;

    if (space) {
        ctx->flow_type.data = space + 1;
        ctx->flow_type.len = p + reply->len - space - 1;
    }

    ctx->state = NGX_HTTP_GATE_STATE_FOUND;

done:

    ngx_http_gate_lookup_resume(ctx);
}


/*
 * gate_flow init: the flow is created through a subrequest, so that its
 * record is in Redis before the client is given the id.
 */

ngx_int_t
ngx_http_gate_flow_init_handler(ngx_http_request_t *r)
{
    ngx_int_t             rc;
    ngx_http_gate_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_gate_module);

    if (ctx == NULL || ctx->tenant_id.len == 0) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (r->method != NGX_HTTP_GET) {
        return ngx_http_gate_json_not_allowed(r, "GET",
                                              "Flows are created with GET.");
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    r->main->count++;

    if (ngx_http_gate_kratos_request(r, 1, NGX_HTTP_GATE_KRATOS_GET, &r->uri,
                                     r->args.len ? &r->args : NULL, NULL,
                                     ngx_http_gate_flow_created)
        != NGX_OK)
    {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
    }

    return NGX_DONE;
}


static void
ngx_http_gate_flow_created(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *body)
{
    u_char               *key, *value, ttl_text[NGX_TIME_T_LEN];
    size_t                argvlen[5];
    time_t                ttl;
    ngx_str_t             id, type;
    const char           *argv[5];
    ngx_http_gate_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_gate_module);

    if (status >= NGX_HTTP_INTERNAL_SERVER_ERROR) {
        ngx_http_finalize_request(r, ngx_http_gate_json_error(r,
                                  NGX_HTTP_SERVICE_UNAVAILABLE, "unavailable",
                                  "The identity service is unavailable; try "
                                  "again later."));
        return;
    }

    if (ngx_http_gate_flow_from_answer(r, status, body, &id, &type, &ttl)
        != NGX_OK)
    {
        /* no flow was made (e.g. a session already exists): say so */
        ngx_http_gate_flow_relay(r);
        return;
    }

    key = ngx_pnalloc(r->pool, sizeof("gate:flow:") - 1 + id.len);
    value = ngx_pnalloc(r->pool, ctx->tenant_id.len + 1 + type.len);
    if (key == NULL || value == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    ngx_memcpy(ngx_cpymem(key, "gate:flow:", sizeof("gate:flow:") - 1),
               id.data, id.len);
    ngx_memcpy(ngx_cpymem(ngx_cpymem(value, ctx->tenant_id.data,
                                     ctx->tenant_id.len), " ", 1),
               type.data, type.len);

    argv[0] = "SET";
    argvlen[0] = 3;
    argv[1] = (char *) key;
    argvlen[1] = sizeof("gate:flow:") - 1 + id.len;
    argv[2] = (char *) value;
    argvlen[2] = ctx->tenant_id.len + 1 + type.len;
    argv[3] = "EX";
    argvlen[3] = 2;
    argv[4] = (char *) ttl_text;
    argvlen[4] = ngx_sprintf(ttl_text, "%T", ttl) - ttl_text;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "gate: flow %V for tenant %V", &id, &ctx->tenant_id);

    if (ngx_http_gate_lookup_guard(r, ctx) != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    ctx->cmd = ngx_http_gate_redis_send(r->connection->log,
                                        ngx_http_gate_flow_recorded, ctx,
                                        5, argv, argvlen);
    if (ctx->cmd == NULL) {
        ngx_http_gate_flow_recorded(ctx, NULL);
    }
}


/* The flow Kratos made: its id, api or browser, and how long it lives. */

static ngx_int_t
ngx_http_gate_flow_from_answer(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *body, ngx_str_t *id, ngx_str_t *type, time_t *ttl)
{
    u_char               *p, *last;
    json_t               *root, *v;
    time_t                expires;
    ngx_http_request_t   *sr;
    ngx_http_gate_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_gate_module);
    sr = ctx->kratos_sr;

    *ttl = NGX_HTTP_GATE_FLOW_TTL_DEFAULT;

    if (status == NGX_HTTP_OK && body->len) {
        root = json_loadb((char *) body->data, body->len, 0, NULL);
        if (root == NULL) {
            return NGX_DECLINED;
        }

        v = json_object_get(root, "id");

        if (!json_is_string(v)
            || !ngx_http_gate_kratos_is_uuid((u_char *) json_string_value(v),
                                           json_string_length(v)))
        {
            json_decref(root);
            return NGX_DECLINED;
        }

        id->len = NGX_HTTP_GATE_UUID_LEN;
        id->data = ngx_pnalloc(r->pool, id->len);
        if (id->data == NULL) {
            json_decref(root);
            return NGX_ERROR;
        }

        ngx_memcpy(id->data, json_string_value(v), id->len);

        v = json_object_get(root, "type");

        if (json_is_string(v) && ngx_strcmp(json_string_value(v), "api") == 0)
        {
            ngx_str_set(type, "api");

        } else {
            ngx_str_set(type, "browser");
        }

        v = json_object_get(root, "expires_at");

        if (json_is_string(v)) {
            expires = ngx_http_gate_kratos_time((u_char *) json_string_value(v),
                                               json_string_length(v));
            if (expires > ngx_time()) {
                *ttl = expires - ngx_time() + 1;
            }
        }

        json_decref(root);
        return NGX_OK;
    }

    /* a browser flow: the id is in the redirect to the UI, ?flow=... */

    if ((status == NGX_HTTP_SEE_OTHER || status == NGX_HTTP_MOVED_TEMPORARILY)
        && sr && sr->headers_out.location)
    {
        p = sr->headers_out.location->value.data;
        last = p + sr->headers_out.location->value.len;

        p = ngx_strlcasestrn(p, last, (u_char *) "flow=", 5 - 1);

        if (p && last - p >= 5 + NGX_HTTP_GATE_UUID_LEN
            && ngx_http_gate_kratos_is_uuid(p + 5, NGX_HTTP_GATE_UUID_LEN))
        {
            id->data = p + 5;
            id->len = NGX_HTTP_GATE_UUID_LEN;
            ngx_str_set(type, "browser");
            return NGX_OK;
        }
    }

    return NGX_DECLINED;
}


static void
ngx_http_gate_flow_recorded(void *data, redisReply *reply)
{
    ngx_connection_t     *c;
    ngx_http_request_t   *r;
    ngx_http_gate_ctx_t  *ctx = data;

    ctx->cmd = NULL;
    r = ctx->request;
    c = r->connection;

    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        /* a flow nobody could use through Gate is no flow to hand out */
        ngx_log_error(NGX_LOG_ERR, c->log, 0,
                      "gate: cannot record a new flow in redis");
        ngx_http_finalize_request(r, ngx_http_gate_json_error(r,
                                  NGX_HTTP_SERVICE_UNAVAILABLE, "unavailable",
                                  "The flow store is unavailable; try again "
                                  "later."));
    } else {
        ngx_http_gate_flow_relay(r);
    }

    ngx_http_run_posted_requests(c);
}


/* Kratos' answer goes to the client as Kratos gave it. */

static void
ngx_http_gate_flow_relay(ngx_http_request_t *r)
{
    ngx_int_t             rc;
    ngx_uint_t            i;
    ngx_buf_t            *b;
    ngx_chain_t           out;
    ngx_list_part_t      *part;
    ngx_table_elt_t      *h, *copy;
    ngx_http_request_t   *sr;
    ngx_http_gate_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_gate_module);
    sr = ctx->kratos_sr;

    r->headers_out.status = sr->headers_out.status;
    r->headers_out.content_type = sr->headers_out.content_type;
    r->headers_out.content_type_len = sr->headers_out.content_type_len;

    part = &sr->headers_out.headers.part;
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

        if (h[i].hash == 0
            || (h[i].key.len == sizeof("Content-Length") - 1
                && ngx_strncasecmp(h[i].key.data, (u_char *) "Content-Length",
                                   h[i].key.len) == 0))
        {
            continue;
        }

        copy = ngx_list_push(&r->headers_out.headers);
        if (copy == NULL) {
            ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
            return;
        }

        *copy = h[i];
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    if (sr->out && sr->out->buf) {
        b->pos = sr->out->buf->pos;
        b->last = sr->out->buf->last;
    }

    b->memory = (b->last > b->pos);
    b->last_buf = 1;
    b->last_in_chain = 1;

    r->headers_out.content_length_n = b->last - b->pos;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        ngx_http_finalize_request(r, rc);
        return;
    }

    out.buf = b;
    out.next = NULL;

    ngx_http_finalize_request(r, ngx_http_output_filter(r, &out));
}
