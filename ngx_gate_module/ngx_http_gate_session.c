/*
 * Copyright (C) Gate authors
 */


/*
 * Kratos sessions as a credential (gate_auth session).  Kratos' sessions
 * know no tenant: Gate asks Kratos whose session it is (/sessions/whoami)
 * and PostgreSQL's identity index which tenant that identity belongs to,
 * then keeps the answer in the cache and in Redis (gate:sess:{sha256}),
 * never past the session's own end.  Logout through Gate (gate_api
 * logout) drops the copy on every node.
 */


#include <jansson.h>

#include "ngx_http_gate_session.h"
#include "ngx_http_gate_cache.h"
#include "ngx_http_gate_credential.h"
#include "ngx_http_gate_headers.h"
#include "ngx_http_gate_json.h"
#include "ngx_http_gate_kratos.h"
#include "ngx_http_gate_lookup.h"
#include "ngx_http_gate_pg.h"
#include "ngx_http_gate_redis.h"


#define NGX_HTTP_GATE_SESSION_MAX      4096


static ngx_int_t ngx_http_gate_session_cookie_value(ngx_http_request_t *r,
    ngx_str_t *value);
static ngx_int_t ngx_http_gate_session_drop_others(ngx_http_request_t *r,
    ngx_uint_t cookie);
static ngx_int_t ngx_http_gate_session_uncookie(ngx_http_request_t *r,
    ngx_table_elt_t *h);
static ngx_uint_t ngx_http_gate_session_token_ok(ngx_str_t *token);
static void ngx_http_gate_session_whoami(ngx_http_request_t *r,
    ngx_uint_t status, ngx_str_t *body);
static void ngx_http_gate_session_tenant(void *data, PGresult *res);
static void ngx_http_gate_session_decided(ngx_http_request_t *r,
    ngx_http_gate_ctx_t *ctx);
static void ngx_http_gate_logout_body(ngx_http_request_t *r);
static void ngx_http_gate_logout_done(ngx_http_request_t *r,
    ngx_uint_t status, ngx_str_t *body);


static ngx_str_t  ngx_http_gate_session_header = ngx_string("x-session-token");
static ngx_str_t  ngx_http_gate_session_auth = ngx_string("authorization");
static ngx_str_t  ngx_http_gate_session_cookie =
                                             ngx_string("ory_kratos_session");
static ngx_str_t  ngx_http_gate_session_whoami_path =
                                             ngx_string("/sessions/whoami");
static ngx_str_t  ngx_http_gate_logout_path =
                                        ngx_string("/self-service/logout/api");


/*
 * The credential Kratos itself would use, in Kratos' order: the
 * X-Session-Token header, then the session cookie, then a bearer token.
 * NGX_DECLINED when there is none, NGX_ERROR when it cannot be one.
 */

ngx_int_t
ngx_http_gate_session_credential(ngx_http_request_t *r,
    ngx_http_gate_ctx_t *ctx, ngx_str_t *credential)
{
    ngx_table_elt_t  *h;

    h = ngx_http_gate_headers_find(r, &ngx_http_gate_session_header, NULL);

    if (h) {
        *credential = h->value;

        if (!ngx_http_gate_session_token_ok(credential)) {
            return NGX_ERROR;
        }

        /* the upstream must see the credential Gate checked, no other */

        return ngx_http_gate_session_drop_others(r, 1);
    }

    switch (ngx_http_gate_session_cookie_value(r, credential)) {

    case NGX_OK:
        if (credential->len == 0
            || credential->len > NGX_HTTP_GATE_SESSION_MAX)
        {
            return NGX_ERROR;
        }

        return ngx_http_gate_session_drop_others(r, 0);

    case NGX_ERROR:
        return NGX_ERROR;

    default:
        break;
    }

    if (r->headers_in.authorization) {
        credential->data = r->headers_in.authorization->value.data;
        credential->len = r->headers_in.authorization->value.len;

        if (credential->len > 7
            && ngx_strncasecmp(credential->data, (u_char *) "Bearer ", 7) == 0)
        {
            credential->data += 7;
            credential->len -= 7;

            return ngx_http_gate_session_token_ok(credential) ? NGX_OK
                                                              : NGX_ERROR;
        }

        return NGX_ERROR;
    }

    return NGX_DECLINED;
}


/*
 * The session cookie as Go's net/http finds it: pairs split on ";" only,
 * the name in exact case.  Two of them are refused: Gate would check one
 * and Kratos might serve the other.
 */

