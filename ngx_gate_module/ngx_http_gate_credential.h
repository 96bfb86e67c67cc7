/*
 * Copyright (C) Gate authors
 */


#ifndef _NGX_HTTP_GATE_CREDENTIAL_H_INCLUDED_
#define _NGX_HTTP_GATE_CREDENTIAL_H_INCLUDED_


#include "ngx_http_gate_module.h"


#define NGX_HTTP_GATE_TOKEN_PREFIX     "gat_live_"
#define NGX_HTTP_GATE_KEY_PREFIX       "gate_live_sk_"

/* 56 random hex digits and an 8-digit CRC-32 after the prefix */
#define NGX_HTTP_GATE_SECRET_HEX_LEN   64

#define NGX_HTTP_GATE_SHA256_HEX_LEN   64


/* Results of ngx_http_gate_credential_bearer(). */
#define NGX_HTTP_GATE_BEARER_OK        0
#define NGX_HTTP_GATE_BEARER_MISSING   1
#define NGX_HTTP_GATE_BEARER_INVALID   2


ngx_uint_t ngx_http_gate_credential_bearer(ngx_http_request_t *r,
    ngx_str_t *credential);
ngx_int_t ngx_http_gate_credential_check(ngx_str_t *credential,
    const char *prefix);
void ngx_http_gate_credential_hash(ngx_str_t *credential, u_char *hash);
void ngx_http_gate_credential_hex(u_char *hash, u_char *hex);
void ngx_http_gate_credential_exit(void);
ngx_int_t ngx_http_gate_credential_unhex(u_char *hex, u_char *hash);


#endif /* _NGX_HTTP_GATE_CREDENTIAL_H_INCLUDED_ */
