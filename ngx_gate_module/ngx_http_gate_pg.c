/*
 * Copyright (C) Gate authors
 */


/*
 * PostgreSQL on nginx's event loop: a per-worker pool of libpq connections
 * driven only through the asynchronous calls (PQconnectPoll,
 * PQsendQueryPrepared, PQconsumeInput).  Each connection prepares every
 * statement once, right after it connects.  A query that overruns its
 * deadline takes its connection with it: its state is unknown, and a new
 * one is cheaper to trust.
 */


#include "ngx_http_gate_pg.h"


#define NGX_HTTP_GATE_PG_DOWN          0
#define NGX_HTTP_GATE_PG_CONNECTING    1
#define NGX_HTTP_GATE_PG_PREPARING     2
#define NGX_HTTP_GATE_PG_IDLE          3
#define NGX_HTTP_GATE_PG_BUSY          4

#define NGX_HTTP_GATE_PG_BACKOFF_MIN   100
#define NGX_HTTP_GATE_PG_BACKOFF_MAX   2000
#define NGX_HTTP_GATE_PG_MAX_PARAMS    6


typedef struct {
    const char                    *name;
    const char                    *sql;
} ngx_http_gate_pg_statement_t;


typedef struct {
    PGconn                        *pg;
    ngx_connection_t              *connection;
    ngx_uint_t                     state;
    ngx_uint_t                     prepared;
    ngx_http_gate_pg_query_t      *query;
    PGresult                      *result;
    ngx_uint_t                     failed;       /* a result said error */
    ngx_event_t                    deadline;
    ngx_event_t                    retry;
    ngx_msec_t                     backoff;
    ngx_queue_t                    idle;
    ngx_log_t                     *log;
} ngx_http_gate_pg_conn_t;


struct ngx_http_gate_pg_query_s {
    ngx_queue_t                    queue;        /* while waiting */
    ngx_event_t                    wait;
    ngx_uint_t                     statement;
    int                            nparams;
    const char                    *values[NGX_HTTP_GATE_PG_MAX_PARAMS];
    ngx_http_gate_pg_handler_pt    handler;
    void                          *data;
    ngx_http_gate_pg_conn_t       *conn;         /* while running */
};


static ngx_int_t ngx_http_gate_pg_check_host(ngx_conf_t *cf,
    ngx_http_gate_pg_t *conf);
static void ngx_http_gate_pg_connect(ngx_http_gate_pg_conn_t *pc);
static ngx_int_t ngx_http_gate_pg_attach(ngx_http_gate_pg_conn_t *pc);
static void ngx_http_gate_pg_detach(ngx_http_gate_pg_conn_t *pc);
static void ngx_http_gate_pg_want(ngx_http_gate_pg_conn_t *pc,
    ngx_uint_t read, ngx_uint_t write);
static void ngx_http_gate_pg_event(ngx_event_t *ev);
static void ngx_http_gate_pg_poll_connect(ngx_http_gate_pg_conn_t *pc);
static void ngx_http_gate_pg_prepare_next(ngx_http_gate_pg_conn_t *pc);
static ngx_int_t ngx_http_gate_pg_send(ngx_http_gate_pg_conn_t *pc);
static ngx_int_t ngx_http_gate_pg_collect(ngx_http_gate_pg_conn_t *pc);
static void ngx_http_gate_pg_done(ngx_http_gate_pg_conn_t *pc);
static void ngx_http_gate_pg_fail(ngx_http_gate_pg_conn_t *pc,
    const char *why);
static void ngx_http_gate_pg_schedule(ngx_http_gate_pg_conn_t *pc);
static void ngx_http_gate_pg_retry(ngx_event_t *ev);
static void ngx_http_gate_pg_deadline(ngx_event_t *ev);
static void ngx_http_gate_pg_ready(ngx_http_gate_pg_conn_t *pc);
static ngx_int_t ngx_http_gate_pg_run(ngx_http_gate_pg_conn_t *pc,
    ngx_http_gate_pg_query_t *q);
static void ngx_http_gate_pg_wait_timeout(ngx_event_t *ev);
static void ngx_http_gate_pg_finish_query(ngx_http_gate_pg_query_t *q,
    PGresult *res);
static void ngx_http_gate_pg_request_cleanup(void *data);


/*
 * Columns of the two lookups match the fields of the Redis records:
 * tenant, subject, scope, exp (unix seconds), id.  A key without an end is
 * given one a day ahead so that every cached copy has a bound.
 */

