/*
 * Copyright (C) Gate authors
 */


/*
 * Redis on nginx's event loop: hiredis' async API with an adapter of our
 * own.  Each worker keeps two connections: one multiplexes every request's
 * commands, the other sits subscribed to gate:invalidate (a subscribed
 * connection may not send ordinary commands).  hiredis has no timeouts, so
 * a connect timer and a watchdog over the in-flight commands provide them.
 */


#include "ngx_http_gate_redis.h"


#define NGX_HTTP_GATE_REDIS_BACKOFF_MIN   100
#define NGX_HTTP_GATE_REDIS_BACKOFF_MAX   2000


typedef struct ngx_http_gate_redis_link_s  ngx_http_gate_redis_link_t;

typedef void (*ngx_http_gate_redis_ready_pt)(ngx_http_gate_redis_link_t *link);


/* One connection to Redis and what it needs to come back after a loss. */

struct ngx_http_gate_redis_link_s {
    redisAsyncContext             *ac;
    ngx_connection_t              *connection;
    ngx_http_gate_redis_ready_pt   ready;
    char                          *name;

    ngx_event_t                    connect_timer;
    ngx_event_t                    reconnect_timer;
    ngx_event_t                    watchdog;

    ngx_queue_t                    inflight;     /* of cmd, send order */
    ngx_msec_t                     backoff;
    ngx_log_t                     *log;

    unsigned                       connected:1;
    unsigned                       subscribed:1;
};


struct ngx_http_gate_redis_cmd_s {
    ngx_queue_t                     queue;
    ngx_msec_t                      deadline;
    ngx_http_gate_redis_handler_pt  handler;
    void                           *data;
    ngx_http_gate_redis_link_t     *link;
};


static ngx_int_t ngx_http_gate_redis_parse_addr(ngx_conf_t *cf,
    ngx_http_gate_redis_t *conf, ngx_str_t *addr);
static void ngx_http_gate_redis_connect(ngx_http_gate_redis_link_t *link);
static ngx_int_t ngx_http_gate_redis_attach(ngx_http_gate_redis_link_t *link);
static void ngx_http_gate_redis_add_read(void *privdata);
static void ngx_http_gate_redis_del_read(void *privdata);
static void ngx_http_gate_redis_add_write(void *privdata);
static void ngx_http_gate_redis_del_write(void *privdata);
static void ngx_http_gate_redis_cleanup(void *privdata);
static void ngx_http_gate_redis_read_handler(ngx_event_t *ev);
static void ngx_http_gate_redis_write_handler(ngx_event_t *ev);
static void ngx_http_gate_redis_on_connect(const redisAsyncContext *ac,
    int status);
static void ngx_http_gate_redis_on_disconnect(const redisAsyncContext *ac,
    int status);
static void ngx_http_gate_redis_lost(ngx_http_gate_redis_link_t *link);
static void ngx_http_gate_redis_drop(ngx_http_gate_redis_link_t *link,
    const char *why);
static void ngx_http_gate_redis_schedule(ngx_http_gate_redis_link_t *link);
static void ngx_http_gate_redis_reconnect_handler(ngx_event_t *ev);
static void ngx_http_gate_redis_connect_timeout(ngx_event_t *ev);
static void ngx_http_gate_redis_watchdog_handler(ngx_event_t *ev);
static void ngx_http_gate_redis_arm_watchdog(ngx_http_gate_redis_link_t *link);
static void ngx_http_gate_redis_reply(redisAsyncContext *ac, void *reply,
    void *privdata);
static void ngx_http_gate_redis_setup_reply(redisAsyncContext *ac,
    void *reply, void *privdata);
static void ngx_http_gate_redis_main_ready(ngx_http_gate_redis_link_t *link);
static void ngx_http_gate_redis_sub_ready(ngx_http_gate_redis_link_t *link);
static void ngx_http_gate_redis_sub_reply(redisAsyncContext *ac, void *reply,
    void *privdata);


