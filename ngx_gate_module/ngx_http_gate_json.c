/*
 * Copyright (C) Gate authors
 */


/*
 * The one writer of Gate's error shape:
 * {"error":{"code":"snake_case","message":"human sentence"}}
 * and the one reader of request bodies, JSON or form.
 */


#include <jansson.h>

#include "ngx_http_gate_json.h"


ngx_int_t
ngx_http_gate_json_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *message)
{
    json_t     *root;
    ngx_int_t   rc;
    ngx_str_t   body;

    root = json_pack("{s:{s:s,s:s}}", "error", "code", code,
                     "message", message);

    rc = ngx_http_gate_json_dump(r->pool, root, &body);
    json_decref(root);

    if (rc != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_gate_json_send(r, status, &body);
}


/* A 405 names what the resource does take (RFC 9110, 15.5.6). */

ngx_int_t
ngx_http_gate_json_not_allowed(ngx_http_request_t *r, const char *methods,
    const char *message)
{
    if (ngx_http_gate_json_allow(r, methods) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_gate_json_error(r, NGX_HTTP_NOT_ALLOWED,
                                    "method_not_allowed", message);
}


ngx_int_t
ngx_http_gate_json_allow(ngx_http_request_t *r, const char *methods)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Allow");
    h->value.data = (u_char *) methods;
    h->value.len = ngx_strlen(methods);

    return NGX_OK;
}


/* jansson's text, moved into the pool; the value stays the caller's. */

ngx_int_t
ngx_http_gate_json_dump(ngx_pool_t *pool, json_t *value, ngx_str_t *out)
{
    char  *dump;

    if (value == NULL) {
        return NGX_ERROR;
    }

    dump = json_dumps(value, JSON_COMPACT|JSON_ENCODE_ANY);
    if (dump == NULL) {
        return NGX_ERROR;
    }

    out->len = ngx_strlen(dump);
    out->data = ngx_pnalloc(pool, out->len);

    if (out->data == NULL) {
        free(dump);
        return NGX_ERROR;
    }

    ngx_memcpy(out->data, dump, out->len);
    free(dump);

    return NGX_OK;
}


ngx_int_t
ngx_http_gate_json_send(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *body)
{
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    /* the answer does not depend on the body: do not wait for it */

    if (ngx_http_discard_request_body(r) != NGX_OK) {
        r->keepalive = 0;
    }

    r->headers_out.status = status;
    r->headers_out.content_length_n = body->len;

    /* nginx 1.22 knows no reason phrase for 422 and would send none */

    if (status == NGX_HTTP_UNPROCESSABLE_ENTITY) {
        ngx_str_set(&r->headers_out.status_line, "422 Unprocessable Content");
    }

    /* an empty answer (RFC 7009's 200) is no JSON document */

    if (body->len) {
        ngx_str_set(&r->headers_out.content_type, "application/json");
        r->headers_out.content_type_len = r->headers_out.content_type.len;
        r->headers_out.content_type_lowcase = NULL;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->pos = body->data;
    b->last = body->data + body->len;
    b->memory = body->len ? 1 : 0;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/*
 * A request body read into memory, in one piece (empty when there is
 * none).  NGX_DECLINED: longer than max, or spilled to a file, which is
 * not read back because that would be a disk read in the worker; the
 * API locations' client_body_buffer_size keeps every acceptable body in
 * memory.
 */

ngx_int_t
ngx_http_gate_json_body(ngx_http_request_t *r, size_t max, ngx_str_t *text)
{
    u_char       *p;
    size_t        len;
    ngx_chain_t  *cl;

    ngx_str_null(text);

    if (r->request_body == NULL) {
        return NGX_OK;
    }

    len = 0;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        if (cl->buf->in_file) {
            return NGX_DECLINED;
        }

        len += cl->buf->last - cl->buf->pos;
    }

    if (len > max) {
        return NGX_DECLINED;
    }

    text->data = ngx_pnalloc(r->pool, len + 1);
    if (text->data == NULL) {
        return NGX_ERROR;
    }

    p = text->data;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        p = ngx_cpymem(p, cl->buf->pos, cl->buf->last - cl->buf->pos);
    }

    text->len = p - text->data;

    return NGX_OK;
}


/*
 * The body a request (or a subrequest) sends on, in memory, with the
 * length proxy_pass announces ($content_length); chunked framing is gone.
 */

ngx_int_t
ngx_http_gate_json_set_body(ngx_http_request_t *r, ngx_str_t *text)
{
    ngx_buf_t                *b;
    ngx_chain_t              *cl;
    ngx_http_request_body_t  *rb;

    rb = r->request_body;

    if (rb == NULL) {
        rb = ngx_pcalloc(r->pool, sizeof(ngx_http_request_body_t));
        if (rb == NULL) {
            return NGX_ERROR;
        }
    }

    b = ngx_calloc_buf(r->pool);
    cl = ngx_alloc_chain_link(r->pool);
    if (b == NULL || cl == NULL) {
        return NGX_ERROR;
    }

    b->pos = text->data;
    b->last = text->data + text->len;
    b->start = b->pos;
    b->end = b->last;
    b->memory = text->len ? 1 : 0;
    b->last_buf = 1;

    cl->buf = b;
    cl->next = NULL;

    rb->bufs = cl;
    rb->buf = b;

    r->request_body = rb;
    r->headers_in.content_length_n = text->len;
    r->headers_in.chunked = 0;

    return NGX_OK;
}


/*
 * One field of an application/x-www-form-urlencoded body, keys and values
 * decoded as Go decodes them.  NGX_DECLINED: absent.  NGX_BUSY: given more
 * than once, which RFC 6749 (3.1) forbids, and which would let Gate read
 * one value while the service behind it reads another.
 */

ngx_int_t
ngx_http_gate_form_value(ngx_str_t *form, const char *name, ngx_pool_t *pool,
    ngx_str_t *value)
{
    u_char      *p, *last, *end, *eq;
    size_t       len;
    ngx_str_t    key;
    ngx_uint_t   found;

    len = ngx_strlen(name);
    p = form->data;
    last = p + form->len;
    found = 0;

    while (p < last) {
        end = ngx_strlchr(p, last, '&');
        end = end ? end : last;
        eq = ngx_strlchr(p, end, '=');
        eq = eq ? eq : end;

        if (ngx_http_gate_form_decode(pool, p, eq - p, &key) != NGX_OK) {
            return NGX_ERROR;
        }

        if (key.len == len && ngx_strncmp(key.data, name, len) == 0) {
            if (found++) {
                return NGX_BUSY;
            }

            if (ngx_http_gate_form_decode(pool, eq + (eq < end),
                                          end - eq - (eq < end), value)
                != NGX_OK)
            {
                return NGX_ERROR;
            }
        }

        p = end + 1;
    }

    return found ? NGX_OK : NGX_DECLINED;
}


/* '+' is a space in forms, and "%2B" a '+': spaces first, then escapes. */

ngx_int_t
ngx_http_gate_form_decode(ngx_pool_t *pool, u_char *p, size_t len,
    ngx_str_t *out)
{
    u_char  *dst, *src;
    size_t   i;

    out->data = ngx_pnalloc(pool, len + 1);
    if (out->data == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < len; i++) {
        out->data[i] = (p[i] == '+') ? ' ' : p[i];
    }

    dst = out->data;
    src = out->data;

    ngx_unescape_uri(&dst, &src, len, 0);

    out->len = dst - out->data;

    return NGX_OK;
}
