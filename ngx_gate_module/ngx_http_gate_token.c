/*
 * Copyright (C) Gate authors
 */


/*
 * Access-token records: the shared-memory cache first, then one Redis
 * HMGET of gate:tok:{sha256}.  The cache is trusted only while this worker
 * hears gate:invalidate, so a revocation it missed cannot keep a token
 * alive for the cache's ttl.
 */


#include "ngx_http_gate_token.h"
#include "ngx_http_gate_cache.h"
#include "ngx_http_gate_credential.h"
#include "ngx_http_gate_redis.h"


#define NGX_HTTP_GATE_TOKEN_KEY_PREFIX  "gate:tok:"


static void ngx_http_gate_token_reply(void *data, redisReply *reply);
static ngx_int_t ngx_http_gate_token_record(ngx_http_request_t *r,
    redisReply *reply, ngx_http_gate_record_t *record);
static ngx_int_t ngx_http_gate_token_copy(ngx_pool_t *pool,
    redisReply *element, ngx_str_t *to);
static void ngx_http_gate_token_cleanup(void *data);


ngx_int_t
ngx_http_gate_token_lookup(ngx_http_request_t *r, ngx_http_gate_ctx_t *ctx)
{
    u_char                     *key;
    size_t                      argvlen[7];
    ngx_uint_t                  rc;
    const char                 *argv[7];
    ngx_pool_cleanup_t         *cln;
    ngx_http_gate_main_conf_t  *gmcf;

    gmcf = ngx_http_get_module_main_conf(r, ngx_http_gate_module);

    if (ngx_http_gate_redis_subscribed()) {
        rc = ngx_http_gate_cache_get(gmcf->cache, NGX_HTTP_GATE_CACHE_TOKEN,
                                     ctx->hash, &ctx->record, r->pool);

        if (rc == NGX_HTTP_GATE_CACHE_HIT) {
            ctx->state = NGX_HTTP_GATE_STATE_FOUND;
            return NGX_OK;
        }

        if (rc == NGX_HTTP_GATE_CACHE_NEGATIVE) {
            ctx->state = NGX_HTTP_GATE_STATE_UNKNOWN;
            return NGX_OK;
        }
    }

    key = ngx_pnalloc(r->pool, sizeof(NGX_HTTP_GATE_TOKEN_KEY_PREFIX) - 1
                               + NGX_HTTP_GATE_SHA256_HEX_LEN);
    if (key == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(key, NGX_HTTP_GATE_TOKEN_KEY_PREFIX,
               sizeof(NGX_HTTP_GATE_TOKEN_KEY_PREFIX) - 1);
    ngx_http_gate_credential_hex(ctx->hash,
                               key + sizeof(NGX_HTTP_GATE_TOKEN_KEY_PREFIX) - 1);

    /* positions matter: ngx_http_gate_token_record() reads them back */

    argv[0] = "HMGET";
    argv[1] = (const char *) key;
    argv[2] = "tenant";
    argv[3] = "sub";
    argv[4] = "scope";
    argv[5] = "exp";
    argv[6] = "id";

    argvlen[0] = 5;
    argvlen[1] = sizeof(NGX_HTTP_GATE_TOKEN_KEY_PREFIX) - 1
                 + NGX_HTTP_GATE_SHA256_HEX_LEN;
    argvlen[2] = 6;
    argvlen[3] = 3;
    argvlen[4] = 5;
    argvlen[5] = 3;
    argvlen[6] = 2;

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_ERROR;
    }

    ctx->cmd = ngx_http_gate_redis_send(r->connection->log,
                                        ngx_http_gate_token_reply, ctx,
                                        7, argv, argvlen);

    if (ctx->cmd == NULL) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "gate: redis is not available for a token lookup");
        ctx->state = NGX_HTTP_GATE_STATE_ERROR;
        return NGX_OK;
    }

    cln->handler = ngx_http_gate_token_cleanup;
    cln->data = ctx;

    ctx->state = NGX_HTTP_GATE_STATE_WAIT;

    return NGX_AGAIN;
}


static void
ngx_http_gate_token_reply(void *data, redisReply *reply)
{
    ngx_uint_t                  rc;
    ngx_connection_t           *c;
    ngx_http_request_t         *r;
    ngx_http_gate_ctx_t        *ctx = data;
    ngx_http_gate_main_conf_t  *gmcf;

    ctx->cmd = NULL;
    r = ctx->request;
    c = r->connection;

    rc = ngx_http_gate_token_record(r, reply, &ctx->record);

    gmcf = ngx_http_get_module_main_conf(r, ngx_http_gate_module);

    switch (rc) {

    case NGX_OK:
        ctx->state = NGX_HTTP_GATE_STATE_FOUND;
        ngx_http_gate_cache_put(gmcf->cache, NGX_HTTP_GATE_CACHE_TOKEN,
                                ctx->hash, &ctx->record);
        break;

    case NGX_DECLINED:
        ctx->state = NGX_HTTP_GATE_STATE_UNKNOWN;
        ngx_http_gate_cache_put(gmcf->cache, NGX_HTTP_GATE_CACHE_TOKEN,
                                ctx->hash, NULL);
        break;

    default:
        ctx->state = NGX_HTTP_GATE_STATE_ERROR;
        break;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "gate: token lookup done, state %ui", ctx->state);

    ngx_http_core_run_phases(r);
    ngx_http_run_posted_requests(c);
}


