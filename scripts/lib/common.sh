# Shared shell functions for scripts/run, scripts/test, scripts/build,
# scripts/bench and scripts/gatectl.  Sourced, never executed.

GATE_ROOT=${GATE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
GATE_CACHE=${GATE_CACHE:-$GATE_ROOT/.cache}
GATE_KRATOS_VERSION=v1.3.1
GATE_KRATOS_BIN=$GATE_CACHE/kratos-$GATE_KRATOS_VERSION
GATE_MODULE_SO=$GATE_CACHE/nginx-build/objs/ngx_http_gate_module.so
GATE_PG_BIN=${GATE_PG_BIN:-/usr/lib/postgresql/15/bin}

# Debian 12 packages the project needs, and a binary that proves each.
GATE_PACKAGES="nginx:/usr/sbin/nginx
nginx-dev:/usr/share/nginx/src/configure
libhiredis-dev:/usr/include/hiredis/async.h
libpq-dev:/usr/include/postgresql/libpq-fe.h
libjansson-dev:/usr/include/jansson.h
libssl-dev:/usr/include/openssl/sha.h
zlib1g-dev:/usr/include/zlib.h
libpcre2-dev:/usr/include/pcre2.h
build-essential:/usr/bin/make
redis-server:/usr/bin/redis-server
postgresql:/usr/lib/postgresql/15/bin/postgres
postgresql-client:/usr/bin/psql
perl:/usr/bin/prove
wrk:/usr/bin/wrk
valgrind:/usr/bin/valgrind
curl:/usr/bin/curl
procps:/usr/bin/pgrep
ca-certificates:/etc/ssl/certs/ca-certificates.crt"

gate_log() { printf '%s\n' "gate: $*" >&2; }
gate_die() { printf '%s\n' "gate: error: $*" >&2; exit 1; }

# Install whatever Debian package is missing (checked by a file it ships,
# which is much faster than asking dpkg for each).
gate_install_packages() {
    local missing="" line pkg path
    while IFS= read -r line; do
        pkg=${line%%:*}; path=${line#*:}
        [ -e "$path" ] || missing="$missing $pkg"
    done <<< "$GATE_PACKAGES"
    [ -z "$missing" ] && return 0
    [ "$(id -u)" = 0 ] || gate_die "missing packages:$missing (run as root to install them)"
    gate_log "installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || gate_die "apt-get update failed"
    # The nginx package starts a system nginx on port 80; we do not want it.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        GATE_RM_POLICY=1
    fi
    apt-get install -y -qq --no-install-recommends $missing >/dev/null \
        || gate_die "apt-get install failed for:$missing"
    [ -n "${GATE_RM_POLICY:-}" ] && rm -f /usr/sbin/policy-rc.d
    return 0
}

gate_need_go() {
    command -v go >/dev/null 2>&1 && return 0
    [ -x /usr/local/go/bin/go ] && { export PATH=$PATH:/usr/local/go/bin; return 0; }
    gate_die "Go >= 1.23 is needed once to build Kratos $GATE_KRATOS_VERSION (not found on PATH)"
}

# Build Kratos from the Go module proxy through our wrapper module; the
# binary is cached and reused.
gate_build_kratos() {
    [ -x "$GATE_KRATOS_BIN" ] && return 0
    gate_need_go
    mkdir -p "$GATE_CACHE"
    gate_log "building Kratos $GATE_KRATOS_VERSION (first run only, several minutes)"
    (
        cd "$GATE_ROOT/scripts/kratos-build" &&
        go mod tidy >"$GATE_CACHE/kratos-build.log" 2>&1 &&
        CGO_ENABLED=0 go build -trimpath \
            -ldflags "-X github.com/ory/kratos/driver/config.Version=$GATE_KRATOS_VERSION" \
            -o "$GATE_KRATOS_BIN.tmp" . >>"$GATE_CACHE/kratos-build.log" 2>&1
    ) || { tail -20 "$GATE_CACHE/kratos-build.log" >&2; gate_die "Kratos build failed (log: $GATE_CACHE/kratos-build.log)"; }
    mv "$GATE_KRATOS_BIN.tmp" "$GATE_KRATOS_BIN"
}

# Configure Debian's nginx source tree once with Debian's own flags, then
# rebuild only the module (seconds).
gate_build_module() {
    local src=/usr/share/nginx/src build=$GATE_CACHE/nginx-build
    [ -x $src/configure ] || gate_die "nginx-dev is not installed ($src/configure missing)"
    if [ ! -f "$build/objs/Makefile" ] || [ "$GATE_ROOT/config" -nt "$build/objs/Makefile" ]; then
        rm -rf "$build"
        mkdir -p "$build"
        cp -a $src/. "$build/"
        # shellcheck disable=SC1091
        . $src/conf_flags
        (
            cd "$build" &&
            ./configure "${NGX_CONF_FLAGS[@]}" \
                --with-cc-opt="-g -O2 -fstack-protector-strong -Wformat -Werror=format-security -fPIC -D_FORTIFY_SOURCE=2 -Wall -Wextra -Werror -Wno-unused-parameter ${GATE_EXTRA_CFLAGS:-}" \
                --with-ld-opt="-Wl,-z,relro -Wl,-z,now -fPIC ${GATE_EXTRA_LDFLAGS:-}" \
                --add-dynamic-module="$GATE_ROOT" >"$GATE_CACHE/configure.log" 2>&1
        ) || { tail -20 "$GATE_CACHE/configure.log" >&2; gate_die "nginx configure failed (log: $GATE_CACHE/configure.log)"; }
    fi
    make -s -C "$build" -f objs/Makefile modules >&2 || gate_die "module build failed"
}

# A TCP port on 127.0.0.1 that nobody listens on (bash's /dev/tcp connects).
gate_port_busy() { (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }

gate_check_ports() {
    local p
    for p in "$@"; do
        gate_port_busy "$p" && gate_die "port $p on 127.0.0.1 is already in use (set the GATE_*_PORT variables to move it)"
    done
    return 0
}

# PostgreSQL runs as the postgres OS user: it refuses to run as root.
gate_pg_as() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# gate_pg_start DATADIR PORT: own cluster, unix socket in DATADIR, loopback
# port; creates the gate and kratos databases and applies Gate migrations.
gate_pg_start() {
    local dir=$1 port=$2
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir"
    if [ ! -f "$dir/PG_VERSION" ]; then
        gate_pg_as "$GATE_PG_BIN/initdb" -D "$dir" -U postgres -A trust -E UTF8 >/dev/null \
            || gate_die "initdb failed in $dir"
    fi
    gate_pg_as "$GATE_PG_BIN/pg_ctl" -D "$dir" -l "$dir/postgres.log" -w -t 30 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null \
        || { tail -5 "$dir/postgres.log" >&2; gate_die "PostgreSQL did not start (log: $dir/postgres.log)"; }
    local db
    for db in gate kratos; do
        gate_psql "$dir" "$port" postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$db'" | grep -q 1 \
            || gate_psql "$dir" "$port" postgres -qc "CREATE DATABASE $db" >/dev/null
    done
    gate_migrate "$dir" "$port"
}

gate_pg_stop() {
    local dir=$1
    [ -f "$dir/postmaster.pid" ] || return 0
    gate_pg_as "$GATE_PG_BIN/pg_ctl" -D "$dir" -m fast -w stop >/dev/null 2>&1 || true
}

gate_psql() {
    local dir=$1 port=$2 db=$3; shift 3
    PGOPTIONS='-c client_min_messages=warning' psql -X -h "$dir" -p "$port" -U postgres -d "$db" -v ON_ERROR_STOP=1 "$@"
}

# Apply conf/sql/*.sql in order; every file is written to be re-runnable.
gate_migrate() {
    local dir=$1 port=$2 f
    for f in "$GATE_ROOT"/conf/sql/*.sql; do
        [ -e "$f" ] || continue
        gate_psql "$dir" "$port" gate -q -f "$f" >/dev/null || gate_die "migration $f failed"
    done
}

# gate_redis_start DIR PORT
gate_redis_start() {
    local dir=$1 port=$2
    mkdir -p "$dir"
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$dir" --daemonize yes --pidfile "$dir/redis.pid" \
        --logfile "$dir/redis.log" >/dev/null || gate_die "redis-server did not start"
    local i
    for i in $(seq 50); do
        redis-cli -p "$port" ping >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    gate_die "redis-server did not answer on port $port"
}

gate_pidfile_stop() {
    local pidfile=$1 pid i
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile" 2>/dev/null)
    [ -n "$pid" ] && kill "$pid" 2>/dev/null
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
}

# gate_kratos_config DIR PUBLIC_PORT ADMIN_PORT PG_DIR PG_PORT PUBLIC_URL
# HOOK_URL COURIER_URL: renders conf/kratos/kratos.yml into DIR.
gate_kratos_config() {
    local dir=$1
    mkdir -p "$dir"
    sed -e "s#%%PUBLIC_PORT%%#$2#g" -e "s#%%ADMIN_PORT%%#$3#g" \
        -e "s#%%DSN%%#postgres://postgres@127.0.0.1:$5/kratos?sslmode=disable\&max_conns=40\&max_idle_conns=20#g" \
        -e "s#%%PUBLIC_URL%%#$6#g" -e "s#%%HOOK_URL%%#$7#g" -e "s#%%COURIER_URL%%#$8#g" \
        -e "s#%%CONF%%#$GATE_ROOT/conf/kratos#g" \
        -e "s#%%HOOK_SECRET%%#${GATE_HOOK_SECRET:-gate-local-hook-secret}#g" \
        "$GATE_ROOT/conf/kratos/kratos.yml" > "$dir/kratos.yml"
}

gate_kratos_migrate() {
    local dir=$1
    "$GATE_KRATOS_BIN" migrate sql -e --yes -c "$dir/kratos.yml" >"$dir/migrate.log" 2>&1 \
        || { tail -5 "$dir/migrate.log" >&2; gate_die "kratos migrate failed (log: $dir/migrate.log)"; }
}

# gate_kratos_start DIR PUBLIC_PORT: serve in the background, wait ready.
gate_kratos_start() {
    local dir=$1 port=$2 i
    SQA_OPT_OUT=true nohup "$GATE_KRATOS_BIN" serve -c "$dir/kratos.yml" --dev \
        --watch-courier --sqa-opt-out >"$dir/kratos.log" 2>&1 &
    echo $! > "$dir/kratos.pid"
    for i in $(seq 300); do
        curl -fs "http://127.0.0.1:$port/health/ready" >/dev/null 2>&1 && return 0
        kill -0 "$(cat "$dir/kratos.pid")" 2>/dev/null || break
        sleep 0.1
    done
    tail -5 "$dir/kratos.log" >&2
    gate_die "Kratos did not become ready on port $port (log: $dir/kratos.log)"
}
