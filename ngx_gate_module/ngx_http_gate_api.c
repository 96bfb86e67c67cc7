/*
 * Copyright (C) Gate authors
 */


/*
 * The Gate REST API for identities (gate_api identities): Kratos' admin
 * identity API, scoped to the tenant of the secret key.  Kratos'
 * metadata_admin.gate.tenant_id is the truth about who owns an identity:
 * every {id} route reads the identity from Kratos first and answers 404
 * unless it is the caller's, so another tenant's identity, an unknown id
 * and a malformed one look the same.  PostgreSQL's identities table is an
 * index for listing, written after Kratos and undone in Kratos if it
 * cannot be written.
 */


#include <jansson.h>

#include "ngx_http_gate_api.h"
#include "ngx_http_gate_json.h"
#include "ngx_http_gate_kratos.h"
#include "ngx_http_gate_pg.h"
#include "ngx_http_gate_redis.h"
#include "ngx_http_gate_token.h"


#define NGX_HTTP_GATE_API_BODY_MAX      65536
#define NGX_HTTP_GATE_API_PASSWORD_MIN  8
#define NGX_HTTP_GATE_API_PAGE_DEFAULT  100
#define NGX_HTTP_GATE_API_PAGE_MAX      500

#define NGX_HTTP_GATE_OP_CREATE         0
#define NGX_HTTP_GATE_OP_GET            1
#define NGX_HTTP_GATE_OP_LIST           2
#define NGX_HTTP_GATE_OP_REPLACE        3
#define NGX_HTTP_GATE_OP_PATCH          4
#define NGX_HTTP_GATE_OP_DELETE         5
#define NGX_HTTP_GATE_OP_TOKENS         6


typedef struct {
    ngx_uint_t                  op;
    ngx_str_t                   tenant;
    ngx_str_t                   id;
    ngx_str_t                   path;          /* /admin/identities[/id] */
    json_t                     *body;          /* the client's, parsed */
    json_t                     *identity;      /* Kratos' answer */
    ngx_http_gate_pg_query_t   *query;

    ngx_uint_t                  page_size;
    ngx_str_t                   page_token;
    ngx_str_t                   next_token;
    ngx_int_t                   rc;            /* of a refusal's output */
} ngx_http_gate_api_t;


static ngx_int_t ngx_http_gate_api_route(ngx_http_request_t *r,
    ngx_http_gate_api_t *api);
static ngx_int_t ngx_http_gate_api_refuse(ngx_http_gate_api_t *api,
    ngx_http_request_t *r, ngx_uint_t status, const char *code,
    const char *message);
static ngx_int_t ngx_http_gate_api_list_args(ngx_http_request_t *r,
    ngx_http_gate_api_t *api, ngx_str_t *identifier);
static void ngx_http_gate_api_body_ready(ngx_http_request_t *r);
static ngx_int_t ngx_http_gate_api_check_body(ngx_http_request_t *r,
    ngx_http_gate_api_t *api);
static ngx_int_t ngx_http_gate_api_check_patch(ngx_http_request_t *r,
    json_t *patch);
static ngx_uint_t ngx_http_gate_api_patchable(const char *pointer);
static ngx_int_t ngx_http_gate_api_start(ngx_http_request_t *r,
    ngx_http_gate_api_t *api);
static ngx_int_t ngx_http_gate_api_create(ngx_http_request_t *r,
    ngx_http_gate_api_t *api);
static void ngx_http_gate_api_created(ngx_http_request_t *r,
    ngx_uint_t status, ngx_str_t *body);
static void ngx_http_gate_api_indexed(void *data, PGresult *res);
static void ngx_http_gate_api_compensated(ngx_http_request_t *r,
    ngx_uint_t status, ngx_str_t *body);
static void ngx_http_gate_api_owner_fetched(ngx_http_request_t *r,
    ngx_uint_t status, ngx_str_t *body);
static void ngx_http_gate_api_mutated(ngx_http_request_t *r,
    ngx_uint_t status, ngx_str_t *body);
static void ngx_http_gate_api_deleted(ngx_http_request_t *r,
    ngx_uint_t status, ngx_str_t *body);
static void ngx_http_gate_api_unindexed(void *data, PGresult *res);
static void ngx_http_gate_api_listed_ids(void *data, PGresult *res);
static void ngx_http_gate_api_listed(ngx_http_request_t *r,
    ngx_uint_t status, ngx_str_t *body);
static ngx_uint_t ngx_http_gate_api_owned(ngx_http_gate_api_t *api,
    json_t *identity);
static json_t *ngx_http_gate_api_load(ngx_http_request_t *r, ngx_str_t *text);
static void ngx_http_gate_api_json_cleanup(void *data);
static ngx_int_t ngx_http_gate_api_pg(ngx_http_request_t *r,
    ngx_uint_t statement, ngx_uint_t n, ngx_str_t *params,
    ngx_http_gate_pg_handler_pt handler);
static void ngx_http_gate_api_index_redis(ngx_http_gate_api_t *api,
    ngx_uint_t set);
static void ngx_http_gate_api_respond(ngx_http_request_t *r,
    ngx_uint_t status, json_t *value);
static void ngx_http_gate_api_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *message);
static void ngx_http_gate_api_kratos_error(ngx_http_request_t *r,
    ngx_uint_t status, ngx_str_t *body);
static void ngx_http_gate_api_finish(ngx_http_request_t *r, ngx_int_t rc);