static ngx_http_gate_pg_statement_t  ngx_http_gate_pg_statements[] = {

    { "gate_token_lookup",
      "SELECT t.tenant_id, t.subject, t.scopes,"
      " extract(epoch FROM t.expires_at)::bigint, t.id"
      " FROM access_tokens t JOIN tenants n ON n.id = t.tenant_id"
      " WHERE t.token_hash = $1 AND t.revoked_at IS NULL"
      " AND t.expires_at > now() AND n.disabled_at IS NULL" },

    { "gate_key_lookup",
      "SELECT k.tenant_id, NULL, NULL,"
      " extract(epoch FROM LEAST(COALESCE(k.expires_at, 'infinity'),"
      " now() + interval '1 day'))::bigint, k.id"
      " FROM api_keys k JOIN tenants n ON n.id = k.tenant_id"
      " WHERE k.key_hash = $1 AND k.revoked_at IS NULL"
      " AND (k.expires_at IS NULL OR k.expires_at > now())"
      " AND n.disabled_at IS NULL" },

    { "gate_key_touch",
      "UPDATE api_keys SET last_used_at = now() WHERE id = $1" },

    { "gate_identity_insert",
      "INSERT INTO identities (identity_id, tenant_id) VALUES ($1, $2)"
      " ON CONFLICT (identity_id) DO NOTHING" },

    { "gate_identity_delete",
      "DELETE FROM identities WHERE identity_id = $1 AND tenant_id = $2" },

    { "gate_identity_list",
      "SELECT identity_id FROM identities"
      " WHERE tenant_id = $1 AND identity_id > $2::uuid"
      " ORDER BY identity_id LIMIT $3::int" },

    /* by slug or id; a disabled tenant is found, and says so */
    { "gate_tenant_lookup",
      "SELECT id, CASE WHEN disabled_at IS NULL THEN 'active'"
      " ELSE 'disabled' END, slug,"
      " extract(epoch FROM now() + interval '5 minutes')::bigint, id"
      " FROM tenants WHERE slug = $1"
      " OR (length($1) = 36 AND id::text = $1)" },

    { "gate_identity_tenant",
      "SELECT tenant_id FROM identities WHERE identity_id = $1::uuid" },

    { "gate_token_insert",
      "INSERT INTO access_tokens"
      " (id, tenant_id, subject, token_hash, scopes, expires_at)"
      " VALUES (gen_random_uuid(), $1, $2, $3, $4,"
      " now() + make_interval(secs => $5::int))"
      " RETURNING id, extract(epoch FROM created_at)::bigint,"
      " extract(epoch FROM expires_at)::bigint" },

    /* introspection asks the truth, not a cache */
    { "gate_token_inspect",
      "SELECT t.subject, t.scopes, extract(epoch FROM t.expires_at)::bigint,"
      " extract(epoch FROM t.created_at)::bigint, t.id"
      " FROM access_tokens t JOIN tenants n ON n.id = t.tenant_id"
      " WHERE t.token_hash = $1 AND t.tenant_id = $2::uuid"
      " AND t.revoked_at IS NULL AND t.expires_at > now()"
      " AND n.disabled_at IS NULL" },

    /* already revoked ones too: a retry writes their tombstones again */
    { "gate_token_revoke",
      "WITH t AS (SELECT token_hash, expires_at FROM access_tokens"
      " WHERE token_hash = $1 AND tenant_id = $2::uuid"
      " AND expires_at > now()),"
      " u AS (UPDATE access_tokens SET revoked_at = now()"
      " WHERE token_hash = $1 AND tenant_id = $2::uuid"
      " AND revoked_at IS NULL)"
      " SELECT token_hash,"
      " greatest(extract(epoch FROM expires_at - now())::bigint, 60)"
      " FROM t" },

    { "gate_token_list",
      "SELECT id, scopes, extract(epoch FROM created_at)::bigint,"
      " extract(epoch FROM expires_at)::bigint FROM access_tokens"
      " WHERE tenant_id = $1::uuid AND subject = $2"
      " AND revoked_at IS NULL AND expires_at > now()"
      " ORDER BY created_at, id" },

    { "gate_token_revoke_subject",
      "WITH t AS (SELECT token_hash, expires_at FROM access_tokens"
      " WHERE tenant_id = $1::uuid AND subject = $2"
      " AND expires_at > now()),"
      " u AS (UPDATE access_tokens SET revoked_at = now()"
      " WHERE tenant_id = $1::uuid AND subject = $2"
      " AND revoked_at IS NULL)"
      " SELECT token_hash,"
      " greatest(extract(epoch FROM expires_at - now())::bigint, 60)"
      " FROM t" },

    { "gate_tenant_settings",
      "SELECT t.slug, coalesce(s.settings, '{}'::jsonb)::text"
      " FROM tenants t LEFT JOIN tenant_settings s ON s.tenant_id = t.id"
      " WHERE t.id = $1::uuid" },

    /* the whole policy at once: PUT replaces it */
    { "gate_settings_put",
      "INSERT INTO tenant_settings (tenant_id, settings)"
      " VALUES ($1::uuid, $2::jsonb)"
      " ON CONFLICT (tenant_id) DO UPDATE"
      " SET settings = EXCLUDED.settings, updated_at = now()" }
};


