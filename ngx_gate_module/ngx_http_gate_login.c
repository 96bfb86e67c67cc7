/*
 * Copyright (C) Gate authors
 */


/*
 * A login through tenant B with the identifier of tenant A's user must
 * fail exactly as a wrong password does.  The login hook refuses such an
 * identity, but only after Kratos has checked its password, and Kratos
 * then answers (and records in the flow) something else than for a wrong
 * password: the password method active, the identifier cleared.  That
 * difference would tell B's caller whether A's user has that password.
 *
 * So on a flow-checked password login, Gate reads the identifier before
 * Kratos does and asks Kratos' admin API whose identity it names.  When it
 * is another tenant's (or no tenant's), the password is replaced by a
 * random one: Kratos itself then answers a wrong password, with its own
 * body, its own flow record and its own hashing time.  The login hook
 * stays as the second line of defence.
 */


#include <openssl/rand.h>
#include <jansson.h>

#include "ngx_http_gate_login.h"
#include "ngx_http_gate_access.h"
#include "ngx_http_gate_json.h"
#include "ngx_http_gate_kratos.h"


#define NGX_HTTP_GATE_LOGIN_BODY_MAX   16384

#define NGX_HTTP_GATE_LOGIN_JSON       1
#define NGX_HTTP_GATE_LOGIN_FORM       2


static void ngx_http_gate_login_body(ngx_http_request_t *r);
static ngx_uint_t ngx_http_gate_login_type(ngx_http_request_t *r);
static ngx_int_t ngx_http_gate_login_identifier(ngx_http_request_t *r,
    ngx_str_t *text, ngx_str_t *identifier);
static ngx_int_t ngx_http_gate_login_form_identifier(ngx_http_request_t *r,
    ngx_str_t *text, ngx_str_t *identifier);
static void ngx_http_gate_login_owner(ngx_http_request_t *r,
    ngx_uint_t status, ngx_str_t *body);
static ngx_uint_t ngx_http_gate_login_foreign(ngx_http_gate_ctx_t *ctx,
    json_t *identities);
static ngx_int_t ngx_http_gate_login_scramble(ngx_http_request_t *r);
static ngx_int_t ngx_http_gate_login_scramble_form(ngx_http_request_t *r,
    ngx_str_t *text, ngx_str_t *password, ngx_str_t *out);
static void ngx_http_gate_login_refuse(ngx_http_request_t *r,
    ngx_uint_t status);
static void ngx_http_gate_login_resume(ngx_http_request_t *r,
    ngx_uint_t state);


static ngx_str_t  ngx_http_gate_login_uri = ngx_string("/self-service/login");
static ngx_str_t  ngx_http_gate_login_path = ngx_string("/admin/identities");


ngx_int_t
ngx_http_gate_login_check(ngx_http_request_t *r,
    ngx_http_gate_loc_conf_t *glcf, ngx_http_gate_ctx_t *ctx)
{
    ngx_int_t                   rc;
    ngx_http_gate_main_conf_t  *gmcf;

    gmcf = ngx_http_get_module_main_conf(r, ngx_http_gate_module);

    if (glcf->flow != NGX_HTTP_GATE_FLOW_CHECK
        || r->method != NGX_HTTP_POST
        || gmcf->kratos_admin.len == 0
        || r->uri.len != ngx_http_gate_login_uri.len
        || ngx_strncmp(r->uri.data, ngx_http_gate_login_uri.data,
                       r->uri.len) != 0)
    {
        return NGX_OK;
    }

    switch (ctx->state) {

    case NGX_HTTP_GATE_STATE_NEW:
        ctx->state = NGX_HTTP_GATE_STATE_WAIT;

        /* the body handler goes on with the phases, as the mirror does */

        rc = ngx_http_read_client_request_body(r, ngx_http_gate_login_body);
        if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
            return rc;
        }

        ngx_http_finalize_request(r, NGX_DONE);
        return NGX_DONE;

    case NGX_HTTP_GATE_STATE_WAIT:
        return NGX_AGAIN;

    case NGX_HTTP_GATE_STATE_ERROR:
        ngx_str_set(&ctx->decision, "error");
        return ngx_http_gate_access_deny(r, ctx,
                   NGX_HTTP_SERVICE_UNAVAILABLE, "unavailable", "unavailable",
                   "The identity service is unavailable; try again later.");

    case NGX_HTTP_GATE_STATE_UNKNOWN:
        switch (ctx->refusal) {

        case NGX_HTTP_REQUEST_ENTITY_TOO_LARGE:
            return ngx_http_gate_access_deny(r, ctx, ctx->refusal,
                       "body_too_large", "login_body",
                       "The body is larger than 16 KiB.");

        case NGX_HTTP_UNSUPPORTED_MEDIA_TYPE:
            return ngx_http_gate_access_deny(r, ctx, ctx->refusal,
                       "unsupported_media_type", "login_body",
                       "Send the login as application/json or "
                       "application/x-www-form-urlencoded.");

        default:
            return ngx_http_gate_access_deny(r, ctx, NGX_HTTP_BAD_REQUEST,
                       "invalid_request", "login_body",
                       "The login body is malformed or names a field "
                       "twice.");
        }

    default:
        return NGX_OK;
    }
}


