/*
 * Copyright (C) Gate authors
 */


#ifndef _NGX_HTTP_GATE_CACHE_H_INCLUDED_
#define _NGX_HTTP_GATE_CACHE_H_INCLUDED_


#include "ngx_http_gate_module.h"


/* What a cached hash stands for; part of the lookup key. */
#define NGX_HTTP_GATE_CACHE_TOKEN      1
#define NGX_HTTP_GATE_CACHE_KEY        2
#define NGX_HTTP_GATE_CACHE_SESSION    3
#define NGX_HTTP_GATE_CACHE_TENANT     4

/* Results of ngx_http_gate_cache_get(). */
#define NGX_HTTP_GATE_CACHE_MISS       0
#define NGX_HTTP_GATE_CACHE_HIT        1
#define NGX_HTTP_GATE_CACHE_NEGATIVE   2


struct ngx_http_gate_cache_s {
    ngx_shm_zone_t            *shm_zone;
    ngx_msec_t                 ttl;
    ngx_msec_t                 negative_ttl;
};


/* Parses "gate_cache zone=NAME:SIZE [ttl=T] [negative_ttl=T]" arguments. */
char *ngx_http_gate_cache_conf(ngx_conf_t *cf, ngx_http_gate_cache_t **cachep);

ngx_uint_t ngx_http_gate_cache_get(ngx_http_gate_cache_t *cache,
    ngx_uint_t kind, u_char *hash, ngx_http_gate_record_t *record,
    ngx_pool_t *pool);
void ngx_http_gate_cache_put(ngx_http_gate_cache_t *cache, ngx_uint_t kind,
    u_char *hash, ngx_http_gate_record_t *record);
void ngx_http_gate_cache_remove(ngx_http_gate_cache_t *cache, u_char *hash);
void ngx_http_gate_cache_remove_tenant(ngx_http_gate_cache_t *cache,
    ngx_str_t *tenant);
void ngx_http_gate_cache_flush(ngx_http_gate_cache_t *cache);


#endif /* _NGX_HTTP_GATE_CACHE_H_INCLUDED_ */