static ngx_http_gate_pg_t       *ngx_http_gate_pg_conf_current;
static ngx_http_gate_pg_conn_t  *ngx_http_gate_pg_conns;
static ngx_queue_t               ngx_http_gate_pg_idle;
static ngx_queue_t               ngx_http_gate_pg_waiting;
static ngx_uint_t                ngx_http_gate_pg_exiting;


char *
ngx_http_gate_pg_conf(ngx_conf_t *cf, ngx_http_gate_pg_t **pgp)
{
    char                *err;
    ngx_int_t            n;
    ngx_str_t           *value, s;
    ngx_uint_t           i;
    PQconninfoOption    *opts;
    ngx_http_gate_pg_t  *conf;

    if (*pgp != NULL) {
        return "is duplicate";
    }

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_gate_pg_t));
    if (conf == NULL) {
        return NGX_CONF_ERROR;
    }

    conf->pool = 4;
    conf->timeout = 1000;

    value = cf->args->elts;

    conf->conninfo.len = value[1].len;
    conf->conninfo.data = ngx_pnalloc(cf->pool, value[1].len + 1);
    if (conf->conninfo.data == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_cpystrn(conf->conninfo.data, value[1].data, value[1].len + 1);

    err = NULL;
    opts = PQconninfoParse((char *) conf->conninfo.data, &err);

    if (opts == NULL) {
        /* the message quotes no value: the string may hold a password */
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid PostgreSQL connection string: %s",
                           err ? err : "out of memory");
        PQfreemem(err);
        return NGX_CONF_ERROR;
    }

    PQconninfoFree(opts);

    if (ngx_http_gate_pg_check_host(cf, conf) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "pool=", 5) == 0) {
            n = ngx_atoi(value[i].data + 5, value[i].len - 5);
            if (n < 1 || n > 64) {
                goto invalid;
            }

            conf->pool = n;
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

    *pgp = conf;

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\"", &value[i]);

    return NGX_CONF_ERROR;
}


/*
 * libpq resolves host names with a blocking call, so only socket
 * directories and numeric addresses are accepted.
 */

static ngx_int_t
ngx_http_gate_pg_check_host(ngx_conf_t *cf, ngx_http_gate_pg_t *conf)
{
    u_char            *p, *comma;
    size_t             len;
    ngx_uint_t         ok;
    PQconninfoOption  *opts, *o;
#if (NGX_HAVE_INET6)
    u_char             buf[16];
#endif

    opts = PQconninfoParse((char *) conf->conninfo.data, NULL);
    if (opts == NULL) {
        return NGX_ERROR;
    }

    ok = 1;

    for (o = opts; o->keyword; o++) {
        if (ngx_strcmp(o->keyword, "hostaddr") == 0 && o->val && o->val[0]) {
            PQconninfoFree(opts);
            return NGX_OK;
        }
    }

    for (o = opts; ok && o->keyword; o++) {

        if (ngx_strcmp(o->keyword, "service") == 0 && o->val && o->val[0]) {
            /* a service file may name a host that needs resolving */
            ok = 0;
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "PostgreSQL \"service=\" is not supported: "
                               "give host= and port= instead");
            break;
        }

        if (ngx_strcmp(o->keyword, "host") != 0 || o->val == NULL) {
            continue;
        }

        /* every host of a list, "host=/run/postgresql,10.0.0.5" */

        p = (u_char *) o->val;

        for ( ;; ) {
            comma = (u_char *) ngx_strchr(p, ',');
            len = comma ? (size_t) (comma - p) : ngx_strlen(p);

            if (!(len == 0 || p[0] == '/' || p[0] == '@'
                  || ngx_inet_addr(p, len) != INADDR_NONE
#if (NGX_HAVE_INET6)
                  || ngx_inet6_addr(p, len, buf) == NGX_OK
#endif
                  ))
            {
                ok = 0;
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "PostgreSQL host \"%*s\" must be a socket "
                                   "directory or a numeric address (or give "
                                   "hostaddr=)", len, p);
                break;
            }

            if (comma == NULL) {
                break;
            }

            p = comma + 1;
        }
    }

    PQconninfoFree(opts);

    return ok ? NGX_OK : NGX_ERROR;
}