static void
ngx_http_gate_login_body(ngx_http_request_t *r)
{
    u_char     *p;
    ngx_int_t   rc;
    ngx_str_t   text, identifier, args;

    rc = ngx_http_gate_json_body(r, NGX_HTTP_GATE_LOGIN_BODY_MAX, &text);

    if (rc == NGX_DECLINED) {
        ngx_http_gate_login_refuse(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE);
        return;
    }

    if (rc == NGX_OK) {
        rc = ngx_http_gate_login_identifier(r, &text, &identifier);
    }

    if (rc == NGX_DECLINED) {
        /* not a password login: nothing to guard */
        ngx_http_gate_login_resume(r, NGX_HTTP_GATE_STATE_FOUND);
        return;
    }

    if (rc == NGX_ABORT) {
        ngx_http_gate_login_resume(r, NGX_HTTP_GATE_STATE_UNKNOWN);
        return;
    }

    if (rc != NGX_OK) {
        ngx_http_gate_login_resume(r, NGX_HTTP_GATE_STATE_ERROR);
        return;
    }

    /* no identity holds a NUL byte, and Kratos' PostgreSQL cannot say so */

    if (ngx_strlchr(identifier.data, identifier.data + identifier.len, '\0')
        != NULL)
    {
        ngx_http_gate_login_refuse(r, NGX_HTTP_BAD_REQUEST);
        return;
    }

    /* Kratos normalises the identifier for this lookup as for the login */

    args.len = sizeof("credentials_identifier=") - 1
               + identifier.len
               + 2 * ngx_escape_uri(NULL, identifier.data, identifier.len,
                                    NGX_ESCAPE_ARGS);
    args.data = ngx_pnalloc(r->pool, args.len);
    if (args.data == NULL) {
        ngx_http_gate_login_resume(r, NGX_HTTP_GATE_STATE_ERROR);
        return;
    }

    p = ngx_cpymem(args.data, "credentials_identifier=",
                   sizeof("credentials_identifier=") - 1);
    ngx_escape_uri(p, identifier.data, identifier.len, NGX_ESCAPE_ARGS);

    if (ngx_http_gate_kratos_call(r, NGX_HTTP_GATE_KRATOS_GET,
                                  &ngx_http_gate_login_path, &args, NULL,
                                  ngx_http_gate_login_owner)
        != NGX_OK)
    {
        ngx_http_gate_login_resume(r, NGX_HTTP_GATE_STATE_ERROR);
    }
}


static ngx_uint_t
ngx_http_gate_login_type(ngx_http_request_t *r)
{
    ngx_str_t  *type;

    if (r->headers_in.content_type == NULL) {
        return 0;
    }

    type = &r->headers_in.content_type->value;

    if (type->len >= sizeof("application/json") - 1
        && ngx_strncasecmp(type->data, (u_char *) "application/json",
                           sizeof("application/json") - 1) == 0)
    {
        return NGX_HTTP_GATE_LOGIN_JSON;
    }

    if (type->len >= sizeof("application/x-www-form-urlencoded") - 1
        && ngx_strncasecmp(type->data,
                           (u_char *) "application/x-www-form-urlencoded",
                           sizeof("application/x-www-form-urlencoded") - 1)
           == 0)
    {
        return NGX_HTTP_GATE_LOGIN_FORM;
    }

    return 0;
}


/*
 * The identifier of a password login, read as Kratos reads it: "method"
 * must be "password", "identifier" wins over the older
 * "password_identifier".  NGX_DECLINED: another method.  A body Gate
 * cannot read for certain is refused rather than passed: what Gate cannot
 * read it cannot guard.
 */

