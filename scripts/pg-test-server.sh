#!/bin/sh
# pg-test-server.sh start|stop|url|status
#
# A throwaway PostgreSQL server for the test suite: its own cluster (initdb) in a private
# directory, listening only on a unix socket in that directory and on 127.0.0.1:$PGPORT,
# trust authentication for the local user, fsync off (the data is disposable).
# Never touches the distribution's cluster (/var/lib/postgresql/*/main).
#
#   eval "$(scripts/pg-test-server.sh start)"   # exports GOVERNOR_TEST_PG_URL
#   scripts/pg-test-server.sh url               # prints the URL of a running server
#   scripts/pg-test-server.sh stop              # stops it and removes the directory
#
# Environment: PG_TEST_DIR (default /tmp/governor-pg-test), PGPORT (default 5433),
# PG_BINDIR (default: the newest /usr/lib/postgresql/*/bin, else pg_ctl on PATH),
# PG_MAX_CONNECTIONS (default 100, the server's own; bench/fleet_capacity.py raises it for
# its 100 simulated nodes, a connection each).
# When run as root the cluster is owned by the "postgres" user (initdb refuses root).
set -eu

DIR=${PG_TEST_DIR:-/tmp/governor-pg-test}
PORT=${PGPORT:-5433}
DB=governor_test

if [ -z "${PG_BINDIR:-}" ]; then
    PG_BINDIR=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -z "$PG_BINDIR" ]; then
        PG_BINDIR=$(dirname "$(command -v pg_ctl 2>/dev/null || echo /nonexistent/pg_ctl)")
    fi
fi
if [ ! -x "$PG_BINDIR/pg_ctl" ]; then
    echo "pg-test-server: no PostgreSQL server binaries (pg_ctl) found; install postgresql" >&2
    exit 2
fi

if [ "$(id -u)" = 0 ]; then
    OWNER=postgres
    run() { su -s /bin/sh "$OWNER" -c "$*"; }
else
    OWNER=$(id -un)
    run() { sh -c "$*"; }
fi

url() {
    # psycopg 3 URL over TCP on localhost (the socket dir is given too, for psql users)
    echo "postgresql+psycopg://$OWNER@127.0.0.1:$PORT/$DB"
}

case "${1:-}" in
start)
    if [ ! -s "$DIR/data/PG_VERSION" ]; then
        mkdir -p "$DIR"
        chown "$OWNER" "$DIR"
        chmod 700 "$DIR"
        run "'$PG_BINDIR/initdb' -D '$DIR/data' -U '$OWNER' --auth=trust -E UTF8 --no-locale" >"$DIR/initdb.log" 2>&1 \
            || { cat "$DIR/initdb.log" >&2; exit 1; }
    fi
    if ! run "'$PG_BINDIR/pg_ctl' -D '$DIR/data' status" >/dev/null 2>&1; then
        run "'$PG_BINDIR/pg_ctl' -D '$DIR/data' -l '$DIR/server.log' -w -t 60 start \
            -o \"-p $PORT -k '$DIR' -c listen_addresses=127.0.0.1 -c fsync=off \
                -c synchronous_commit=off -c full_page_writes=off \
                -c max_connections=${PG_MAX_CONNECTIONS:-100}\"" >/dev/null \
            || { cat "$DIR/server.log" >&2; exit 1; }
    fi
    if ! run "'$PG_BINDIR/psql' -h '$DIR' -p $PORT -U '$OWNER' -d postgres -Atc \
            \"select 1 from pg_database where datname='$DB'\"" | grep -q 1; then
        run "'$PG_BINDIR/createdb' -h '$DIR' -p $PORT -U '$OWNER' $DB"
    fi
    echo "export GOVERNOR_TEST_PG_URL=$(url)"
    ;;
stop)
    if [ -s "$DIR/data/PG_VERSION" ]; then
        run "'$PG_BINDIR/pg_ctl' -D '$DIR/data' -m fast -w stop" >/dev/null 2>&1 || true
    fi
    rm -rf "$DIR"
    ;;
url)
    run "'$PG_BINDIR/pg_ctl' -D '$DIR/data' status" >/dev/null 2>&1 \
        || { echo "pg-test-server: not running (run: $0 start)" >&2; exit 1; }
    url
    ;;
status)
    run "'$PG_BINDIR/pg_ctl' -D '$DIR/data' status"
    ;;
*)
    echo "usage: $0 start|stop|url|status" >&2
    exit 2
    ;;
esac
