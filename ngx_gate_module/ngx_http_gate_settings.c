/*
 * Copyright (C) Gate authors
 */


/*
 * A tenant's policy (gate_api settings): GET /v1/gate/settings shows it
 * with every default filled in, PUT replaces it.  Today the policy is the
 * token API's: which scopes tokens may carry, the scopes a session
 * exchange gets, and token lifetimes.  Settings whose enforcement does not
 * exist yet are refused as unknown rather than stored, so that a tenant
 * never believes a policy holds that Gate does not apply.
 *
 * PostgreSQL's tenant_settings is the only copy: the token API reads it on
 * every mint, so a change holds from the next request on, on every node.
 */


#include <jansson.h>

#include "ngx_http_gate_settings.h"
#include "ngx_http_gate_json.h"
#include "ngx_http_gate_pg.h"
#include "ngx_http_gate_token.h"


#define NGX_HTTP_GATE_SETTINGS_BODY_MAX     16384
#define NGX_HTTP_GATE_SETTINGS_SCOPES_MAX   256
#define NGX_HTTP_GATE_SETTINGS_DEFAULT_MAX  32
#define NGX_HTTP_GATE_SETTINGS_SCOPE_LEN    128
#define NGX_HTTP_GATE_SETTINGS_TTL_MAX      31536000    /* a year */


typedef struct {
    ngx_http_gate_pg_query_t  *query;
    json_t                    *settings;   /* what a PUT stores */
} ngx_http_gate_settings_t;


static ngx_http_gate_settings_t *ngx_http_gate_settings_create(
    ngx_http_request_t *r);
static void ngx_http_gate_settings_body(ngx_http_request_t *r);
static ngx_int_t ngx_http_gate_settings_check(ngx_http_request_t *r,
    json_t *body);
static ngx_int_t ngx_http_gate_settings_check_scopes(ngx_http_request_t *r,
    json_t *body);
static ngx_int_t ngx_http_gate_settings_check_ttl(ngx_http_request_t *r,
    json_t *body);
static ngx_uint_t ngx_http_gate_settings_scope_ok(const char *scope,
    size_t len);
static ngx_uint_t ngx_http_gate_settings_allowed(json_t *allowed,
    const char *scope, size_t len);
static void ngx_http_gate_settings_answered(void *data, PGresult *res);
static void ngx_http_gate_settings_respond(ngx_http_request_t *r,
    json_t *stored);
static void ngx_http_gate_settings_refuse(ngx_http_request_t *r,
    ngx_uint_t status, const char *code, const char *fmt, const char *name);
static void ngx_http_gate_settings_json_cleanup(void *data);


/* GET | PUT /v1/gate/settings, for the secret key's tenant */

