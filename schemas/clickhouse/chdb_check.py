"""Checks the ClickHouse schema and usage queries on a current ClickHouse (chDB, in process).

CI's server is Debian's ClickHouse 18.16; production runs a current release. This applies every
migration under schemas/clickhouse/ (split the way `peage migrate` splits them), inserts a few
rows (a call event, a usage event) through the aggregator's column lists, and runs every query a usage-store test recorded
against 18.16 (a JSON list of SQL strings). Exit status 1 lists what failed.

    python chdb_check.py QUERIES.json
"""
import glob
import json
import os
import sys
import tempfile

import chdb.session


def statements(sql):
    text = "\n".join(l for l in sql.splitlines() if not l.lstrip().startswith("--"))
    return [s.strip() for s in text.split(";") if s.strip()]


def main():
    queries = json.load(open(sys.argv[1]))
    here = os.path.dirname(os.path.abspath(__file__))
    failures = []
    with tempfile.TemporaryDirectory() as path:
        s = chdb.session.Session(path)
        s.query("CREATE DATABASE IF NOT EXISTS peage_check")
        s.query("USE peage_check")
        migrations = sorted(glob.glob(os.path.join(here, "*.sql")))
        for m in migrations:
            for st in statements(open(m).read()):
                try:
                    s.query(st)
                except Exception as e:  # noqa: BLE001 - report every failure
                    failures.append(f"{os.path.basename(m)}: {st[:80]}…: {e}")
        s.query(
            "INSERT INTO call_events (id, time, time_us, partner_id, key_id, env, api, version, "
            "operation, method, status, latency_us, request_bytes, response_bytes, units, "
            "gateway_id, attributes, log_topic, log_partition, log_offset) VALUES "
            "('0193a8a4-0000-7000-8000-000000000001', toDateTime(1764000000), 1764000000123456, "
            "'prt_a', 'key_1', 'live', 'weather', 'v1', 'GET /x', 'GET', 200, 10, 1, 2, 1.5, "
            "'gw', '{}', 'peage.calls.v1', 0, 5)"
        )
        s.query(
            "INSERT INTO usage_events (partner_id, type, time, time_us, key, id, source, subject, "
            "digest, number_keys, number_values, text_keys, text_values, cloudevent, log_topic, "
            "log_partition, log_offset) VALUES ('prt_a', 'com.example.llm', toDateTime(1764000000), "
            "1764000000123456, '0193a8a4-0000-8000-8000-000000000002', 'e-1', '/llm', 'prt_a', "
            "'d', ['tokens'], [toDecimal128('0.1', 9)], ['model', 'tokens'], ['small', '0.1'], "
            "'{}', 'peage.usage-events.v1', 0, 7)"
        )
        positions = s.query(
            "SELECT max(max_offset) FROM log_positions WHERE log_topic = 'peage.usage-events.v1'", "CSV"
        ).bytes().decode().strip()
        if positions != "7":
            failures.append(f"usage event position reads {positions!r}, not 7")
        rollup = s.query("SELECT sum(calls), sum(units) FROM call_usage_1h", "CSV").bytes().decode().strip()
        if rollup != '1,"1.5"' and rollup != "1,1.5":
            failures.append(f"rollup after one insert reads {rollup!r}, not 1 call and 1.5 units")
        for q in sorted(set(queries)):
            try:
                s.query(q, "JSONCompact")
            except Exception as e:  # noqa: BLE001
                failures.append(f"{q[:160]}…: {e}")
        s.close()
    print(f"chdb {chdb.__version__}: {len(migrations)} migrations, {len(set(queries))} distinct queries")
    if failures:
        print("\n".join(failures))
        sys.exit(1)


if __name__ == "__main__":
    main()
