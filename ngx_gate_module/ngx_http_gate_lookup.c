/*
 * Copyright (C) Gate authors
 */


/*
 * Credential records (access tokens, secret keys): the shared-memory
 * cache, then Redis, then PostgreSQL, which is the truth.  What PostgreSQL
 * finds is written back to Redis, but never over a revocation's tombstone,
 * so a revoke racing a lookup cannot bring a credential back.
 *
 * The cache is trusted only while this worker hears gate:invalidate, so a
 * revocation it missed cannot keep a credential alive for the cache's ttl.
 */


#include "ngx_http_gate_lookup.h"
#include "ngx_http_gate_cache.h"
#include "ngx_http_gate_credential.h"
#include "ngx_http_gate_pg.h"
#include "ngx_http_gate_redis.h"


/* Records that only stand for something else live this long at most. */
#define NGX_HTTP_GATE_LOOKUP_SHORT_TTL  300


typedef struct {
    ngx_uint_t                  cache_kind;
    ngx_str_t                   redis_prefix;
    ngx_int_t                   statement;       /* -1: the miss handler */
    unsigned                    touch:1;         /* keep last_used_at */
    unsigned                    by_param:1;      /* PostgreSQL by ctx->param */
    unsigned                    short_ttl:1;     /* Redis copy expires soon */
} ngx_http_gate_lookup_kind_t;


static ngx_int_t ngx_http_gate_lookup_redis(ngx_http_request_t *r,
    ngx_http_gate_ctx_t *ctx);
static void ngx_http_gate_lookup_redis_reply(void *data, redisReply *reply);
static ngx_int_t ngx_http_gate_lookup_pg(ngx_http_request_t *r,
    ngx_http_gate_ctx_t *ctx);
static void ngx_http_gate_lookup_pg_result(void *data, PGresult *res);
static ngx_int_t ngx_http_gate_lookup_from_redis(ngx_http_request_t *r,
    redisReply *reply, ngx_http_gate_record_t *record);
static ngx_int_t ngx_http_gate_lookup_from_pg(ngx_http_request_t *r,
    PGresult *res, ngx_http_gate_record_t *record);
static ngx_int_t ngx_http_gate_lookup_copy(ngx_pool_t *pool, const char *src,
    size_t len, ngx_str_t *to);
static ngx_int_t ngx_http_gate_lookup_key(ngx_pool_t *pool,
    ngx_http_gate_ctx_t *ctx, ngx_str_t *key);
static void ngx_http_gate_lookup_write_back(ngx_http_request_t *r,
    ngx_http_gate_ctx_t *ctx);
static void ngx_http_gate_lookup_touch(ngx_http_request_t *r,
    ngx_http_gate_ctx_t *ctx);
static void ngx_http_gate_lookup_touch_reply(void *data, redisReply *reply);

static void ngx_http_gate_lookup_cleanup(void *data);


static ngx_http_gate_lookup_kind_t  ngx_http_gate_lookup_kinds[] = {
    { NGX_HTTP_GATE_CACHE_TOKEN, ngx_string("gate:tok:"),
      NGX_HTTP_GATE_SQL_TOKEN_LOOKUP, 0, 0, 0 },
    { NGX_HTTP_GATE_CACHE_KEY, ngx_string("gate:key:"),
      NGX_HTTP_GATE_SQL_KEY_LOOKUP, 1, 0, 0 },
    { NGX_HTTP_GATE_CACHE_TENANT, ngx_string("gate:tnt:"),
      NGX_HTTP_GATE_SQL_TENANT_LOOKUP, 0, 1, 1 },
    { NGX_HTTP_GATE_CACHE_SESSION, ngx_string("gate:sess:"),
      -1, 0, 0, 1 }
};


/*
 * Writes a record back unless something (a tombstone) is already there;
 * ARGV[6] is when the copy goes, which may be before the record's exp.
 */

static const char  ngx_http_gate_lookup_write_back_lua[] =
    "if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end "
    "redis.call('HSET', KEYS[1], 'tenant', ARGV[1], 'sub', ARGV[2], "
    "'scope', ARGV[3], 'exp', ARGV[4], 'id', ARGV[5]) "
    "redis.call('EXPIREAT', KEYS[1], ARGV[6]) "
    "return 1";


