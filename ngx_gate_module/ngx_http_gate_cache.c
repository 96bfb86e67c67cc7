/*
 * Copyright (C) Gate authors
 */


#include "ngx_http_gate_cache.h"


#define NGX_HTTP_GATE_CACHE_HASH_LEN   32

/* tenant, subject, scope, id: the strings a record carries */
#define NGX_HTTP_GATE_CACHE_NFIELDS    4

/* how many LRU entries to give up when the slab has no room */
#define NGX_HTTP_GATE_CACHE_EVICT      8


/*
 * Overlays ngx_rbtree_node_t from "color" onward, as limit_req does;
 * "kind" takes the place of the unused rbtree "data" byte.  The four
 * record strings follow one another in "data", their lengths in "len".
 */

typedef struct {
    u_char                       color;
    u_char                       kind;
    u_char                       negative;
    u_char                       dummy;
    u_short                      len[NGX_HTTP_GATE_CACHE_NFIELDS];
    ngx_queue_t                  queue;
    ngx_msec_t                   expires;
    time_t                       exp;
    u_char                       hash[NGX_HTTP_GATE_CACHE_HASH_LEN];
    u_char                       data[1];
} ngx_http_gate_cache_node_t;


typedef struct {
    ngx_rbtree_t                 rbtree;
    ngx_rbtree_node_t            sentinel;
    ngx_queue_t                  queue;
    ngx_uint_t                   full_logged;
} ngx_http_gate_cache_sh_t;


/*
 * Per cycle; the public part is embedded so that the module holds a plain
 * ngx_http_gate_cache_t while shm_zone->data leads back to the pool.
 */

typedef struct {
    ngx_http_gate_cache_t        cache;
    ngx_http_gate_cache_sh_t    *sh;
    ngx_slab_pool_t             *shpool;
} ngx_http_gate_cache_ctx_t;


static ngx_int_t ngx_http_gate_cache_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static ngx_uint_t ngx_http_gate_cache_get_locked(
    ngx_http_gate_cache_ctx_t *ctx, ngx_uint_t kind, u_char *hash,
    ngx_http_gate_record_t *record, ngx_pool_t *pool);
static ngx_http_gate_cache_node_t *ngx_http_gate_cache_lookup(
    ngx_http_gate_cache_sh_t *sh, ngx_uint_t kind, u_char *hash);
static ngx_int_t ngx_http_gate_cache_cmp(u_char *hash, ngx_uint_t kind,
    ngx_http_gate_cache_node_t *gn);
static void ngx_http_gate_cache_rbtree_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel);
static void ngx_http_gate_cache_expire(ngx_http_gate_cache_ctx_t *ctx,
    ngx_uint_t force);
static ngx_uint_t ngx_http_gate_cache_stale(ngx_http_gate_cache_node_t *gn,
    ngx_msec_t now, time_t sec);
static void ngx_http_gate_cache_delete(ngx_http_gate_cache_ctx_t *ctx,
    ngx_http_gate_cache_node_t *gn);
static ngx_rbtree_key_t ngx_http_gate_cache_key(u_char *hash);
static void ngx_http_gate_cache_fields(ngx_http_gate_record_t *record,
    ngx_str_t **field);


