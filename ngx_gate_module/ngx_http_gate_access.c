/*
 * Copyright (C) Gate authors
 */


/*
 * The access phase: who is calling, for which tenant, with which scopes.
 * Shaped like auth_request: the first call starts a lookup and returns
 * NGX_AGAIN; the lookup's callback re-runs the phases; the handler is
 * called again and decides.  Every denial is answered here with Gate's
 * JSON error, so no nginx error page ever stands in for it.
 */


#include "ngx_http_gate_access.h"
#include "ngx_http_gate_credential.h"
#include "ngx_http_gate_headers.h"
#include "ngx_http_gate_json.h"
#include "ngx_http_gate_lookup.h"


static ngx_int_t ngx_http_gate_access_start(ngx_http_request_t *r,
    ngx_http_gate_loc_conf_t *glcf, ngx_http_gate_ctx_t **ctxp);
static ngx_int_t ngx_http_gate_access_credential(ngx_http_request_t *r,
    ngx_http_gate_loc_conf_t *glcf, ngx_http_gate_ctx_t *ctx);
static ngx_int_t ngx_http_gate_access_decide(ngx_http_request_t *r,
    ngx_http_gate_loc_conf_t *glcf, ngx_http_gate_ctx_t *ctx);
static ngx_uint_t ngx_http_gate_access_has_scopes(ngx_array_t *required,
    ngx_str_t *granted);
static ngx_int_t ngx_http_gate_access_allow(ngx_http_request_t *r,
    ngx_http_gate_ctx_t *ctx);
static ngx_int_t ngx_http_gate_access_deny(ngx_http_request_t *r,
    ngx_http_gate_ctx_t *ctx, ngx_uint_t status, const char *code,
    const char *reason, const char *message);
static ngx_int_t ngx_http_gate_access_bearer_challenge(ngx_http_request_t *r,
    ngx_http_gate_loc_conf_t *glcf, const char *error);


static ngx_str_t  ngx_http_gate_header_tenant = ngx_string("X-Gate-Tenant-Id");
static ngx_str_t  ngx_http_gate_header_subject = ngx_string("X-Gate-Subject");
static ngx_str_t  ngx_http_gate_header_scopes = ngx_string("X-Gate-Scopes");
static ngx_str_t  ngx_http_gate_header_key = ngx_string("X-Gate-Key-Id");


/* What each kind of credential is called in errors. */

typedef struct {
    const char  *prefix;
    const char  *code;
    const char  *missing;
    const char  *invalid;
} ngx_http_gate_access_kind_t;


static ngx_http_gate_access_kind_t  ngx_http_gate_access_kinds[] = {
    { "gat_live_", "invalid_token",
      "An access token is required: Authorization: Bearer gat_live_...",
      "The access token is invalid." },
    { "gate_live_sk_", "invalid_key",
      "A secret key is required: Authorization: Bearer gate_live_sk_...",
      "The secret key is invalid." }
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

    switch (ctx->state) {

    case NGX_HTTP_GATE_STATE_NEW:
        return ngx_http_gate_access_credential(r, glcf, ctx);

    case NGX_HTTP_GATE_STATE_WAIT:
        return NGX_AGAIN;

    default:
        return ngx_http_gate_access_decide(r, glcf, ctx);
    }
}


static ngx_int_t
ngx_http_gate_access_start(ngx_http_request_t *r,
    ngx_http_gate_loc_conf_t *glcf, ngx_http_gate_ctx_t **ctxp)
{
    ngx_table_elt_t      *h;
    ngx_http_gate_ctx_t  *ctx;

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_gate_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->request = r;
    ngx_http_set_ctx(r, ctx, ngx_http_gate_module);
    *ctxp = ctx;

    /* the asked-for tenant is read before client X-Gate-* headers go */

    if (glcf->tenant == NGX_HTTP_GATE_TENANT_HEADER) {
        h = ngx_http_gate_headers_find(r, &glcf->tenant_header);
        if (h) {
            ctx->tenant_asked = h->value;
        }
    }

    if (ngx_http_gate_headers_strip(r) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (glcf->auth == NGX_HTTP_GATE_AUTH_OFF) {
        /* nothing to check here, but the headers above had to go */
        ctx->state = NGX_HTTP_GATE_STATE_FOUND;
        ngx_str_set(&ctx->decision, "allow");
        return NGX_DECLINED;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_gate_access_credential(ngx_http_request_t *r,
    ngx_http_gate_loc_conf_t *glcf, ngx_http_gate_ctx_t *ctx)
{
    ngx_int_t                     rc;
    ngx_str_t                     credential;
    ngx_http_gate_access_kind_t  *kind;

    ctx->kind = (glcf->auth == NGX_HTTP_GATE_AUTH_SECRET_KEY)
                ? NGX_HTTP_GATE_LOOKUP_KEY : NGX_HTTP_GATE_LOOKUP_TOKEN;
    kind = &ngx_http_gate_access_kinds[ctx->kind];

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

    ngx_http_gate_credential_hash(&credential, ctx->hash);

    rc = ngx_http_gate_lookup(r, ctx, ctx->kind);

    if (rc == NGX_AGAIN) {
        return NGX_AGAIN;
    }

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_gate_access_decide(r, glcf, ctx);

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
    const char  *reason;

    switch (ctx->state) {

    case NGX_HTTP_GATE_STATE_ERROR:
        ngx_str_set(&ctx->decision, "error");
        ngx_str_set(&ctx->deny_reason, "unavailable");

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

    if (glcf->tenant == NGX_HTTP_GATE_TENANT_HEADER) {

        if (ctx->tenant_asked.len == 0) {
            return ngx_http_gate_access_deny(r, ctx, NGX_HTTP_BAD_REQUEST,
                       "tenant_required", "tenant_required",
                       "This endpoint needs the tenant header.");
        }

        /* same answer as an unknown token: no oracle for other tenants */

        if (ctx->tenant_asked.len != ctx->record.tenant.len
            || ngx_strncmp(ctx->tenant_asked.data, ctx->record.tenant.data,
                           ctx->record.tenant.len) != 0)
        {
            reason = "tenant_mismatch";
            goto invalid;
        }
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
                               ngx_http_gate_access_kinds[ctx->kind].code,
                               reason,
                               ngx_http_gate_access_kinds[ctx->kind].invalid);
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

    if (ctx->kind == NGX_HTTP_GATE_LOOKUP_KEY) {
        ctx->key_id = ctx->record.id;

        if (ngx_http_gate_headers_set(r, &ngx_http_gate_header_tenant,
                                      &ctx->record.tenant) != NGX_OK
            || ngx_http_gate_headers_set(r, &ngx_http_gate_header_key,
                                         &ctx->key_id) != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return NGX_OK;
    }

    ctx->token_id = ctx->record.id;

    if (ngx_http_gate_headers_set(r, &ngx_http_gate_header_tenant,
                                  &ctx->record.tenant) != NGX_OK
        || ngx_http_gate_headers_set(r, &ngx_http_gate_header_subject,
                                     &ctx->record.subject) != NGX_OK
        || ngx_http_gate_headers_set(r, &ngx_http_gate_header_scopes,
                                     &ctx->record.scope) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "gate: allowed for tenant \"%V\"", &ctx->record.tenant);

    return NGX_OK;
}


/*
 * Answers the request here and ends it.  NGX_DONE tells the phase engine
 * the request is taken care of.
 */

static ngx_int_t
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

    ngx_str_null(&ctx->record.tenant);
    ngx_str_null(&ctx->record.subject);
    ngx_str_null(&ctx->record.scope);
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