ngx_int_t
ngx_http_gate_pg_init_process(ngx_cycle_t *cycle, ngx_http_gate_pg_t *conf)
{
    ngx_uint_t                i;
    ngx_http_gate_pg_conn_t  *pc;

    ngx_http_gate_pg_conf_current = conf;
    ngx_http_gate_pg_exiting = 0;

    ngx_queue_init(&ngx_http_gate_pg_idle);
    ngx_queue_init(&ngx_http_gate_pg_waiting);

    ngx_http_gate_pg_conns = ngx_pcalloc(cycle->pool,
                                 conf->pool * sizeof(ngx_http_gate_pg_conn_t));
    if (ngx_http_gate_pg_conns == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < conf->pool; i++) {
        pc = &ngx_http_gate_pg_conns[i];
        pc->log = cycle->log;

        pc->deadline.handler = ngx_http_gate_pg_deadline;
        pc->deadline.data = pc;
        pc->deadline.log = cycle->log;

        pc->retry.handler = ngx_http_gate_pg_retry;
        pc->retry.data = pc;
        pc->retry.log = cycle->log;
        pc->retry.cancelable = 1;

        ngx_http_gate_pg_connect(pc);
    }

    return NGX_OK;
}


void
ngx_http_gate_pg_exit_process(ngx_cycle_t *cycle)
{
    ngx_uint_t                 i;
    ngx_queue_t               *q;
    ngx_http_gate_pg_conn_t   *pc;
    ngx_http_gate_pg_query_t  *query;

    if (ngx_http_gate_pg_conf_current == NULL) {
        return;
    }

    ngx_http_gate_pg_exiting = 1;

    while (!ngx_queue_empty(&ngx_http_gate_pg_waiting)) {
        q = ngx_queue_head(&ngx_http_gate_pg_waiting);
        query = ngx_queue_data(q, ngx_http_gate_pg_query_t, queue);
        ngx_queue_remove(q);

        if (query->wait.timer_set) {
            ngx_del_timer(&query->wait);
        }

        ngx_free(query);
    }

    for (i = 0; i < ngx_http_gate_pg_conf_current->pool; i++) {
        pc = &ngx_http_gate_pg_conns[i];

        if (pc->retry.timer_set) {
            ngx_del_timer(&pc->retry);
        }

        if (pc->deadline.timer_set) {
            ngx_del_timer(&pc->deadline);
        }

        if (pc->query) {
            ngx_free(pc->query);
            pc->query = NULL;
        }

        if (pc->result) {
            PQclear(pc->result);
            pc->result = NULL;
        }

        if (pc->pg) {
            ngx_http_gate_pg_detach(pc);
            PQfinish(pc->pg);
            pc->pg = NULL;
        }
    }

    ngx_http_gate_pg_conf_current = NULL;
}


static void
ngx_http_gate_pg_connect(ngx_http_gate_pg_conn_t *pc)
{
    ngx_http_gate_pg_t  *conf = ngx_http_gate_pg_conf_current;

    pc->pg = PQconnectStart((char *) conf->conninfo.data);

    if (pc->pg == NULL || PQstatus(pc->pg) == CONNECTION_BAD
        || PQsocket(pc->pg) < 0)
    {
        ngx_log_error(NGX_LOG_ERR, pc->log, 0,
                      "gate postgres: connect failed: %s",
                      pc->pg ? PQerrorMessage(pc->pg) : "out of memory");

        if (pc->pg) {
            PQfinish(pc->pg);
            pc->pg = NULL;
        }

        ngx_http_gate_pg_schedule(pc);
        return;
    }

    if (ngx_http_gate_pg_attach(pc) != NGX_OK) {
        PQfinish(pc->pg);
        pc->pg = NULL;
        ngx_http_gate_pg_schedule(pc);
        return;
    }

    pc->state = NGX_HTTP_GATE_PG_CONNECTING;

    /* PQconnectStart() behaves as if the last poll said "writing" */
    ngx_http_gate_pg_want(pc, 0, 1);

    ngx_add_timer(&pc->deadline, conf->timeout);
}