static ngx_http_gate_redis_t           *ngx_http_gate_redis_conf_current;
static ngx_http_gate_redis_message_pt   ngx_http_gate_redis_on_message;
static ngx_http_gate_redis_resync_pt    ngx_http_gate_redis_on_resync;
static ngx_http_gate_redis_link_t       ngx_http_gate_redis_main;
static ngx_http_gate_redis_link_t       ngx_http_gate_redis_sub;
static ngx_uint_t                       ngx_http_gate_redis_exiting;


char *
ngx_http_gate_redis_conf(ngx_conf_t *cf, ngx_http_gate_redis_t **redisp)
{
    ngx_int_t               n;
    ngx_str_t              *value, s;
    ngx_uint_t              i;
    ngx_http_gate_redis_t  *conf;

    if (*redisp != NULL) {
        return "is duplicate";
    }

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_gate_redis_t));
    if (conf == NULL) {
        return NGX_CONF_ERROR;
    }

    conf->connect_timeout = 100;
    conf->timeout = 200;

    value = cf->args->elts;

    if (ngx_http_gate_redis_parse_addr(cf, conf, &value[1]) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "database=", 9) == 0) {
            n = ngx_atoi(value[i].data + 9, value[i].len - 9);
            if (n == NGX_ERROR || n > 65535) {
                goto invalid;
            }

            conf->database = n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "password=", 9) == 0) {
            conf->password.data = value[i].data + 9;
            conf->password.len = value[i].len - 9;

            if (conf->password.len == 0) {
                goto invalid;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "connect_timeout=", 16) == 0) {
            s.data = value[i].data + 16;
            s.len = value[i].len - 16;

            conf->connect_timeout = ngx_parse_time(&s, 0);
            if (conf->connect_timeout == (ngx_msec_t) NGX_ERROR
                || conf->connect_timeout == 0)
            {
                goto invalid;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "timeout=", 8) == 0) {
            s.data = value[i].data + 8;
            s.len = value[i].len - 8;

            conf->timeout = ngx_parse_time(&s, 0);
            if (conf->timeout == (ngx_msec_t) NGX_ERROR || conf->timeout == 0) {
                goto invalid;
            }

            continue;
        }

        goto invalid;
    }

    *redisp = conf;

    return NGX_CONF_OK;

invalid:

    /* the password is a secret: never echo it back */

    if (ngx_strncmp(value[i].data, "password=", 9) == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "empty redis password");
        return NGX_CONF_ERROR;
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\"", &value[i]);

    return NGX_CONF_ERROR;
}


/*
 * Workers must never block on DNS, so only numeric addresses and unix
 * sockets are accepted; a name is refused when the configuration is read.
 */

static ngx_int_t
ngx_http_gate_redis_parse_addr(ngx_conf_t *cf, ngx_http_gate_redis_t *conf,
    ngx_str_t *addr)
{
    u_char     *colon, *last;
    ngx_int_t   port;
    ngx_str_t   host;
#if (NGX_HAVE_INET6)
    u_char      buf[16];
#endif

    conf->addr = *addr;

    if (addr->len > 5 && ngx_strncmp(addr->data, "unix:", 5) == 0) {
        conf->unix_path.len = addr->len - 5;
        conf->unix_path.data = ngx_pnalloc(cf->pool, conf->unix_path.len + 1);
        if (conf->unix_path.data == NULL) {
            return NGX_ERROR;
        }

        ngx_cpystrn(conf->unix_path.data, addr->data + 5,
                    conf->unix_path.len + 1);
        return NGX_OK;
    }

    last = addr->data + addr->len;
    colon = ngx_strlchr(addr->data, last, ']');
    colon = ngx_strlchr(colon ? colon : addr->data, last, ':');

    if (colon == NULL) {
        goto invalid;
    }

    port = ngx_atoi(colon + 1, last - colon - 1);
    if (port < 1 || port > 65535) {
        goto invalid;
    }

    host.data = addr->data;
    host.len = colon - addr->data;

    if (host.len > 2 && host.data[0] == '[' && host.data[host.len - 1] == ']')
    {
        host.data++;
        host.len -= 2;

#if (NGX_HAVE_INET6)
        if (ngx_inet6_addr(host.data, host.len, buf) != NGX_OK) {
            goto invalid;
        }
#else
        goto invalid;
#endif

    } else if (ngx_inet_addr(host.data, host.len) == INADDR_NONE) {
        goto invalid;
    }

    conf->host.len = host.len;
    conf->host.data = ngx_pnalloc(cf->pool, host.len + 1);
    if (conf->host.data == NULL) {
        return NGX_ERROR;
    }

    ngx_cpystrn(conf->host.data, host.data, host.len + 1);
    conf->port = port;

    return NGX_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid redis address \"%V\": expected "
                       "a numeric IP:port or unix:/path", addr);

    return NGX_ERROR;
}


