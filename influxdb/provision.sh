#!/bin/sh
# Creates the energy2mqtt database, its retention policies and continuous
# queries (init.iql next to this script) on an InfluxDB 1.x. Run once when
# the stack comes up (a one-shot service with the influxdb image, which
# ships the influx CLI); running it again is harmless.
#
# Environment: INFLUX_HOST (influxdb), INFLUX_PORT (8086), and with
# authentication on, INFLUX_ADMIN_USER / INFLUX_ADMIN_PASSWORD (an admin:
# creating databases and continuous queries needs one).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
iql=${INFLUX_IQL:-$here/init.iql}
host=${INFLUX_HOST:-influxdb}
port=${INFLUX_PORT:-8086}

run() {
    if [ -n "${INFLUX_ADMIN_USER:-}" ]; then
        # The CLI reads the password from the environment, so it never
        # shows in the process list.
        INFLUX_USERNAME=$INFLUX_ADMIN_USER INFLUX_PASSWORD=${INFLUX_ADMIN_PASSWORD:-} \
            influx -host "$host" -port "$port" -execute "$1"
    else
        influx -host "$host" -port "$port" -execute "$1"
    fi
}

# The server may still be starting (compose starts us alongside it).
tries=0
until run 'SHOW DATABASES' >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -ge 60 ]; then
        echo "provision: InfluxDB at $host:$port does not answer" >&2
        exit 1
    fi
    sleep 1
done

n=0
# One statement per line; "--" lines are comments.
grep -v -e '^--' -e '^[[:space:]]*$' "$iql" | while IFS= read -r stmt; do
    case $stmt in
    "CREATE CONTINUOUS QUERY "*)
        # A continuous query cannot be altered: drop it first so a changed
        # definition replaces the old one (the first time there is none).
        name=$(printf '%s\n' "$stmt" | sed -n 's/^CREATE CONTINUOUS QUERY \("[^"]*"\) ON \("[^"]*"\).*/\1 ON \2/p')
        run "DROP CONTINUOUS QUERY $name" >/dev/null 2>&1 || true
        ;;
    esac
    out=$(run "$stmt" 2>&1) || { echo "provision: failed: $stmt" >&2; echo "$out" >&2; exit 1; }
    # The 1.x CLI exits 0 on a query error and prints "ERR: ...".
    case $out in
    *ERR:*) echo "provision: failed: $stmt" >&2; echo "$out" >&2; exit 1 ;;
    esac
    n=$((n + 1))
    echo "provision: ok ($n) $(printf '%s' "$stmt" | cut -c1-72)"
done
echo "provision: done"