static ngx_int_t
ngx_http_gate_pg_attach(ngx_http_gate_pg_conn_t *pc)
{
    ngx_connection_t  *c;

    c = ngx_get_connection(PQsocket(pc->pg), pc->log);
    if (c == NULL) {
        return NGX_ERROR;
    }

    c->data = pc;
    c->read->handler = ngx_http_gate_pg_event;
    c->write->handler = ngx_http_gate_pg_event;
    c->read->log = pc->log;
    c->write->log = pc->log;

    pc->connection = c;

    return NGX_OK;
}


/*
 * libpq owns the socket: nginx forgets it, libpq closes it.  When libpq
 * has closed it already (a failed connect), the kernel dropped it from
 * epoll and only nginx's own flags need clearing.
 */

static void
ngx_http_gate_pg_detach(ngx_http_gate_pg_conn_t *pc)
{
    ngx_connection_t  *c = pc->connection;

    if (c == NULL) {
        return;
    }

    if (pc->pg && PQsocket(pc->pg) == c->fd) {
        ngx_http_gate_pg_want(pc, 0, 0);

    } else {
        if (c->read->active) {
            (void) ngx_del_event(c->read, NGX_READ_EVENT, NGX_CLOSE_EVENT);
        }

        if (c->write->active) {
            (void) ngx_del_event(c->write, NGX_WRITE_EVENT, NGX_CLOSE_EVENT);
        }
    }

    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    ngx_free_connection(c);
    c->fd = (ngx_socket_t) -1;

    pc->connection = NULL;
}


/* Level-triggered, as libpq expects to be called while data is pending. */

static void
ngx_http_gate_pg_want(ngx_http_gate_pg_conn_t *pc, ngx_uint_t read,
    ngx_uint_t write)
{
    ngx_connection_t  *c = pc->connection;

    if (read && !c->read->active) {
        (void) ngx_add_event(c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT);

    } else if (!read && c->read->active) {
        (void) ngx_del_event(c->read, NGX_READ_EVENT, 0);
    }

    if (write && !c->write->active) {
        (void) ngx_add_event(c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT);

    } else if (!write && c->write->active) {
        (void) ngx_del_event(c->write, NGX_WRITE_EVENT, 0);
    }
}


static void
ngx_http_gate_pg_event(ngx_event_t *ev)
{
    ngx_connection_t         *c = ev->data;
    ngx_http_gate_pg_conn_t  *pc = c->data;

    switch (pc->state) {

    case NGX_HTTP_GATE_PG_CONNECTING:
        ngx_http_gate_pg_poll_connect(pc);
        return;

    case NGX_HTTP_GATE_PG_PREPARING:
    case NGX_HTTP_GATE_PG_BUSY:

        if (ev->write) {
            switch (PQflush(pc->pg)) {
            case 0:
                ngx_http_gate_pg_want(pc, 1, 0);
                return;
            case 1:
                return;
            default:
                ngx_http_gate_pg_fail(pc, PQerrorMessage(pc->pg));
                return;
            }
        }

        switch (ngx_http_gate_pg_collect(pc)) {

        case NGX_AGAIN:
            return;

        case NGX_ERROR:
            ngx_http_gate_pg_fail(pc, PQerrorMessage(pc->pg));
            return;

        default:
            break;
        }

        if (pc->state == NGX_HTTP_GATE_PG_PREPARING) {
            if (pc->result) {
                PQclear(pc->result);
                pc->result = NULL;
            }

            if (pc->failed) {
                ngx_http_gate_pg_fail(pc, "cannot prepare statements");
                return;
            }

            pc->prepared++;
            ngx_http_gate_pg_prepare_next(pc);
            return;
        }

        ngx_http_gate_pg_done(pc);
        return;

    case NGX_HTTP_GATE_PG_IDLE:

        /* nothing is asked: this is the server going away, or a notice */

        if (!PQconsumeInput(pc->pg) || PQstatus(pc->pg) == CONNECTION_BAD) {
            ngx_http_gate_pg_fail(pc, PQerrorMessage(pc->pg));
        }

        return;

    default:
        return;
    }
}


