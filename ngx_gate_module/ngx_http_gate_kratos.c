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
    u_char                           *p;
    ngx_str_t                         uri;
    ngx_buf_t                        *b;
    ngx_chain_t                      *cl;
    ngx_http_request_t               *sr;
    ngx_http_request_body_t          *rb;
    ngx_http_gate_main_conf_t        *gmcf;
    ngx_http_gate_kratos_call_t      *call;
    ngx_http_post_subrequest_t       *ps;

    gmcf = ngx_http_get_module_main_conf(r, ngx_http_gate_module);

    uri.len = gmcf->kratos_admin.len + path->len;
    uri.data = ngx_pnalloc(r->pool, uri.len);
    if (uri.data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(uri.data, gmcf->kratos_admin.data, gmcf->kratos_admin.len);
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

    rb = ngx_pcalloc(r->pool, sizeof(ngx_http_request_body_t));
    b = ngx_calloc_buf(r->pool);
    cl = ngx_alloc_chain_link(r->pool);
    if (rb == NULL || b == NULL || cl == NULL) {
        return NGX_ERROR;
    }

    b->pos = body->data;
    b->last = body->data + body->len;
    b->start = b->pos;
    b->end = b->last;
    b->memory = 1;
    b->last_buf = 1;

    cl->buf = b;
    cl->next = NULL;

    rb->bufs = cl;
    rb->buf = b;

    sr->request_body = rb;
    sr->headers_in.content_length_n = body->len;

    return NGX_OK;
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