char *
ngx_http_gate_cache_conf(ngx_conf_t *cf, ngx_http_gate_cache_t **cachep)
{
    u_char                     *p;
    ssize_t                     size;
    ngx_int_t                   ms;
    ngx_str_t                  *value, name, s;
    ngx_uint_t                  i;
    ngx_shm_zone_t             *shm_zone;
    ngx_http_gate_cache_ctx_t  *ctx;

    value = cf->args->elts;

    ctx = ngx_pcalloc(cf->pool, sizeof(ngx_http_gate_cache_ctx_t));
    if (ctx == NULL) {
        return NGX_CONF_ERROR;
    }

    ctx->cache.ttl = 5000;
    ctx->cache.negative_ttl = 1000;

    size = 0;
    ngx_str_null(&name);

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "zone=", 5) == 0) {

            name.data = value[i].data + 5;

            p = ngx_strlchr(name.data, value[i].data + value[i].len, ':');

            if (p == NULL || p == name.data) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid zone \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            name.len = p - name.data;

            s.data = p + 1;
            s.len = value[i].data + value[i].len - s.data;

            size = ngx_parse_size(&s);

            if (size == NGX_ERROR) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid zone size \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            if (size < (ssize_t) (8 * ngx_pagesize)) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "zone \"%V\" is too small", &value[i]);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "ttl=", 4) == 0) {

            s.data = value[i].data + 4;
            s.len = value[i].len - 4;

            ms = ngx_parse_time(&s, 0);

            /* a zero ttl would cache nothing: say so rather than accept */

            if (ms == NGX_ERROR || ms == 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid ttl \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            ctx->cache.ttl = (ngx_msec_t) ms;

            continue;
        }

        if (ngx_strncmp(value[i].data, "negative_ttl=", 13) == 0) {

            s.data = value[i].data + 13;
            s.len = value[i].len - 13;

            /* zero is valid here: it turns negative caching off */

            ms = ngx_parse_time(&s, 0);

            if (ms == NGX_ERROR) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid negative_ttl \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            ctx->cache.negative_ttl = (ngx_msec_t) ms;

            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\"", &value[i]);
        return NGX_CONF_ERROR;
    }

    if (name.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" must have \"zone\" parameter", &value[0]);
        return NGX_CONF_ERROR;
    }

    shm_zone = ngx_shared_memory_add(cf, &name, size, &ngx_http_gate_module);
    if (shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (shm_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "duplicate zone \"%V\"", &name);
        return NGX_CONF_ERROR;
    }

    ctx->cache.shm_zone = shm_zone;

    shm_zone->init = ngx_http_gate_cache_init_zone;
    shm_zone->data = ctx;

    *cachep = &ctx->cache;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_gate_cache_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_gate_cache_ctx_t  *octx = data;

    size_t                      len;
    ngx_http_gate_cache_ctx_t  *ctx;

    ctx = shm_zone->data;

    if (octx) {
        /*
         * A reload keeps the entries: they hold nothing that depends on
         * the configuration, and the new ttl applies from the next put.
         */

        ctx->sh = octx->sh;
        ctx->shpool = octx->shpool;

        return NGX_OK;
    }

    ctx->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        ctx->sh = ctx->shpool->data;

        return NGX_OK;
    }

    ctx->sh = ngx_slab_alloc(ctx->shpool, sizeof(ngx_http_gate_cache_sh_t));
    if (ctx->sh == NULL) {
        return NGX_ERROR;
    }

    ctx->shpool->data = ctx->sh;

    ngx_rbtree_init(&ctx->sh->rbtree, &ctx->sh->sentinel,
                    ngx_http_gate_cache_rbtree_insert_value);

    ngx_queue_init(&ctx->sh->queue);

    ctx->sh->full_logged = 0;

    len = sizeof(" in gate_cache zone \"\"") + shm_zone->shm.name.len;

    ctx->shpool->log_ctx = ngx_slab_alloc(ctx->shpool, len);
    if (ctx->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(ctx->shpool->log_ctx, " in gate_cache zone \"%V\"%Z",
                &shm_zone->shm.name);

    /* a full zone is reported once by ngx_http_gate_cache_put() */

    ctx->shpool->log_nomem = 0;

    return NGX_OK;
}


ngx_uint_t
ngx_http_gate_cache_get(ngx_http_gate_cache_t *cache, ngx_uint_t kind,
    u_char *hash, ngx_http_gate_record_t *record, ngx_pool_t *pool)
{
    ngx_uint_t                  rc;
    ngx_http_gate_cache_ctx_t  *ctx;

    if (cache == NULL) {
        return NGX_HTTP_GATE_CACHE_MISS;
    }

    ctx = cache->shm_zone->data;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    rc = ngx_http_gate_cache_get_locked(ctx, kind, hash, record, pool);

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "gate cache: %s kind:%ui key:%08xi",
                   rc == NGX_HTTP_GATE_CACHE_HIT ? "hit"
                   : rc == NGX_HTTP_GATE_CACHE_NEGATIVE ? "negative hit"
                   : "miss",
                   kind, ngx_http_gate_cache_key(hash));

    return rc;
}