static ngx_int_t
ngx_http_gate_session_cookie_value(ngx_http_request_t *r, ngx_str_t *value)
{
    u_char           *p, *last, *start, *eq;
    size_t            len;
    ngx_uint_t        i, found;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    found = 0;
    len = ngx_http_gate_session_cookie.len;

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

        if (h[i].key.len != sizeof("Cookie") - 1
            || ngx_strncasecmp(h[i].key.data, (u_char *) "Cookie", 6) != 0)
        {
            continue;
        }

        p = h[i].value.data;
        last = p + h[i].value.len;

        while (p < last) {
            while (p < last && (*p == ' ' || *p == ';')) {
                p++;
            }

            start = p;

            while (p < last && *p != ';') {
                p++;
            }

            eq = ngx_strlchr(start, p, '=');

            if (eq == NULL || (size_t) (eq - start) != len
                || ngx_strncmp(start, ngx_http_gate_session_cookie.data, len)
                   != 0)
            {
                continue;
            }

            if (found++) {
                return NGX_ERROR;
            }

            value->data = eq + 1;
            value->len = p - eq - 1;

            while (value->len && value->data[value->len - 1] == ' ') {
                value->len--;
            }
        }
    }

    return found ? NGX_OK : NGX_DECLINED;
}


/*
 * Kratos reads X-Session-Token, then the cookie, then a bearer token; a
 * request carrying several must reach the upstream with the one Gate
 * checked only, or it could be checked as one user and served as another.
 */

