#!/bin/sh
# Creates the secret files docker-compose.yml uses, each a random password,
# in ./secrets (or the folder given). The folder is yours alone (0700); the
# files in it are 0644 because compose bind-mounts each one into its
# container, where the service runs as its own user and must read it.
# Existing files are kept, so running it again never locks a service out.
# Then:
#   docker compose up -d                      # broker + bridge
#   docker compose --profile history up -d    # + Telegraf, InfluxDB, Grafana
#   docker compose --profile push up -d       # + the notification sidecar
set -eu

dir="${1:-secrets}"
mkdir -p "$dir"
chmod 700 "$dir"

new_password() {
    # 24 random bytes as 48 hex digits: no quoting trouble anywhere.
    od -An -N24 -tx1 /dev/urandom | tr -d ' \n' | head -c 48
}

for name in \
    mqtt_energy2mqtt_password \
    mqtt_telegraf_password \
    mqtt_homeassistant_password \
    mqtt_push_password \
    tapo_password \
    influxdb_admin_password \
    influxdb_telegraf_password \
    influxdb_grafana_password \
    grafana_admin_password; do
    file="$dir/$name"
    if [ -s "$file" ]; then
        echo "kept    $file"
        continue
    fi
    ( umask 022; new_password > "$file" )
    echo "created $file"
done

cat <<MSG

Put your Tapo account's password into $dir/tapo_password (it was given a
random one). Home Assistant's MQTT integration logs in as user
'homeassistant' with the password in $dir/mqtt_homeassistant_password.
MSG