ngx_int_t
ngx_http_gate_settings_handler(ngx_http_request_t *r)
{
    ngx_int_t                  rc;
    ngx_http_gate_ctx_t       *ctx;
    ngx_http_gate_settings_t  *st;

    ctx = ngx_http_get_module_ctx(r, ngx_http_gate_module);

    if (ctx == NULL || ctx->tenant_id.len == 0) {
        return NGX_HTTP_FORBIDDEN;
    }

    if (r->method != NGX_HTTP_GET && r->method != NGX_HTTP_HEAD
        && r->method != NGX_HTTP_PUT)
    {
        return ngx_http_gate_json_not_allowed(r, "GET, PUT",
                                              "Settings are read with GET "
                                              "and replaced with PUT.");
    }

    st = ngx_http_gate_settings_create(r);
    if (st == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (r->method != NGX_HTTP_PUT) {
        if (ngx_http_discard_request_body(r) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (ngx_http_gate_pg_request(r, &st->query,
                                     NGX_HTTP_GATE_SQL_TENANT_SETTINGS, 1,
                                     &ctx->tenant_id,
                                     ngx_http_gate_settings_answered)
            != NGX_OK)
        {
            return ngx_http_gate_json_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                            "unavailable",
                                            "The settings store is "
                                            "unavailable.");
        }

        r->main->count++;

        return NGX_DONE;
    }

    if (r->headers_in.content_type == NULL
        || ngx_strncasecmp(r->headers_in.content_type->value.data,
                           (u_char *) "application/json",
                           sizeof("application/json") - 1) != 0)
    {
        return ngx_http_gate_json_error(r, NGX_HTTP_UNSUPPORTED_MEDIA_TYPE,
                                        "unsupported_media_type",
                                        "Send the settings as "
                                        "application/json.");
    }

    if (r->headers_in.content_length_n > NGX_HTTP_GATE_SETTINGS_BODY_MAX) {
        return ngx_http_gate_json_error(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                        "body_too_large",
                                        "The body is larger than 16 KiB.");
    }

    rc = ngx_http_read_client_request_body(r, ngx_http_gate_settings_body);
    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static ngx_http_gate_settings_t *
ngx_http_gate_settings_create(ngx_http_request_t *r)
{
    ngx_http_gate_ctx_t       *ctx;
    ngx_pool_cleanup_t        *cln;
    ngx_http_gate_settings_t  *st;

    ctx = ngx_http_get_module_ctx(r, ngx_http_gate_module);

    st = ngx_pcalloc(r->pool, sizeof(ngx_http_gate_settings_t));
    if (st == NULL) {
        return NULL;
    }

    /* whatever jansson holds for this request goes with its pool */

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NULL;
    }

    cln->handler = ngx_http_gate_settings_json_cleanup;
    cln->data = st;

    ctx->api = st;

    return st;
}


static void
ngx_http_gate_settings_body(ngx_http_request_t *r)
{
    json_t                    *body;
    ngx_int_t                  rc;
    ngx_str_t                  text, params[2];
    ngx_http_gate_ctx_t       *ctx;
    ngx_http_gate_settings_t  *st;

    ctx = ngx_http_get_module_ctx(r, ngx_http_gate_module);
    st = ctx->api;

    rc = ngx_http_gate_json_body(r, NGX_HTTP_GATE_SETTINGS_BODY_MAX, &text);

    if (rc == NGX_DECLINED) {
        ngx_http_gate_settings_refuse(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                      "body_too_large",
                                      "The body is larger than 16 KiB.",
                                      NULL);
        return;
    }

    if (rc != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    body = json_loadb((char *) text.data, text.len, JSON_REJECT_DUPLICATES,
                      NULL);
    st->settings = body;

    if (!json_is_object(body)) {
        ngx_http_gate_settings_refuse(r, NGX_HTTP_BAD_REQUEST, "invalid_json",
                                      "The body must be a JSON object.",
                                      NULL);
        return;
    }

    if (ngx_http_gate_settings_check(r, body) != NGX_OK) {
        return;
    }

    params[0] = ctx->tenant_id;

    if (ngx_http_gate_json_dump(r->pool, body, &params[1]) != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    if (ngx_http_gate_pg_request(r, &st->query, NGX_HTTP_GATE_SQL_SETTINGS_PUT,
                                 2, params, ngx_http_gate_settings_answered)
        != NGX_OK)
    {
        ngx_http_gate_settings_refuse(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                      "unavailable",
                                      "The settings store is unavailable.",
                                      NULL);
    }
}


/*
 * Every field optional, each of one type, nothing else: a PUT replaces
 * the policy, and what it leaves out takes its default again.
 */

static ngx_int_t
ngx_http_gate_settings_check(ngx_http_request_t *r, json_t *body)
{
    json_t      *v;
    const char  *key;

    json_object_foreach(body, key, v) {

        if (ngx_strcmp(key, "allowed_scopes") == 0
            || ngx_strcmp(key, "default_scopes") == 0
            || ngx_strcmp(key, "token_ttl") == 0
            || ngx_strcmp(key, "token_max_ttl") == 0)
        {
            continue;
        }

        ngx_http_gate_settings_refuse(r, NGX_HTTP_UNPROCESSABLE_ENTITY,
                                      "unknown_field",
                                      "Unknown setting \"%s\".", key);
        return NGX_ERROR;
    }

    if (ngx_http_gate_settings_check_ttl(r, body) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_http_gate_settings_check_scopes(r, body);
}


static ngx_int_t
ngx_http_gate_settings_check_ttl(ngx_http_request_t *r, json_t *body)
{
    json_t     *ttl, *max;
    json_int_t  n, limit;

    max = json_object_get(body, "token_max_ttl");
    limit = NGX_HTTP_GATE_TOKEN_MAX_TTL;

    if (max != NULL) {
        n = json_is_integer(max) ? json_integer_value(max) : 0;

        if (n < 1 || n > NGX_HTTP_GATE_SETTINGS_TTL_MAX) {
            ngx_http_gate_settings_refuse(r, NGX_HTTP_UNPROCESSABLE_ENTITY,
                                          "invalid_setting",
                                          "\"%s\" must be a number of "
                                          "seconds from 1 to 31536000.",
                                          "token_max_ttl");
            return NGX_ERROR;
        }

        limit = n;
    }

    ttl = json_object_get(body, "token_ttl");

    if (ttl != NULL) {
        n = json_is_integer(ttl) ? json_integer_value(ttl) : 0;

        if (n < 1 || n > limit) {
            ngx_http_gate_settings_refuse(r, NGX_HTTP_UNPROCESSABLE_ENTITY,
                                          "invalid_setting",
                                          "\"%s\" must be a number of "
                                          "seconds from 1 to token_max_ttl.",
                                          "token_ttl");
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/*
 * allowed_scopes: null (any scope) or distinct RFC 6749 scope-tokens;
 * default_scopes: space-separated scope-tokens, each one allowed.
 */

static ngx_int_t
ngx_http_gate_settings_check_scopes(ngx_http_request_t *r, json_t *body)
{
    u_char      *p, *last;
    size_t       i, j;
    json_t      *allowed, *defaults, *v, *w;
    ngx_str_t    scope, one;
    ngx_uint_t   n;

    allowed = json_object_get(body, "allowed_scopes");

    if (allowed != NULL && !json_is_null(allowed)) {

        if (!json_is_array(allowed)
            || json_array_size(allowed) > NGX_HTTP_GATE_SETTINGS_SCOPES_MAX)
        {
            goto bad_allowed;
        }

        json_array_foreach(allowed, i, v) {
            if (!json_is_string(v)
                || !ngx_http_gate_settings_scope_ok(json_string_value(v),
                                                    json_string_length(v)))
            {
                goto bad_allowed;
            }

            /* a duplicate says the tenant meant something else */

            for (j = 0; j < i; j++) {
                w = json_array_get(allowed, j);

                if (json_equal(v, w)) {
                    goto bad_allowed;
                }
            }
        }
    }

    defaults = json_object_get(body, "default_scopes");

    if (defaults == NULL) {
        return NGX_OK;
    }

    if (!json_is_string(defaults)) {
        goto bad_defaults;
    }

    p = (u_char *) json_string_value(defaults);
    last = p + json_string_length(defaults);
    n = 0;

    while (ngx_http_gate_scope_next(&p, last, &one) == NGX_OK) {

        if (++n > NGX_HTTP_GATE_SETTINGS_DEFAULT_MAX
            || !ngx_http_gate_settings_scope_ok((char *) one.data, one.len))
        {
            goto bad_defaults;
        }

        if (json_is_array(allowed)
            && !ngx_http_gate_settings_allowed(allowed, (char *) one.data,
                                               one.len))
        {
            ngx_http_gate_settings_refuse(r, NGX_HTTP_UNPROCESSABLE_ENTITY,
                                          "invalid_setting",
                                          "Every scope of \"%s\" must be in "
                                          "allowed_scopes.", "default_scopes");
            return NGX_ERROR;
        }
    }

    /* stored as tokens are: one space between scopes, each scope once */

    scope.len = json_string_length(defaults);
    scope.data = (u_char *) json_string_value(defaults);

    if (ngx_http_gate_scope_normalize(r->pool, &scope) != NGX_OK
        || json_object_set_new(body, "default_scopes",
                               json_stringn((char *) scope.data, scope.len))
           != 0)
    {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return NGX_ERROR;
    }

    return NGX_OK;

bad_allowed:

    ngx_http_gate_settings_refuse(r, NGX_HTTP_UNPROCESSABLE_ENTITY,
                                  "invalid_setting",
                                  "\"%s\" must be null or an array of at most "
                                  "256 distinct RFC 6749 scopes of at most "
                                  "128 characters.", "allowed_scopes");
    return NGX_ERROR;

bad_defaults:

    ngx_http_gate_settings_refuse(r, NGX_HTTP_UNPROCESSABLE_ENTITY,
                                  "invalid_setting",
                                  "\"%s\" must be a string of at most 32 "
                                  "space-separated RFC 6749 scopes.",
                                  "default_scopes");
    return NGX_ERROR;
}


/* RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ) */

static ngx_uint_t
ngx_http_gate_settings_scope_ok(const char *scope, size_t len)
{
    size_t  i;

    if (len == 0 || len > NGX_HTTP_GATE_SETTINGS_SCOPE_LEN) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        if (scope[i] < 0x21 || scope[i] == 0x22 || scope[i] == 0x5c
            || scope[i] > 0x7e)
        {
            return 0;
        }
    }

    return 1;
}


static ngx_uint_t
ngx_http_gate_settings_allowed(json_t *allowed, const char *scope, size_t len)
{
    size_t   i;
    json_t  *v;

    json_array_foreach(allowed, i, v) {
        if (json_is_string(v) && json_string_length(v) == len
            && ngx_strncmp(json_string_value(v), scope, len) == 0)
        {
            return 1;
        }
    }

    return 0;
}


/*
 * PostgreSQL answered: a GET reads the policy from the row, a PUT already
 * holds what it stored.
 */

static void
ngx_http_gate_settings_answered(void *data, PGresult *res)
{
    ngx_connection_t          *c;
    ngx_http_request_t        *r = data;
    ngx_http_gate_ctx_t       *ctx;
    ngx_http_gate_settings_t  *st;

    c = r->connection;
    ctx = ngx_http_get_module_ctx(r, ngx_http_gate_module);
    st = ctx->api;
    st->query = NULL;

    if (res == NULL
        || (r->method != NGX_HTTP_PUT && PQntuples(res) != 1))
    {
        ngx_http_gate_settings_refuse(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                      "unavailable",
                                      "The settings store is unavailable; "
                                      "nothing was changed.", NULL);
        goto done;
    }

    if (r->method != NGX_HTTP_PUT) {
        st->settings = json_loads(PQgetvalue(res, 0, 1), 0, NULL);
    }

    ngx_http_gate_settings_respond(r, st->settings);

done:

    ngx_http_run_posted_requests(c);
}


/* The policy in force: what is stored, and the defaults for the rest. */

static void
ngx_http_gate_settings_respond(ngx_http_request_t *r, json_t *stored)
{
    json_t     *view, *allowed, *defaults, *v;
    ngx_int_t   rc;
    ngx_str_t   body;
    json_int_t  ttl, max;

    allowed = json_object_get(stored, "allowed_scopes");
    defaults = json_object_get(stored, "default_scopes");

    v = json_object_get(stored, "token_max_ttl");
    max = json_is_integer(v) ? json_integer_value(v)
                             : NGX_HTTP_GATE_TOKEN_MAX_TTL;
    v = json_object_get(stored, "token_ttl");
    ttl = json_is_integer(v) ? json_integer_value(v) : NGX_HTTP_GATE_TOKEN_TTL;

    view = json_pack("{s:O,s:s,s:I,s:I}",
                     "allowed_scopes",
                     json_is_array(allowed) ? allowed : json_null(),
                     "default_scopes",
                     json_is_string(defaults) ? json_string_value(defaults)
                                              : "",
                     "token_ttl", ngx_min(ttl, max),
                     "token_max_ttl", max);

    rc = ngx_http_gate_json_dump(r->pool, view, &body);
    json_decref(view);

    if (rc != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    ngx_http_finalize_request(r, ngx_http_gate_json_send(r, NGX_HTTP_OK,
                                                         &body));
}


/* One refusal; fmt may quote one name (a setting, a field). */

static void
ngx_http_gate_settings_refuse(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *fmt, const char *name)
{
    u_char  *message;

    message = (u_char *) fmt;

    if (name != NULL) {
        message = ngx_pnalloc(r->pool, 256);
        if (message == NULL) {
            ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
            return;
        }

        *ngx_snprintf(message, 255, fmt, name) = '\0';
    }

    ngx_http_finalize_request(r, ngx_http_gate_json_error(r, status, code,
                                                          (char *) message));
}


static void
ngx_http_gate_settings_json_cleanup(void *data)
{
    ngx_http_gate_settings_t  *st = data;

    json_decref(st->settings);
}