ngx_int_t
ngx_http_gate_redis_init_process(ngx_cycle_t *cycle,
    ngx_http_gate_redis_t *conf, ngx_http_gate_redis_message_pt on_message,
    ngx_http_gate_redis_resync_pt on_resync)
{
    ngx_http_gate_redis_link_t  *links[2];
    ngx_uint_t                   i;

    ngx_http_gate_redis_conf_current = conf;
    ngx_http_gate_redis_on_message = on_message;
    ngx_http_gate_redis_on_resync = on_resync;
    ngx_http_gate_redis_exiting = 0;

    ngx_memzero(&ngx_http_gate_redis_main, sizeof(ngx_http_gate_redis_link_t));
    ngx_memzero(&ngx_http_gate_redis_sub, sizeof(ngx_http_gate_redis_link_t));

    ngx_http_gate_redis_main.name = "commands";
    ngx_http_gate_redis_main.ready = ngx_http_gate_redis_main_ready;
    ngx_http_gate_redis_sub.name = "subscription";
    ngx_http_gate_redis_sub.ready = ngx_http_gate_redis_sub_ready;

    links[0] = &ngx_http_gate_redis_main;
    links[1] = &ngx_http_gate_redis_sub;

    for (i = 0; i < 2; i++) {
        ngx_queue_init(&links[i]->inflight);
        links[i]->log = cycle->log;

        links[i]->connect_timer.handler = ngx_http_gate_redis_connect_timeout;
        links[i]->connect_timer.data = links[i];
        links[i]->connect_timer.log = cycle->log;
        links[i]->connect_timer.cancelable = 1;

        links[i]->reconnect_timer.handler =
                                         ngx_http_gate_redis_reconnect_handler;
        links[i]->reconnect_timer.data = links[i];
        links[i]->reconnect_timer.log = cycle->log;
        links[i]->reconnect_timer.cancelable = 1;

        /*
         * The watchdog runs only while commands wait; it is not cancelable
         * so that a worker being shut down still answers those requests.
         */
        links[i]->watchdog.handler = ngx_http_gate_redis_watchdog_handler;
        links[i]->watchdog.data = links[i];
        links[i]->watchdog.log = cycle->log;

        ngx_http_gate_redis_connect(links[i]);
    }

    return NGX_OK;
}


void
ngx_http_gate_redis_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_gate_redis_link_t  *links[2];
    ngx_uint_t                   i;

    if (ngx_http_gate_redis_conf_current == NULL) {
        return;
    }

    ngx_http_gate_redis_exiting = 1;

    links[0] = &ngx_http_gate_redis_main;
    links[1] = &ngx_http_gate_redis_sub;

    for (i = 0; i < 2; i++) {
        if (links[i]->reconnect_timer.timer_set) {
            ngx_del_timer(&links[i]->reconnect_timer);
        }

        ngx_http_gate_redis_drop(links[i], NULL);
    }

    ngx_http_gate_redis_conf_current = NULL;
}