static ngx_int_t
ngx_http_gate_session_drop_others(ngx_http_request_t *r, ngx_uint_t cookie)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    if (r->headers_in.authorization
        && r->headers_in.authorization->value.len > 7 + 7
        && ngx_strncasecmp(r->headers_in.authorization->value.data,
                           (u_char *) "Bearer ory_st_", 14) == 0)
    {
        if (ngx_http_gate_headers_remove(r, &ngx_http_gate_session_auth)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        r->headers_in.authorization = NULL;
    }

    if (!cookie) {
        return NGX_OK;
    }

    /*
     * The list, not headers_in.cookies: after X-Gate-* were stripped the
     * list holds copies, and the list is what goes upstream.
     */

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

        if (h[i].key.len != sizeof("Cookie") - 1
            || ngx_strncasecmp(h[i].key.data, (u_char *) "Cookie", 6) != 0)
        {
            continue;
        }

        if (ngx_http_gate_session_uncookie(r, &h[i]) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_gate_session_uncookie(ngx_http_request_t *r, ngx_table_elt_t *h)
{
    u_char  *p, *q, *last, *start, *out;

    /* "a=1;b=2" comes out as "a=1; b=2": room for the added spaces */
    out = ngx_pnalloc(r->pool, 2 * h->value.len + 2);
    if (out == NULL) {
        return NGX_ERROR;
    }

    q = out;
    p = h->value.data;
    last = p + h->value.len;

    while (p < last) {
        while (p < last && (*p == ' ' || *p == ';')) {
            p++;
        }

        start = p;

        while (p < last && *p != ';') {
            p++;
        }

        if (p - start > (ssize_t) ngx_http_gate_session_cookie.len
            && start[ngx_http_gate_session_cookie.len] == '='
            && ngx_strncmp(start, ngx_http_gate_session_cookie.data,
                           ngx_http_gate_session_cookie.len) == 0)
        {
            continue;
        }

        if (p > start) {
            if (q > out) {
                *q++ = ';';
                *q++ = ' ';
            }

            q = ngx_cpymem(q, start, p - start);
        }
    }

    h->value.data = out;
    h->value.len = q - out;

    return NGX_OK;
}


/* ory_st_ and 32 letters or digits; Kratos may issue longer ones later */

static ngx_uint_t
ngx_http_gate_session_token_ok(ngx_str_t *token)
{
    size_t  i;

    if (token->len < 8 || token->len > 128
        || ngx_strncmp(token->data, "ory_st_", 7) != 0)
    {
        return 0;
    }

    for (i = 7; i < token->len; i++) {
        if (!isalnum(token->data[i])) {
            return 0;
        }
    }

    return 1;
}


/* Not in the cache nor in Redis: Kratos is asked, with the client's headers. */

ngx_int_t
ngx_http_gate_session_fetch(ngx_http_request_t *r, ngx_http_gate_ctx_t *ctx)
{
    if (ngx_http_gate_kratos_request(r, 1, NGX_HTTP_GATE_KRATOS_GET,
                                     &ngx_http_gate_session_whoami_path, NULL,
                                     NULL, ngx_http_gate_session_whoami)
        != NGX_OK)
    {
        return NGX_DECLINED;
    }

    ctx->state = NGX_HTTP_GATE_STATE_WAIT;

    return NGX_OK;
}


static void
ngx_http_gate_session_whoami(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *body)
{
    json_t               *root, *identity, *id, *sid, *expires, *active;
    ngx_str_t             identity_id;
    ngx_http_gate_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_gate_module);

    if (status == NGX_HTTP_UNAUTHORIZED || status == NGX_HTTP_FORBIDDEN
        || status == NGX_HTTP_NOT_FOUND)
    {
        ctx->state = NGX_HTTP_GATE_STATE_UNKNOWN;
        ngx_http_gate_session_decided(r, ctx);
        return;
    }

    root = (status == NGX_HTTP_OK && body->len)
           ? json_loadb((char *) body->data, body->len, 0, NULL) : NULL;

    if (root == NULL) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "gate: kratos whoami answered %ui", status);
        ctx->state = NGX_HTTP_GATE_STATE_ERROR;
        ngx_http_gate_session_decided(r, ctx);
        return;
    }

    identity = json_object_get(root, "identity");
    id = json_object_get(identity, "id");
    sid = json_object_get(root, "id");
    expires = json_object_get(root, "expires_at");
    active = json_object_get(root, "active");

    if (!json_is_true(active) || !json_is_string(id) || !json_is_string(sid)
        || !json_is_string(expires)
        || !ngx_http_gate_kratos_is_uuid((u_char *) json_string_value(id),
                                         json_string_length(id)))
    {
        json_decref(root);
        ctx->state = NGX_HTTP_GATE_STATE_UNKNOWN;
        ngx_http_gate_session_decided(r, ctx);
        return;
    }

    ctx->record.subject.len = json_string_length(id);
    ctx->record.id.len = json_string_length(sid);
    ctx->record.subject.data = ngx_pnalloc(r->pool, ctx->record.subject.len);
    ctx->record.id.data = ngx_pnalloc(r->pool, ctx->record.id.len);

    if (ctx->record.subject.data == NULL || ctx->record.id.data == NULL) {
        json_decref(root);
        ctx->state = NGX_HTTP_GATE_STATE_ERROR;
        ngx_http_gate_session_decided(r, ctx);
        return;
    }

    ngx_memcpy(ctx->record.subject.data, json_string_value(id),
               ctx->record.subject.len);
    ngx_memcpy(ctx->record.id.data, json_string_value(sid),
               ctx->record.id.len);
    ngx_str_null(&ctx->record.scope);

    ctx->record.exp = ngx_http_gate_kratos_time(
                          (u_char *) json_string_value(expires),
                          json_string_length(expires));

    json_decref(root);

    if (ctx->record.exp == NGX_ERROR) {
        ctx->state = NGX_HTTP_GATE_STATE_ERROR;
        ngx_http_gate_session_decided(r, ctx);
        return;
    }

    /* whose identity: Gate's index, which every binding path writes */

    identity_id = ctx->record.subject;

    ctx->query = ngx_http_gate_pg_query(r->connection->log,
                                        NGX_HTTP_GATE_SQL_IDN_TENANT, 1,
                                        &identity_id,
                                        ngx_http_gate_session_tenant, ctx);
    if (ctx->query == NULL) {
        ctx->state = NGX_HTTP_GATE_STATE_ERROR;
        ngx_http_gate_session_decided(r, ctx);
    }
}


static void
ngx_http_gate_session_tenant(void *data, PGresult *res)
{
    ngx_connection_t     *c;
    ngx_http_gate_ctx_t  *ctx = data;
    ngx_http_request_t   *r;

    ctx->query = NULL;
    r = ctx->request;
    c = r->connection;

    if (res == NULL) {
        ctx->state = NGX_HTTP_GATE_STATE_ERROR;

    } else if (PQntuples(res) == 0) {
        /* an identity no tenant owns is no one's session here */
        ctx->state = NGX_HTTP_GATE_STATE_UNKNOWN;

    } else {
        ctx->record.tenant.len = PQgetlength(res, 0, 0);
        ctx->record.tenant.data = ngx_pnalloc(r->pool, ctx->record.tenant.len);

        if (ctx->record.tenant.data == NULL) {
            ctx->state = NGX_HTTP_GATE_STATE_ERROR;

        } else {
            ngx_memcpy(ctx->record.tenant.data, PQgetvalue(res, 0, 0),
                       ctx->record.tenant.len);
            ngx_http_gate_lookup_found(r, ctx, 1);
        }
    }

    ngx_http_gate_session_decided(r, ctx);
    ngx_http_run_posted_requests(c);
}


/* Back to the access phase, which was waiting for this. */