static ngx_int_t
ngx_http_gate_login_identifier(ngx_http_request_t *r, ngx_str_t *text,
    ngx_str_t *identifier)
{
    json_t               *root, *method, *id;
    ngx_http_gate_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_gate_module);

    switch (ngx_http_gate_login_type(r)) {

    case NGX_HTTP_GATE_LOGIN_FORM:
        return ngx_http_gate_login_form_identifier(r, text, identifier);

    case NGX_HTTP_GATE_LOGIN_JSON:
        break;

    default:
        ctx->refusal = NGX_HTTP_UNSUPPORTED_MEDIA_TYPE;
        return NGX_ABORT;
    }

    /* Go keeps the last of duplicate members, jansson refuses them */

    root = json_loadb((char *) text->data, text->len, JSON_REJECT_DUPLICATES,
                      NULL);

    if (!json_is_object(root)) {
        json_decref(root);
        ctx->refusal = NGX_HTTP_BAD_REQUEST;
        return NGX_ABORT;
    }

    method = json_object_get(root, "method");

    if (!json_is_string(method)
        || ngx_strcmp(json_string_value(method), "password") != 0)
    {
        json_decref(root);
        return NGX_DECLINED;
    }

    id = json_object_get(root, "identifier");

    if (!json_is_string(id) || json_string_length(id) == 0) {
        id = json_object_get(root, "password_identifier");
    }

    if (!json_is_string(id) || json_string_length(id) == 0) {
        json_decref(root);
        return NGX_DECLINED;
    }

    identifier->len = json_string_length(id);
    identifier->data = ngx_pnalloc(r->pool, identifier->len);
    if (identifier->data == NULL) {
        json_decref(root);
        return NGX_ERROR;
    }

    ngx_memcpy(identifier->data, json_string_value(id), identifier->len);
    json_decref(root);

    return NGX_OK;
}


static ngx_int_t
ngx_http_gate_login_form_identifier(ngx_http_request_t *r, ngx_str_t *text,
    ngx_str_t *identifier)
{
    ngx_int_t             rc;
    ngx_str_t             method;
    ngx_uint_t            i;
    ngx_http_gate_ctx_t  *ctx;

    static const char    *names[] = { "identifier", "password_identifier" };

    ctx = ngx_http_get_module_ctx(r, ngx_http_gate_module);

    rc = ngx_http_gate_form_value(text, "method", r->pool, &method);

    if (rc == NGX_OK
        && (method.len != sizeof("password") - 1
            || ngx_strncmp(method.data, "password", method.len) != 0))
    {
        return NGX_DECLINED;
    }

    if (rc == NGX_DECLINED) {
        return NGX_DECLINED;
    }

    if (rc != NGX_OK) {
        goto refused;
    }

    for (i = 0; i < 2; i++) {
        rc = ngx_http_gate_form_value(text, names[i], r->pool, identifier);

        if (rc == NGX_OK && identifier->len) {
            return NGX_OK;
        }

        if (rc == NGX_BUSY) {
            goto refused;
        }

        if (rc == NGX_ERROR) {
            return NGX_ERROR;
        }
    }

    return NGX_DECLINED;

refused:

    ctx->refusal = NGX_HTTP_BAD_REQUEST;
    return NGX_ABORT;
}


/* Kratos named the identities that hold the identifier (none, or one). */

static void
ngx_http_gate_login_owner(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *body)
{
    json_t               *identities;
    ngx_uint_t            foreign;
    ngx_http_gate_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_gate_module);

    identities = (status == NGX_HTTP_OK && body->len)
                 ? json_loadb((char *) body->data, body->len, 0, NULL)
                 : NULL;

    if (!json_is_array(identities)) {
        json_decref(identities);
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "gate: kratos identifier lookup answered %ui", status);
        ngx_http_gate_login_resume(r, NGX_HTTP_GATE_STATE_ERROR);
        return;
    }

    foreign = ngx_http_gate_login_foreign(ctx, identities);
    json_decref(identities);

    if (foreign && ngx_http_gate_login_scramble(r) != NGX_OK) {
        ngx_http_gate_login_resume(r, NGX_HTTP_GATE_STATE_ERROR);
        return;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "gate: login identifier is %s",
                   foreign ? "another tenant's" : "not another tenant's");

    ngx_http_gate_login_resume(r, NGX_HTTP_GATE_STATE_FOUND);
}


static ngx_uint_t
ngx_http_gate_login_foreign(ngx_http_gate_ctx_t *ctx, json_t *identities)
{
    size_t   i;
    json_t  *identity, *tenant;

    json_array_foreach(identities, i, identity) {
        tenant = json_object_get(json_object_get(
                     json_object_get(identity, "metadata_admin"), "gate"),
                     "tenant_id");

        /* an identity bound to no tenant is no tenant's to log into */

        if (!json_is_string(tenant)
            || json_string_length(tenant) != ctx->flow_tenant.len
            || ngx_strncasecmp((u_char *) json_string_value(tenant),
                               ctx->flow_tenant.data, ctx->flow_tenant.len)
               != 0)
        {
            return 1;
        }
    }

    return 0;
}