static void
ngx_http_gate_redis_connect(ngx_http_gate_redis_link_t *link)
{
    redisAsyncContext      *ac;
    ngx_http_gate_redis_t  *conf;

    conf = ngx_http_gate_redis_conf_current;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, link->log, 0,
                   "gate redis: connecting %s to %V", link->name, &conf->addr);

    if (conf->unix_path.len) {
        ac = redisAsyncConnectUnix((char *) conf->unix_path.data);

    } else {
        ac = redisAsyncConnect((char *) conf->host.data, (int) conf->port);
    }

    if (ac == NULL) {
        ngx_log_error(NGX_LOG_ERR, link->log, 0,
                      "gate redis: cannot allocate a connection to %V",
                      &conf->addr);
        ngx_http_gate_redis_schedule(link);
        return;
    }

    if (ac->err) {
        ngx_log_error(NGX_LOG_ERR, link->log, 0,
                      "gate redis: connect to %V failed: %s",
                      &conf->addr, ac->errstr);
        redisAsyncFree(ac);
        ngx_http_gate_redis_schedule(link);
        return;
    }

    link->ac = ac;
    ac->data = link;

    /*
     * A half-open subscription would otherwise go unnoticed for hours.
     * TCP only: on a unix socket the TCP options fail and hiredis would
     * keep that error on the context.
     */

    if (conf->unix_path.len == 0) {
        (void) redisEnableKeepAlive(&ac->c);
    }

    if (ngx_http_gate_redis_attach(link) != NGX_OK) {
        ngx_http_gate_redis_drop(link, "cannot attach to the event loop");
        return;
    }

    redisAsyncSetDisconnectCallback(ac, ngx_http_gate_redis_on_disconnect);

    /* this also waits for writability: how a non-blocking connect ends */
    redisAsyncSetConnectCallback(ac, ngx_http_gate_redis_on_connect);

    /* pipelined ahead of every command, so nothing runs unauthenticated */

    if (conf->password.len) {
        redisAsyncCommand(ac, ngx_http_gate_redis_setup_reply, link,
                          "AUTH %b", conf->password.data,
                          conf->password.len);
    }

    if (conf->database) {
        redisAsyncCommand(ac, ngx_http_gate_redis_setup_reply, link,
                          "SELECT %d", (int) conf->database);
    }

    ngx_add_timer(&link->connect_timer, conf->connect_timeout);
}


static ngx_int_t
ngx_http_gate_redis_attach(ngx_http_gate_redis_link_t *link)
{
    ngx_connection_t   *c;
    redisAsyncContext  *ac;

    ac = link->ac;

    c = ngx_get_connection(ac->c.fd, link->log);
    if (c == NULL) {
        return NGX_ERROR;
    }

    c->data = link;
    c->read->handler = ngx_http_gate_redis_read_handler;
    c->write->handler = ngx_http_gate_redis_write_handler;
    c->read->log = link->log;
    c->write->log = link->log;

    link->connection = c;

    ac->ev.data = c;
    ac->ev.addRead = ngx_http_gate_redis_add_read;
    ac->ev.delRead = ngx_http_gate_redis_del_read;
    ac->ev.addWrite = ngx_http_gate_redis_add_write;
    ac->ev.delWrite = ngx_http_gate_redis_del_write;
    ac->ev.cleanup = ngx_http_gate_redis_cleanup;

    return NGX_OK;
}


/*
 * hiredis expects level-triggered readiness: it reads or writes once per
 * call and relies on being called again while data remains.
 */

static void
ngx_http_gate_redis_add_read(void *privdata)
{
    ngx_connection_t  *c = privdata;

    if (!c->read->active) {
        (void) ngx_add_event(c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT);
    }
}


static void
ngx_http_gate_redis_del_read(void *privdata)
{
    ngx_connection_t  *c = privdata;

    if (c->read->active) {
        (void) ngx_del_event(c->read, NGX_READ_EVENT, 0);
    }
}


static void
ngx_http_gate_redis_add_write(void *privdata)
{
    ngx_connection_t  *c = privdata;

    if (!c->write->active) {
        (void) ngx_add_event(c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT);
    }
}