ngx_int_t
ngx_http_gate_lookup(ngx_http_request_t *r, ngx_http_gate_ctx_t *ctx,
    ngx_uint_t kind)
{
    ngx_uint_t                    rc;
    ngx_http_gate_main_conf_t    *gmcf;
    ngx_http_gate_lookup_kind_t  *lk;

    gmcf = ngx_http_get_module_main_conf(r, ngx_http_gate_module);

    ctx->kind = kind;

    if (ngx_http_gate_redis_subscribed()) {
        lk = &ngx_http_gate_lookup_kinds[kind];
        rc = ngx_http_gate_cache_get(gmcf->cache, lk->cache_kind, ctx->hash,
                                     &ctx->record, r->pool);

        if (rc == NGX_HTTP_GATE_CACHE_HIT) {
            ctx->state = NGX_HTTP_GATE_STATE_FOUND;
            return NGX_OK;
        }

        if (rc == NGX_HTTP_GATE_CACHE_NEGATIVE) {
            ctx->state = NGX_HTTP_GATE_STATE_UNKNOWN;
            return NGX_OK;
        }
    }

    /* a miss: Redis and PostgreSQL know credentials by their hex hash */

    ctx->hex.len = NGX_HTTP_GATE_SHA256_HEX_LEN;
    ctx->hex.data = ngx_pnalloc(r->pool, NGX_HTTP_GATE_SHA256_HEX_LEN);
    if (ctx->hex.data == NULL) {
        return NGX_ERROR;
    }

    ngx_http_gate_credential_hex(ctx->hash, ctx->hex.data);

    if (ngx_http_gate_lookup_guard(r, ctx) != NGX_OK) {
        return NGX_ERROR;
    }

    if (gmcf->redis && ngx_http_gate_lookup_redis(r, ctx) == NGX_OK) {
        return NGX_AGAIN;
    }

    if ((gmcf->pg || ngx_http_gate_lookup_kinds[kind].statement < 0)
        && ngx_http_gate_lookup_pg(r, ctx) == NGX_OK)
    {
        return NGX_AGAIN;
    }

    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                  "gate: neither redis nor postgres can be asked now");

    ctx->state = NGX_HTTP_GATE_STATE_ERROR;

    return NGX_OK;
}


static ngx_int_t
ngx_http_gate_lookup_redis(ngx_http_request_t *r, ngx_http_gate_ctx_t *ctx)
{
    size_t       argvlen[8];
    ngx_str_t    key;
    const char  *argv[8];

    if (ngx_http_gate_lookup_key(r->pool, ctx, &key) != NGX_OK) {
        return NGX_ERROR;
    }

    /* positions matter: ngx_http_gate_lookup_from_redis() reads them */

    argv[0] = "HMGET";          argvlen[0] = 5;
    argv[1] = (char *) key.data; argvlen[1] = key.len;
    argv[2] = "tenant";     argvlen[2] = 6;
    argv[3] = "sub";        argvlen[3] = 3;
    argv[4] = "scope";      argvlen[4] = 5;
    argv[5] = "exp";        argvlen[5] = 3;
    argv[6] = "id";         argvlen[6] = 2;
    argv[7] = "revoked";    argvlen[7] = 7;

    ctx->cmd = ngx_http_gate_redis_send(r->connection->log,
                                        ngx_http_gate_lookup_redis_reply, ctx,
                                        8, argv, argvlen);
    if (ctx->cmd == NULL) {
        return NGX_DECLINED;
    }

    ctx->state = NGX_HTTP_GATE_STATE_WAIT;

    return NGX_OK;
}


static void
ngx_http_gate_lookup_redis_reply(void *data, redisReply *reply)
{
    ngx_int_t                   rc;
    ngx_http_request_t         *r;
    ngx_http_gate_ctx_t        *ctx = data;
    ngx_http_gate_main_conf_t  *gmcf;

    ctx->cmd = NULL;
    r = ctx->request;

    gmcf = ngx_http_get_module_main_conf(r, ngx_http_gate_module);

    rc = ngx_http_gate_lookup_from_redis(r, reply, &ctx->record);

    switch (rc) {

    case NGX_OK:
        ngx_http_gate_lookup_found(r, ctx, 0);
        break;

    case NGX_ABORT:
        /* a tombstone: revoked, whatever PostgreSQL says */
        ctx->state = NGX_HTTP_GATE_STATE_UNKNOWN;
        break;

    default:
        /* not in Redis, or Redis failed: PostgreSQL is the truth */

        if ((gmcf->pg || ngx_http_gate_lookup_kinds[ctx->kind].statement < 0)
            && ngx_http_gate_lookup_pg(r, ctx) == NGX_OK)
        {
            /* a miss handler may have posted a subrequest: run it */
            ngx_http_run_posted_requests(r->connection);
            return;
        }

        if (rc == NGX_DECLINED && gmcf->pg == NULL) {
            ctx->state = NGX_HTTP_GATE_STATE_UNKNOWN;
            ngx_http_gate_cache_put(gmcf->cache,
                            ngx_http_gate_lookup_kinds[ctx->kind].cache_kind,
                            ctx->hash, NULL);
            break;
        }

        ctx->state = NGX_HTTP_GATE_STATE_ERROR;
        break;
    }

    ngx_http_gate_lookup_resume(ctx);
}


