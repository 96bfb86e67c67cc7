/*
 * Copyright (C) Gate authors
 */


/*
 * The access phase: for which tenant, who is calling, and may this flow be
 * used here.  Three steps, each of which may wait for Redis, PostgreSQL or
 * Kratos.  Shaped like auth_request: a step that starts a lookup returns
 * NGX_AGAIN, the lookup's callback re-runs the phases, and the handler
 * carries on where it stood.  Every denial is answered here with Gate's
 * JSON error, so no nginx error page ever stands in for it.
 */


#include "ngx_http_gate_access.h"
#include "ngx_http_gate_credential.h"
#include "ngx_http_gate_flow.h"
#include "ngx_http_gate_login.h"
#include "ngx_http_gate_headers.h"
#include "ngx_http_gate_json.h"
#include "ngx_http_gate_lookup.h"
#include "ngx_http_gate_session.h"


#define NGX_HTTP_GATE_STEP_TENANT      0
#define NGX_HTTP_GATE_STEP_CREDENTIAL  1
#define NGX_HTTP_GATE_STEP_FLOW        2
#define NGX_HTTP_GATE_STEP_LOGIN       3
#define NGX_HTTP_GATE_STEP_DONE        4


/* What each kind of credential is called in errors. */

typedef struct {
    const char  *prefix;
    const char  *code;
    const char  *missing;
    const char  *invalid;
} ngx_http_gate_access_kind_t;


static ngx_int_t ngx_http_gate_access_start(ngx_http_request_t *r,
    ngx_http_gate_loc_conf_t *glcf, ngx_http_gate_ctx_t **ctxp);
static ngx_int_t ngx_http_gate_access_tenant(ngx_http_request_t *r,
    ngx_http_gate_loc_conf_t *glcf, ngx_http_gate_ctx_t *ctx);
static ngx_int_t ngx_http_gate_access_tenant_name(ngx_http_request_t *r,
    ngx_http_gate_loc_conf_t *glcf, ngx_http_gate_ctx_t *ctx);
static ngx_int_t ngx_http_gate_access_credential(ngx_http_request_t *r,
    ngx_http_gate_loc_conf_t *glcf, ngx_http_gate_ctx_t *ctx);
static ngx_int_t ngx_http_gate_access_lookup(ngx_http_request_t *r,
    ngx_http_gate_loc_conf_t *glcf, ngx_http_gate_ctx_t *ctx);
static ngx_int_t ngx_http_gate_access_decide(ngx_http_request_t *r,
    ngx_http_gate_loc_conf_t *glcf, ngx_http_gate_ctx_t *ctx);
static ngx_uint_t ngx_http_gate_access_has_scopes(ngx_array_t *required,
    ngx_str_t *granted);
static ngx_int_t ngx_http_gate_access_allow(ngx_http_request_t *r,
    ngx_http_gate_ctx_t *ctx);
static ngx_int_t ngx_http_gate_access_bearer_challenge(ngx_http_request_t *r,
    ngx_http_gate_loc_conf_t *glcf, const char *error);
static ngx_uint_t ngx_http_gate_access_has_key(ngx_http_request_t *r);
static ngx_uint_t ngx_http_gate_access_has_credential(ngx_http_request_t *r);
static ngx_uint_t ngx_http_gate_access_same(ngx_str_t *a, ngx_str_t *b);


static ngx_str_t  ngx_http_gate_header_tenant = ngx_string("X-Gate-Tenant-Id");
static ngx_str_t  ngx_http_gate_header_subject = ngx_string("X-Gate-Subject");
static ngx_str_t  ngx_http_gate_header_scopes = ngx_string("X-Gate-Scopes");
static ngx_str_t  ngx_http_gate_header_key = ngx_string("X-Gate-Key-Id");


static ngx_http_gate_access_kind_t  ngx_http_gate_access_kinds[] = {
    { "gat_live_", "invalid_token",
      "An access token is required: Authorization: Bearer gat_live_...",
      "The access token is invalid." },
    { "gate_live_sk_", "invalid_key",
      "A secret key is required: Authorization: Bearer gate_live_sk_...",
      "The secret key is invalid." },
    { NULL, NULL, NULL, NULL },
    { NULL, "invalid_session",
      "A session is required: X-Session-Token, or the session cookie.",
      "The session is invalid or has ended." }
};