static void
ngx_http_gate_redis_del_write(void *privdata)
{
    ngx_connection_t  *c = privdata;

    if (c->write->active) {
        (void) ngx_del_event(c->write, NGX_WRITE_EVENT, 0);
    }
}


/* hiredis closes the socket itself; nginx only gives the slot back. */

static void
ngx_http_gate_redis_cleanup(void *privdata)
{
    ngx_connection_t            *c = privdata;
    ngx_http_gate_redis_link_t  *link;

    link = c->data;

    ngx_http_gate_redis_del_read(c);
    ngx_http_gate_redis_del_write(c);

    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    ngx_free_connection(c);
    c->fd = (ngx_socket_t) -1;

    if (link->connection == c) {
        link->connection = NULL;
    }
}


static void
ngx_http_gate_redis_read_handler(ngx_event_t *ev)
{
    ngx_connection_t            *c;
    ngx_http_gate_redis_link_t  *link;

    c = ev->data;
    link = c->data;

    if (link->ac) {
        redisAsyncHandleRead(link->ac);
    }
}


static void
ngx_http_gate_redis_write_handler(ngx_event_t *ev)
{
    ngx_connection_t            *c;
    ngx_http_gate_redis_link_t  *link;

    c = ev->data;
    link = c->data;

    if (link->ac) {
        redisAsyncHandleWrite(link->ac);
    }
}


static void
ngx_http_gate_redis_on_connect(const redisAsyncContext *ac, int status)
{
    ngx_http_gate_redis_link_t  *link;

    link = ac->data;

    if (link->connect_timer.timer_set) {
        ngx_del_timer(&link->connect_timer);
    }

    if (status != REDIS_OK) {
        ngx_log_error(NGX_LOG_ERR, link->log, 0,
                      "gate redis: connect %s to %V failed: %s", link->name,
                      &ngx_http_gate_redis_conf_current->addr, ac->errstr);

        /* hiredis frees the context right after this callback */
        ngx_http_gate_redis_lost(link);
        return;
    }

    ngx_log_error(NGX_LOG_INFO, link->log, 0,
                  "gate redis: %s connected to %V", link->name,
                  &ngx_http_gate_redis_conf_current->addr);

    link->connected = 1;
    link->backoff = 0;

    link->ready(link);
}


static void
ngx_http_gate_redis_on_disconnect(const redisAsyncContext *ac, int status)
{
    ngx_http_gate_redis_link_t  *link;

    link = ac->data;

    if (link->ac != ac) {
        /* we dropped it ourselves and already scheduled what comes next */
        return;
    }

    ngx_log_error(NGX_LOG_ERR, link->log, 0,
                  "gate redis: %s connection to %V lost: %s", link->name,
                  &ngx_http_gate_redis_conf_current->addr,
                  ac->errstr[0] ? ac->errstr : "closed");

    ngx_http_gate_redis_lost(link);
}


/* The context is going away (hiredis frees it): forget it, come back. */

static void
ngx_http_gate_redis_lost(ngx_http_gate_redis_link_t *link)
{
    link->ac = NULL;
    link->connected = 0;
    link->subscribed = 0;

    if (link->connect_timer.timer_set) {
        ngx_del_timer(&link->connect_timer);
    }

    ngx_http_gate_redis_schedule(link);
}


/*
 * Drops a connection on our own initiative.  Pending commands are answered
 * with NULL by redisAsyncFree(); link->ac is cleared first so that those
 * handlers cannot queue new commands on the dying context.
 */

static void
ngx_http_gate_redis_drop(ngx_http_gate_redis_link_t *link, const char *why)
{
    redisAsyncContext  *ac;

    ac = link->ac;

    link->ac = NULL;
    link->connected = 0;
    link->subscribed = 0;

    if (link->connect_timer.timer_set) {
        ngx_del_timer(&link->connect_timer);
    }

    if (why) {
        ngx_log_error(NGX_LOG_ERR, link->log, 0,
                      "gate redis: dropping %s connection to %V: %s",
                      link->name, &ngx_http_gate_redis_conf_current->addr,
                      why);
    }

    if (ac) {
        redisAsyncFree(ac);
    }

    if (link->watchdog.timer_set && ngx_queue_empty(&link->inflight)) {
        ngx_del_timer(&link->watchdog);
    }

    ngx_http_gate_redis_schedule(link);
}