static void
ngx_http_gate_session_decided(ngx_http_request_t *r, ngx_http_gate_ctx_t *ctx)
{
    r->write_event_handler = ngx_http_core_run_phases;
    ngx_http_core_run_phases(r);
}


/*
 * gate_api logout: Kratos' API logout, {"session_token": "ory_st_..."},
 * and every node forgets the session at once.
 */

ngx_int_t
ngx_http_gate_logout_handler(ngx_http_request_t *r)
{
    ngx_int_t  rc;

    if (r->method != NGX_HTTP_DELETE) {
        return ngx_http_gate_json_not_allowed(r, "DELETE",
                                              "Log out with DELETE.");
    }

    if (ngx_http_get_module_ctx(r, ngx_http_gate_module) == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_read_client_request_body(r, ngx_http_gate_logout_body);
    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static void
ngx_http_gate_logout_body(ngx_http_request_t *r)
{
    u_char                     *key, hex[NGX_HTTP_GATE_SHA256_HEX_LEN];
    u_char                      hash[32];
    size_t                      argvlen[3];
    json_t                     *root, *token;
    ngx_str_t                   text, credential;
    ngx_buf_t                  *b;
    const char                 *argv[3];
    ngx_http_gate_main_conf_t  *gmcf;

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
    token = json_object_get(root, "session_token");

    if (!json_is_string(token)) {
        json_decref(root);
        ngx_http_finalize_request(r, ngx_http_gate_json_error(r,
                                  NGX_HTTP_BAD_REQUEST, "invalid_request",
                                  "Send {\"session_token\": \"ory_st_...\"}."));
        return;
    }

    credential.len = json_string_length(token);
    credential.data = (u_char *) json_string_value(token);

    /* forget it everywhere first: Kratos ends it right after */

    ngx_http_gate_credential_hash(&credential, hash);
    ngx_http_gate_credential_hex(hash, hex);
    json_decref(root);

    key = ngx_pnalloc(r->pool, sizeof("gate:sess:") - 1
                               + NGX_HTTP_GATE_SHA256_HEX_LEN);
    if (key == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    ngx_memcpy(ngx_cpymem(key, "gate:sess:", sizeof("gate:sess:") - 1), hex,
               NGX_HTTP_GATE_SHA256_HEX_LEN);

    argv[0] = "DEL";
    argvlen[0] = 3;
    argv[1] = (char *) key;
    argvlen[1] = sizeof("gate:sess:") - 1 + NGX_HTTP_GATE_SHA256_HEX_LEN;
    (void) ngx_http_gate_redis_send(r->connection->log, NULL, NULL, 2, argv,
                                    argvlen);

    argv[0] = "PUBLISH";
    argvlen[0] = 7;
    argv[1] = NGX_HTTP_GATE_INVALIDATE_CHANNEL;
    argvlen[1] = sizeof(NGX_HTTP_GATE_INVALIDATE_CHANNEL) - 1;
    argv[2] = (char *) hex;
    argvlen[2] = NGX_HTTP_GATE_SHA256_HEX_LEN;
    (void) ngx_http_gate_redis_send(r->connection->log, NULL, NULL, 3, argv,
                                    argvlen);

    gmcf = ngx_http_get_module_main_conf(r, ngx_http_gate_module);
    ngx_http_gate_cache_remove(gmcf->cache, hash);

    if (ngx_http_gate_kratos_request(r, 1, NGX_HTTP_GATE_KRATOS_DELETE,
                                     &ngx_http_gate_logout_path, NULL, &text,
                                     ngx_http_gate_logout_done)
        != NGX_OK)
    {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
    }
}


static void
ngx_http_gate_logout_done(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *body)
{
    if (status >= NGX_HTTP_INTERNAL_SERVER_ERROR) {
        ngx_http_finalize_request(r, ngx_http_gate_json_error(r,
                                  NGX_HTTP_SERVICE_UNAVAILABLE, "unavailable",
                                  "The identity service is unavailable; try "
                                  "again later."));
        return;
    }

    if (status != NGX_HTTP_NO_CONTENT && status != NGX_HTTP_OK) {
        if (status != NGX_HTTP_UNAUTHORIZED) {
            status = NGX_HTTP_BAD_REQUEST;
        }

        ngx_http_finalize_request(r, ngx_http_gate_json_error(r, status,
                                  "invalid_session",
                                  "The session is invalid or has ended."));
        return;
    }

    r->headers_out.status = NGX_HTTP_NO_CONTENT;
    r->headers_out.content_length_n = 0;
    r->header_only = 1;

    ngx_http_finalize_request(r, ngx_http_send_header(r));
}