ngx_int_t
ngx_http_gate_access_handler(ngx_http_request_t *r)
{
    ngx_int_t                  rc;
    ngx_http_gate_ctx_t       *ctx;
    ngx_http_gate_loc_conf_t  *glcf;

    glcf = ngx_http_get_module_loc_conf(r, ngx_http_gate_module);

    if (!glcf->active) {
        /* X-Gate-* is Gate's namespace wherever the module is loaded */

        if (ngx_http_gate_headers_strip(r) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return NGX_DECLINED;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_gate_module);

    if (ctx == NULL) {
        rc = ngx_http_gate_access_start(r, glcf, &ctx);
        if (rc != NGX_OK) {
            return rc;
        }
    }

    for ( ;; ) {

        switch (ctx->step) {

        case NGX_HTTP_GATE_STEP_TENANT:
            rc = ngx_http_gate_access_tenant(r, glcf, ctx);
            break;

        case NGX_HTTP_GATE_STEP_CREDENTIAL:
            rc = ngx_http_gate_access_credential(r, glcf, ctx);
            break;

        case NGX_HTTP_GATE_STEP_FLOW:
            rc = ngx_http_gate_flow_check(r, glcf, ctx);
            break;

        case NGX_HTTP_GATE_STEP_LOGIN:
            rc = ngx_http_gate_login_check(r, glcf, ctx);
            break;

        default:
            if (ctx->decision.len == 0) {
                ngx_str_set(&ctx->decision, "allow");
            }

            return NGX_OK;
        }

        if (rc != NGX_OK) {
            /* waiting (NGX_AGAIN), answered (NGX_DONE) or failed */
            return rc;
        }

        ctx->step++;
        ctx->state = NGX_HTTP_GATE_STATE_NEW;
    }
}


static ngx_int_t
ngx_http_gate_access_start(ngx_http_request_t *r,
    ngx_http_gate_loc_conf_t *glcf, ngx_http_gate_ctx_t **ctxp)
{
    ngx_http_gate_ctx_t  *ctx;

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_gate_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->request = r;
    ngx_http_set_ctx(r, ctx, ngx_http_gate_module);
    *ctxp = ctx;

    /* the asked-for tenant is read before client X-Gate-* headers go */

    if (ngx_http_gate_access_tenant_name(r, glcf, ctx) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_gate_headers_strip(r) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return NGX_OK;
}


/* The tenant a request names, by header or by host; lowercase. */

static ngx_int_t
ngx_http_gate_access_tenant_name(ngx_http_request_t *r,
    ngx_http_gate_loc_conf_t *glcf, ngx_http_gate_ctx_t *ctx)
{
    ngx_str_t        *host, *suffix;
    ngx_uint_t        n;
    ngx_table_elt_t  *h;

    switch (glcf->tenant) {

    case NGX_HTTP_GATE_TENANT_HEADER:
        h = ngx_http_gate_headers_find(r, &glcf->tenant_header, &n);
        if (h == NULL || h->value.len == 0) {
            return NGX_OK;
        }

        /* two tenants named: which one was meant is anybody's guess */

        if (n > 1) {
            ctx->tenant_twice = 1;
            return NGX_OK;
        }

        ctx->tenant_asked.len = h->value.len;
        ctx->tenant_asked.data = ngx_pnalloc(r->pool, h->value.len);
        if (ctx->tenant_asked.data == NULL) {
            return NGX_ERROR;
        }

        ngx_strlow(ctx->tenant_asked.data, h->value.data, h->value.len);
        return NGX_OK;

    case NGX_HTTP_GATE_TENANT_HOST:
        host = &r->headers_in.server;
        suffix = &glcf->tenant_header;

        /* "acme" + ".auth.example.com"; nginx has lowercased the host */

        if (host->len > suffix->len
            && ngx_strncmp(host->data + host->len - suffix->len,
                           suffix->data, suffix->len) == 0)
        {
            ctx->tenant_asked.data = host->data;
            ctx->tenant_asked.len = host->len - suffix->len;
        }

        return NGX_OK;

    default:
        return NGX_OK;
    }
}


static ngx_int_t
ngx_http_gate_access_tenant(ngx_http_request_t *r,
    ngx_http_gate_loc_conf_t *glcf, ngx_http_gate_ctx_t *ctx)
{
    u_char      *p;
    ngx_int_t    rc;
    ngx_uint_t   i, ok;

    if (glcf->tenant == NGX_HTTP_GATE_TENANT_CREDENTIAL) {
        return NGX_OK;
    }

    switch (ctx->state) {

    case NGX_HTTP_GATE_STATE_NEW:

        /* with "secret_key session", a secret key names its own tenant */

        if (ctx->tenant_asked.len == 0 && glcf->auth_session
            && ngx_http_gate_access_has_key(r))
        {
            return NGX_OK;
        }

        /*
         * No credential at all is a missing credential, not a missing
         * tenant: the caller most likely meant to send a secret key.
         */

        if (ctx->tenant_asked.len == 0 && glcf->auth_session
            && !ngx_http_gate_access_has_credential(r))
        {
            if (ngx_http_gate_access_bearer_challenge(r, glcf, NULL)
                != NGX_OK)
            {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            return ngx_http_gate_access_deny(r, ctx, NGX_HTTP_UNAUTHORIZED,
                       "invalid_key", "missing_credential",
                       "A secret key (Authorization: Bearer gate_live_sk_...)"
                       " or a session is required.");
        }

        if (ctx->tenant_twice) {
            return ngx_http_gate_access_deny(r, ctx, NGX_HTTP_BAD_REQUEST,
                       "invalid_request", "tenant_twice",
                       "Name one tenant: the tenant header came more than "
                       "once.");
        }

        if (ctx->tenant_asked.len == 0) {
            return ngx_http_gate_access_deny(r, ctx, NGX_HTTP_BAD_REQUEST,
                       "tenant_required", "tenant_required",
                       glcf->tenant == NGX_HTTP_GATE_TENANT_HOST
                       ? "The host name does not name a tenant."
                       : "This endpoint needs the tenant header.");
        }

        /* a slug (a-z 0-9 -) or a tenant id; nothing else is looked up */

        p = ctx->tenant_asked.data;
        ok = ctx->tenant_asked.len <= 63;

        for (i = 0; ok && i < ctx->tenant_asked.len; i++) {
            ok = (p[i] >= 'a' && p[i] <= 'z') || (p[i] >= '0' && p[i] <= '9')
                 || p[i] == '-';
        }

        if (!ok) {
            return ngx_http_gate_access_deny(r, ctx, NGX_HTTP_NOT_FOUND,
                       "tenant_not_found", "tenant_not_found",
                       "No such tenant.");
        }

        ctx->param = ctx->tenant_asked;
        ngx_http_gate_credential_hash(&ctx->param, ctx->hash);

        rc = ngx_http_gate_lookup(r, ctx, NGX_HTTP_GATE_LOOKUP_TENANT);

        if (rc == NGX_AGAIN || rc == NGX_ERROR) {
            return rc == NGX_AGAIN ? NGX_AGAIN
                                   : NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        break;

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
                   "The tenant store is unavailable; try again later.");

    case NGX_HTTP_GATE_STATE_UNKNOWN:
        return ngx_http_gate_access_deny(r, ctx, NGX_HTTP_NOT_FOUND,
                   "tenant_not_found", "tenant_not_found", "No such tenant.");

    default:
        break;
    }

    if (ctx->record.subject.len == sizeof("disabled") - 1
        && ngx_strncmp(ctx->record.subject.data, "disabled", 8) == 0)
    {
        return ngx_http_gate_access_deny(r, ctx, NGX_HTTP_FORBIDDEN,
                   "tenant_disabled", "tenant_disabled",
                   "This tenant is disabled.");
    }

    ctx->tenant_id = ctx->record.tenant;
    ngx_memzero(&ctx->record, sizeof(ngx_http_gate_record_t));

    return NGX_OK;
}


static ngx_int_t
ngx_http_gate_access_credential(ngx_http_request_t *r,
    ngx_http_gate_loc_conf_t *glcf, ngx_http_gate_ctx_t *ctx)
{
    ngx_int_t  rc;

    if (glcf->auth == NGX_HTTP_GATE_AUTH_OFF) {
        return NGX_OK;
    }

    switch (ctx->state) {

    case NGX_HTTP_GATE_STATE_NEW:
        rc = ngx_http_gate_access_lookup(r, glcf, ctx);

        if (rc != NGX_OK) {
            return rc;
        }

        break;

    case NGX_HTTP_GATE_STATE_WAIT:
        return NGX_AGAIN;

    default:
        break;
    }

    return ngx_http_gate_access_decide(r, glcf, ctx);
}


/* Reads the credential, refuses a malformed one, starts its lookup. */

static ngx_int_t
ngx_http_gate_access_lookup(ngx_http_request_t *r,
    ngx_http_gate_loc_conf_t *glcf, ngx_http_gate_ctx_t *ctx)
{
    ngx_int_t                     rc;
    ngx_str_t                     credential;
    ngx_http_gate_access_kind_t  *kind;

    switch (glcf->auth) {

    case NGX_HTTP_GATE_AUTH_SECRET_KEY:
        ctx->kind = NGX_HTTP_GATE_LOOKUP_KEY;

        /* "secret_key session": whatever is not a secret key, a session */

        if (glcf->auth_session && !ngx_http_gate_access_has_key(r)) {
            ctx->kind = NGX_HTTP_GATE_LOOKUP_SESSION;
        }

        break;

    case NGX_HTTP_GATE_AUTH_SESSION:
        ctx->kind = NGX_HTTP_GATE_LOOKUP_SESSION;
        break;

    default:
        ctx->kind = NGX_HTTP_GATE_LOOKUP_TOKEN;
        break;
    }

    kind = &ngx_http_gate_access_kinds[ctx->kind];

    if (ctx->kind == NGX_HTTP_GATE_LOOKUP_SESSION) {
        rc = ngx_http_gate_session_credential(r, ctx, &credential);

        /*
         * A 401 always carries a challenge (RFC 9110); a session may come
         * as "Authorization: Bearer ory_st_...", so Bearer it is.
         */

        if (rc != NGX_OK
            && ngx_http_gate_access_bearer_challenge(r, glcf,
                                                     rc == NGX_DECLINED
                                                     ? NULL : "invalid_token")
               != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (rc == NGX_DECLINED) {
            return ngx_http_gate_access_deny(r, ctx, NGX_HTTP_UNAUTHORIZED,
                                             kind->code, "missing_credential",
                                             kind->missing);
        }

        if (rc != NGX_OK) {
            return ngx_http_gate_access_deny(r, ctx, NGX_HTTP_UNAUTHORIZED,
                                             kind->code,
                                             "malformed_credential",
                                             kind->invalid);
        }

        goto lookup;
    }

    switch (ngx_http_gate_credential_bearer(r, &credential)) {

    case NGX_HTTP_GATE_BEARER_MISSING:
        if (ngx_http_gate_access_bearer_challenge(r, glcf, NULL) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_gate_access_deny(r, ctx, NGX_HTTP_UNAUTHORIZED,
                                         kind->code, "missing_credential",
                                         kind->missing);

    case NGX_HTTP_GATE_BEARER_INVALID:
        goto malformed;

    default:
        break;
    }

    if (ngx_http_gate_credential_check(&credential, kind->prefix) != NGX_OK) {
        goto malformed;
    }

lookup:

    ngx_http_gate_credential_hash(&credential, ctx->hash);

    if (ctx->kind == NGX_HTTP_GATE_LOOKUP_SESSION) {
        ctx->miss = ngx_http_gate_session_fetch;
    }

    rc = ngx_http_gate_lookup(r, ctx, ctx->kind);

    if (rc == NGX_AGAIN) {
        return NGX_AGAIN;
    }

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return NGX_OK;

malformed:

    if (ngx_http_gate_access_bearer_challenge(r, glcf, "invalid_token")
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_gate_access_deny(r, ctx, NGX_HTTP_UNAUTHORIZED,
                                     kind->code, "malformed_credential",
                                     kind->invalid);
}


static ngx_int_t
ngx_http_gate_access_decide(ngx_http_request_t *r,
    ngx_http_gate_loc_conf_t *glcf, ngx_http_gate_ctx_t *ctx)
{
    const char                   *reason;
    ngx_http_gate_access_kind_t  *kind;

    kind = &ngx_http_gate_access_kinds[ctx->kind];

    switch (ctx->state) {

    case NGX_HTTP_GATE_STATE_ERROR:
        ngx_str_set(&ctx->decision, "error");

        return ngx_http_gate_access_deny(r, ctx,
                   NGX_HTTP_SERVICE_UNAVAILABLE, "unavailable", "unavailable",
                   "The credential store is unavailable; try again later.");

    case NGX_HTTP_GATE_STATE_UNKNOWN:
        reason = "unknown_credential";
        goto invalid;

    default:
        break;
    }

    if (ctx->record.exp <= ngx_time()) {
        reason = "expired_credential";
        goto invalid;
    }

    /* another tenant's credential: the answer an unknown one gets */

    if (ctx->tenant_id.len
        && !ngx_http_gate_access_same(&ctx->tenant_id, &ctx->record.tenant))
    {
        reason = "tenant_mismatch";
        goto invalid;
    }

    if (ctx->kind == NGX_HTTP_GATE_LOOKUP_TOKEN
        && !ngx_http_gate_access_has_scopes(glcf->scopes, &ctx->record.scope))
    {
        if (ngx_http_gate_access_bearer_challenge(r, glcf,
                                                  "insufficient_scope")
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_gate_access_deny(r, ctx, NGX_HTTP_FORBIDDEN,
                   "insufficient_scope", "insufficient_scope",
                   "The access token lacks a scope this endpoint requires.");
    }

    return ngx_http_gate_access_allow(r, ctx);

invalid:

    if (ngx_http_gate_access_bearer_challenge(r, glcf, "invalid_token")
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_gate_access_deny(r, ctx, NGX_HTTP_UNAUTHORIZED,
                                     kind->code, reason, kind->invalid);
}


/* Every required scope must be among the space-separated granted ones. */

static ngx_uint_t
ngx_http_gate_access_has_scopes(ngx_array_t *required, ngx_str_t *granted)
{
    u_char      *p, *last, *start;
    ngx_str_t   *scope;
    ngx_uint_t   i, found;

    if (required == NULL) {
        return 1;
    }

    scope = required->elts;
    last = granted->data + granted->len;

    for (i = 0; i < required->nelts; i++) {
        found = 0;
        p = granted->data;

        while (p < last && !found) {
            while (p < last && *p == ' ') {
                p++;
            }

            start = p;

            while (p < last && *p != ' ') {
                p++;
            }

            found = ((size_t) (p - start) == scope[i].len
                     && ngx_strncmp(start, scope[i].data, scope[i].len) == 0);
        }

        if (!found) {
            return 0;
        }
    }

    return 1;
}


static ngx_int_t
ngx_http_gate_access_allow(ngx_http_request_t *r, ngx_http_gate_ctx_t *ctx)
{
    ngx_str_set(&ctx->decision, "allow");

    if (ctx->tenant_id.len == 0) {
        ctx->tenant_id = ctx->record.tenant;
    }

    if (ngx_http_gate_headers_set(r, &ngx_http_gate_header_tenant,
                                  &ctx->record.tenant) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    switch (ctx->kind) {

    case NGX_HTTP_GATE_LOOKUP_KEY:
        ctx->key_id = ctx->record.id;

        if (ngx_http_gate_headers_set(r, &ngx_http_gate_header_key,
                                      &ctx->key_id) != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        break;

    case NGX_HTTP_GATE_LOOKUP_SESSION:
        if (ngx_http_gate_headers_set(r, &ngx_http_gate_header_subject,
                                      &ctx->record.subject) != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        break;

    default:
        ctx->token_id = ctx->record.id;

        if (ngx_http_gate_headers_set(r, &ngx_http_gate_header_subject,
                                      &ctx->record.subject) != NGX_OK
            || ngx_http_gate_headers_set(r, &ngx_http_gate_header_scopes,
                                         &ctx->record.scope) != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        break;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "gate: allowed for tenant \"%V\"", &ctx->record.tenant);

    return NGX_OK;
}


/*
 * Answers the request here and ends it.  NGX_DONE tells the phase engine
 * the request is taken care of.
 */

ngx_int_t
ngx_http_gate_access_deny(ngx_http_request_t *r, ngx_http_gate_ctx_t *ctx,
    ngx_uint_t status, const char *code, const char *reason,
    const char *message)
{
    ngx_int_t  rc;

    if (ctx->decision.len == 0) {
        ngx_str_set(&ctx->decision, "deny");
    }

    ctx->deny_reason.data = (u_char *) reason;
    ctx->deny_reason.len = ngx_strlen(reason);

    /* a denied request must not look like an identified one in logs */

    ngx_memzero(&ctx->record, sizeof(ngx_http_gate_record_t));
    ngx_str_null(&ctx->tenant_id);
    ngx_str_null(&ctx->token_id);
    ngx_str_null(&ctx->key_id);

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "gate: denied: %s", reason);

    rc = ngx_http_gate_json_error(r, status, code, message);

    ngx_http_finalize_request(r, rc);

    return NGX_DONE;
}


/*
 * RFC 6750, section 3: a bare "Bearer" when no credential came, the error
 * otherwise, and the scopes wanted when that was the problem.
 */

static ngx_int_t
ngx_http_gate_access_bearer_challenge(ngx_http_request_t *r,
    ngx_http_gate_loc_conf_t *glcf, const char *error)
{
    u_char           *p;
    size_t            len;
    ngx_uint_t        scope;
    ngx_table_elt_t  *h;

    scope = (error && glcf->scopes
             && ngx_strcmp(error, "insufficient_scope") == 0);

    len = sizeof("Bearer") - 1;

    if (error) {
        len += sizeof(" error=\"\"") - 1 + ngx_strlen(error);
    }

    if (scope) {
        len += sizeof(", scope=\"\"") - 1 + glcf->scope_list.len;
    }

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "WWW-Authenticate");
    h->value.data = p;

    p = ngx_cpymem(p, "Bearer", sizeof("Bearer") - 1);

    if (error) {
        p = ngx_sprintf(p, " error=\"%s\"", error);
    }

    if (scope) {
        p = ngx_sprintf(p, ", scope=\"%V\"", &glcf->scope_list);
    }

    h->value.len = p - h->value.data;

    r->headers_out.www_authenticate = h;

    return NGX_OK;
}


static ngx_uint_t
ngx_http_gate_access_has_key(ngx_http_request_t *r)
{
    ngx_table_elt_t  *h;

    h = r->headers_in.authorization;

    return h && h->value.len >= sizeof("Bearer gate_live_sk_") - 1
           && ngx_strncasecmp(h->value.data, (u_char *) "Bearer ", 7) == 0
           && ngx_strncmp(h->value.data + 7, "gate_live_sk_", 13) == 0;
}


/* Anything that could carry a key or a session: Authorization, cookies. */

static ngx_uint_t
ngx_http_gate_access_has_credential(ngx_http_request_t *r)
{
    ngx_str_t         name = ngx_string("x-session-token");
    ngx_table_elt_t  *h;

    /* a bearer that is no session (an access token, say) is none of these */

    h = r->headers_in.authorization;

    return (h && h->value.len > sizeof("Bearer ory_st_") - 1
            && ngx_strncasecmp(h->value.data, (u_char *) "Bearer ", 7) == 0
            && ngx_strncmp(h->value.data + 7, "ory_st_", 7) == 0)
           || r->headers_in.cookies.nelts != 0
           || ngx_http_gate_headers_find(r, &name, NULL) != NULL;
}


static ngx_uint_t
ngx_http_gate_access_same(ngx_str_t *a, ngx_str_t *b)
{
    return a->len == b->len && ngx_strncmp(a->data, b->data, a->len) == 0;
}