/* Exponential backoff with jitter, so that workers do not reconnect in step. */

static void
ngx_http_gate_redis_schedule(ngx_http_gate_redis_link_t *link)
{
    ngx_msec_t  delay;

    if (ngx_http_gate_redis_exiting || link->reconnect_timer.timer_set) {
        return;
    }

    if (link->backoff == 0) {
        link->backoff = NGX_HTTP_GATE_REDIS_BACKOFF_MIN;

    } else {
        link->backoff = ngx_min(link->backoff * 2,
                                NGX_HTTP_GATE_REDIS_BACKOFF_MAX);
    }

    delay = link->backoff / 2 + (ngx_random() % (link->backoff / 2 + 1));

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, link->log, 0,
                   "gate redis: reconnecting %s in %M ms", link->name, delay);

    ngx_add_timer(&link->reconnect_timer, delay);
}


static void
ngx_http_gate_redis_reconnect_handler(ngx_event_t *ev)
{
    ngx_http_gate_redis_link_t  *link = ev->data;

    if (ngx_http_gate_redis_exiting || link->ac) {
        return;
    }

    ngx_http_gate_redis_connect(link);
}


static void
ngx_http_gate_redis_connect_timeout(ngx_event_t *ev)
{
    ngx_http_gate_redis_link_t  *link = ev->data;

    ngx_http_gate_redis_drop(link, "connect timed out");
}


static void
ngx_http_gate_redis_watchdog_handler(ngx_event_t *ev)
{
    ngx_queue_t                 *q;
    ngx_http_gate_redis_cmd_t   *cmd;
    ngx_http_gate_redis_link_t  *link = ev->data;

    if (ngx_queue_empty(&link->inflight)) {
        return;
    }

    q = ngx_queue_head(&link->inflight);
    cmd = ngx_queue_data(q, ngx_http_gate_redis_cmd_t, queue);

    if ((ngx_msec_int_t) (cmd->deadline - ngx_current_msec) > 0) {
        ngx_http_gate_redis_arm_watchdog(link);
        return;
    }

    /*
     * Replies come in order: once the oldest is late, everything behind it
     * is too, and the connection cannot be trusted to catch up.
     */

    ngx_http_gate_redis_drop(link, "command timed out");
}


static void
ngx_http_gate_redis_arm_watchdog(ngx_http_gate_redis_link_t *link)
{
    ngx_msec_int_t              left;
    ngx_http_gate_redis_cmd_t  *cmd;

    if (ngx_queue_empty(&link->inflight)) {
        if (link->watchdog.timer_set) {
            ngx_del_timer(&link->watchdog);
        }

        return;
    }

    cmd = ngx_queue_data(ngx_queue_head(&link->inflight),
                         ngx_http_gate_redis_cmd_t, queue);

    left = (ngx_msec_int_t) (cmd->deadline - ngx_current_msec);
    if (left < 1) {
        left = 1;
    }

    ngx_add_timer(&link->watchdog, (ngx_msec_t) left);
}


ngx_http_gate_redis_cmd_t *
ngx_http_gate_redis_send(ngx_log_t *log,
    ngx_http_gate_redis_handler_pt handler, void *data, int argc,
    const char **argv, const size_t *argvlen)
{
    redisAsyncContext           *ac;
    ngx_http_gate_redis_cmd_t   *cmd;
    ngx_http_gate_redis_link_t  *link;

    link = &ngx_http_gate_redis_main;
    ac = link->ac;

    if (ngx_http_gate_redis_conf_current == NULL || ac == NULL
        || (ac->c.flags & (REDIS_DISCONNECTING|REDIS_FREEING)))
    {
        return NULL;
    }

    cmd = ngx_alloc(sizeof(ngx_http_gate_redis_cmd_t), log);
    if (cmd == NULL) {
        return NULL;
    }

    cmd->handler = handler;
    cmd->data = data;
    cmd->link = link;
    cmd->deadline = ngx_current_msec
                    + ngx_http_gate_redis_conf_current->timeout;

    if (redisAsyncCommandArgv(ac, ngx_http_gate_redis_reply, cmd, argc, argv,
                              argvlen)
        != REDIS_OK)
    {
        ngx_free(cmd);
        return NULL;
    }

    ngx_queue_insert_tail(&link->inflight, &cmd->queue);

    if (!link->watchdog.timer_set) {
        ngx_http_gate_redis_arm_watchdog(link);
    }

    return cmd;
}