static ngx_int_t
ngx_http_gate_lookup_pg(ngx_http_request_t *r, ngx_http_gate_ctx_t *ctx)
{
    ngx_int_t                     statement;
    ngx_http_gate_lookup_kind_t  *lk;

    lk = &ngx_http_gate_lookup_kinds[ctx->kind];
    statement = lk->statement;

    if (statement < 0) {
        /* no table holds it: the kind's own source is asked */
        return ctx->miss ? ctx->miss(r, ctx) : NGX_DECLINED;
    }

    ctx->query = ngx_http_gate_pg_query(r->connection->log,
                                        (ngx_uint_t) statement, 1,
                                        lk->by_param ? &ctx->param : &ctx->hex,
                                        ngx_http_gate_lookup_pg_result, ctx);
    if (ctx->query == NULL) {
        return NGX_DECLINED;
    }

    ctx->state = NGX_HTTP_GATE_STATE_WAIT;

    return NGX_OK;
}


static void
ngx_http_gate_lookup_pg_result(void *data, PGresult *res)
{
    ngx_http_request_t         *r;
    ngx_http_gate_ctx_t        *ctx = data;
    ngx_http_gate_main_conf_t  *gmcf;

    ctx->query = NULL;
    r = ctx->request;

    gmcf = ngx_http_get_module_main_conf(r, ngx_http_gate_module);

    switch (ngx_http_gate_lookup_from_pg(r, res, &ctx->record)) {

    case NGX_OK:
        ngx_http_gate_lookup_found(r, ctx, 1);
        break;

    case NGX_DECLINED:
        ctx->state = NGX_HTTP_GATE_STATE_UNKNOWN;
        ngx_http_gate_cache_put(gmcf->cache,
                            ngx_http_gate_lookup_kinds[ctx->kind].cache_kind,
                            ctx->hash, NULL);
        break;

    default:
        ctx->state = NGX_HTTP_GATE_STATE_ERROR;
        break;
    }

    ngx_http_gate_lookup_resume(ctx);
}


/*
 * NGX_OK: a record; NGX_DECLINED: not there; NGX_ABORT: a revocation's
 * tombstone; NGX_ERROR: Redis failed.
 */

static ngx_int_t
ngx_http_gate_lookup_from_redis(ngx_http_request_t *r, redisReply *reply,
    ngx_http_gate_record_t *record)
{
    ngx_int_t     exp;
    ngx_str_t    *to[5], s;
    ngx_uint_t    i;
    redisReply   *e;

    if (reply == NULL) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "gate: redis gave no answer to a credential lookup");
        return NGX_ERROR;
    }

    if (reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "gate: redis credential lookup failed: %s", reply->str);
        return NGX_ERROR;
    }

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 6) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "gate: unexpected redis reply to a credential lookup");
        return NGX_ERROR;
    }

    if (reply->element[5]->type == REDIS_REPLY_STRING) {
        return NGX_ABORT;
    }

    if (reply->element[0]->type != REDIS_REPLY_STRING) {
        return NGX_DECLINED;
    }

    to[0] = &record->tenant;
    to[1] = &record->subject;
    to[2] = &record->scope;
    to[3] = &s;
    to[4] = &record->id;

    for (i = 0; i < 5; i++) {
        e = reply->element[i];

        if (e->type != REDIS_REPLY_STRING) {
            ngx_str_null(to[i]);
            continue;
        }

        if (ngx_http_gate_lookup_copy(r->pool, e->str, e->len, to[i])
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    exp = ngx_atoi(s.data, s.len);

    if (exp == NGX_ERROR || record->tenant.len == 0) {
        /* a record we cannot read safely: let the truth decide */
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "gate: malformed credential record in redis");
        return NGX_DECLINED;
    }

    record->exp = (time_t) exp;

    return NGX_OK;
}


