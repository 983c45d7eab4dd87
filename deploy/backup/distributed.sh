#!/usr/bin/env bash
# Backups of the distributed mode's state: PostgreSQL (billing: partners, keys, invoices…) and
# ClickHouse (usage: raw events, rollups, exactly-once positions). docs/operations.md,
# "Backups", says when to run it and what to do after a restore (the aggregators' offsets).
#
#   deploy/backup/distributed.sh backup  DIR   # DIR must not exist
#   deploy/backup/distributed.sh restore DIR   # into empty databases (created if missing)
#
# Settings (the same as peage.toml's, from the environment):
#   PEAGE_POSTGRES__URL         postgres://peage:peage@127.0.0.1:5432/peage
#   PEAGE_CLICKHOUSE__URL       http://127.0.0.1:8123
#   PEAGE_CLICKHOUSE__DATABASE  peage
#   PEAGE_CLICKHOUSE__USER, PEAGE_CLICKHOUSE__PASSWORD (optional)
# PostgreSQL goes through pg_dump/pg_restore (custom format), ClickHouse through its HTTP
# interface: each table's DDL and its rows in the Native format. Materialized views are
# created after the rows are in, so a restore never counts a row twice into the rollups.
set -euo pipefail

PG_URL=${PEAGE_POSTGRES__URL:-postgres://peage:peage@127.0.0.1:5432/peage}
CH_URL=${PEAGE_CLICKHOUSE__URL:-http://127.0.0.1:8123}
CH_DB=${PEAGE_CLICKHOUSE__DATABASE:-peage}
# Debian keeps the PostgreSQL tools of each version here; the newest wins when not on PATH.
for bin in /usr/lib/postgresql/*/bin; do [ -x "$bin/pg_dump" ] && PG_BIN=$bin; done
PATH="${PG_BIN:-/usr/bin}:$PATH"

log() { echo "backup: $*" >&2; }
die() { echo "backup: error: $*" >&2; exit 1; }

# A ClickHouse query (read from stdin when no argument), answered on stdout.
ch() {
    local auth=()
    [ -n "${PEAGE_CLICKHOUSE__USER:-}" ] && auth=(-u "$PEAGE_CLICKHOUSE__USER:${PEAGE_CLICKHOUSE__PASSWORD:-}")
    if [ $# -gt 0 ]; then
        curl -sS --fail-with-body "${auth[@]}" "$CH_URL/" --data-binary "$1"
    else
        curl -sS --fail-with-body "${auth[@]}" "$CH_URL/" --data-binary @-
    fi
}

# Rows in the Native format from FILE into TABLE of $CH_DB.
ch_insert() {
    local auth=()
    [ -n "${PEAGE_CLICKHOUSE__USER:-}" ] && auth=(-u "$PEAGE_CLICKHOUSE__USER:${PEAGE_CLICKHOUSE__PASSWORD:-}")
    curl -sS --fail-with-body "${auth[@]}" --url-query "query=INSERT INTO $(q "$CH_DB").$(q "$1") FORMAT Native" \
        "$CH_URL/" --data-binary @"$2"
}

# ClickHouse's own name for a table, quoted.
q() { printf '`%s`' "${1//\`/\\\`}"; }

backup() {
    local out=$1
    [ -e "$out" ] && die "$out exists already: a backup goes to a new directory"
    mkdir -p "$out/clickhouse"
    chmod 700 "$out"
    log "postgres: pg_dump"
    pg_dump --format=custom --no-owner --no-privileges --file "$out/postgres.dump" "$PG_URL"
    local tables
    tables=$(ch "SELECT name, engine FROM system.tables WHERE database = '$CH_DB' ORDER BY name FORMAT TSV")
    [ -n "$tables" ] || die "ClickHouse database $CH_DB has no tables"
    echo "$CH_DB" >"$out/clickhouse/database"
    while IFS=$'\t' read -r name engine; do
        ch "SHOW CREATE TABLE $(q "$CH_DB").$(q "$name") FORMAT TSVRaw" >"$out/clickhouse/$name.sql"
        if [ "$engine" = MaterializedView ]; then
            echo "$name" >>"$out/clickhouse/views"
        else
            ch "SELECT * FROM $(q "$CH_DB").$(q "$name") FORMAT Native" >"$out/clickhouse/$name.native"
            echo "$name" >>"$out/clickhouse/tables"
            log "clickhouse: $name ($(ch "SELECT count() FROM $(q "$CH_DB").$(q "$name")") rows)"
        fi
    done <<<"$tables"
    touch "$out/clickhouse/views"
    (cd "$out" && find . -type f ! -name SHA256SUMS -print0 | sort -z | xargs -0 sha256sum >SHA256SUMS)
    log "written to $out"
}

restore() {
    local in=$1
    [ -f "$in/SHA256SUMS" ] || die "$in is not a backup of this script (no SHA256SUMS)"
    (cd "$in" && sha256sum --quiet -c SHA256SUMS) || die "$in is damaged: checksums differ"
    local from
    from=$(cat "$in/clickhouse/database")
    local existing
    existing=$(ch "SELECT count() FROM system.tables WHERE database = '$CH_DB'")
    [ "$existing" = 0 ] || die "ClickHouse database $CH_DB has tables already: restore into an empty one"
    log "postgres: pg_restore"
    pg_restore --no-owner --no-privileges --exit-on-error --single-transaction --dbname "$PG_URL" "$in/postgres.dump"
    ch "CREATE DATABASE IF NOT EXISTS $(q "$CH_DB")"
    # The DDL names the backed-up database; the restored one may have another name.
    ddl() { sed -e "s/\`$from\`\./\`$CH_DB\`./g" -e "s/\b$from\./$CH_DB./g" "$in/clickhouse/$1.sql"; }
    while read -r name; do
        ddl "$name" | ch
        ch_insert "$name" "$in/clickhouse/$name.native"
        log "clickhouse: $name restored"
    done <"$in/clickhouse/tables"
    while read -r name; do
        [ -n "$name" ] && ddl "$name" | ch && log "clickhouse: view $name created"
    done <"$in/clickhouse/views"
    log "restored from $in"
}

case "${1:-}" in
    backup) [ $# = 2 ] || die "usage: $0 backup DIR"; backup "$2" ;;
    restore) [ $# = 2 ] || die "usage: $0 restore DIR"; restore "$2" ;;
    *) echo "usage: $0 backup DIR | restore DIR" >&2; exit 2 ;;
esac