void
ngx_http_gate_redis_cancel(ngx_http_gate_redis_cmd_t *cmd)
{
    /* the reply still arrives and frees cmd; nobody is told about it */
    cmd->handler = NULL;
    cmd->data = NULL;
}


ngx_uint_t
ngx_http_gate_redis_subscribed(void)
{
    return ngx_http_gate_redis_sub.subscribed;
}


static void
ngx_http_gate_redis_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    void                            *data;
    ngx_http_gate_redis_cmd_t       *cmd = privdata;
    ngx_http_gate_redis_link_t      *link;
    ngx_http_gate_redis_handler_pt   handler;

    link = cmd->link;
    handler = cmd->handler;
    data = cmd->data;

    ngx_queue_remove(&cmd->queue);
    ngx_free(cmd);

    ngx_http_gate_redis_arm_watchdog(link);

    if (handler) {
        handler(data, reply);
    }
}


static void
ngx_http_gate_redis_setup_reply(redisAsyncContext *ac, void *reply,
    void *privdata)
{
    redisReply                  *r = reply;
    ngx_http_gate_redis_link_t  *link = privdata;

    if (r && r->type == REDIS_REPLY_ERROR) {
        /* later commands fail too and their requests get 503 */
        ngx_log_error(NGX_LOG_ERR, link->log, 0,
                      "gate redis: %s setup on %V failed: %s", link->name,
                      &ngx_http_gate_redis_conf_current->addr, r->str);
    }
}


static void
ngx_http_gate_redis_main_ready(ngx_http_gate_redis_link_t *link)
{
    /* commands queued while connecting are already on their way */
}


static void
ngx_http_gate_redis_sub_ready(ngx_http_gate_redis_link_t *link)
{
    if (redisAsyncCommand(link->ac, ngx_http_gate_redis_sub_reply, link,
                          "SUBSCRIBE %s", NGX_HTTP_GATE_INVALIDATE_CHANNEL)
        != REDIS_OK)
    {
        ngx_http_gate_redis_drop(link, "cannot subscribe");
    }
}


static void
ngx_http_gate_redis_sub_reply(redisAsyncContext *ac, void *reply,
    void *privdata)
{
    ngx_str_t                    payload;
    redisReply                  *r = reply;
    ngx_http_gate_redis_link_t  *link = privdata;

    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 3
        || r->element[0]->type != REDIS_REPLY_STRING)
    {
        if (r && r->type == REDIS_REPLY_ERROR) {
            ngx_log_error(NGX_LOG_ERR, link->log, 0,
                          "gate redis: subscribe failed: %s", r->str);
        }

        return;
    }

    if (ngx_strcmp(r->element[0]->str, "subscribe") == 0) {

        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, link->log, 0,
                       "gate redis: subscribed to invalidations");

        /* anything published while we were away was missed */

        link->subscribed = 1;

        if (ngx_http_gate_redis_on_resync) {
            ngx_http_gate_redis_on_resync();
        }

        return;
    }

    if (ngx_strcmp(r->element[0]->str, "message") == 0
        && r->element[2]->type == REDIS_REPLY_STRING)
    {
        payload.data = (u_char *) r->element[2]->str;
        payload.len = r->element[2]->len;

        if (ngx_http_gate_redis_on_message) {
            ngx_http_gate_redis_on_message(&payload);
        }
    }
}