static void
ngx_http_gate_pg_poll_connect(ngx_http_gate_pg_conn_t *pc)
{
    PostgresPollingStatusType  st;

    st = PQconnectPoll(pc->pg);

    /* libpq may move on to another address, and another socket */

    if (st != PGRES_POLLING_FAILED
        && PQsocket(pc->pg) != pc->connection->fd)
    {
        ngx_http_gate_pg_detach(pc);

        if (ngx_http_gate_pg_attach(pc) != NGX_OK) {
            ngx_http_gate_pg_fail(pc, "cannot attach to the event loop");
            return;
        }
    }

    switch (st) {

    case PGRES_POLLING_READING:
        ngx_http_gate_pg_want(pc, 1, 0);
        return;

    case PGRES_POLLING_WRITING:
        ngx_http_gate_pg_want(pc, 0, 1);
        return;

    case PGRES_POLLING_OK:
        break;

    default:
        ngx_http_gate_pg_fail(pc, PQerrorMessage(pc->pg));
        return;
    }

    if (PQsetnonblocking(pc->pg, 1) != 0) {
        ngx_http_gate_pg_fail(pc, PQerrorMessage(pc->pg));
        return;
    }

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, pc->log, 0,
                   "gate postgres: connected, preparing statements");

    pc->state = NGX_HTTP_GATE_PG_PREPARING;
    pc->prepared = 0;

    ngx_http_gate_pg_prepare_next(pc);
}


static void
ngx_http_gate_pg_prepare_next(ngx_http_gate_pg_conn_t *pc)
{
    ngx_http_gate_pg_statement_t  *st;

    if (pc->prepared == NGX_HTTP_GATE_SQL_N) {
        ngx_http_gate_pg_ready(pc);
        return;
    }

    st = &ngx_http_gate_pg_statements[pc->prepared];
    pc->failed = 0;

    if (!PQsendPrepare(pc->pg, st->name, st->sql, 0, NULL)) {
        ngx_http_gate_pg_fail(pc, PQerrorMessage(pc->pg));
        return;
    }

    if (ngx_http_gate_pg_send(pc) != NGX_OK) {
        ngx_http_gate_pg_fail(pc, PQerrorMessage(pc->pg));
    }
}


/* After a PQsend*(): push what is buffered, then wait for the answer. */

static ngx_int_t
ngx_http_gate_pg_send(ngx_http_gate_pg_conn_t *pc)
{
    switch (PQflush(pc->pg)) {

    case 0:
        ngx_http_gate_pg_want(pc, 1, 0);
        return NGX_OK;

    case 1:
        ngx_http_gate_pg_want(pc, 1, 1);
        return NGX_OK;

    default:
        return NGX_ERROR;
    }
}


/*
 * Reads results until libpq says there are no more: NGX_OK when the
 * command is complete, NGX_AGAIN while more is expected.  The first
 * result is kept; an error result marks the command failed.
 */

static ngx_int_t
ngx_http_gate_pg_collect(ngx_http_gate_pg_conn_t *pc)
{
    PGresult        *res;
    ExecStatusType   status;

    if (!PQconsumeInput(pc->pg)) {
        return NGX_ERROR;
    }

    while (!PQisBusy(pc->pg)) {

        res = PQgetResult(pc->pg);

        if (res == NULL) {
            return NGX_OK;
        }

        status = PQresultStatus(res);

        if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) {
            ngx_log_error(NGX_LOG_ERR, pc->log, 0,
                          "gate postgres: %s", PQresultErrorMessage(res));
            pc->failed = 1;
        }

        if (pc->result == NULL && !pc->failed) {
            pc->result = res;

        } else {
            PQclear(res);
        }
    }

    return NGX_AGAIN;
}


static void
ngx_http_gate_pg_done(ngx_http_gate_pg_conn_t *pc)
{
    PGresult                  *res;
    ngx_http_gate_pg_query_t  *q;

    q = pc->query;
    res = pc->failed ? NULL : pc->result;

    if (pc->failed && pc->result) {
        PQclear(pc->result);
    }

    pc->query = NULL;
    pc->result = NULL;

    if (pc->deadline.timer_set) {
        ngx_del_timer(&pc->deadline);
    }

    /* back in the pool first: the handler may well ask again */
    ngx_http_gate_pg_ready(pc);

    ngx_http_gate_pg_finish_query(q, res);

    if (res) {
        PQclear(res);
    }
}


/* The connection cannot be trusted any more: close it, answer, retry. */