static ngx_str_t  ngx_http_gate_api_prefix = ngx_string("/v1/gate/identities");


ngx_int_t
ngx_http_gate_api_handler(ngx_http_request_t *r)
{
    ngx_int_t             rc;
    ngx_http_gate_ctx_t  *ctx;
    ngx_http_gate_api_t  *api;

    ctx = ngx_http_get_module_ctx(r, ngx_http_gate_module);

    if (ctx == NULL || ctx->tenant_id.len == 0) {
        /* the access phase lets nobody through without a tenant */
        return NGX_HTTP_FORBIDDEN;
    }

    api = ngx_pcalloc(r->pool, sizeof(ngx_http_gate_api_t));
    if (api == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->api = api;
    api->tenant = ctx->tenant_id;

    rc = ngx_http_gate_api_route(r, api);

    if (rc == NGX_DECLINED) {
        /* refused, and already answered */
        return api->rc;
    }

    if (rc != NGX_OK) {
        return rc;
    }

    if (api->op == NGX_HTTP_GATE_OP_CREATE
        || api->op == NGX_HTTP_GATE_OP_REPLACE
        || api->op == NGX_HTTP_GATE_OP_PATCH)
    {
        if (r->headers_in.content_type == NULL
            || ngx_strncasecmp(r->headers_in.content_type->value.data,
                               (u_char *) "application/json",
                               sizeof("application/json") - 1) != 0)
        {
            if (api->op != NGX_HTTP_GATE_OP_PATCH
                || r->headers_in.content_type == NULL
                || ngx_strncasecmp(r->headers_in.content_type->value.data,
                                (u_char *) "application/json-patch+json",
                                sizeof("application/json-patch+json") - 1)
                   != 0)
            {
                return ngx_http_gate_json_error(r,
                           NGX_HTTP_UNSUPPORTED_MEDIA_TYPE,
                           "unsupported_media_type",
                           "Send the body as application/json.");
            }
        }

        if (r->headers_in.content_length_n > NGX_HTTP_GATE_API_BODY_MAX) {
            return ngx_http_gate_json_error(r,
                       NGX_HTTP_REQUEST_ENTITY_TOO_LARGE, "body_too_large",
                       "The body is larger than 64 KiB.");
        }

        rc = ngx_http_read_client_request_body(r,
                                               ngx_http_gate_api_body_ready);
        if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
            return rc;
        }

        return NGX_DONE;
    }

    r->main->count++;

    rc = ngx_http_gate_api_start(r, api);
    if (rc != NGX_OK) {
        ngx_http_gate_api_finish(r, rc);
    }

    return NGX_DONE;
}


