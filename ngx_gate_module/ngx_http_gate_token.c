/*
 * Copyright (C) Gate authors
 */


/*
 * The access-token API: minting (gate_api tokens; for a subject with a
 * secret key, or in exchange for the caller's Kratos session), RFC 7662
 * introspection (gate_api introspect) and RFC 7009 revocation (gate_api
 * revoke), and a subject's tokens under /v1/gate/identities/{id}/tokens.
 *
 * PostgreSQL is the truth: introspection asks it, not a cache.  Revoking
 * marks PostgreSQL, leaves a tombstone in Redis and publishes the hash on
 * gate:invalidate, so every node refuses the token at once.
 */


#include <openssl/rand.h>
#include <jansson.h>
#include <zlib.h>

#include "ngx_http_gate_token.h"
#include "ngx_http_gate_cache.h"
#include "ngx_http_gate_credential.h"
#include "ngx_http_gate_json.h"
#include "ngx_http_gate_kratos.h"
#include "ngx_http_gate_lookup.h"
#include "ngx_http_gate_pg.h"
#include "ngx_http_gate_redis.h"
#include "ngx_http_gate_settings.h"


#define NGX_HTTP_GATE_TOKEN_BODY_MAX     16384
#define NGX_HTTP_GATE_TOKEN_SCOPES_MAX   32

#define NGX_HTTP_GATE_TOKENS_MINT        0
#define NGX_HTTP_GATE_TOKENS_INTROSPECT  1
#define NGX_HTTP_GATE_TOKENS_REVOKE      2
#define NGX_HTTP_GATE_TOKENS_LIST        3
#define NGX_HTTP_GATE_TOKENS_REVOKE_ALL  4


typedef struct ngx_http_gate_tokens_s  ngx_http_gate_tokens_t;


/* One revoked token's tombstone being written. */

typedef struct {
    ngx_http_gate_redis_cmd_t  *cmd;
    ngx_http_request_t         *request;
    ngx_http_gate_tokens_t     *tokens;
} ngx_http_gate_tokens_grave_t;


struct ngx_http_gate_tokens_s {
    ngx_uint_t                  op;
    ngx_str_t                   tenant;
    ngx_str_t                   subject;
    ngx_str_t                   scope;
    ngx_int_t                   expires_in;
    time_t                      session_exp;
    ngx_str_t                   token;         /* minted, or asked about */
    u_char                      hex[NGX_HTTP_GATE_SHA256_HEX_LEN];
    ngx_str_t                   client_id;
    ngx_str_t                   form;
    ngx_http_gate_pg_query_t   *query;
    ngx_array_t                *hashes;        /* revoked, hex */
    ngx_http_gate_tokens_grave_t  *graves;     /* tombstone commands */
    ngx_uint_t                  ngraves;
    ngx_uint_t                  pending;       /* tombstones unanswered */
    unsigned                    failed:1;
    unsigned                    by_session:1;
    unsigned                    rfc:1;         /* RFC 6749 error shape */
};


static ngx_http_gate_tokens_t *ngx_http_gate_tokens_create(
    ngx_http_request_t *r, ngx_uint_t op);
static void ngx_http_gate_tokens_mint_body(ngx_http_request_t *r);
static ngx_int_t ngx_http_gate_tokens_mint_args(ngx_http_request_t *r,
    ngx_http_gate_tokens_t *tk, ngx_str_t *text);
static void ngx_http_gate_tokens_settings(void *data, PGresult *res);
static ngx_int_t ngx_http_gate_tokens_check_scope(ngx_http_request_t *r,
    ngx_http_gate_tokens_t *tk, json_t *settings);
static ngx_int_t ngx_http_gate_tokens_session_scope(ngx_http_request_t *r,
    ngx_http_gate_tokens_t *tk, json_t *defaults);
static void ngx_http_gate_tokens_subject(void *data, PGresult *res);
static void ngx_http_gate_tokens_insert(ngx_http_request_t *r,
    ngx_http_gate_tokens_t *tk);
static void ngx_http_gate_tokens_inserted(void *data, PGresult *res);
static void ngx_http_gate_tokens_client_body(ngx_http_request_t *r);
static ngx_int_t ngx_http_gate_tokens_client(ngx_http_request_t *r,
    ngx_http_gate_tokens_t *tk, ngx_str_t *key);
static void ngx_http_gate_tokens_client_checked(ngx_http_request_t *r);
static void ngx_http_gate_tokens_client_slug(void *data, PGresult *res);
static void ngx_http_gate_tokens_act(ngx_http_request_t *r,
    ngx_http_gate_tokens_t *tk);
static void ngx_http_gate_tokens_inspected(void *data, PGresult *res);
static void ngx_http_gate_tokens_revoked(void *data, PGresult *res);
static void ngx_http_gate_tokens_buried(void *data, redisReply *reply);
static void ngx_http_gate_tokens_bury_step(ngx_http_request_t *r,
    ngx_http_gate_tokens_t *tk);
static void ngx_http_gate_tokens_graves_cleanup(void *data);
static void ngx_http_gate_tokens_listed(void *data, PGresult *res);
static void ngx_http_gate_tokens_owner(void *data, PGresult *res);
static ngx_http_gate_tokens_t *ngx_http_gate_tokens_answered(
    ngx_http_request_t *r);
static ngx_int_t ngx_http_gate_tokens_pg(ngx_http_request_t *r,
    ngx_uint_t statement, ngx_uint_t n, ngx_str_t *params,
    ngx_http_gate_pg_handler_pt handler);
static void ngx_http_gate_tokens_send(ngx_http_request_t *r,
    ngx_uint_t status, json_t *value);
static void ngx_http_gate_tokens_error(ngx_http_request_t *r,
    ngx_http_gate_tokens_t *tk, ngx_uint_t status, const char *code,
    const char *message);


/* Writes a tombstone over a revoked credential's record (see gatectl). */

static const char  ngx_http_gate_tokens_tombstone_lua[] =
    "redis.call('DEL', KEYS[1]) "
    "redis.call('HSET', KEYS[1], 'revoked', '1') "
    "redis.call('EXPIRE', KEYS[1], ARGV[1]) "
    "return 1";


static ngx_http_gate_tokens_t *
ngx_http_gate_tokens_create(ngx_http_request_t *r, ngx_uint_t op)
{
    ngx_http_gate_ctx_t     *ctx;
    ngx_http_gate_tokens_t  *tk;

    ctx = ngx_http_get_module_ctx(r, ngx_http_gate_module);
    if (ctx == NULL) {
        return NULL;
    }

    tk = ngx_pcalloc(r->pool, sizeof(ngx_http_gate_tokens_t));
    if (tk == NULL) {
        return NULL;
    }

    tk->op = op;
    tk->tenant = ctx->tenant_id;
    ctx->api = tk;

    return tk;
}


/* POST /v1/gate/tokens */

