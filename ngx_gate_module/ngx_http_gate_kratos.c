/*
 * Copyright (C) Gate authors
 */


/*
 * Calls to Kratos' admin API: in-memory subrequests to the internal
 * location named by gate_kratos_admin, which proxy_passes to Kratos.
 * nginx does the HTTP, the timeouts and the connection reuse; this file
 * only builds the request and hands the answer back to the caller.
 */


#include "ngx_http_gate_kratos.h"
#include "ngx_http_gate_json.h"


typedef struct {
    ngx_http_gate_kratos_done_pt   done;
    ngx_uint_t                     status;
    ngx_str_t                      body;
} ngx_http_gate_kratos_call_t;


static ngx_int_t ngx_http_gate_kratos_finished(ngx_http_request_t *sr,
    void *data, ngx_int_t rc);
static void ngx_http_gate_kratos_resume(ngx_http_request_t *r);


static ngx_str_t  ngx_http_gate_kratos_methods[] = {
    ngx_string("GET"),
    ngx_string("POST"),
    ngx_string("PUT"),
    ngx_string("PATCH"),
    ngx_string("DELETE")
};

static ngx_uint_t  ngx_http_gate_kratos_method_ids[] = {
    NGX_HTTP_GET,
    NGX_HTTP_POST,
    NGX_HTTP_PUT,
    NGX_HTTP_PATCH,
    NGX_HTTP_DELETE
};


ngx_int_t
ngx_http_gate_kratos_call(ngx_http_request_t *r, ngx_uint_t method,
    ngx_str_t *path, ngx_str_t *args, ngx_str_t *body,
    ngx_http_gate_kratos_done_pt done)
{
    return ngx_http_gate_kratos_request(r, 0, method, path, args, body,
                                        done);
}


/*
 * public: Kratos' public API, with the client's own headers (cookies,
 * session token) going along; otherwise its admin API.
 */

ngx_int_t
ngx_http_gate_kratos_request(ngx_http_request_t *r, ngx_uint_t public,
    ngx_uint_t method, ngx_str_t *path, ngx_str_t *args, ngx_str_t *body,
    ngx_http_gate_kratos_done_pt done)
{
    ngx_str_t                        *prefix;
    u_char                           *p;
    ngx_str_t                         uri;
    ngx_http_request_t               *sr;
    ngx_http_gate_main_conf_t        *gmcf;
    ngx_http_gate_kratos_call_t      *call;
    ngx_http_post_subrequest_t       *ps;

    gmcf = ngx_http_get_module_main_conf(r, ngx_http_gate_module);
    prefix = public ? &gmcf->kratos_public : &gmcf->kratos_admin;

    uri.len = prefix->len + path->len;
    uri.data = ngx_pnalloc(r->pool, uri.len);
    if (uri.data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(uri.data, prefix->data, prefix->len);
    ngx_memcpy(p, path->data, path->len);

    call = ngx_pcalloc(r->pool, sizeof(ngx_http_gate_kratos_call_t));
    ps = ngx_palloc(r->pool, sizeof(ngx_http_post_subrequest_t));
    if (call == NULL || ps == NULL) {
        return NGX_ERROR;
    }

    call->done = done;
    ps->handler = ngx_http_gate_kratos_finished;
    ps->data = call;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "gate kratos: %V %V",
                   &ngx_http_gate_kratos_methods[method], path);

    if (ngx_http_subrequest(r, &uri, args, &sr, ps,
                            NGX_HTTP_SUBREQUEST_IN_MEMORY
                            |NGX_HTTP_SUBREQUEST_WAITED)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    sr->method = ngx_http_gate_kratos_method_ids[method];
    sr->method_name = ngx_http_gate_kratos_methods[method];

    /* the client's own body and its framing are not Kratos' business */

    sr->request_body = NULL;
    sr->headers_in.content_length_n = -1;
    sr->headers_in.chunked = 0;

    if (body == NULL) {
        return NGX_OK;
    }

    return ngx_http_gate_json_set_body(sr, body);
}


static ngx_int_t
ngx_http_gate_kratos_finished(ngx_http_request_t *sr, void *data,
    ngx_int_t rc)
{
    ngx_buf_t                    *b;
    ngx_http_request_t           *r;
    ngx_http_gate_ctx_t          *ctx;
    ngx_http_gate_kratos_call_t  *call = data;

    r = sr->parent;

    call->status = sr->headers_out.status;

    if (rc == NGX_ERROR || rc >= NGX_HTTP_SPECIAL_RESPONSE
        || call->status == 0)
    {
        /* nginx answered for Kratos: it was down, slow or too big */
        call->status = NGX_HTTP_BAD_GATEWAY;
        ngx_str_null(&call->body);
        goto done;
    }

    if (sr->out && sr->out->buf) {
        b = sr->out->buf;
        call->body.data = b->pos;
        call->body.len = b->last - b->pos;
    }

done:

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "gate kratos: answered %ui, %uz bytes",
                   call->status, call->body.len);

    /* the parent picks the answer up when it is woken */

    ctx = ngx_http_get_module_ctx(r, ngx_http_gate_module);
    ctx->kratos = call;
    ctx->kratos_sr = sr;

    r->write_event_handler = ngx_http_gate_kratos_resume;

    return rc;
}


static void
ngx_http_gate_kratos_resume(ngx_http_request_t *r)
{
    ngx_http_gate_ctx_t          *ctx;
    ngx_http_gate_kratos_call_t  *call;

    ctx = ngx_http_get_module_ctx(r, ngx_http_gate_module);

    call = ctx->kratos;
    if (call == NULL) {
        return;
    }

    ctx->kratos = NULL;
    r->write_event_handler = ngx_http_request_empty_handler;

    call->done(r, call->status, &call->body);
}


/* Kratos' ids are lowercase UUIDs; nothing else is ever looked up. */

ngx_uint_t
ngx_http_gate_kratos_is_uuid(u_char *p, size_t len)
{
    size_t  i;

    if (len != NGX_HTTP_GATE_UUID_LEN) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (p[i] != '-') {
                return 0;
            }

            continue;
        }

        if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f'))) {
            return 0;
        }
    }

    return 1;
}


/*
 * Kratos' timestamps: RFC 3339 in UTC, "2026-12-03T19:11:58.838822144Z".
 * Returns NGX_ERROR for anything else.
 */

time_t
ngx_http_gate_kratos_time(u_char *p, size_t len)
{
    ngx_int_t  v[6];
    ngx_uint_t  i, width[6];
    ngx_tm_t   tm;
    u_char    *q;

    width[0] = 4; width[1] = 2; width[2] = 2;
    width[3] = 2; width[4] = 2; width[5] = 2;

    if (len < 20 || p[len - 1] != 'Z') {
        return NGX_ERROR;
    }

    q = p;

    for (i = 0; i < 6; i++) {
        v[i] = ngx_atoi(q, width[i]);
        if (v[i] == NGX_ERROR) {
            return NGX_ERROR;
        }

        q += width[i] + 1;
    }

    ngx_memzero(&tm, sizeof(ngx_tm_t));

    tm.ngx_tm_year = v[0];
    tm.ngx_tm_mon = v[1];
    tm.ngx_tm_mday = v[2];
    tm.ngx_tm_hour = v[3];
    tm.ngx_tm_min = v[4];
    tm.ngx_tm_sec = v[5];

    tm.ngx_tm_mon--;
    tm.ngx_tm_year -= 1900;

    return timegm(&tm);
}