static ngx_int_t
ngx_http_gate_api_route(ngx_http_request_t *r, ngx_http_gate_api_t *api)
{
    u_char     *p;
    size_t      len;
    ngx_str_t   identifier;

    if (r->uri.len < ngx_http_gate_api_prefix.len
        || ngx_strncmp(r->uri.data, ngx_http_gate_api_prefix.data,
                       ngx_http_gate_api_prefix.len) != 0)
    {
        return ngx_http_gate_api_refuse(api, r, NGX_HTTP_NOT_FOUND,
                                        "not_found", "Not found.");
    }

    p = r->uri.data + ngx_http_gate_api_prefix.len;
    len = r->uri.len - ngx_http_gate_api_prefix.len;

    if (len == 0 || (len == 1 && *p == '/')) {

        ngx_str_set(&api->path, "/admin/identities");

        switch (r->method) {

        case NGX_HTTP_POST:
            api->op = NGX_HTTP_GATE_OP_CREATE;
            return NGX_OK;

        case NGX_HTTP_GET:
            api->op = NGX_HTTP_GATE_OP_LIST;

            if (ngx_http_gate_api_list_args(r, api, &identifier) != NGX_OK) {
                return ngx_http_gate_api_refuse(api, r, NGX_HTTP_BAD_REQUEST,
                           "invalid_request",
                           "page_size must be 1 to 500 and page_token an "
                           "identity id from a Link header.");
            }

            /* PostgreSQL (Kratos') holds no NUL: the search could not be */

            if (ngx_http_arg(r, (u_char *) "credentials_identifier", 22,
                             &identifier) == NGX_OK
                && ngx_strlcasestrn(identifier.data,
                                    identifier.data + identifier.len,
                                    (u_char *) "%00", 3 - 1) != NULL)
            {
                return ngx_http_gate_api_refuse(api, r, NGX_HTTP_BAD_REQUEST,
                           "invalid_request",
                           "credentials_identifier holds a NUL byte.");
            }

            return NGX_OK;

        default:
            api->rc = ngx_http_gate_json_not_allowed(r, "GET, POST",
                                                     "Use GET or POST here.");
            return NGX_DECLINED;
        }
    }

    /* a subject's tokens: "/" + a UUID + "/tokens" */

    if (len == 1 + NGX_HTTP_GATE_UUID_LEN + sizeof("/tokens") - 1
        && *p == '/'
        && ngx_strncmp(p + 1 + NGX_HTTP_GATE_UUID_LEN, "/tokens", 7) == 0
        && ngx_http_gate_kratos_is_uuid(p + 1, NGX_HTTP_GATE_UUID_LEN))
    {
        api->id.data = p + 1;
        api->id.len = NGX_HTTP_GATE_UUID_LEN;

        if (r->method != NGX_HTTP_GET && r->method != NGX_HTTP_DELETE) {
            api->rc = ngx_http_gate_json_not_allowed(r, "GET, DELETE",
                                                     "Use GET or DELETE here.");
            return NGX_DECLINED;
        }

        api->op = NGX_HTTP_GATE_OP_TOKENS;
        return NGX_OK;
    }

    /* one identity: "/" + a UUID; anything else is no identity at all */

    if (*p != '/' || !ngx_http_gate_kratos_is_uuid(p + 1, len - 1)) {
        return ngx_http_gate_api_refuse(api, r, NGX_HTTP_NOT_FOUND,
                                        "not_found", "No such identity.");
    }

    api->id.data = p + 1;
    api->id.len = NGX_HTTP_GATE_UUID_LEN;

    api->path.len = sizeof("/admin/identities/") - 1 + api->id.len;
    api->path.data = ngx_pnalloc(r->pool, api->path.len);
    if (api->path.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memcpy(ngx_cpymem(api->path.data, "/admin/identities/",
                          sizeof("/admin/identities/") - 1),
               api->id.data, api->id.len);

    switch (r->method) {

    case NGX_HTTP_GET:
        api->op = NGX_HTTP_GATE_OP_GET;
        return NGX_OK;

    case NGX_HTTP_PUT:
        api->op = NGX_HTTP_GATE_OP_REPLACE;
        return NGX_OK;

    case NGX_HTTP_PATCH:
        api->op = NGX_HTTP_GATE_OP_PATCH;
        return NGX_OK;

    case NGX_HTTP_DELETE:
        api->op = NGX_HTTP_GATE_OP_DELETE;
        return NGX_OK;

    default:
        api->rc = ngx_http_gate_json_not_allowed(r, "GET, PUT, PATCH, DELETE",
                                                 "Use GET, PUT, PATCH or "
                                                 "DELETE here.");
        return NGX_DECLINED;
    }
}


/* Answers a request that routing refused; NGX_DECLINED says it is done. */

static ngx_int_t
ngx_http_gate_api_refuse(ngx_http_gate_api_t *api, ngx_http_request_t *r,
    ngx_uint_t status, const char *code, const char *message)
{
    api->rc = ngx_http_gate_json_error(r, status, code, message);

    return NGX_DECLINED;
}


static ngx_int_t
ngx_http_gate_api_list_args(ngx_http_request_t *r, ngx_http_gate_api_t *api,
    ngx_str_t *identifier)
{
    ngx_int_t  n;
    ngx_str_t  value;

    api->page_size = NGX_HTTP_GATE_API_PAGE_DEFAULT;

    if (ngx_http_arg(r, (u_char *) "page_size", 9, &value) == NGX_OK) {
        n = ngx_atoi(value.data, value.len);
        if (n < 1 || n > NGX_HTTP_GATE_API_PAGE_MAX) {
            return NGX_ERROR;
        }

        api->page_size = n;
    }

    if (ngx_http_arg(r, (u_char *) "page_token", 10, &value) == NGX_OK
        && value.len)
    {
        if (!ngx_http_gate_kratos_is_uuid(value.data, value.len)) {
            return NGX_ERROR;
        }

        api->page_token = value;
    }

    return NGX_OK;
}


static void
ngx_http_gate_api_body_ready(ngx_http_request_t *r)
{
    ngx_int_t             rc;
    ngx_str_t             text;
    ngx_http_gate_ctx_t  *ctx;
    ngx_http_gate_api_t  *api;

    ctx = ngx_http_get_module_ctx(r, ngx_http_gate_module);
    api = ctx->api;

    rc = ngx_http_gate_json_body(r, NGX_HTTP_GATE_API_BODY_MAX, &text);

    if (rc == NGX_DECLINED) {
        ngx_http_gate_api_error(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                "body_too_large",
                                "The body is larger than 64 KiB.");
        return;
    }

    if (rc != NGX_OK) {
        ngx_http_gate_api_finish(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    api->body = ngx_http_gate_api_load(r, &text);
    if (api->body == NULL) {
        ngx_http_gate_api_error(r, NGX_HTTP_BAD_REQUEST, "invalid_json",
                                "The body is not valid JSON.");
        return;
    }

    if (ngx_http_gate_api_check_body(r, api) != NGX_OK) {
        return;
    }

    rc = ngx_http_gate_api_start(r, api);
    if (rc != NGX_OK) {
        ngx_http_gate_api_finish(r, rc);
    }
}


/*
 * What a tenant may send.  metadata_admin is Gate's (it holds the tenant),
 * and only the "user" schema is for tenants' end users.
 */

static ngx_int_t
ngx_http_gate_api_check_body(ngx_http_request_t *r, ngx_http_gate_api_t *api)
{
    u_char       *message, *last;
    json_t       *schema, *value;
    const char   *key, *allowed[8];
    ngx_uint_t    i, ok;

    if (api->op == NGX_HTTP_GATE_OP_PATCH) {
        return ngx_http_gate_api_check_patch(r, api->body);
    }

    if (!json_is_object(api->body)) {
        ngx_http_gate_api_error(r, NGX_HTTP_BAD_REQUEST, "invalid_json",
                                "The body must be a JSON object.");
        return NGX_ERROR;
    }

    allowed[0] = "schema_id";
    allowed[1] = "traits";
    allowed[2] = "credentials";
    allowed[3] = "state";
    allowed[4] = "metadata_public";
    allowed[5] = "verifiable_addresses";
    allowed[6] = "recovery_addresses";
    allowed[7] = NULL;

    json_object_foreach(api->body, key, value) {

        if (ngx_strcmp(key, "metadata_admin") == 0) {
            ngx_http_gate_api_error(r, NGX_HTTP_UNPROCESSABLE_ENTITY,
                                    "metadata_admin_forbidden",
                                    "metadata_admin belongs to Gate; "
                                    "use metadata_public.");
            return NGX_ERROR;
        }

        ok = 0;

        for (i = 0; allowed[i]; i++) {
            if (ngx_strcmp(key, allowed[i]) == 0) {
                ok = 1;
                break;
            }
        }

        if (api->op == NGX_HTTP_GATE_OP_REPLACE && i >= 5) {
            ok = 0;
        }

        if (!ok) {
            message = ngx_pnalloc(r->pool, 128);
            if (message == NULL) {
                ngx_http_gate_api_finish(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
                return NGX_ERROR;
            }

            last = ngx_snprintf(message, 127, "Unknown field \"%s\".", key);
            *last = '\0';

            ngx_http_gate_api_error(r, NGX_HTTP_UNPROCESSABLE_ENTITY,
                                    "unknown_field", (char *) message);
            return NGX_ERROR;
        }
    }

    schema = json_object_get(api->body, "schema_id");

    if (schema == NULL) {
        json_object_set_new(api->body, "schema_id", json_string("user"));

    } else if (!json_is_string(schema)
               || ngx_strcmp(json_string_value(schema), "user") != 0)
    {
        ngx_http_gate_api_error(r, NGX_HTTP_UNPROCESSABLE_ENTITY,
                                "invalid_schema",
                                "schema_id must be \"user\".");
        return NGX_ERROR;
    }

    /*
     * Kratos' admin API takes any password (imports are trusted); a tenant
     * creating users through Gate gets the floor self-service has.
     */

    value = json_object_get(json_object_get(json_object_get(
                json_object_get(api->body, "credentials"), "password"),
                "config"), "password");

    if (value && (!json_is_string(value)
                  || json_string_length(value)
                     < NGX_HTTP_GATE_API_PASSWORD_MIN))
    {
        ngx_http_gate_api_error(r, NGX_HTTP_UNPROCESSABLE_ENTITY,
                                "weak_password",
                                "The password must have at least 8 "
                                "characters.");
        return NGX_ERROR;
    }

    if (!json_is_object(json_object_get(api->body, "traits"))) {
        ngx_http_gate_api_error(r, NGX_HTTP_UNPROCESSABLE_ENTITY,
                                "invalid_traits",
                                "traits must be an object.");
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * A JSON Patch may touch only the tenant's parts of an identity.  An
 * allowlist of exact member names, not a denylist: Kratos applies the
 * patch to JSON and reads the result back case-insensitively, so
 * "/Metadata_Admin" would otherwise reach metadata_admin.
 */

static ngx_int_t
ngx_http_gate_api_check_patch(ngx_http_request_t *r, json_t *patch)
{
    size_t       i, k;
    json_t      *op, *path;
    const char  *fields[2];

    if (!json_is_array(patch) || json_array_size(patch) == 0) {
        ngx_http_gate_api_error(r, NGX_HTTP_BAD_REQUEST, "invalid_json",
                                "The body must be a JSON Patch array.");
        return NGX_ERROR;
    }

    fields[0] = "path";
    fields[1] = "from";

    json_array_foreach(patch, i, op) {

        if (!json_is_object(op)
            || !json_is_string(json_object_get(op, "op"))
            || !json_is_string(json_object_get(op, "path")))
        {
            ngx_http_gate_api_error(r, NGX_HTTP_BAD_REQUEST, "invalid_json",
                                    "Each patch operation needs op and "
                                    "path.");
            return NGX_ERROR;
        }

        for (k = 0; k < 2; k++) {
            path = json_object_get(op, fields[k]);

            if (path == NULL) {
                continue;
            }

            if (!json_is_string(path)
                || !ngx_http_gate_api_patchable(json_string_value(path)))
            {
                ngx_http_gate_api_error(r, NGX_HTTP_UNPROCESSABLE_ENTITY,
                                        "forbidden_path",
                                        "A patch may touch only /traits, "
                                        "/state, /metadata_public, "
                                        "/verifiable_addresses and "
                                        "/recovery_addresses.");
                return NGX_ERROR;
            }
        }
    }

    return NGX_OK;
}


/* The first member of a JSON Pointer, "~1"/"~0" undone, exactly one of ours */

static ngx_uint_t
ngx_http_gate_api_patchable(const char *pointer)
{
    u_char       member[32], *q;
    const char  *p;
    ngx_uint_t   i;

    static const char  *allowed[] = {
        "traits", "state", "metadata_public", "verifiable_addresses",
        "recovery_addresses", NULL
    };

    if (pointer[0] != '/') {
        return 0;
    }

    q = member;

    for (p = pointer + 1; *p && *p != '/'; p++) {
        if (q == member + sizeof(member) - 1) {
            return 0;
        }

        if (*p == '~') {
            if (p[1] != '0' && p[1] != '1') {
                return 0;
            }

            *q++ = (p[1] == '1') ? '/' : '~';
            p++;
            continue;
        }

        *q++ = *p;
    }

    *q = '\0';

    for (i = 0; allowed[i]; i++) {
        if (ngx_strcmp(member, allowed[i]) == 0) {
            return 1;
        }
    }

    return 0;
}


static ngx_int_t
ngx_http_gate_api_start(ngx_http_request_t *r, ngx_http_gate_api_t *api)
{
    ngx_str_t   params[3], args;
    u_char      size[NGX_INT_T_LEN];
    ngx_str_t   identifier;

    switch (api->op) {

    case NGX_HTTP_GATE_OP_CREATE:
        return ngx_http_gate_api_create(r, api);

    case NGX_HTTP_GATE_OP_TOKENS:
        return ngx_http_gate_tokens_of_subject(r, &api->tenant, &api->id)
               == NGX_OK ? NGX_OK : NGX_HTTP_SERVICE_UNAVAILABLE;

    case NGX_HTTP_GATE_OP_LIST:

        if (ngx_http_arg(r, (u_char *) "credentials_identifier", 22,
                         &identifier) == NGX_OK && identifier.len)
        {
            /* Kratos searches everyone; the answer is filtered below */

            args.len = sizeof("credentials_identifier=") - 1 + identifier.len;
            args.data = ngx_pnalloc(r->pool, args.len);
            if (args.data == NULL) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            ngx_memcpy(ngx_cpymem(args.data, "credentials_identifier=",
                                  sizeof("credentials_identifier=") - 1),
                       identifier.data, identifier.len);

            return ngx_http_gate_kratos_call(r, NGX_HTTP_GATE_KRATOS_GET,
                                             &api->path, &args, NULL,
                                             ngx_http_gate_api_listed);
        }

        params[0] = api->tenant;

        if (api->page_token.len) {
            params[1] = api->page_token;

        } else {
            ngx_str_set(&params[1], "00000000-0000-0000-0000-000000000000");
        }

        /* one more than asked: whether there is a next page */
        params[2].data = size;
        params[2].len = ngx_sprintf(size, "%ui", api->page_size + 1) - size;

        return ngx_http_gate_api_pg(r, NGX_HTTP_GATE_SQL_IDN_LIST, 3, params,
                                    ngx_http_gate_api_listed_ids);

    default:
        /* every {id} route starts by finding out whose identity it is */
        return ngx_http_gate_kratos_call(r, NGX_HTTP_GATE_KRATOS_GET,
                                         &api->path, NULL, NULL,
                                         ngx_http_gate_api_owner_fetched);
    }
}


static ngx_int_t
ngx_http_gate_api_create(ngx_http_request_t *r, ngx_http_gate_api_t *api)
{
    json_t     *gate;
    ngx_str_t   body;

    gate = json_pack("{s:{s:s#}}", "gate", "tenant_id",
                     (const char *) api->tenant.data, (int) api->tenant.len);
    if (gate == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    json_object_set_new(api->body, "metadata_admin", gate);

    if (ngx_http_gate_json_dump(r->pool, api->body, &body) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_gate_kratos_call(r, NGX_HTTP_GATE_KRATOS_POST, &api->path,
                                     NULL, &body, ngx_http_gate_api_created);
}


static void
ngx_http_gate_api_created(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *body)
{
    json_t               *id;
    ngx_str_t             params[2];
    ngx_http_gate_ctx_t  *ctx;
    ngx_http_gate_api_t  *api;

    ctx = ngx_http_get_module_ctx(r, ngx_http_gate_module);
    api = ctx->api;

    if (status != NGX_HTTP_CREATED) {
        ngx_http_gate_api_kratos_error(r, status, body);
        return;
    }

    api->identity = ngx_http_gate_api_load(r, body);
    id = api->identity ? json_object_get(api->identity, "id") : NULL;

    if (!json_is_string(id)
        || !ngx_http_gate_kratos_is_uuid((u_char *) json_string_value(id),
                                      json_string_length(id)))
    {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "gate: kratos created an identity without an id");
        ngx_http_gate_api_error(r, NGX_HTTP_BAD_GATEWAY, "bad_gateway",
                                "Kratos gave an unexpected answer.");
        return;
    }

    api->id.data = (u_char *) json_string_value(id);
    api->id.len = NGX_HTTP_GATE_UUID_LEN;

    api->path.len = sizeof("/admin/identities/") - 1 + api->id.len;
    api->path.data = ngx_pnalloc(r->pool, api->path.len);
    if (api->path.data == NULL) {
        ngx_http_gate_api_finish(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    ngx_memcpy(ngx_cpymem(api->path.data, "/admin/identities/",
                          sizeof("/admin/identities/") - 1),
               api->id.data, api->id.len);

    params[0] = api->id;
    params[1] = api->tenant;

    if (ngx_http_gate_api_pg(r, NGX_HTTP_GATE_SQL_IDN_INSERT, 2, params,
                             ngx_http_gate_api_indexed)
        != NGX_OK)
    {
        ngx_http_gate_api_indexed(r, NULL);
    }
}


static void
ngx_http_gate_api_indexed(void *data, PGresult *res)
{
    ngx_connection_t     *c;
    ngx_http_request_t   *r = data;
    ngx_http_gate_ctx_t  *ctx;
    ngx_http_gate_api_t  *api;

    /* the request may be gone once answered: keep its connection */
    c = r->connection;

    ctx = ngx_http_get_module_ctx(r, ngx_http_gate_module);
    api = ctx->api;
    api->query = NULL;

    if (res == NULL) {
        /*
         * An identity the tenant could never list must not stay: undo it
         * in Kratos and say so.
         */
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "gate: cannot index a new identity, removing it "
                      "from kratos");

        if (ngx_http_gate_kratos_call(r, NGX_HTTP_GATE_KRATOS_DELETE,
                                      &api->path, NULL, NULL,
                                      ngx_http_gate_api_compensated)
            != NGX_OK)
        {
            ngx_http_gate_api_compensated(r, NGX_HTTP_BAD_GATEWAY, NULL);
        }

        ngx_http_run_posted_requests(c);
        return;
    }

    ngx_http_gate_api_index_redis(api, 1);
    ngx_http_gate_api_respond(r, NGX_HTTP_CREATED, api->identity);
    ngx_http_run_posted_requests(c);
}


static void
ngx_http_gate_api_compensated(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *body)
{
    if (status != NGX_HTTP_NO_CONTENT && status != NGX_HTTP_NOT_FOUND) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "gate: an unindexed identity stays in kratos "
                      "(delete answered %ui)", status);
    }

    ngx_http_gate_api_error(r, NGX_HTTP_SERVICE_UNAVAILABLE, "unavailable",
                            "The identity store is unavailable; nothing was "
                            "created. Try again later.");
}


static void
ngx_http_gate_api_owner_fetched(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *body)
{
    json_t               *identity;
    ngx_str_t             text;
    ngx_uint_t            method;
    ngx_http_gate_ctx_t  *ctx;
    ngx_http_gate_api_t  *api;

    ctx = ngx_http_get_module_ctx(r, ngx_http_gate_module);
    api = ctx->api;

    if (status != NGX_HTTP_OK) {
        ngx_http_gate_api_kratos_error(r, status, body);
        return;
    }

    identity = ngx_http_gate_api_load(r, body);

    if (identity == NULL || !ngx_http_gate_api_owned(api, identity)) {
        ngx_http_gate_api_error(r, NGX_HTTP_NOT_FOUND, "not_found",
                                "No such identity.");
        return;
    }

    switch (api->op) {

    case NGX_HTTP_GATE_OP_GET:
        ngx_http_gate_api_respond(r, NGX_HTTP_OK, identity);
        return;

    case NGX_HTTP_GATE_OP_DELETE:
        if (ngx_http_gate_kratos_call(r, NGX_HTTP_GATE_KRATOS_DELETE,
                                      &api->path, NULL, NULL,
                                      ngx_http_gate_api_deleted)
            != NGX_OK)
        {
            ngx_http_gate_api_finish(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        }

        return;

    case NGX_HTTP_GATE_OP_REPLACE:
        /* PUT replaces metadata wholesale: Gate's part is carried over */
        json_object_set(api->body, "metadata_admin",
                        json_object_get(identity, "metadata_admin"));
        method = NGX_HTTP_GATE_KRATOS_PUT;
        break;

    default: /* NGX_HTTP_GATE_OP_PATCH */
        method = NGX_HTTP_GATE_KRATOS_PATCH;
        break;
    }

    if (ngx_http_gate_json_dump(r->pool, api->body, &text) != NGX_OK) {
        ngx_http_gate_api_finish(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    if (ngx_http_gate_kratos_call(r, method, &api->path, NULL, &text,
                                  ngx_http_gate_api_mutated)
        != NGX_OK)
    {
        ngx_http_gate_api_finish(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
    }
}


static void
ngx_http_gate_api_mutated(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *body)
{
    json_t               *identity;
    ngx_http_gate_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_gate_module);

    if (status != NGX_HTTP_OK) {
        ngx_http_gate_api_kratos_error(r, status, body);
        return;
    }

    identity = ngx_http_gate_api_load(r, body);

    if (identity == NULL) {
        ngx_http_gate_api_error(r, NGX_HTTP_BAD_GATEWAY, "bad_gateway",
                                "Kratos gave an unexpected answer.");
        return;
    }

    if (!ngx_http_gate_api_owned(ctx->api, identity)) {
        /* cannot happen while patches keep off metadata_admin; say so */
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "gate: an identity changed tenant during an update");
        ngx_http_gate_api_error(r, NGX_HTTP_NOT_FOUND, "not_found",
                                "No such identity.");
        return;
    }

    ngx_http_gate_api_respond(r, NGX_HTTP_OK, identity);
}


static void
ngx_http_gate_api_deleted(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *body)
{
    ngx_str_t             params[2];
    ngx_http_gate_ctx_t  *ctx;
    ngx_http_gate_api_t  *api;

    ctx = ngx_http_get_module_ctx(r, ngx_http_gate_module);
    api = ctx->api;

    if (status != NGX_HTTP_NO_CONTENT && status != NGX_HTTP_OK) {
        ngx_http_gate_api_kratos_error(r, status, body);
        return;
    }

    ngx_http_gate_api_index_redis(api, 0);

    params[0] = api->id;
    params[1] = api->tenant;

    if (ngx_http_gate_api_pg(r, NGX_HTTP_GATE_SQL_IDN_DELETE, 2, params,
                             ngx_http_gate_api_unindexed)
        != NGX_OK)
    {
        ngx_http_gate_api_unindexed(r, NULL);
    }
}


/*
 * The identity is gone from Kratos either way; an index row left behind
 * only names an identity that no longer exists, and listings skip those.
 */

static void
ngx_http_gate_api_unindexed(void *data, PGresult *res)
{
    ngx_connection_t     *c;
    ngx_http_request_t   *r = data;
    ngx_http_gate_ctx_t  *ctx;
    ngx_http_gate_api_t  *api;

    /* the request may be gone once answered: keep its connection */
    c = r->connection;

    ctx = ngx_http_get_module_ctx(r, ngx_http_gate_module);
    ((ngx_http_gate_api_t *) ctx->api)->query = NULL;

    if (res == NULL) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "gate: identity deleted but its index row stays");
    }

    /* its access tokens die with it, on every node (answers 204) */

    api = ctx->api;

    if (ngx_http_gate_tokens_revoke_subject(r, &api->tenant, &api->id)
        != NGX_OK)
    {
        ngx_http_gate_api_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                "unavailable",
                                "The identity is deleted but its tokens could "
                                "not be revoked; retry the delete.");
    }

    ngx_http_run_posted_requests(c);
}


static void
ngx_http_gate_api_listed_ids(void *data, PGresult *res)
{
    u_char               *p;
    size_t                len;
    ngx_int_t             n, i, rows;
    ngx_str_t             args;
    ngx_connection_t     *c;
    ngx_http_request_t   *r = data;
    ngx_http_gate_ctx_t  *ctx;
    ngx_http_gate_api_t  *api;

    /* the request may be gone once answered: keep its connection */
    c = r->connection;

    ctx = ngx_http_get_module_ctx(r, ngx_http_gate_module);
    api = ctx->api;
    api->query = NULL;

    if (res == NULL) {
        ngx_http_gate_api_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                "unavailable",
                                "The identity index is unavailable; try "
                                "again later.");
        goto done;
    }

    rows = PQntuples(res);

    if (rows == 0) {
        ngx_http_gate_api_respond(r, NGX_HTTP_OK, json_array());
        goto done;
    }

    n = ngx_min(rows, (ngx_int_t) api->page_size);

    if (rows > n) {
        api->next_token.len = NGX_HTTP_GATE_UUID_LEN;
        api->next_token.data = ngx_pnalloc(r->pool, NGX_HTTP_GATE_UUID_LEN);
        if (api->next_token.data == NULL) {
            ngx_http_gate_api_finish(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
            goto done;
        }

        ngx_memcpy(api->next_token.data, PQgetvalue(res, n - 1, 0),
                   NGX_HTTP_GATE_UUID_LEN);
    }

    len = sizeof("page_size=") - 1 + NGX_INT_T_LEN
          + n * (sizeof("&ids=") - 1 + NGX_HTTP_GATE_UUID_LEN);

    args.data = ngx_pnalloc(r->pool, len);
    if (args.data == NULL) {
        ngx_http_gate_api_finish(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        goto done;
    }

    p = ngx_sprintf(args.data, "page_size=%i", n);

    for (i = 0; i < n; i++) {
        p = ngx_sprintf(p, "&ids=%*s", (size_t) NGX_HTTP_GATE_UUID_LEN,
                        PQgetvalue(res, i, 0));
    }

    args.len = p - args.data;

    if (ngx_http_gate_kratos_call(r, NGX_HTTP_GATE_KRATOS_GET, &api->path,
                                  &args, NULL, ngx_http_gate_api_listed)
        != NGX_OK)
    {
        ngx_http_gate_api_finish(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
    }

done:

    ngx_http_run_posted_requests(c);
}


static void
ngx_http_gate_api_listed(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *body)
{
    u_char               *p;
    size_t                i;
    json_t               *list, *mine, *identity;
    ngx_table_elt_t      *link;
    ngx_http_gate_ctx_t  *ctx;
    ngx_http_gate_api_t  *api;

    ctx = ngx_http_get_module_ctx(r, ngx_http_gate_module);
    api = ctx->api;

    if (status != NGX_HTTP_OK) {
        ngx_http_gate_api_kratos_error(r, status, body);
        return;
    }

    list = ngx_http_gate_api_load(r, body);
    if (!json_is_array(list)) {
        ngx_http_gate_api_error(r, NGX_HTTP_BAD_GATEWAY, "bad_gateway",
                                "Kratos gave an unexpected answer.");
        return;
    }

    /* the index already chose the tenant's; Kratos' word is checked too */

    mine = json_array();
    if (mine == NULL) {
        ngx_http_gate_api_finish(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    json_array_foreach(list, i, identity) {
        if (ngx_http_gate_api_owned(api, identity)) {
            json_object_del(identity, "metadata_admin");
            json_array_append(mine, identity);
        }
    }

    if (api->next_token.len) {
        link = ngx_list_push(&r->headers_out.headers);
        if (link == NULL) {
            json_decref(mine);
            ngx_http_gate_api_finish(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
            return;
        }

        link->value.len = sizeof("<?page_size=&page_token=>; rel=\"next\"") - 1
                          + ngx_http_gate_api_prefix.len + NGX_INT_T_LEN
                          + api->next_token.len;
        link->value.data = ngx_pnalloc(r->pool, link->value.len);
        if (link->value.data == NULL) {
            json_decref(mine);
            ngx_http_gate_api_finish(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
            return;
        }

        p = ngx_sprintf(link->value.data,
                        "<%V?page_size=%ui&page_token=%V>; rel=\"next\"",
                        &ngx_http_gate_api_prefix, api->page_size,
                        &api->next_token);
        link->value.len = p - link->value.data;
        link->hash = 1;
        ngx_str_set(&link->key, "Link");
    }

    ngx_http_gate_api_respond(r, NGX_HTTP_OK, mine);
}


static ngx_uint_t
ngx_http_gate_api_owned(ngx_http_gate_api_t *api, json_t *identity)
{
    json_t  *tenant;

    tenant = json_object_get(identity, "metadata_admin");
    tenant = json_object_get(json_object_get(tenant, "gate"), "tenant_id");

    return json_is_string(tenant)
           && json_string_length(tenant) == api->tenant.len
           && ngx_strncmp(json_string_value(tenant), api->tenant.data,
                          api->tenant.len) == 0;
}


/* Parsed JSON lives as long as the request. */

static json_t *
ngx_http_gate_api_load(ngx_http_request_t *r, ngx_str_t *text)
{
    json_t              *root;
    json_error_t         err;
    ngx_pool_cleanup_t  *cln;

    if (text == NULL || text->len == 0) {
        return NULL;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NULL;
    }

    root = json_loadb((const char *) text->data, text->len,
                      JSON_REJECT_DUPLICATES, &err);
    if (root == NULL) {
        return NULL;
    }

    cln->handler = ngx_http_gate_api_json_cleanup;
    cln->data = root;

    return root;
}


static void
ngx_http_gate_api_json_cleanup(void *data)
{
    json_decref(data);
}


static ngx_int_t
ngx_http_gate_api_pg(ngx_http_request_t *r, ngx_uint_t statement,
    ngx_uint_t n, ngx_str_t *params, ngx_http_gate_pg_handler_pt handler)
{
    ngx_http_gate_ctx_t  *ctx;
    ngx_http_gate_api_t  *api;

    ctx = ngx_http_get_module_ctx(r, ngx_http_gate_module);
    api = ctx->api;

    return ngx_http_gate_pg_request(r, &api->query, statement, n, params,
                                    handler);
}


/* gate:idn:{id} -> tenant: the flows find an identity's tenant here */

static void
ngx_http_gate_api_index_redis(ngx_http_gate_api_t *api, ngx_uint_t set)
{
    u_char       key[sizeof("gate:idn:") - 1 + NGX_HTTP_GATE_UUID_LEN];
    size_t       argvlen[3];
    const char  *argv[3];

    ngx_memcpy(ngx_cpymem(key, "gate:idn:", sizeof("gate:idn:") - 1),
               api->id.data, NGX_HTTP_GATE_UUID_LEN);

    argv[0] = set ? "SET" : "DEL";
    argvlen[0] = 3;
    argv[1] = (char *) key;
    argvlen[1] = sizeof(key);
    argv[2] = (char *) api->tenant.data;
    argvlen[2] = api->tenant.len;

    (void) ngx_http_gate_redis_send(ngx_cycle->log, NULL, NULL, set ? 3 : 2,
                                    argv, argvlen);
}


/*
 * Answers with an identity or a list, never with Gate's metadata_admin.
 * Lists are built here and handed over; objects belong to the request.
 */

static void
ngx_http_gate_api_respond(ngx_http_request_t *r, ngx_uint_t status,
    json_t *value)
{
    ngx_int_t   rc;
    ngx_str_t   body;

    if (json_is_object(value)) {
        json_object_del(value, "metadata_admin");
    }

    rc = ngx_http_gate_json_dump(r->pool, value, &body);

    if (json_is_array(value)) {
        json_decref(value);
    }

    if (rc != NGX_OK) {
        ngx_http_gate_api_finish(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    ngx_http_gate_api_finish(r, ngx_http_gate_json_send(r, status, &body));
}


static void
ngx_http_gate_api_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *message)
{
    ngx_http_gate_api_finish(r, ngx_http_gate_json_error(r, status, code,
                                                         message));
}


/*
 * Kratos' own refusals keep their status and message; Kratos being away
 * is 503, whatever nginx saw.
 */

static void
ngx_http_gate_api_kratos_error(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *body)
{
    json_t      *root, *error, *text;
    const char  *code, *message;

    if (status >= NGX_HTTP_INTERNAL_SERVER_ERROR) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "gate: kratos admin API answered %ui", status);
        ngx_http_gate_api_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                "unavailable",
                                "The identity service is unavailable; try "
                                "again later.");
        return;
    }

    if (status == NGX_HTTP_NOT_FOUND) {
        ngx_http_gate_api_error(r, NGX_HTTP_NOT_FOUND, "not_found",
                                "No such identity.");
        return;
    }

    switch (status) {
    case NGX_HTTP_CONFLICT:
        code = "conflict";
        break;
    case NGX_HTTP_BAD_REQUEST:
        code = "invalid_request";
        break;
    case NGX_HTTP_UNPROCESSABLE_ENTITY:
        code = "unprocessable";
        break;
    default:
        code = "rejected";
        status = NGX_HTTP_BAD_REQUEST;
        break;
    }

    message = "Kratos refused the request.";

    root = ngx_http_gate_api_load(r, body);
    error = json_object_get(root, "error");

    text = json_object_get(error, "reason");
    if (!json_is_string(text)) {
        text = json_object_get(error, "message");
    }

    if (json_is_string(text)) {
        message = json_string_value(text);
    }

    ngx_http_gate_api_error(r, status, code, message);
}


static void
ngx_http_gate_api_finish(ngx_http_request_t *r, ngx_int_t rc)
{
    ngx_http_finalize_request(r, rc);
}