static ngx_uint_t
ngx_http_gate_cache_get_locked(ngx_http_gate_cache_ctx_t *ctx,
    ngx_uint_t kind, u_char *hash, ngx_http_gate_record_t *record,
    ngx_pool_t *pool)
{
    u_char                      *p, *src;
    size_t                       len;
    ngx_str_t                   *field[NGX_HTTP_GATE_CACHE_NFIELDS];
    ngx_uint_t                   i;
    ngx_http_gate_cache_node_t  *gn;

    gn = ngx_http_gate_cache_lookup(ctx->sh, kind, hash);

    if (gn == NULL) {
        return NGX_HTTP_GATE_CACHE_MISS;
    }

    if (ngx_http_gate_cache_stale(gn, ngx_current_msec, ngx_time())) {
        ngx_http_gate_cache_delete(ctx, gn);
        return NGX_HTTP_GATE_CACHE_MISS;
    }

    ngx_queue_remove(&gn->queue);
    ngx_queue_insert_head(&ctx->sh->queue, &gn->queue);

    if (gn->negative) {
        return NGX_HTTP_GATE_CACHE_NEGATIVE;
    }

    /*
     * Copy out while still locked: once the mutex is released another
     * worker may free or reuse the node.
     */

    len = 0;

    for (i = 0; i < NGX_HTTP_GATE_CACHE_NFIELDS; i++) {
        len += gn->len[i];
    }

    p = ngx_pnalloc(pool, len);
    if (p == NULL) {
        return NGX_HTTP_GATE_CACHE_MISS;
    }

    ngx_http_gate_cache_fields(record, field);

    src = gn->data;

    for (i = 0; i < NGX_HTTP_GATE_CACHE_NFIELDS; i++) {
        field[i]->len = gn->len[i];
        field[i]->data = p;

        p = ngx_cpymem(p, src, gn->len[i]);
        src += gn->len[i];
    }

    record->exp = gn->exp;

    return NGX_HTTP_GATE_CACHE_HIT;
}


void
ngx_http_gate_cache_put(ngx_http_gate_cache_t *cache, ngx_uint_t kind,
    u_char *hash, ngx_http_gate_record_t *record)
{
    u_char                      *p;
    size_t                       len, size;
    time_t                       sec;
    ngx_str_t                   *field[NGX_HTTP_GATE_CACHE_NFIELDS];
    ngx_uint_t                   i, full;
    ngx_msec_t                   lifetime;
    ngx_rbtree_key_t             key;
    ngx_rbtree_node_t           *node;
    ngx_http_gate_cache_ctx_t   *ctx;
    ngx_http_gate_cache_node_t  *gn;

    if (cache == NULL) {
        return;
    }

    len = 0;

    if (record == NULL) {
        lifetime = cache->negative_ttl;

    } else {
        sec = record->exp - ngx_time();

        if (sec <= 0) {
            lifetime = 0;

        } else if ((time_t) (cache->ttl / 1000) >= sec) {
            /* the credential dies before the ttl would run out */
            lifetime = (ngx_msec_t) sec * 1000;

        } else {
            lifetime = cache->ttl;
        }

        ngx_http_gate_cache_fields(record, field);

        for (i = 0; i < NGX_HTTP_GATE_CACHE_NFIELDS; i++) {

            if (field[i]->len > 0xffff) {
                ngx_log_debug0(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                               "gate cache: record too long, not cached");
                return;
            }

            len += field[i]->len;
        }
    }

    if (lifetime == 0) {
        return;
    }

    size = offsetof(ngx_rbtree_node_t, color)
           + offsetof(ngx_http_gate_cache_node_t, data)
           + len;

    ctx = cache->shm_zone->data;

    full = 0;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    gn = ngx_http_gate_cache_lookup(ctx->sh, kind, hash);

    if (gn) {
        ngx_http_gate_cache_delete(ctx, gn);
    }

    ngx_http_gate_cache_expire(ctx, 0);

    node = ngx_slab_alloc_locked(ctx->shpool, size);

    if (node == NULL) {
        ngx_http_gate_cache_expire(ctx, NGX_HTTP_GATE_CACHE_EVICT);

        node = ngx_slab_alloc_locked(ctx->shpool, size);

        if (node == NULL) {

            /* said once: every request would repeat it otherwise */

            if (!ctx->sh->full_logged) {
                ctx->sh->full_logged = 1;
                full = 1;
            }

            ngx_shmtx_unlock(&ctx->shpool->mutex);

            if (full) {
                ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                              "gate: cache zone \"%V\" is full",
                              &cache->shm_zone->shm.name);
            }

            return;
        }
    }

    key = ngx_http_gate_cache_key(hash);

    node->key = key;

    gn = (ngx_http_gate_cache_node_t *) &node->color;

    gn->kind = (u_char) kind;
    gn->expires = ngx_current_msec + lifetime;

    ngx_memcpy(gn->hash, hash, NGX_HTTP_GATE_CACHE_HASH_LEN);

    if (record == NULL) {
        gn->negative = 1;
        gn->exp = 0;
        ngx_memzero(gn->len, sizeof(gn->len));

    } else {
        gn->negative = 0;
        gn->exp = record->exp;

        p = gn->data;

        for (i = 0; i < NGX_HTTP_GATE_CACHE_NFIELDS; i++) {
            gn->len[i] = (u_short) field[i]->len;

            if (field[i]->len) {
                p = ngx_cpymem(p, field[i]->data, field[i]->len);
            }
        }
    }

    ngx_rbtree_insert(&ctx->sh->rbtree, node);

    ngx_queue_insert_head(&ctx->sh->queue, &gn->queue);

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    ngx_log_debug4(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "gate cache: put kind:%ui key:%08xi negative:%d for:%M",
                   kind, key, record == NULL, lifetime);
}


