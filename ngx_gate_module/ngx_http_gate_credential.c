/*
 * Copyright (C) Gate authors
 */


/*
 * The one place that reads, checks and hashes credentials.  A credential
 * whose shape or checksum is wrong is refused here, before any I/O, so
 * random guesses never reach Redis or PostgreSQL.
 */


#include <openssl/evp.h>
#include <openssl/sha.h>
#include <zlib.h>

#include "ngx_http_gate_credential.h"


/*
 * OpenSSL 3's one-shot SHA256() looks the algorithm up through the
 * provider machinery on every call, which costs more than the hashing;
 * each worker fetches it once and reuses one context.
 */

static EVP_MD      *ngx_http_gate_credential_md;
static EVP_MD_CTX  *ngx_http_gate_credential_md_ctx;


/*
 * Finds the bearer credential of a request.  Exactly one Authorization
 * header is accepted: with two, which one a backend would read is not
 * ours to guess.
 */

ngx_uint_t
ngx_http_gate_credential_bearer(ngx_http_request_t *r, ngx_str_t *credential)
{
    u_char           *p, *last;
    ngx_uint_t        i, n;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h, *auth;

    auth = NULL;
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

        if (h[i].key.len == sizeof("Authorization") - 1
            && ngx_strncasecmp(h[i].key.data, (u_char *) "Authorization",
                               sizeof("Authorization") - 1) == 0)
        {
            auth = &h[i];
            n++;
        }
    }

    if (n == 0) {
        return NGX_HTTP_GATE_BEARER_MISSING;
    }

    if (n > 1 || auth->value.len < sizeof("Bearer ") - 1
        || ngx_strncasecmp(auth->value.data, (u_char *) "Bearer ",
                           sizeof("Bearer ") - 1) != 0)
    {
        return NGX_HTTP_GATE_BEARER_INVALID;
    }

    p = auth->value.data + sizeof("Bearer ") - 1;
    last = auth->value.data + auth->value.len;

    while (p < last && *p == ' ') {
        p++;
    }

    while (last > p && last[-1] == ' ') {
        last--;
    }

    if (p == last) {
        return NGX_HTTP_GATE_BEARER_INVALID;
    }

    credential->data = p;
    credential->len = last - p;

    return NGX_HTTP_GATE_BEARER_OK;
}


/*
 * PREFIX + 64 lowercase hex digits, the last 8 being the CRC-32 of all
 * that precedes them, prefix included (DESIGN.md, section 2).
 */

ngx_int_t
ngx_http_gate_credential_check(ngx_str_t *credential, const char *prefix)
{
    u_char      *p, *last;
    size_t       plen;
    uint32_t     crc, expect;
    ngx_uint_t   i;
    u_char       c;

    plen = ngx_strlen(prefix);

    if (credential->len != plen + NGX_HTTP_GATE_SECRET_HEX_LEN
        || ngx_strncmp(credential->data, prefix, plen) != 0)
    {
        return NGX_DECLINED;
    }

    p = credential->data + plen;
    last = credential->data + credential->len;
    expect = 0;

    for (i = 0; p < last; p++, i++) {
        c = *p;

        if (c >= '0' && c <= '9') {
            c -= '0';

        } else if (c >= 'a' && c <= 'f') {
            c -= 'a' - 10;

        } else {
            return NGX_DECLINED;
        }

        if (i >= NGX_HTTP_GATE_SECRET_HEX_LEN - 8) {
            expect = (expect << 4) | c;
        }
    }

    crc = (uint32_t) crc32(0L, credential->data, credential->len - 8);

    return crc == expect ? NGX_OK : NGX_DECLINED;
}


void
ngx_http_gate_credential_hash(ngx_str_t *credential, u_char *hash)
{
    unsigned int  len;

    if (ngx_http_gate_credential_md == NULL) {
        ngx_http_gate_credential_md = EVP_MD_fetch(NULL, "SHA256", NULL);
        ngx_http_gate_credential_md_ctx = EVP_MD_CTX_new();
    }

    if (ngx_http_gate_credential_md && ngx_http_gate_credential_md_ctx
        && EVP_DigestInit_ex2(ngx_http_gate_credential_md_ctx,
                              ngx_http_gate_credential_md, NULL)
        && EVP_DigestUpdate(ngx_http_gate_credential_md_ctx,
                            credential->data, credential->len)
        && EVP_DigestFinal_ex(ngx_http_gate_credential_md_ctx, hash, &len))
    {
        return;
    }

    SHA256(credential->data, credential->len, hash);
}


void
ngx_http_gate_credential_exit(void)
{
    EVP_MD_CTX_free(ngx_http_gate_credential_md_ctx);
    EVP_MD_free(ngx_http_gate_credential_md);

    ngx_http_gate_credential_md_ctx = NULL;
    ngx_http_gate_credential_md = NULL;
}


/* 32 bytes in, 64 lowercase hex digits out (not terminated). */

void
ngx_http_gate_credential_hex(u_char *hash, u_char *hex)
{
    (void) ngx_hex_dump(hex, hash, 32);
}


/* 64 hex digits back to 32 bytes. */

ngx_int_t
ngx_http_gate_credential_unhex(u_char *hex, u_char *hash)
{
    ngx_int_t   n;
    ngx_uint_t  i;

    for (i = 0; i < 32; i++) {
        n = ngx_hextoi(hex + 2 * i, 2);
        if (n == NGX_ERROR) {
            return NGX_ERROR;
        }

        hash[i] = (u_char) n;
    }

    return NGX_OK;
}
