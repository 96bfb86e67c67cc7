/*
 * Copyright (C) Gate authors
 */


#ifndef _NGX_HTTP_GATE_REDIS_H_INCLUDED_
#define _NGX_HTTP_GATE_REDIS_H_INCLUDED_


#include <hiredis/hiredis.h>
#include <hiredis/async.h>

#include "ngx_http_gate_module.h"


#define NGX_HTTP_GATE_INVALIDATE_CHANNEL  "gate:invalidate"


/* The "gate_redis" directive: where Redis is and how long to wait. */

struct ngx_http_gate_redis_s {
    ngx_str_t                  addr;          /* as written, for logs */
    ngx_str_t                  host;          /* numeric, null-terminated */
    ngx_str_t                  unix_path;     /* null-terminated */
    ngx_int_t                  port;
    ngx_int_t                  database;
    ngx_str_t                  password;
    ngx_msec_t                 connect_timeout;
    ngx_msec_t                 timeout;
};


/*
 * Called exactly once per command that was sent, unless cancelled first:
 * with the reply, or with NULL when Redis failed, timed out or went away.
 * The reply belongs to hiredis and is freed when the handler returns.
 */
typedef void (*ngx_http_gate_redis_handler_pt)(void *data, redisReply *reply);

/* Called for each message published on gate:invalidate. */
typedef void (*ngx_http_gate_redis_message_pt)(ngx_str_t *payload);

/* Called when the subscription (re)starts: messages may have been missed. */
typedef void (*ngx_http_gate_redis_resync_pt)(void);


char *ngx_http_gate_redis_conf(ngx_conf_t *cf, ngx_http_gate_redis_t **redisp);

ngx_int_t ngx_http_gate_redis_init_process(ngx_cycle_t *cycle,
    ngx_http_gate_redis_t *conf, ngx_http_gate_redis_message_pt on_message,
    ngx_http_gate_redis_resync_pt on_resync);
void ngx_http_gate_redis_exit_process(ngx_cycle_t *cycle);

/*
 * Queues a command.  Returns NULL when Redis cannot be asked now (not
 * connected): the handler is then never called and the caller answers at
 * once.  The handler is never called from within this function.
 */
ngx_http_gate_redis_cmd_t *ngx_http_gate_redis_send(ngx_log_t *log,
    ngx_http_gate_redis_handler_pt handler, void *data, int argc,
    const char **argv, const size_t *argvlen);

/* The request that asked went away: its handler will not be called. */
void ngx_http_gate_redis_cancel(ngx_http_gate_redis_cmd_t *cmd);

/* Whether this worker currently hears gate:invalidate. */
ngx_uint_t ngx_http_gate_redis_subscribed(void);


#endif /* _NGX_HTTP_GATE_REDIS_H_INCLUDED_ */