static void
ngx_http_gate_pg_fail(ngx_http_gate_pg_conn_t *pc, const char *why)
{
    size_t                     len;
    ngx_http_gate_pg_query_t  *q;

    len = why ? ngx_strlen(why) : 0;

    while (len && (why[len - 1] == '\n' || why[len - 1] == ' ')) {
        len--;
    }

    ngx_log_error(NGX_LOG_ERR, pc->log, 0,
                  "gate postgres: connection dropped: %*s", len, why);

    if (pc->state == NGX_HTTP_GATE_PG_IDLE) {
        ngx_queue_remove(&pc->idle);
    }

    q = pc->query;
    pc->query = NULL;

    if (pc->result) {
        PQclear(pc->result);
        pc->result = NULL;
    }

    if (pc->deadline.timer_set) {
        ngx_del_timer(&pc->deadline);
    }

    if (pc->pg) {
        ngx_http_gate_pg_detach(pc);
        PQfinish(pc->pg);
        pc->pg = NULL;
    }

    pc->state = NGX_HTTP_GATE_PG_DOWN;

    ngx_http_gate_pg_schedule(pc);

    if (q) {
        ngx_http_gate_pg_finish_query(q, NULL);
    }
}


static void
ngx_http_gate_pg_schedule(ngx_http_gate_pg_conn_t *pc)
{
    ngx_msec_t  delay;

    pc->state = NGX_HTTP_GATE_PG_DOWN;

    if (ngx_http_gate_pg_exiting || pc->retry.timer_set) {
        return;
    }

    if (pc->backoff == 0) {
        pc->backoff = NGX_HTTP_GATE_PG_BACKOFF_MIN;

    } else {
        pc->backoff = ngx_min(pc->backoff * 2, NGX_HTTP_GATE_PG_BACKOFF_MAX);
    }

    delay = pc->backoff / 2 + (ngx_random() % (pc->backoff / 2 + 1));

    ngx_add_timer(&pc->retry, delay);
}


static void
ngx_http_gate_pg_retry(ngx_event_t *ev)
{
    ngx_http_gate_pg_conn_t  *pc = ev->data;

    if (!ngx_http_gate_pg_exiting && pc->pg == NULL) {
        ngx_http_gate_pg_connect(pc);
    }
}


static void
ngx_http_gate_pg_deadline(ngx_event_t *ev)
{
    ngx_http_gate_pg_conn_t  *pc = ev->data;

    ngx_http_gate_pg_fail(pc, pc->state == NGX_HTTP_GATE_PG_BUSY
                              ? "query timed out" : "connect timed out");
}


/* A connection is free: give it to the oldest waiter, or park it. */

static void
ngx_http_gate_pg_ready(ngx_http_gate_pg_conn_t *pc)
{
    ngx_queue_t               *q;
    ngx_http_gate_pg_query_t  *query;

    if (pc->deadline.timer_set) {
        ngx_del_timer(&pc->deadline);
    }

    pc->backoff = 0;

    while (!ngx_queue_empty(&ngx_http_gate_pg_waiting)) {
        q = ngx_queue_head(&ngx_http_gate_pg_waiting);
        query = ngx_queue_data(q, ngx_http_gate_pg_query_t, queue);
        ngx_queue_remove(q);

        if (query->wait.timer_set) {
            ngx_del_timer(&query->wait);
        }

        if (ngx_http_gate_pg_run(pc, query) == NGX_OK) {
            return;
        }

        /* the connection broke under it: both are dealt with */
        ngx_http_gate_pg_finish_query(query, NULL);
        return;
    }

    pc->state = NGX_HTTP_GATE_PG_IDLE;
    ngx_queue_insert_tail(&ngx_http_gate_pg_idle, &pc->idle);
    ngx_http_gate_pg_want(pc, 1, 0);
}


static ngx_int_t
ngx_http_gate_pg_run(ngx_http_gate_pg_conn_t *pc, ngx_http_gate_pg_query_t *q)
{
    /* out of the idle list from here on, even if sending fails */
    pc->state = NGX_HTTP_GATE_PG_BUSY;
    pc->failed = 0;
    pc->result = NULL;

    if (!PQsendQueryPrepared(pc->pg,
                             ngx_http_gate_pg_statements[q->statement].name,
                             q->nparams, q->values, NULL, NULL, 0)
        || ngx_http_gate_pg_send(pc) != NGX_OK)
    {
        ngx_http_gate_pg_fail(pc, PQerrorMessage(pc->pg));
        return NGX_ERROR;
    }

    pc->query = q;
    q->conn = pc;

    ngx_add_timer(&pc->deadline, ngx_http_gate_pg_conf_current->timeout);

    return NGX_OK;
}