void
ngx_http_gate_cache_remove(ngx_http_gate_cache_t *cache, u_char *hash)
{
    ngx_uint_t                   n;
    ngx_http_gate_cache_ctx_t   *ctx;
    ngx_http_gate_cache_node_t  *gn;

    if (cache == NULL) {
        return;
    }

    ctx = cache->shm_zone->data;

    n = 0;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    /* kind 0 matches any kind, so each pass finds one of the hash's nodes */

    for ( ;; ) {
        gn = ngx_http_gate_cache_lookup(ctx->sh, 0, hash);

        if (gn == NULL) {
            break;
        }

        ngx_http_gate_cache_delete(ctx, gn);
        n++;
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "gate cache: removed %ui entries for key:%08xi",
                   n, ngx_http_gate_cache_key(hash));
}


void
ngx_http_gate_cache_remove_tenant(ngx_http_gate_cache_t *cache,
    ngx_str_t *tenant)
{
    ngx_uint_t                   n;
    ngx_queue_t                 *q, *next;
    ngx_http_gate_cache_ctx_t   *ctx;
    ngx_http_gate_cache_node_t  *gn;

    if (cache == NULL) {
        return;
    }

    ctx = cache->shm_zone->data;

    n = 0;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    for (q = ngx_queue_head(&ctx->sh->queue);
         q != ngx_queue_sentinel(&ctx->sh->queue);
         q = next)
    {
        next = ngx_queue_next(q);

        gn = ngx_queue_data(q, ngx_http_gate_cache_node_t, queue);

        /* the tenant is the first string in the node's data */

        if (gn->negative
            || gn->len[0] != tenant->len
            || (tenant->len
                && ngx_memcmp(gn->data, tenant->data, tenant->len) != 0))
        {
            continue;
        }

        ngx_http_gate_cache_delete(ctx, gn);
        n++;
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "gate cache: removed %ui entries of tenant \"%V\"",
                   n, tenant);
}


void
ngx_http_gate_cache_flush(ngx_http_gate_cache_t *cache)
{
    ngx_uint_t                   n;
    ngx_queue_t                 *q;
    ngx_http_gate_cache_ctx_t   *ctx;
    ngx_http_gate_cache_node_t  *gn;

    if (cache == NULL) {
        return;
    }

    ctx = cache->shm_zone->data;

    n = 0;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    while (!ngx_queue_empty(&ctx->sh->queue)) {
        q = ngx_queue_last(&ctx->sh->queue);
        gn = ngx_queue_data(q, ngx_http_gate_cache_node_t, queue);

        ngx_http_gate_cache_delete(ctx, gn);
        n++;
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "gate cache: flushed %ui entries", n);
}


/*
 * Nodes are ordered by rbtree key, then hash, then kind.  A kind of 0
 * compares equal to every kind, which finds some node of a hash; the
 * order keeps all kinds of one hash adjacent, so that search is sound.
 */

static ngx_http_gate_cache_node_t *
ngx_http_gate_cache_lookup(ngx_http_gate_cache_sh_t *sh, ngx_uint_t kind,
    u_char *hash)
{
    ngx_int_t                    rc;
    ngx_rbtree_key_t             key;
    ngx_rbtree_node_t           *node, *sentinel;
    ngx_http_gate_cache_node_t  *gn;

    key = ngx_http_gate_cache_key(hash);

    node = sh->rbtree.root;
    sentinel = sh->rbtree.sentinel;

    while (node != sentinel) {

        if (key < node->key) {
            node = node->left;
            continue;
        }

        if (key > node->key) {
            node = node->right;
            continue;
        }

        /* key == node->key */

        gn = (ngx_http_gate_cache_node_t *) &node->color;

        rc = ngx_http_gate_cache_cmp(hash, kind, gn);

        if (rc == 0) {
            return gn;
        }

        node = (rc < 0) ? node->left : node->right;
    }

    return NULL;
}