static ngx_int_t
ngx_http_gate_lookup_from_pg(ngx_http_request_t *r, PGresult *res,
    ngx_http_gate_record_t *record)
{
    ngx_int_t    exp;
    ngx_str_t   *to[5], s;
    ngx_uint_t   i;

    if (res == NULL) {
        return NGX_ERROR;
    }

    if (PQntuples(res) == 0) {
        return NGX_DECLINED;
    }

    if (PQnfields(res) != 5) {
        return NGX_ERROR;
    }

    to[0] = &record->tenant;
    to[1] = &record->subject;
    to[2] = &record->scope;
    to[3] = &s;
    to[4] = &record->id;

    for (i = 0; i < 5; i++) {
        if (PQgetisnull(res, 0, i)) {
            ngx_str_null(to[i]);
            continue;
        }

        if (ngx_http_gate_lookup_copy(r->pool, PQgetvalue(res, 0, i),
                                      PQgetlength(res, 0, i), to[i])
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    exp = ngx_atoi(s.data, s.len);
    if (exp == NGX_ERROR) {
        return NGX_ERROR;
    }

    record->exp = (time_t) exp;

    return NGX_OK;
}


static ngx_int_t
ngx_http_gate_lookup_copy(ngx_pool_t *pool, const char *src, size_t len,
    ngx_str_t *to)
{
    to->len = len;
    to->data = ngx_pnalloc(pool, len + 1);
    if (to->data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(to->data, src, len);
    to->data[len] = '\0';

    return NGX_OK;
}


void
ngx_http_gate_lookup_found(ngx_http_request_t *r, ngx_http_gate_ctx_t *ctx,
    ngx_uint_t from_pg)
{
    ngx_http_gate_main_conf_t  *gmcf;

    gmcf = ngx_http_get_module_main_conf(r, ngx_http_gate_module);

    ctx->state = NGX_HTTP_GATE_STATE_FOUND;

    ngx_http_gate_cache_put(gmcf->cache,
                            ngx_http_gate_lookup_kinds[ctx->kind].cache_kind,
                            ctx->hash, &ctx->record);

    if (from_pg && gmcf->redis) {
        ngx_http_gate_lookup_write_back(r, ctx);
    }

    if (ngx_http_gate_lookup_kinds[ctx->kind].touch && gmcf->pg) {
        ngx_http_gate_lookup_touch(r, ctx);
    }
}


static void
ngx_http_gate_lookup_write_back(ngx_http_request_t *r,
    ngx_http_gate_ctx_t *ctx)
{
    u_char       exp[NGX_TIME_T_LEN], until[NGX_TIME_T_LEN];
    size_t       argvlen[10];
    time_t       gone;
    ngx_str_t    key;
    const char  *argv[10];

    if (ngx_http_gate_lookup_key(r->pool, ctx, &key) != NGX_OK) {
        return;
    }

    gone = ctx->record.exp;

    if (ngx_http_gate_lookup_kinds[ctx->kind].short_ttl) {
        gone = ngx_min(gone, ngx_time() + NGX_HTTP_GATE_LOOKUP_SHORT_TTL);
    }

    argv[0] = "EVAL";
    argvlen[0] = 4;
    argv[1] = ngx_http_gate_lookup_write_back_lua;
    argvlen[1] = sizeof(ngx_http_gate_lookup_write_back_lua) - 1;
    argv[2] = "1";
    argvlen[2] = 1;
    argv[3] = (char *) key.data;
    argvlen[3] = key.len;
    argv[4] = (char *) ctx->record.tenant.data;
    argvlen[4] = ctx->record.tenant.len;
    argv[5] = ctx->record.subject.len ? (char *) ctx->record.subject.data : "";
    argvlen[5] = ctx->record.subject.len;
    argv[6] = ctx->record.scope.len ? (char *) ctx->record.scope.data : "";
    argvlen[6] = ctx->record.scope.len;
    argv[7] = (char *) exp;
    argvlen[7] = ngx_sprintf(exp, "%T", ctx->record.exp) - exp;
    argv[8] = (char *) ctx->record.id.data;
    argvlen[8] = ctx->record.id.len;
    argv[9] = (char *) until;
    argvlen[9] = ngx_sprintf(until, "%T", gone) - until;

    /* nobody waits for it: a failure only means the next miss asks again */
    (void) ngx_http_gate_redis_send(ngx_cycle->log, NULL, NULL, 10, argv,
                                    argvlen);
}


/*
 * last_used_at is kept roughly current: whichever node first sees a key
 * in a minute wins a Redis SET NX and writes PostgreSQL once.  Only cache
 * misses get here, so hot keys cost nothing extra per request.
 */

static void
ngx_http_gate_lookup_touch(ngx_http_request_t *r, ngx_http_gate_ctx_t *ctx)
{
    u_char       *key, *p;
    size_t        argvlen[6];
    ngx_str_t    *id;
    const char   *argv[6];

    id = ngx_alloc(sizeof(ngx_str_t) + ctx->record.id.len, ngx_cycle->log);
    if (id == NULL) {
        return;
    }

    id->len = ctx->record.id.len;
    id->data = (u_char *) id + sizeof(ngx_str_t);
    ngx_memcpy(id->data, ctx->record.id.data, id->len);

    key = ngx_pnalloc(r->pool, sizeof("gate:keyused:") - 1 + id->len);
    if (key == NULL) {
        ngx_free(id);
        return;
    }

    p = ngx_cpymem(key, "gate:keyused:", sizeof("gate:keyused:") - 1);
    p = ngx_cpymem(p, id->data, id->len);

    argv[0] = "SET";           argvlen[0] = 3;
    argv[1] = (char *) key;    argvlen[1] = p - key;
    argv[2] = "1";             argvlen[2] = 1;
    argv[3] = "NX";            argvlen[3] = 2;
    argv[4] = "EX";            argvlen[4] = 2;
    argv[5] = "60";            argvlen[5] = 2;

    if (ngx_http_gate_redis_send(ngx_cycle->log,
                                 ngx_http_gate_lookup_touch_reply, id,
                                 6, argv, argvlen)
        == NULL)
    {
        ngx_free(id);
    }
}


static void
ngx_http_gate_lookup_touch_reply(void *data, redisReply *reply)
{
    ngx_str_t  *id = data;

    if (reply && reply->type == REDIS_REPLY_STATUS) {
        (void) ngx_http_gate_pg_query(ngx_cycle->log,
                                      NGX_HTTP_GATE_SQL_KEY_TOUCH, 1, id,
                                      NULL, NULL);
    }

    ngx_free(id);
}


void
ngx_http_gate_lookup_resume(ngx_http_gate_ctx_t *ctx)
{
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = ctx->request;
    c = r->connection;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "gate: credential lookup done, state %ui", ctx->state);

    if (ctx->resume) {
        ctx->resume(r);

    } else {
        ngx_http_core_run_phases(r);
    }

    ngx_http_run_posted_requests(c);
}


/* Whatever the request still waits for is forgotten when it goes. */

ngx_int_t
ngx_http_gate_lookup_guard(ngx_http_request_t *r, ngx_http_gate_ctx_t *ctx)
{
    ngx_pool_cleanup_t  *cln;

    if (ctx->guarded) {
        return NGX_OK;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_ERROR;
    }

    cln->handler = ngx_http_gate_lookup_cleanup;
    cln->data = ctx;
    ctx->guarded = 1;

    return NGX_OK;
}


/* The Redis key of the looked-up thing: prefix + SHA-256 hex. */

static ngx_int_t
ngx_http_gate_lookup_key(ngx_pool_t *pool, ngx_http_gate_ctx_t *ctx,
    ngx_str_t *key)
{
    ngx_str_t  *prefix;

    prefix = &ngx_http_gate_lookup_kinds[ctx->kind].redis_prefix;

    key->len = prefix->len + NGX_HTTP_GATE_SHA256_HEX_LEN;
    key->data = ngx_pnalloc(pool, key->len);
    if (key->data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(ngx_cpymem(key->data, prefix->data, prefix->len),
               ctx->hex.data, NGX_HTTP_GATE_SHA256_HEX_LEN);

    return NGX_OK;
}


static void
ngx_http_gate_lookup_cleanup(void *data)
{
    ngx_http_gate_ctx_t  *ctx = data;

    if (ctx->cmd) {
        ngx_http_gate_redis_cancel(ctx->cmd);
        ctx->cmd = NULL;
    }

    if (ctx->query) {
        ngx_http_gate_pg_cancel(ctx->query);
        ctx->query = NULL;
    }
}


/*
 * A message on gate:invalidate: the SHA-256 hex of a credential, or
 * "tenant:{id}" for everything of a tenant, or "all".
 */

void
ngx_http_gate_lookup_invalidate(ngx_str_t *payload)
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
ngx_http_gate_lookup_resync(void)
{
    ngx_http_gate_main_conf_t  *gmcf;

    gmcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                               ngx_http_gate_module);
    if (gmcf && gmcf->cache) {
        ngx_http_gate_cache_flush(gmcf->cache);
    }
}