ngx_http_gate_pg_query_t *
ngx_http_gate_pg_query(ngx_log_t *log, ngx_uint_t statement,
    ngx_uint_t nparams, ngx_str_t *params,
    ngx_http_gate_pg_handler_pt handler, void *data)
{
    u_char                    *p;
    size_t                     size;
    ngx_uint_t                 i, alive;
    ngx_queue_t               *q;
    ngx_http_gate_pg_conn_t   *pc;
    ngx_http_gate_pg_query_t  *query;

    if (ngx_http_gate_pg_conf_current == NULL || ngx_http_gate_pg_exiting
        || nparams > NGX_HTTP_GATE_PG_MAX_PARAMS)
    {
        return NULL;
    }

    /* with every connection down there is nothing worth waiting for */

    alive = 0;

    for (i = 0; i < ngx_http_gate_pg_conf_current->pool; i++) {
        if (ngx_http_gate_pg_conns[i].state != NGX_HTTP_GATE_PG_DOWN) {
            alive = 1;
            break;
        }
    }

    if (!alive) {
        return NULL;
    }

    size = sizeof(ngx_http_gate_pg_query_t);

    for (i = 0; i < nparams; i++) {
        size += params[i].len + 1;
    }

    query = ngx_alloc(size, log);
    if (query == NULL) {
        return NULL;
    }

    ngx_memzero(query, sizeof(ngx_http_gate_pg_query_t));

    query->statement = statement;
    query->nparams = (int) nparams;
    query->handler = handler;
    query->data = data;

    p = (u_char *) query + sizeof(ngx_http_gate_pg_query_t);

    for (i = 0; i < nparams; i++) {
        query->values[i] = (const char *) p;
        p = ngx_cpymem(p, params[i].data, params[i].len);
        *p++ = '\0';
    }

    if (!ngx_queue_empty(&ngx_http_gate_pg_idle)) {
        q = ngx_queue_head(&ngx_http_gate_pg_idle);
        ngx_queue_remove(q);
        pc = ngx_queue_data(q, ngx_http_gate_pg_conn_t, idle);

        if (ngx_http_gate_pg_run(pc, query) != NGX_OK) {
            ngx_free(query);
            return NULL;
        }

        return query;
    }

    query->wait.handler = ngx_http_gate_pg_wait_timeout;
    query->wait.data = query;
    query->wait.log = ngx_cycle->log;

    ngx_queue_insert_tail(&ngx_http_gate_pg_waiting, &query->queue);
    ngx_add_timer(&query->wait, ngx_http_gate_pg_conf_current->timeout);

    return query;
}


static void
ngx_http_gate_pg_wait_timeout(ngx_event_t *ev)
{
    ngx_http_gate_pg_query_t  *query = ev->data;

    ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                  "gate postgres: no connection came free in time");

    ngx_queue_remove(&query->queue);
    ngx_http_gate_pg_finish_query(query, NULL);
}


void
ngx_http_gate_pg_cancel(ngx_http_gate_pg_query_t *query)
{
    if (query->conn) {
        /* the answer still comes and frees it; nobody hears of it */
        query->handler = NULL;
        query->data = NULL;
        return;
    }

    ngx_queue_remove(&query->queue);

    if (query->wait.timer_set) {
        ngx_del_timer(&query->wait);
    }

    ngx_free(query);
}


static void
ngx_http_gate_pg_finish_query(ngx_http_gate_pg_query_t *q, PGresult *res)
{
    void                         *data;
    ngx_http_gate_pg_handler_pt   handler;

    handler = q->handler;
    data = q->data;

    ngx_free(q);

    if (handler) {
        handler(data, res);
    }
}


ngx_int_t
ngx_http_gate_pg_request(ngx_http_request_t *r,
    ngx_http_gate_pg_query_t **slot, ngx_uint_t statement, ngx_uint_t nparams,
    ngx_str_t *params, ngx_http_gate_pg_handler_pt handler)
{
    ngx_pool_cleanup_t  *cln;

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_ERROR;
    }

    *slot = ngx_http_gate_pg_query(r->connection->log, statement, nparams,
                                   params, handler, r);
    if (*slot == NULL) {
        return NGX_ERROR;
    }

    cln->handler = ngx_http_gate_pg_request_cleanup;
    cln->data = slot;

    return NGX_OK;
}


static void
ngx_http_gate_pg_request_cleanup(void *data)
{
    ngx_http_gate_pg_query_t  **slot = data;

    if (*slot) {
        ngx_http_gate_pg_cancel(*slot);
        *slot = NULL;
    }
}