static ngx_int_t
ngx_http_gate_cache_cmp(u_char *hash, ngx_uint_t kind,
    ngx_http_gate_cache_node_t *gn)
{
    ngx_int_t  rc;

    rc = ngx_memcmp(hash, gn->hash, NGX_HTTP_GATE_CACHE_HASH_LEN);

    if (rc != 0 || kind == 0) {
        return rc;
    }

    return (ngx_int_t) kind - (ngx_int_t) gn->kind;
}


static void
ngx_http_gate_cache_rbtree_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    ngx_rbtree_node_t           **p;
    ngx_http_gate_cache_node_t   *gn, *gnt;

    for ( ;; ) {

        if (node->key < temp->key) {

            p = &temp->left;

        } else if (node->key > temp->key) {

            p = &temp->right;

        } else { /* node->key == temp->key */

            gn = (ngx_http_gate_cache_node_t *) &node->color;
            gnt = (ngx_http_gate_cache_node_t *) &temp->color;

            p = (ngx_http_gate_cache_cmp(gn->hash, gn->kind, gnt) < 0)
                ? &temp->left : &temp->right;
        }

        if (*p == sentinel) {
            break;
        }

        temp = *p;
    }

    *p = node;
    node->parent = temp;
    node->left = sentinel;
    node->right = sentinel;
    ngx_rbt_red(node);
}


/*
 * Drops "force" entries from the LRU tail whatever their state, then up
 * to two more if they are stale.  Each put pays for a little cleanup this
 * way, so dead credentials do not sit in the zone until it fills.
 */

static void
ngx_http_gate_cache_expire(ngx_http_gate_cache_ctx_t *ctx, ngx_uint_t force)
{
    time_t                       sec;
    ngx_uint_t                   n;
    ngx_msec_t                   now;
    ngx_queue_t                 *q;
    ngx_http_gate_cache_node_t  *gn;

    now = ngx_current_msec;
    sec = ngx_time();

    for (n = 0; n < force + 2; n++) {

        if (ngx_queue_empty(&ctx->sh->queue)) {
            break;
        }

        q = ngx_queue_last(&ctx->sh->queue);
        gn = ngx_queue_data(q, ngx_http_gate_cache_node_t, queue);

        if (n >= force && !ngx_http_gate_cache_stale(gn, now, sec)) {
            break;
        }

        ngx_http_gate_cache_delete(ctx, gn);
    }

    if (force) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "gate cache: zone full, evicted %ui entries", n);
    }
}


static ngx_uint_t
ngx_http_gate_cache_stale(ngx_http_gate_cache_node_t *gn, ngx_msec_t now,
    time_t sec)
{
    if ((ngx_msec_int_t) (gn->expires - now) <= 0) {
        return 1;
    }

    /* the wall clock may have moved on even if the monotonic one has not */

    return !gn->negative && gn->exp <= sec;
}


static void
ngx_http_gate_cache_delete(ngx_http_gate_cache_ctx_t *ctx,
    ngx_http_gate_cache_node_t *gn)
{
    ngx_rbtree_node_t  *node;

    node = (ngx_rbtree_node_t *)
               ((u_char *) gn - offsetof(ngx_rbtree_node_t, color));

    ngx_queue_remove(&gn->queue);
    ngx_rbtree_delete(&ctx->sh->rbtree, node);
    ngx_slab_free_locked(ctx->shpool, node);
}


/* The hash is SHA-256 output, so any four of its bytes are well spread. */

static ngx_rbtree_key_t
ngx_http_gate_cache_key(u_char *hash)
{
    return ((ngx_rbtree_key_t) hash[0] << 24)
           | ((ngx_rbtree_key_t) hash[1] << 16)
           | ((ngx_rbtree_key_t) hash[2] << 8)
           | (ngx_rbtree_key_t) hash[3];
}


static void
ngx_http_gate_cache_fields(ngx_http_gate_record_t *record, ngx_str_t **field)
{
    field[0] = &record->tenant;
    field[1] = &record->subject;
    field[2] = &record->scope;
    field[3] = &record->id;
}
