#!/bin/sh
# Builds Mosquitto's password file from the stack's secret files, then
# starts Mosquitto. Users: energy2mqtt, telegraf, homeassistant, push; each
# password comes from /run/secrets/mqtt_<user>_password (docker compose
# secrets, made by ../scripts/make-secrets.sh). A missing secret stops the
# broker with a message instead of starting it without that user.
set -eu

secrets_dir="${SECRETS_DIR:-/run/secrets}"
run_dir="${RUN_DIR:-/mosquitto/run}"
mkdir -p "$run_dir"
passwd="$run_dir/passwd"
umask 077
: > "$passwd.plain"
for user in energy2mqtt telegraf homeassistant push; do
    file="$secrets_dir/mqtt_${user}_password"
    if [ ! -s "$file" ]; then
        echo "entrypoint: $file is missing or empty (run scripts/make-secrets.sh)" >&2
        exit 1
    fi
    printf '%s:%s\n' "$user" "$(tr -d '\r\n' < "$file")" >> "$passwd.plain"
done
# Hash in place: the plain file never becomes the password file.
mosquitto_passwd -U "$passwd.plain"
mv "$passwd.plain" "$passwd"
# Mosquitto drops to its own user after start and must still read it.
if id mosquitto >/dev/null 2>&1; then
    chown mosquitto "$passwd" "$run_dir" 2>/dev/null || true
fi
exec mosquitto -c "${MOSQUITTO_CONF:-/mosquitto/config/mosquitto.conf}"
