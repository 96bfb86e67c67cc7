/*
 * Copyright (C) Gate authors
 */


/*
 * Request headers Gate reads and writes.  Every X-Gate-* header the client
 * sent is removed before the upstream sees it; only the ones Gate sets
 * itself go through, so an upstream may trust them.
 */


#include "ngx_http_gate_headers.h"


#define NGX_HTTP_GATE_HEADER_NAME_MAX  32
#define NGX_HTTP_GATE_HEADER_NAMES     8


typedef struct {
    u_char                    *name;          /* as set, for identity */
    u_char                     lowcase[NGX_HTTP_GATE_HEADER_NAME_MAX];
    ngx_uint_t                 hash;
} ngx_http_gate_header_name_t;


typedef ngx_uint_t (*ngx_http_gate_headers_drop_pt)(ngx_table_elt_t *h,
    void *data);


static ngx_int_t ngx_http_gate_headers_rebuild(ngx_http_request_t *r,
    ngx_http_gate_headers_drop_pt drop, void *data);
static ngx_uint_t ngx_http_gate_headers_is_gate(ngx_table_elt_t *h,
    void *data);
static ngx_uint_t ngx_http_gate_headers_is_named(ngx_table_elt_t *h,
    void *data);
static ngx_int_t ngx_http_gate_headers_lowcase(ngx_str_t *name,
    ngx_table_elt_t *h);


/* per worker; filled on first use of each name */
static ngx_http_gate_header_name_t  ngx_http_gate_header_names[
                                                 NGX_HTTP_GATE_HEADER_NAMES];


ngx_table_elt_t *
ngx_http_gate_headers_find(ngx_http_request_t *r, ngx_str_t *lowcase_name,
    ngx_uint_t *n)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h, *first;

    part = &r->headers_in.headers.part;
    h = part->elts;
    first = NULL;

    if (n) {
        *n = 0;
    }

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return first;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == lowcase_name->len
            && ngx_strncmp(h[i].lowcase_key, lowcase_name->data,
                           lowcase_name->len) == 0)
        {
            first = first ? first : &h[i];

            /* without a count asked for, the first one is all we need */

            if (n == NULL) {
                return first;
            }

            (*n)++;
        }
    }
}


/*
 * nginx keeps pointers to known headers (Host, Cookie, ...) inside the
 * list, so elements are never moved: a new list is built without the
 * X-Gate-* ones, and the old elements stay where those pointers expect
 * them.  This costs nothing unless a client actually sent such a header.
 */

ngx_int_t
ngx_http_gate_headers_strip(ngx_http_request_t *r)
{
    return ngx_http_gate_headers_rebuild(r, ngx_http_gate_headers_is_gate,
                                         NULL);
}


/* Removes every request header of that (lowercase) name. */

ngx_int_t
ngx_http_gate_headers_remove(ngx_http_request_t *r, ngx_str_t *name)
{
    return ngx_http_gate_headers_rebuild(r, ngx_http_gate_headers_is_named,
                                         name);
}


static ngx_int_t
ngx_http_gate_headers_rebuild(ngx_http_request_t *r,
    ngx_http_gate_headers_drop_pt drop, void *data)
{
    ngx_uint_t        i, n, found;
    ngx_list_t        list;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h, *copy;

    found = 0;
    n = 0;

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

        n++;

        if (drop(&h[i], data)) {
            found++;
        }
    }

    if (found == 0) {
        return NGX_OK;
    }

    if (ngx_list_init(&list, r->pool, n - found + 4, sizeof(ngx_table_elt_t))
        != NGX_OK)
    {
        return NGX_ERROR;
    }

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

        if (drop(&h[i], data)) {
            ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                           "gate: dropping client header \"%V\"", &h[i].key);
            continue;
        }

        copy = ngx_list_push(&list);
        if (copy == NULL) {
            return NGX_ERROR;
        }

        *copy = h[i];
    }

    /* the first part lives inside the list itself: re-point "last" at it */

    r->headers_in.headers = list;

    if (list.last == &list.part) {
        r->headers_in.headers.last = &r->headers_in.headers.part;
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_gate_headers_set(ngx_http_request_t *r, ngx_str_t *name,
    ngx_str_t *value)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_in.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->key = *name;
    h->value = *value;

    /* Gate's own names are few and fixed: their lowercase forms are kept */

    if (name->len <= NGX_HTTP_GATE_HEADER_NAME_MAX) {
        if (ngx_http_gate_headers_lowcase(name, h) == NGX_OK) {
            return NGX_OK;
        }
    }

    h->lowcase_key = ngx_pnalloc(r->pool, name->len);
    if (h->lowcase_key == NULL) {
        return NGX_ERROR;
    }

    h->hash = ngx_hash_strlow(h->lowcase_key, name->data, name->len);

    return NGX_OK;
}


/*
 * Names passed to ngx_http_gate_headers_set() are static strings, so
 * their address identifies them.
 */

static ngx_int_t
ngx_http_gate_headers_lowcase(ngx_str_t *name, ngx_table_elt_t *h)
{
    ngx_uint_t                    i;
    ngx_http_gate_header_name_t  *n;

    for (i = 0; i < NGX_HTTP_GATE_HEADER_NAMES; i++) {
        n = &ngx_http_gate_header_names[i];

        if (n->name == NULL) {
            n->name = name->data;
            n->hash = ngx_hash_strlow(n->lowcase, name->data, name->len);
        }

        if (n->name == name->data) {
            h->lowcase_key = n->lowcase;
            h->hash = n->hash;
            return NGX_OK;
        }
    }

    return NGX_DECLINED;
}


static ngx_uint_t
ngx_http_gate_headers_is_named(ngx_table_elt_t *h, void *data)
{
    ngx_str_t  *name = data;

    return h->key.len == name->len
           && ngx_strncasecmp(h->key.data, name->data, name->len) == 0;
}


static ngx_uint_t
ngx_http_gate_headers_is_gate(ngx_table_elt_t *h, void *data)
{
    return h->key.len >= sizeof("x-gate-") - 1
           && ngx_strncasecmp(h->key.data, (u_char *) "x-gate-",
                              sizeof("x-gate-") - 1) == 0;
}