/* The body goes on to Kratos with a password nobody knows. */

static ngx_int_t
ngx_http_gate_login_scramble(ngx_http_request_t *r)
{
    u_char        random[16], *hex;
    json_t       *root;
    ngx_int_t     rc;
    ngx_str_t     text, password, out;

    if (RAND_bytes(random, sizeof(random)) != 1) {
        return NGX_ERROR;
    }

    hex = ngx_pnalloc(r->pool, 2 * sizeof(random));
    if (hex == NULL) {
        return NGX_ERROR;
    }

    password.data = hex;
    password.len = ngx_hex_dump(hex, random, sizeof(random)) - hex;

    if (ngx_http_gate_json_body(r, NGX_HTTP_GATE_LOGIN_BODY_MAX, &text)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ngx_http_gate_login_type(r) == NGX_HTTP_GATE_LOGIN_FORM) {
        rc = ngx_http_gate_login_scramble_form(r, &text, &password, &out);

    } else {
        root = json_loadb((char *) text.data, text.len, 0, NULL);

        rc = (json_object_set_new(root, "password",
                                  json_stringn((char *) password.data,
                                               password.len))
              == 0)
             ? ngx_http_gate_json_dump(r->pool, root, &out) : NGX_ERROR;

        json_decref(root);
    }

    if (rc != NGX_OK) {
        return NGX_ERROR;
    }

    if (ngx_http_gate_json_set_body(r, &out) != NGX_OK) {
        return NGX_ERROR;
    }

    if (r->headers_in.content_length) {
        r->headers_in.content_length->value.data = ngx_pnalloc(r->pool,
                                                       NGX_OFF_T_LEN);
        if (r->headers_in.content_length->value.data == NULL) {
            return NGX_ERROR;
        }

        r->headers_in.content_length->value.len =
            ngx_sprintf(r->headers_in.content_length->value.data, "%O",
                        (off_t) out.len)
            - r->headers_in.content_length->value.data;
    }

    return NGX_OK;
}


/* Every "password" of the form replaced; every other field as it came. */

static ngx_int_t
ngx_http_gate_login_scramble_form(ngx_http_request_t *r, ngx_str_t *text,
    ngx_str_t *password, ngx_str_t *out)
{
    u_char      *p, *last, *end, *eq, *o;
    ngx_str_t    key;
    ngx_uint_t   pass, n;

    /* a first pass counts the fields to replace, a second writes */

    n = 0;

    for (pass = 0; pass < 2; pass++) {

        if (pass == 1) {
            out->data = ngx_pnalloc(r->pool, text->len
                                    + n * (sizeof("password=") + password->len));
            if (out->data == NULL) {
                return NGX_ERROR;
            }
        }

        o = out->data;
        p = text->data;
        last = p + text->len;

        while (p < last) {
            end = ngx_strlchr(p, last, '&');
            end = end ? end : last;
            eq = ngx_strlchr(p, end, '=');
            eq = eq ? eq : end;

            if (ngx_http_gate_form_decode(r->pool, p, eq - p, &key)
                != NGX_OK)
            {
                return NGX_ERROR;
            }

            if (key.len == sizeof("password") - 1
                && ngx_strncmp(key.data, "password", key.len) == 0)
            {
                if (pass == 0) {
                    n++;

                } else {
                    o = ngx_cpymem(o, "password=", sizeof("password=") - 1);
                    o = ngx_cpymem(o, password->data, password->len);
                }

            } else if (pass == 1) {
                o = ngx_cpymem(o, p, end - p);
            }

            if (pass == 1 && end < last) {
                *o++ = '&';
            }

            p = end + 1;
        }
    }

    out->len = o - out->data;

    return NGX_OK;
}


static void
ngx_http_gate_login_refuse(ngx_http_request_t *r, ngx_uint_t status)
{
    ngx_http_gate_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_gate_module);
    ctx->refusal = status;

    ngx_http_gate_login_resume(r, NGX_HTTP_GATE_STATE_UNKNOWN);
}


/* Back to the access phase, which reads the state. */

static void
ngx_http_gate_login_resume(ngx_http_request_t *r, ngx_uint_t state)
{
    ngx_http_gate_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_gate_module);

    if (state == NGX_HTTP_GATE_STATE_UNKNOWN && ctx->refusal == 0) {
        ctx->refusal = NGX_HTTP_BAD_REQUEST;
    }

    ctx->state = state;

    r->write_event_handler = ngx_http_core_run_phases;
    ngx_http_core_run_phases(r);
}