/* NGX_OK: a record; NGX_DECLINED: no such token; NGX_ERROR: Redis failed */

static ngx_int_t
ngx_http_gate_token_record(ngx_http_request_t *r, redisReply *reply,
    ngx_http_gate_record_t *record)
{
    ngx_int_t   exp;
    ngx_str_t   s;

    if (reply == NULL) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "gate: redis gave no answer to a token lookup");
        return NGX_ERROR;
    }

    if (reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "gate: redis token lookup failed: %s", reply->str);
        return NGX_ERROR;
    }

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 5) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "gate: unexpected redis reply to a token lookup");
        return NGX_ERROR;
    }

    if (reply->element[0]->type != REDIS_REPLY_STRING) {
        return NGX_DECLINED;
    }

    if (ngx_http_gate_token_copy(r->pool, reply->element[0], &record->tenant)
        != NGX_OK
        || ngx_http_gate_token_copy(r->pool, reply->element[1],
                                    &record->subject) != NGX_OK
        || ngx_http_gate_token_copy(r->pool, reply->element[2],
                                    &record->scope) != NGX_OK
        || ngx_http_gate_token_copy(r->pool, reply->element[4], &record->id)
           != NGX_OK
        || ngx_http_gate_token_copy(r->pool, reply->element[3], &s) != NGX_OK)
    {
        return NGX_ERROR;
    }

    exp = ngx_atoi(s.data, s.len);

    if (exp == NGX_ERROR || record->tenant.len == 0) {
        /* a record we cannot read safely is no token at all */
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "gate: malformed token record in redis");
        return NGX_DECLINED;
    }

    record->exp = (time_t) exp;

    return NGX_OK;
}


static ngx_int_t
ngx_http_gate_token_copy(ngx_pool_t *pool, redisReply *element,
    ngx_str_t *to)
{
    if (element->type != REDIS_REPLY_STRING) {
        ngx_str_null(to);
        return NGX_OK;
    }

    to->len = element->len;
    to->data = ngx_pnalloc(pool, element->len + 1);
    if (to->data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(to->data, element->str, element->len);
    to->data[to->len] = '\0';

    return NGX_OK;
}


static void
ngx_http_gate_token_cleanup(void *data)
{
    ngx_http_gate_ctx_t  *ctx = data;

    if (ctx->cmd) {
        ngx_http_gate_redis_cancel(ctx->cmd);
        ctx->cmd = NULL;
    }
}


/*
 * A message on gate:invalidate: the SHA-256 hex of a credential, or
 * "tenant:{id}" for everything of a tenant, or "all".
 */

void
ngx_http_gate_token_invalidate(ngx_str_t *payload)
{
    u_char                      hash[32];
    ngx_str_t                   tenant;
    ngx_int_t                   n;
    ngx_uint_t                  i;
    ngx_http_gate_main_conf_t  *gmcf;

    gmcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                               ngx_http_gate_module);
    if (gmcf == NULL || gmcf->cache == NULL) {
        return;
    }

    if (payload->len == NGX_HTTP_GATE_SHA256_HEX_LEN) {
        for (i = 0; i < 32; i++) {
            n = ngx_hextoi(payload->data + 2 * i, 2);
            if (n == NGX_ERROR) {
                goto unknown;
            }

            hash[i] = (u_char) n;
        }

        ngx_http_gate_cache_remove(gmcf->cache, hash);
        return;
    }

    if (payload->len > sizeof("tenant:") - 1
        && ngx_strncmp(payload->data, "tenant:", sizeof("tenant:") - 1) == 0)
    {
        tenant.data = payload->data + sizeof("tenant:") - 1;
        tenant.len = payload->len - (sizeof("tenant:") - 1);

        ngx_http_gate_cache_remove_tenant(gmcf->cache, &tenant);
        return;
    }

    if (payload->len == 3 && ngx_strncmp(payload->data, "all", 3) == 0) {
        ngx_http_gate_cache_flush(gmcf->cache);
        return;
    }

unknown:

    ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                  "gate: ignoring unknown message on "
                  NGX_HTTP_GATE_INVALIDATE_CHANNEL " (%uz bytes)",
                  payload->len);
}


void
ngx_http_gate_token_resync(void)
{
    ngx_http_gate_main_conf_t  *gmcf;

    gmcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                               ngx_http_gate_module);
    if (gmcf && gmcf->cache) {
        ngx_http_gate_cache_flush(gmcf->cache);
    }
}