ngx_int_t
ngx_http_gate_tokens_handler(ngx_http_request_t *r)
{
    ngx_int_t                rc;
    ngx_http_gate_ctx_t     *ctx;
    ngx_http_gate_tokens_t  *tk;

    ctx = ngx_http_get_module_ctx(r, ngx_http_gate_module);

    if (ctx == NULL || ctx->tenant_id.len == 0) {
        return NGX_HTTP_FORBIDDEN;
    }

    if (r->method != NGX_HTTP_POST) {
        return ngx_http_gate_json_not_allowed(r, "POST",
                                              "Tokens are made with POST.");
    }

    tk = ngx_http_gate_tokens_create(r, NGX_HTTP_GATE_TOKENS_MINT);
    if (tk == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    tk->by_session = (ctx->kind == NGX_HTTP_GATE_LOOKUP_SESSION);

    if (tk->by_session) {
        tk->subject = ctx->record.subject;
        tk->session_exp = ctx->record.exp;
    }

    if (r->headers_in.content_length_n > 0
        && (r->headers_in.content_type == NULL
            || ngx_strncasecmp(r->headers_in.content_type->value.data,
                               (u_char *) "application/json",
                               sizeof("application/json") - 1) != 0))
    {
        return ngx_http_gate_json_error(r, NGX_HTTP_UNSUPPORTED_MEDIA_TYPE,
                                        "unsupported_media_type",
                                        "Send the body as application/json.");
    }

    if (r->headers_in.content_length_n > NGX_HTTP_GATE_TOKEN_BODY_MAX) {
        return ngx_http_gate_json_error(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                        "body_too_large",
                                        "The body is larger than 16 KiB.");
    }

    rc = ngx_http_read_client_request_body(r,
                                           ngx_http_gate_tokens_mint_body);
    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static void
ngx_http_gate_tokens_mint_body(ngx_http_request_t *r)
{
    ngx_int_t                rc;
    ngx_str_t                text;
    ngx_http_gate_ctx_t     *ctx;
    ngx_http_gate_tokens_t  *tk;

    ctx = ngx_http_get_module_ctx(r, ngx_http_gate_module);
    tk = ctx->api;

    rc = ngx_http_gate_json_body(r, NGX_HTTP_GATE_TOKEN_BODY_MAX, &text);

    if (rc == NGX_DECLINED) {
        ngx_http_gate_tokens_error(r, tk, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                   "body_too_large",
                                   "The body is larger than 16 KiB.");
        return;
    }

    if (rc != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    if (ngx_http_gate_tokens_mint_args(r, tk, &text) != NGX_OK) {
        return;
    }

    /* the tenant's policy first: allowed scopes, lifetimes */

    if (ngx_http_gate_tokens_pg(r, NGX_HTTP_GATE_SQL_TENANT_SETTINGS, 1,
                                &tk->tenant, ngx_http_gate_tokens_settings)
        != NGX_OK)
    {
        ngx_http_gate_tokens_error(r, tk, NGX_HTTP_SERVICE_UNAVAILABLE,
                                   "unavailable",
                                   "The token store is unavailable.");
    }
}


/* {"subject": ID, "scope": "a b", "expires_in": N}; nothing else */

static ngx_int_t
ngx_http_gate_tokens_mint_args(ngx_http_request_t *r,
    ngx_http_gate_tokens_t *tk, ngx_str_t *text)
{
    json_t      *root, *v;
    const char  *key;
    u_char      *message;

    tk->expires_in = -1;

    if (text->len == 0) {
        if (tk->by_session) {
            return NGX_OK;
        }

        ngx_http_gate_tokens_error(r, tk, NGX_HTTP_BAD_REQUEST, "invalid_json",
                                   "Send {\"subject\": IDENTITY_ID, ...}.");
        return NGX_ERROR;
    }

    root = json_loadb((char *) text->data, text->len,
                      JSON_REJECT_DUPLICATES, NULL);

    if (!json_is_object(root)) {
        json_decref(root);
        ngx_http_gate_tokens_error(r, tk, NGX_HTTP_BAD_REQUEST, "invalid_json",
                                   "The body must be a JSON object.");
        return NGX_ERROR;
    }

    json_object_foreach(root, key, v) {

        if (ngx_strcmp(key, "scope") == 0 && json_is_string(v)) {
            tk->scope.len = json_string_length(v);
            tk->scope.data = ngx_pnalloc(r->pool, tk->scope.len + 1);
            if (tk->scope.data == NULL) {
                goto failed;
            }

            ngx_memcpy(tk->scope.data, json_string_value(v), tk->scope.len);
            continue;
        }

        if (ngx_strcmp(key, "expires_in") == 0 && json_is_integer(v)) {
            tk->expires_in = json_integer_value(v) > NGX_MAX_INT32_VALUE
                             ? 0 : (ngx_int_t) json_integer_value(v);
            if (tk->expires_in < 1) {
                tk->expires_in = 0;
            }

            continue;
        }

        if (ngx_strcmp(key, "subject") == 0 && !tk->by_session) {
            if (!json_is_string(v)
                || !ngx_http_gate_kratos_is_uuid(
                        (u_char *) json_string_value(v), json_string_length(v)))
            {
                json_decref(root);
                ngx_http_gate_tokens_error(r, tk, NGX_HTTP_NOT_FOUND,
                                           "not_found", "No such identity.");
                return NGX_ERROR;
            }

            tk->subject.len = json_string_length(v);
            tk->subject.data = ngx_pnalloc(r->pool, tk->subject.len);
            if (tk->subject.data == NULL) {
                goto failed;
            }

            ngx_memcpy(tk->subject.data, json_string_value(v),
                       tk->subject.len);
            continue;
        }

        message = ngx_pnalloc(r->pool, 160);
        if (message == NULL) {
            goto failed;
        }

        *ngx_snprintf(message, 159, "Unknown or mistyped field \"%s\".",
                      key) = '\0';

        json_decref(root);
        ngx_http_gate_tokens_error(r, tk, NGX_HTTP_UNPROCESSABLE_ENTITY,
                                   "unknown_field", (char *) message);
        return NGX_ERROR;
    }

    json_decref(root);

    if (!tk->by_session && tk->subject.len == 0) {
        ngx_http_gate_tokens_error(r, tk, NGX_HTTP_UNPROCESSABLE_ENTITY,
                                   "subject_required",
                                   "subject (an identity id) is required.");
        return NGX_ERROR;
    }

    if (tk->expires_in == 0) {
        ngx_http_gate_tokens_error(r, tk, NGX_HTTP_UNPROCESSABLE_ENTITY,
                                   "invalid_expires_in",
                                   "expires_in must be a positive number of "
                                   "seconds.");
        return NGX_ERROR;
    }

    return NGX_OK;

failed:

    json_decref(root);
    ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);

    return NGX_ERROR;
}


static void
ngx_http_gate_tokens_settings(void *data, PGresult *res)
{
    json_t                  *settings, *v;
    ngx_int_t                max, ttl;
    ngx_connection_t        *c;
    ngx_http_request_t      *r = data;
    ngx_http_gate_tokens_t  *tk;

    c = r->connection;
    tk = ngx_http_gate_tokens_answered(r);

    if (res == NULL || PQntuples(res) != 1) {
        ngx_http_gate_tokens_error(r, tk, NGX_HTTP_SERVICE_UNAVAILABLE,
                                   "unavailable",
                                   "The token store is unavailable.");
        goto done;
    }

    settings = json_loads(PQgetvalue(res, 0, 1), 0, NULL);

    v = json_object_get(settings, "token_max_ttl");
    max = json_is_integer(v) ? (ngx_int_t) json_integer_value(v)
                             : NGX_HTTP_GATE_TOKEN_MAX_TTL;
    v = json_object_get(settings, "token_ttl");
    ttl = json_is_integer(v) ? (ngx_int_t) json_integer_value(v)
                             : NGX_HTTP_GATE_TOKEN_TTL;

    /* what was asked for must fit the tenant's policy, session or not */

    if (tk->expires_in < 0) {
        tk->expires_in = ngx_min(ttl, max);
    }

    if (tk->expires_in > max) {
        json_decref(settings);
        ngx_http_gate_tokens_error(r, tk, NGX_HTTP_UNPROCESSABLE_ENTITY,
                                   "invalid_expires_in",
                                   "expires_in is longer than the tenant "
                                   "allows.");
        goto done;
    }

    if (tk->by_session) {
        /* the tenant's default scopes, and never past the session */

        v = json_object_get(settings, "default_scopes");

        if (tk->scope.len
            && ngx_http_gate_tokens_session_scope(r, tk, v) != NGX_OK)
        {
            json_decref(settings);
            goto done;
        }

        if (tk->scope.len == 0 && json_is_string(v)) {
            tk->scope.len = json_string_length(v);
            tk->scope.data = ngx_pnalloc(r->pool, tk->scope.len + 1);
            if (tk->scope.data == NULL) {
                json_decref(settings);
                ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
                goto done;
            }

            ngx_memcpy(tk->scope.data, json_string_value(v), tk->scope.len);
        }

        tk->expires_in = ngx_min(tk->expires_in,
                                 (ngx_int_t) (tk->session_exp - ngx_time()));
    }

    if (tk->expires_in < 1) {
        json_decref(settings);
        ngx_http_gate_tokens_error(r, tk, NGX_HTTP_UNAUTHORIZED,
                                   "invalid_session", "The session has ended.");
        goto done;
    }

    if (ngx_http_gate_tokens_check_scope(r, tk, settings) != NGX_OK) {
        json_decref(settings);
        goto done;
    }

    if (ngx_http_gate_scope_normalize(r->pool, &tk->scope) != NGX_OK) {
        json_decref(settings);
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        goto done;
    }

    json_decref(settings);

    /*
     * A subject of the tenant, by Gate's identity index: for a session
     * too, whose cached copy may outlive an identity deleted meanwhile.
     */

    if (ngx_http_gate_tokens_pg(r, NGX_HTTP_GATE_SQL_IDN_TENANT, 1,
                                &tk->subject, ngx_http_gate_tokens_subject)
        != NGX_OK)
    {
        ngx_http_gate_tokens_error(r, tk, NGX_HTTP_SERVICE_UNAVAILABLE,
                                   "unavailable",
                                   "The token store is unavailable.");
    }

done:

    ngx_http_run_posted_requests(c);
}


/*
 * Scopes: RFC 6749 scope-tokens, space-separated, and, when the tenant
 * lists "allowed_scopes", only those.
 */

static ngx_int_t
ngx_http_gate_tokens_check_scope(ngx_http_request_t *r,
    ngx_http_gate_tokens_t *tk, json_t *settings)
{
    u_char      *p, *last, *message;
    size_t       i;
    json_t      *allowed, *a;
    ngx_str_t    one;
    ngx_uint_t   n, ok;

    allowed = json_object_get(settings, "allowed_scopes");
    p = tk->scope.data;
    last = p + tk->scope.len;
    n = 0;

    while (ngx_http_gate_scope_next(&p, last, &one) == NGX_OK) {

        for (i = 0; i < one.len; i++) {
            if (one.data[i] < 0x21 || one.data[i] == 0x22
                || one.data[i] == 0x5c || one.data[i] > 0x7e)
            {
                ngx_http_gate_tokens_error(r, tk,
                                           NGX_HTTP_UNPROCESSABLE_ENTITY,
                                           "invalid_scope",
                                           "A scope has a character RFC 6749 "
                                           "does not allow.");
                return NGX_ERROR;
            }
        }

        if (++n > NGX_HTTP_GATE_TOKEN_SCOPES_MAX || one.len > 128) {
            ngx_http_gate_tokens_error(r, tk, NGX_HTTP_UNPROCESSABLE_ENTITY,
                                       "invalid_scope",
                                       "Too many or too long scopes.");
            return NGX_ERROR;
        }

        if (!json_is_array(allowed)) {
            continue;
        }

        ok = 0;

        json_array_foreach(allowed, i, a) {
            if (json_is_string(a)
                && json_string_length(a) == one.len
                && ngx_strncmp(json_string_value(a), one.data, one.len) == 0)
            {
                ok = 1;
                break;
            }
        }

        if (!ok) {
            message = ngx_pnalloc(r->pool, 200);
            if (message == NULL) {
                ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
                return NGX_ERROR;
            }

            *ngx_snprintf(message, 199,
                          "Scope \"%*s\" is not allowed for this tenant.",
                          ngx_min(one.len, 128), one.data) = '\0';

            ngx_http_gate_tokens_error(r, tk, NGX_HTTP_UNPROCESSABLE_ENTITY,
                                       "scope_not_allowed", (char *) message);
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/*
 * RFC 6749 3.3: scope-tokens separated by one space; the same scope twice
 * is the scope once.  Stored and answered that way.
 */

ngx_int_t
ngx_http_gate_scope_normalize(ngx_pool_t *pool, ngx_str_t *scope)
{
    u_char      *p, *last, *out, *o, *q;
    ngx_str_t    one, seen;
    ngx_uint_t   dup;

    out = ngx_pnalloc(pool, scope->len + 1);
    if (out == NULL) {
        return NGX_ERROR;
    }

    o = out;
    p = scope->data;
    last = p + scope->len;

    while (ngx_http_gate_scope_next(&p, last, &one) == NGX_OK) {

        /* already written? */

        dup = 0;
        q = out;

        while (!dup && ngx_http_gate_scope_next(&q, o, &seen) == NGX_OK) {
            dup = (seen.len == one.len
                   && ngx_strncmp(seen.data, one.data, one.len) == 0);
        }

        if (dup) {
            continue;
        }

        if (o != out) {
            *o++ = ' ';
        }

        o = ngx_cpymem(o, one.data, one.len);
    }

    scope->data = out;
    scope->len = o - out;

    return NGX_OK;
}


/* The next of space-separated scopes; NGX_DONE when there is none. */

ngx_int_t
ngx_http_gate_scope_next(u_char **pos, u_char *last, ngx_str_t *scope)
{
    u_char  *p;

    p = *pos;

    while (p < last && *p == ' ') {
        p++;
    }

    scope->data = p;

    while (p < last && *p != ' ') {
        p++;
    }

    scope->len = p - scope->data;
    *pos = p;

    return scope->len ? NGX_OK : NGX_DONE;
}


/*
 * An end user may narrow the tenant's default scopes, never widen them:
 * the session proves who the user is, not what the tenant grants.
 */

static ngx_int_t
ngx_http_gate_tokens_session_scope(ngx_http_request_t *r,
    ngx_http_gate_tokens_t *tk, json_t *defaults)
{
    u_char     *p, *last;
    json_t     *limit, *allowed;
    ngx_int_t   rc;
    ngx_str_t   one;

    limit = json_pack("{s:[]}", "allowed_scopes");
    if (limit == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return NGX_ERROR;
    }

    allowed = json_object_get(limit, "allowed_scopes");

    p = (u_char *) (json_is_string(defaults) ? json_string_value(defaults)
                                             : "");
    last = p + ngx_strlen(p);

    while (ngx_http_gate_scope_next(&p, last, &one) == NGX_OK) {
        json_array_append_new(allowed,
                              json_stringn((char *) one.data, one.len));
    }

    rc = ngx_http_gate_tokens_check_scope(r, tk, limit);
    json_decref(limit);

    return rc;
}


static void
ngx_http_gate_tokens_subject(void *data, PGresult *res)
{
    ngx_connection_t        *c;
    ngx_http_request_t      *r = data;
    ngx_http_gate_tokens_t  *tk;

    c = r->connection;
    tk = ngx_http_gate_tokens_answered(r);

    if (res == NULL) {
        ngx_http_gate_tokens_error(r, tk, NGX_HTTP_SERVICE_UNAVAILABLE,
                                   "unavailable",
                                   "The token store is unavailable.");

    } else if (PQntuples(res) != 1
               || (size_t) PQgetlength(res, 0, 0) != tk->tenant.len
               || ngx_strncmp(PQgetvalue(res, 0, 0), tk->tenant.data,
                              tk->tenant.len) != 0)
    {
        ngx_http_gate_tokens_error(r, tk, NGX_HTTP_NOT_FOUND, "not_found",
                                   "No such identity.");

    } else {
        ngx_http_gate_tokens_insert(r, tk);
    }

    ngx_http_run_posted_requests(c);
}


/* gat_live_ + 56 random hex + the CRC-32 of all before (DESIGN.md, 2) */

static void
ngx_http_gate_tokens_insert(ngx_http_request_t *r, ngx_http_gate_tokens_t *tk)
{
    u_char       random[28], *p, hash[32], ttl[NGX_INT_T_LEN];
    ngx_str_t    params[5];
    uint32_t     crc;

    if (RAND_bytes(random, sizeof(random)) != 1) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "gate: RAND_bytes() failed");
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    tk->token.len = sizeof("gat_live_") - 1 + 64;
    tk->token.data = ngx_pnalloc(r->pool, tk->token.len);
    if (tk->token.data == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    p = ngx_cpymem(tk->token.data, "gat_live_", sizeof("gat_live_") - 1);
    p = ngx_hex_dump(p, random, sizeof(random));
    crc = (uint32_t) crc32(0L, tk->token.data, p - tk->token.data);
    ngx_sprintf(p, "%08xD", crc);

    ngx_memzero(random, sizeof(random));

    ngx_http_gate_credential_hash(&tk->token, hash);
    ngx_http_gate_credential_hex(hash, tk->hex);

    params[0] = tk->tenant;
    params[1] = tk->subject;
    params[2].data = tk->hex;
    params[2].len = NGX_HTTP_GATE_SHA256_HEX_LEN;
    params[3] = tk->scope;
    params[4].data = ttl;
    params[4].len = ngx_sprintf(ttl, "%i", tk->expires_in) - ttl;

    if (ngx_http_gate_tokens_pg(r, NGX_HTTP_GATE_SQL_TOKEN_INSERT, 5, params,
                                ngx_http_gate_tokens_inserted)
        != NGX_OK)
    {
        ngx_http_gate_tokens_error(r, tk, NGX_HTTP_SERVICE_UNAVAILABLE,
                                   "unavailable",
                                   "The token store is unavailable.");
    }
}


static void
ngx_http_gate_tokens_inserted(void *data, PGresult *res)
{
    u_char                  *key;
    size_t                   argvlen[12];
    json_t                  *answer;
    const char              *argv[12];
    ngx_connection_t        *c;
    ngx_table_elt_t         *h;
    ngx_http_request_t      *r = data;
    ngx_http_gate_tokens_t  *tk;

    c = r->connection;
    tk = ngx_http_gate_tokens_answered(r);

    if (res == NULL || PQntuples(res) != 1) {
        ngx_http_gate_tokens_error(r, tk, NGX_HTTP_SERVICE_UNAVAILABLE,
                                   "unavailable",
                                   "The token store is unavailable.");
        goto done;
    }

    /* Redis gets its copy at once; a miss would find it in PostgreSQL */

    key = ngx_pnalloc(r->pool, sizeof("gate:tok:") - 1
                               + NGX_HTTP_GATE_SHA256_HEX_LEN);
    if (key) {
        ngx_memcpy(ngx_cpymem(key, "gate:tok:", sizeof("gate:tok:") - 1),
                   tk->hex, NGX_HTTP_GATE_SHA256_HEX_LEN);

        argv[0] = "HSET";       argvlen[0] = 4;
        argv[1] = (char *) key;
        argvlen[1] = sizeof("gate:tok:") - 1 + NGX_HTTP_GATE_SHA256_HEX_LEN;
        argv[2] = "tenant";     argvlen[2] = 6;
        argv[3] = (char *) tk->tenant.data;  argvlen[3] = tk->tenant.len;
        argv[4] = "sub";        argvlen[4] = 3;
        argv[5] = (char *) tk->subject.data; argvlen[5] = tk->subject.len;
        argv[6] = "scope";      argvlen[6] = 5;
        argv[7] = tk->scope.len ? (char *) tk->scope.data : "";
        argvlen[7] = tk->scope.len;
        argv[8] = "exp";        argvlen[8] = 3;
        argv[9] = PQgetvalue(res, 0, 2);
        argvlen[9] = PQgetlength(res, 0, 2);
        argv[10] = "id";        argvlen[10] = 2;
        argv[11] = PQgetvalue(res, 0, 0);
        argvlen[11] = PQgetlength(res, 0, 0);

        (void) ngx_http_gate_redis_send(c->log, NULL, NULL, 12, argv,
                                        argvlen);

        argv[0] = "EXPIREAT";   argvlen[0] = 8;
        argv[2] = PQgetvalue(res, 0, 2);
        argvlen[2] = PQgetlength(res, 0, 2);

        (void) ngx_http_gate_redis_send(c->log, NULL, NULL, 3, argv,
                                        argvlen);
    }

    answer = json_pack("{s:s#,s:s,s:I,s:s#,s:s}",
                       "access_token", (char *) tk->token.data,
                       (int) tk->token.len,
                       "token_type", "Bearer",
                       "expires_in", (json_int_t) tk->expires_in,
                       "scope", tk->scope.len ? (char *) tk->scope.data : "",
                       (int) tk->scope.len,
                       "token_id", PQgetvalue(res, 0, 0));

    /* RFC 6749, 5.1: a response carrying a token is never cached */

    h = ngx_list_push(&r->headers_out.headers);
    if (h) {
        h->hash = 1;
        ngx_str_set(&h->key, "Cache-Control");
        ngx_str_set(&h->value, "no-store");
    }

    ngx_http_gate_tokens_send(r, NGX_HTTP_CREATED, answer);

done:

    ngx_http_run_posted_requests(c);
}


/*
 * gate_api introspect | revoke: form bodies, and the client is the
 * tenant: a secret key as a bearer token, or OAuth client credentials
 * (RFC 6749, 2.3.1: HTTP Basic or form fields, client_id being the
 * tenant's slug or id and client_secret a secret key).
 */

ngx_int_t
ngx_http_gate_tokens_client_handler(ngx_http_request_t *r)
{
    ngx_int_t                  rc;
    ngx_http_gate_tokens_t    *tk;
    ngx_http_gate_loc_conf_t  *glcf;

    glcf = ngx_http_get_module_loc_conf(r, ngx_http_gate_module);

    tk = ngx_http_gate_tokens_create(r,
                                     glcf->api == NGX_HTTP_GATE_API_INTROSPECT
                                     ? NGX_HTTP_GATE_TOKENS_INTROSPECT
                                     : NGX_HTTP_GATE_TOKENS_REVOKE);
    if (tk == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    tk->rfc = 1;

    if (r->method != NGX_HTTP_POST) {
        if (ngx_http_gate_json_allow(r, "POST") != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        r->main->count++;
        ngx_http_gate_tokens_error(r, tk, NGX_HTTP_NOT_ALLOWED,
                                   "invalid_request", "Use POST.");
        return NGX_DONE;
    }

    if (r->headers_in.content_type == NULL
        || ngx_strncasecmp(r->headers_in.content_type->value.data,
                           (u_char *) "application/x-www-form-urlencoded",
                           sizeof("application/x-www-form-urlencoded") - 1)
           != 0)
    {
        r->main->count++;
        ngx_http_gate_tokens_error(r, tk, NGX_HTTP_UNSUPPORTED_MEDIA_TYPE,
                                   "invalid_request",
                                   "Send application/x-www-form-urlencoded.");
        return NGX_DONE;
    }

    rc = ngx_http_read_client_request_body(r,
                                           ngx_http_gate_tokens_client_body);
    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static void
ngx_http_gate_tokens_client_body(ngx_http_request_t *r)
{
    ngx_int_t                rc;
    ngx_str_t                key;
    ngx_http_gate_ctx_t     *ctx;
    ngx_http_gate_tokens_t  *tk;

    ctx = ngx_http_get_module_ctx(r, ngx_http_gate_module);
    tk = ctx->api;

    if (ngx_http_gate_json_body(r, NGX_HTTP_GATE_TOKEN_BODY_MAX, &tk->form)
        != NGX_OK)
    {
        ngx_http_gate_tokens_error(r, tk, NGX_HTTP_BAD_REQUEST,
                                   "invalid_request", "Unreadable body.");
        return;
    }

    if (ngx_http_gate_tokens_client(r, tk, &key) != NGX_OK
        || ngx_http_gate_credential_check(&key, "gate_live_sk_") != NGX_OK)
    {
        ngx_http_gate_tokens_error(r, tk, NGX_HTTP_UNAUTHORIZED,
                                   "invalid_client",
                                   "Client authentication failed.");
        return;
    }

    ngx_http_gate_credential_hash(&key, ctx->hash);

    ctx->resume = ngx_http_gate_tokens_client_checked;

    rc = ngx_http_gate_lookup(r, ctx, NGX_HTTP_GATE_LOOKUP_KEY);

    if (rc == NGX_ERROR) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    if (rc == NGX_OK) {
        ngx_http_gate_tokens_client_checked(r);
    }
}


/* The secret key of the client, from wherever RFC 6749 allows it. */

static ngx_int_t
ngx_http_gate_tokens_client(ngx_http_request_t *r, ngx_http_gate_tokens_t *tk,
    ngx_str_t *key)
{
    u_char     *colon;
    ngx_str_t   auth, decoded;

    if (ngx_http_gate_form_value(&tk->form, "client_secret", r->pool, key)
        == NGX_OK)
    {
        if (ngx_http_gate_form_value(&tk->form, "client_id", r->pool,
                                      &tk->client_id)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        return r->headers_in.authorization ? NGX_ERROR : NGX_OK;
    }

    if (r->headers_in.authorization == NULL) {
        return NGX_ERROR;
    }

    auth = r->headers_in.authorization->value;

    if (auth.len > 7 && ngx_strncasecmp(auth.data, (u_char *) "Bearer ", 7)
                        == 0)
    {
        key->data = auth.data + 7;
        key->len = auth.len - 7;
        return NGX_OK;
    }

    if (auth.len <= 6 || ngx_strncasecmp(auth.data, (u_char *) "Basic ", 6)
                         != 0)
    {
        return NGX_ERROR;
    }

    auth.data += 6;
    auth.len -= 6;

    decoded.len = ngx_base64_decoded_length(auth.len);
    decoded.data = ngx_pnalloc(r->pool, decoded.len);
    if (decoded.data == NULL
        || ngx_decode_base64(&decoded, &auth) != NGX_OK)
    {
        return NGX_ERROR;
    }

    colon = ngx_strlchr(decoded.data, decoded.data + decoded.len, ':');
    if (colon == NULL) {
        return NGX_ERROR;
    }

    /* 2.3.1: both halves are form-urlencoded; ours never need decoding */

    tk->client_id.data = decoded.data;
    tk->client_id.len = colon - decoded.data;
    key->data = colon + 1;
    key->len = decoded.data + decoded.len - colon - 1;

    return tk->client_id.len ? NGX_OK : NGX_ERROR;
}


static void
ngx_http_gate_tokens_client_checked(ngx_http_request_t *r)
{
    ngx_http_gate_ctx_t     *ctx;
    ngx_http_gate_tokens_t  *tk;

    ctx = ngx_http_get_module_ctx(r, ngx_http_gate_module);
    tk = ctx->api;
    ctx->resume = NULL;

    if (ctx->state == NGX_HTTP_GATE_STATE_ERROR) {
        ngx_http_gate_tokens_error(r, tk, NGX_HTTP_SERVICE_UNAVAILABLE,
                                   "temporarily_unavailable",
                                   "The credential store is unavailable.");
        return;
    }

    if (ctx->state != NGX_HTTP_GATE_STATE_FOUND
        || ctx->record.exp <= ngx_time())
    {
        ngx_http_gate_tokens_error(r, tk, NGX_HTTP_UNAUTHORIZED,
                                   "invalid_client",
                                   "Client authentication failed.");
        return;
    }

    tk->tenant = ctx->record.tenant;

    if (tk->client_id.len == 0
        || (tk->client_id.len == tk->tenant.len
            && ngx_strncasecmp(tk->client_id.data, tk->tenant.data,
                               tk->tenant.len) == 0))
    {
        ngx_http_gate_tokens_act(r, tk);
        return;
    }

    /* a client_id that is a slug: it must be the key's tenant's (in any
     * case, as the tenant header is read) */

    if (ngx_http_gate_tokens_pg(r, NGX_HTTP_GATE_SQL_TENANT_SETTINGS, 1,
                                &tk->tenant, ngx_http_gate_tokens_client_slug)
        != NGX_OK)
    {
        ngx_http_gate_tokens_error(r, tk, NGX_HTTP_SERVICE_UNAVAILABLE,
                                   "temporarily_unavailable",
                                   "The token store is unavailable.");
    }
}


static void
ngx_http_gate_tokens_client_slug(void *data, PGresult *res)
{
    ngx_connection_t        *c;
    ngx_http_request_t      *r = data;
    ngx_http_gate_tokens_t  *tk;

    c = r->connection;
    tk = ngx_http_gate_tokens_answered(r);

    if (res == NULL) {
        ngx_http_gate_tokens_error(r, tk, NGX_HTTP_SERVICE_UNAVAILABLE,
                                   "temporarily_unavailable",
                                   "The token store is unavailable.");

    } else if (PQntuples(res) == 1
               && (size_t) PQgetlength(res, 0, 0) == tk->client_id.len
               && ngx_strncasecmp((u_char *) PQgetvalue(res, 0, 0),
                                  tk->client_id.data, tk->client_id.len) == 0)
    {
        ngx_http_gate_tokens_act(r, tk);

    } else {
        ngx_http_gate_tokens_error(r, tk, NGX_HTTP_UNAUTHORIZED,
                                   "invalid_client",
                                   "Client authentication failed.");
    }

    ngx_http_run_posted_requests(c);
}


static void
ngx_http_gate_tokens_act(ngx_http_request_t *r, ngx_http_gate_tokens_t *tk)
{
    u_char     hash[32];
    ngx_str_t  params[2];

    /* RFC 6749 3.1: a parameter is sent once, or the request is invalid */

    if (ngx_http_gate_form_value(&tk->form, "token", r->pool, &tk->token)
        != NGX_OK || tk->token.len == 0)
    {
        ngx_http_gate_tokens_error(r, tk, NGX_HTTP_BAD_REQUEST,
                                   "invalid_request",
                                   "token is required, once.");
        return;
    }

    if (ngx_http_gate_credential_check(&tk->token, "gat_live_") != NGX_OK) {
        /* 7662: inactive; 7009: an unknown token is no error either */

        if (tk->op == NGX_HTTP_GATE_TOKENS_INTROSPECT) {
            ngx_http_gate_tokens_send(r, NGX_HTTP_OK,
                                      json_pack("{s:b}", "active", 0));
        } else {
            ngx_http_gate_tokens_send(r, NGX_HTTP_OK, NULL);
        }

        return;
    }

    ngx_http_gate_credential_hash(&tk->token, hash);
    ngx_http_gate_credential_hex(hash, tk->hex);

    params[0].data = tk->hex;
    params[0].len = NGX_HTTP_GATE_SHA256_HEX_LEN;
    params[1] = tk->tenant;

    if (ngx_http_gate_tokens_pg(r,
                                tk->op == NGX_HTTP_GATE_TOKENS_INTROSPECT
                                ? NGX_HTTP_GATE_SQL_TOKEN_INSPECT
                                : NGX_HTTP_GATE_SQL_TOKEN_REVOKE,
                                2, params,
                                tk->op == NGX_HTTP_GATE_TOKENS_INTROSPECT
                                ? ngx_http_gate_tokens_inspected
                                : ngx_http_gate_tokens_revoked)
        != NGX_OK)
    {
        ngx_http_gate_tokens_error(r, tk, NGX_HTTP_SERVICE_UNAVAILABLE,
                                   "temporarily_unavailable",
                                   "The token store is unavailable.");
    }
}


static void
ngx_http_gate_tokens_inspected(void *data, PGresult *res)
{
    json_t                  *answer;
    ngx_connection_t        *c;
    ngx_http_request_t      *r = data;
    ngx_http_gate_tokens_t  *tk;

    c = r->connection;
    tk = ngx_http_gate_tokens_answered(r);

    if (res == NULL) {
        ngx_http_gate_tokens_error(r, tk, NGX_HTTP_SERVICE_UNAVAILABLE,
                                   "temporarily_unavailable",
                                   "The token store is unavailable.");
        goto done;
    }

    /* anything but this tenant's live token is exactly {"active":false} */

    if (PQntuples(res) != 1) {
        ngx_http_gate_tokens_send(r, NGX_HTTP_OK,
                                  json_pack("{s:b}", "active", 0));
        goto done;
    }

    answer = json_pack("{s:b,s:s,s:s,s:I,s:I,s:s,s:s#,s:s}",
                       "active", 1,
                       "scope", PQgetvalue(res, 0, 1),
                       "sub", PQgetvalue(res, 0, 0),
                       "exp", (json_int_t) ngx_atotm((u_char *)
                                  PQgetvalue(res, 0, 2),
                                  PQgetlength(res, 0, 2)),
                       "iat", (json_int_t) ngx_atotm((u_char *)
                                  PQgetvalue(res, 0, 3),
                                  PQgetlength(res, 0, 3)),
                       "token_type", "Bearer",
                       "tenant_id", (char *) tk->tenant.data,
                       (int) tk->tenant.len,
                       "jti", PQgetvalue(res, 0, 4));

    ngx_http_gate_tokens_send(r, NGX_HTTP_OK, answer);

done:

    ngx_http_run_posted_requests(c);
}


/*
 * Each revoked hash gets a tombstone in Redis before anyone is told it is
 * revoked: a record left behind would be trusted by every node until the
 * token's end.  If Redis cannot take them the answer is 503; PostgreSQL
 * still says revoked, and a retry writes the tombstones (the statements
 * return already revoked tokens too).
 */

static void
ngx_http_gate_tokens_revoked(void *data, PGresult *res)
{
    u_char                        *key;
    size_t                         argvlen[5];
    ngx_int_t                      i;
    const char                    *argv[5];
    ngx_connection_t              *c;
    ngx_pool_cleanup_t            *cln;
    ngx_http_request_t            *r = data;
    ngx_http_gate_tokens_t        *tk;
    ngx_http_gate_tokens_grave_t  *grave;

    c = r->connection;
    tk = ngx_http_gate_tokens_answered(r);

    if (res == NULL) {
        ngx_http_gate_tokens_error(r, tk, NGX_HTTP_SERVICE_UNAVAILABLE,
                                   tk->rfc ? "temporarily_unavailable"
                                           : "unavailable",
                                   "The token store is unavailable.");
        goto done;
    }

    tk->hashes = ngx_array_create(r->pool, PQntuples(res) + 1,
                                  NGX_HTTP_GATE_SHA256_HEX_LEN);
    if (tk->hashes == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        goto done;
    }

    key = ngx_pnalloc(r->pool, sizeof("gate:tok:") - 1
                               + NGX_HTTP_GATE_SHA256_HEX_LEN);
    if (key == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        goto done;
    }

    tk->graves = ngx_pcalloc(r->pool, (PQntuples(res) + 1)
                                      * sizeof(ngx_http_gate_tokens_grave_t));
    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (tk->graves == NULL || cln == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        goto done;
    }

    cln->handler = ngx_http_gate_tokens_graves_cleanup;
    cln->data = tk;

    tk->pending = 1;    /* held until every command is queued */

    for (i = 0; i < PQntuples(res); i++) {
        ngx_memcpy(ngx_cpymem(key, "gate:tok:", sizeof("gate:tok:") - 1),
                   PQgetvalue(res, i, 0), NGX_HTTP_GATE_SHA256_HEX_LEN);

        ngx_memcpy(ngx_array_push(tk->hashes), PQgetvalue(res, i, 0),
                   NGX_HTTP_GATE_SHA256_HEX_LEN);

        argv[0] = "EVAL";
        argvlen[0] = 4;
        argv[1] = ngx_http_gate_tokens_tombstone_lua;
        argvlen[1] = sizeof(ngx_http_gate_tokens_tombstone_lua) - 1;
        argv[2] = "1";
        argvlen[2] = 1;
        argv[3] = (char *) key;
        argvlen[3] = sizeof("gate:tok:") - 1 + NGX_HTTP_GATE_SHA256_HEX_LEN;
        argv[4] = PQgetvalue(res, i, 1);
        argvlen[4] = PQgetlength(res, i, 1);

        grave = &tk->graves[tk->ngraves];
        grave->request = r;
        grave->tokens = tk;
        grave->cmd = ngx_http_gate_redis_send(c->log,
                                              ngx_http_gate_tokens_buried,
                                              grave, 5, argv, argvlen);
        if (grave->cmd == NULL) {
            tk->failed = 1;
            break;
        }

        tk->ngraves++;
        tk->pending++;
    }

    ngx_http_gate_tokens_bury_step(r, tk);

done:

    ngx_http_run_posted_requests(c);
}


/*
 * One tombstone's reply (or, with reply NULL from the revoking code, the
 * end of queueing).  The last one publishes and answers.
 */

static void
ngx_http_gate_tokens_buried(void *data, redisReply *reply)
{
    ngx_connection_t              *c;
    ngx_http_request_t            *r;
    ngx_http_gate_tokens_grave_t  *grave = data;

    grave->cmd = NULL;
    r = grave->request;
    c = r->connection;

    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        grave->tokens->failed = 1;
    }

    ngx_http_gate_tokens_bury_step(r, grave->tokens);
    ngx_http_run_posted_requests(c);
}


/* The last tombstone answered: tell every node, then the client. */

static void
ngx_http_gate_tokens_bury_step(ngx_http_request_t *r,
    ngx_http_gate_tokens_t *tk)
{
    u_char                     *hex, hash[32];
    size_t                      argvlen[3];
    ngx_uint_t                  i;
    const char                 *argv[3];
    ngx_http_gate_main_conf_t  *gmcf;

    if (--tk->pending) {
        return;
    }

    if (tk->failed) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "gate: revoked in postgres, but redis did not take "
                      "the tombstones");
        ngx_http_gate_tokens_error(r, tk, NGX_HTTP_SERVICE_UNAVAILABLE,
                                   tk->rfc ? "temporarily_unavailable"
                                           : "unavailable",
                                   "The revocation could not reach every "
                                   "node; try again.");
        return;
    }

    gmcf = ngx_http_get_module_main_conf(r, ngx_http_gate_module);
    hex = tk->hashes->elts;

    for (i = 0; i < tk->hashes->nelts; i++) {
        argv[0] = "PUBLISH";
        argvlen[0] = 7;
        argv[1] = NGX_HTTP_GATE_INVALIDATE_CHANNEL;
        argvlen[1] = sizeof(NGX_HTTP_GATE_INVALIDATE_CHANNEL) - 1;
        argv[2] = (char *) hex + i * NGX_HTTP_GATE_SHA256_HEX_LEN;
        argvlen[2] = NGX_HTTP_GATE_SHA256_HEX_LEN;

        (void) ngx_http_gate_redis_send(r->connection->log, NULL, NULL, 3,
                                        argv, argvlen);

        /* this node's own cache goes now, not when the message is back */

        if (ngx_http_gate_credential_unhex(
                hex + i * NGX_HTTP_GATE_SHA256_HEX_LEN, hash)
            == NGX_OK)
        {
            ngx_http_gate_cache_remove(gmcf->cache, hash);
        }
    }

    if (tk->op == NGX_HTTP_GATE_TOKENS_REVOKE_ALL) {
        r->headers_out.status = NGX_HTTP_NO_CONTENT;
        r->headers_out.content_length_n = 0;
        r->header_only = 1;
        ngx_http_finalize_request(r, ngx_http_send_header(r));
        return;
    }

    ngx_http_gate_tokens_send(r, NGX_HTTP_OK, NULL);
}


/* A request that goes while tombstones are pending hears of none of them. */

static void
ngx_http_gate_tokens_graves_cleanup(void *data)
{
    ngx_uint_t                     i;
    ngx_http_gate_tokens_t        *tk = data;
    ngx_http_gate_tokens_grave_t  *grave;

    grave = tk->graves;

    for (i = 0; i < tk->ngraves; i++) {
        if (grave[i].cmd) {
            ngx_http_gate_redis_cancel(grave[i].cmd);
            grave[i].cmd = NULL;
        }
    }
}


/*
 * GET and DELETE /v1/gate/identities/{id}/tokens, for the identity API:
 * the identity must be the tenant's, as everywhere.
 */

ngx_int_t
ngx_http_gate_tokens_of_subject(ngx_http_request_t *r, ngx_str_t *tenant,
    ngx_str_t *subject)
{
    ngx_http_gate_tokens_t  *tk;

    tk = ngx_http_gate_tokens_create(r, r->method == NGX_HTTP_DELETE
                                        ? NGX_HTTP_GATE_TOKENS_REVOKE_ALL
                                        : NGX_HTTP_GATE_TOKENS_LIST);
    if (tk == NULL) {
        return NGX_ERROR;
    }

    tk->tenant = *tenant;
    tk->subject = *subject;

    return ngx_http_gate_tokens_pg(r, NGX_HTTP_GATE_SQL_IDN_TENANT, 1,
                                   &tk->subject, ngx_http_gate_tokens_owner);
}


/* All of a subject's tokens, when the identity itself goes. */

ngx_int_t
ngx_http_gate_tokens_revoke_subject(ngx_http_request_t *r, ngx_str_t *tenant,
    ngx_str_t *subject)
{
    ngx_str_t                params[2];
    ngx_http_gate_tokens_t  *tk;

    tk = ngx_http_gate_tokens_create(r, NGX_HTTP_GATE_TOKENS_REVOKE_ALL);
    if (tk == NULL) {
        return NGX_ERROR;
    }

    tk->tenant = *tenant;
    tk->subject = *subject;

    params[0] = tk->tenant;
    params[1] = tk->subject;

    return ngx_http_gate_tokens_pg(r, NGX_HTTP_GATE_SQL_TOKEN_REVOKE_SUBJECT,
                                   2, params, ngx_http_gate_tokens_revoked);
}


static void
ngx_http_gate_tokens_owner(void *data, PGresult *res)
{
    ngx_str_t                params[2];
    ngx_connection_t        *c;
    ngx_http_request_t      *r = data;
    ngx_http_gate_tokens_t  *tk;

    c = r->connection;
    tk = ngx_http_gate_tokens_answered(r);

    if (res == NULL) {
        ngx_http_gate_tokens_error(r, tk, NGX_HTTP_SERVICE_UNAVAILABLE,
                                   "unavailable",
                                   "The token store is unavailable.");
        goto done;
    }

    if (PQntuples(res) != 1
        || (size_t) PQgetlength(res, 0, 0) != tk->tenant.len
        || ngx_strncmp(PQgetvalue(res, 0, 0), tk->tenant.data,
                       tk->tenant.len) != 0)
    {
        ngx_http_gate_tokens_error(r, tk, NGX_HTTP_NOT_FOUND, "not_found",
                                   "No such identity.");
        goto done;
    }

    params[0] = tk->tenant;
    params[1] = tk->subject;

    if (ngx_http_gate_tokens_pg(r,
                                tk->op == NGX_HTTP_GATE_TOKENS_LIST
                                ? NGX_HTTP_GATE_SQL_TOKEN_LIST
                                : NGX_HTTP_GATE_SQL_TOKEN_REVOKE_SUBJECT,
                                2, params,
                                tk->op == NGX_HTTP_GATE_TOKENS_LIST
                                ? ngx_http_gate_tokens_listed
                                : ngx_http_gate_tokens_revoked)
        != NGX_OK)
    {
        ngx_http_gate_tokens_error(r, tk, NGX_HTTP_SERVICE_UNAVAILABLE,
                                   "unavailable",
                                   "The token store is unavailable.");
    }

done:

    ngx_http_run_posted_requests(c);
}


static void
ngx_http_gate_tokens_listed(void *data, PGresult *res)
{
    json_t                  *list, *item;
    ngx_int_t                i;
    ngx_connection_t        *c;
    ngx_http_request_t      *r = data;
    ngx_http_gate_tokens_t  *tk;

    c = r->connection;
    tk = ngx_http_gate_tokens_answered(r);

    if (res == NULL) {
        ngx_http_gate_tokens_error(r, tk, NGX_HTTP_SERVICE_UNAVAILABLE,
                                   "unavailable",
                                   "The token store is unavailable.");
        goto done;
    }

    list = json_array();

    for (i = 0; list && i < PQntuples(res); i++) {
        item = json_pack("{s:s,s:s,s:I,s:I}",
                         "token_id", PQgetvalue(res, i, 0),
                         "scope", PQgetvalue(res, i, 1),
                         "created_at", (json_int_t) ngx_atotm((u_char *)
                             PQgetvalue(res, i, 2), PQgetlength(res, i, 2)),
                         "expires_at", (json_int_t) ngx_atotm((u_char *)
                             PQgetvalue(res, i, 3), PQgetlength(res, i, 3)));
        json_array_append_new(list, item);
    }

    ngx_http_gate_tokens_send(r, NGX_HTTP_OK, list);

done:

    ngx_http_run_posted_requests(c);
}


/* A query of this request came back: it is no longer to be cancelled. */

static ngx_http_gate_tokens_t *
ngx_http_gate_tokens_answered(ngx_http_request_t *r)
{
    ngx_http_gate_ctx_t     *ctx;
    ngx_http_gate_tokens_t  *tk;

    ctx = ngx_http_get_module_ctx(r, ngx_http_gate_module);
    tk = ctx->api;
    tk->query = NULL;

    return tk;
}


static ngx_int_t
ngx_http_gate_tokens_pg(ngx_http_request_t *r, ngx_uint_t statement,
    ngx_uint_t n, ngx_str_t *params, ngx_http_gate_pg_handler_pt handler)
{
    ngx_http_gate_ctx_t     *ctx;
    ngx_http_gate_tokens_t  *tk;

    ctx = ngx_http_get_module_ctx(r, ngx_http_gate_module);
    tk = ctx->api;

    return ngx_http_gate_pg_request(r, &tk->query, statement, n, params,
                                    handler);
}


/* A JSON answer (NULL: an empty 200, as RFC 7009 wants), and the end. */

static void
ngx_http_gate_tokens_send(ngx_http_request_t *r, ngx_uint_t status,
    json_t *value)
{
    ngx_int_t   rc;
    ngx_str_t   body;

    if (value == NULL) {
        ngx_str_null(&body);
        ngx_http_finalize_request(r, ngx_http_gate_json_send(r, status,
                                                             &body));
        return;
    }

    rc = ngx_http_gate_json_dump(r->pool, value, &body);
    json_decref(value);

    if (rc != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    ngx_http_finalize_request(r, ngx_http_gate_json_send(r, status, &body));
}


/*
 * Gate's error shape, or RFC 6749's ({"error", "error_description"}) on
 * the OAuth endpoints, where stock clients expect it.
 */

static void
ngx_http_gate_tokens_error(ngx_http_request_t *r, ngx_http_gate_tokens_t *tk,
    ngx_uint_t status, const char *code, const char *message)
{
    ngx_table_elt_t  *h;

    if (!tk->rfc) {
        ngx_http_finalize_request(r, ngx_http_gate_json_error(r, status, code,
                                                              message));
        return;
    }

    if (status == NGX_HTTP_UNAUTHORIZED) {
        h = ngx_list_push(&r->headers_out.headers);
        if (h) {
            h->hash = 1;
            ngx_str_set(&h->key, "WWW-Authenticate");
            ngx_str_set(&h->value, "Basic realm=\"gate\"");
            r->headers_out.www_authenticate = h;
        }
    }

    ngx_http_gate_tokens_send(r, status,
                              json_pack("{s:s,s:s}", "error", code,
                                        "error_description", message));
}
