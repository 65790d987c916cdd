#!/bin/sh
# The add-on's entry point: turns the add-on options (/data/options.json)
# and the Mosquitto add-on's credentials (from the Supervisor) into the
# bridge's TOML configuration, then runs the bridge with it.
#
# Environment (for tests and debugging):
#   OPTIONS       options file            (default /data/options.json)
#   CONFIG_OUT    the configuration made  (default /data/energy2mqtt.toml)
#   MQTT_SERVICE  a file holding the Supervisor's answer to
#                 /services/mqtt, instead of asking the Supervisor
#   GENERATE_ONLY 1: write the configuration and exit
set -eu

options="${OPTIONS:-/data/options.json}"
out="${CONFIG_OUT:-/data/energy2mqtt.toml}"

if [ ! -r "$options" ]; then
    echo "energy2mqtt-addon: cannot read $options" >&2
    exit 2
fi

if [ -n "${MQTT_SERVICE:-}" ]; then
    mqtt="$(cat "$MQTT_SERVICE")"
elif [ -n "${SUPERVISOR_TOKEN:-}" ]; then
    mqtt="$(curl -fsS -H "Authorization: Bearer ${SUPERVISOR_TOKEN}" http://supervisor/services/mqtt)" || {
        echo "energy2mqtt-addon: the Supervisor has no MQTT service: install and start the Mosquitto add-on" >&2
        exit 2
    }
else
    echo "energy2mqtt-addon: no SUPERVISOR_TOKEN and no MQTT_SERVICE: not running as an add-on?" >&2
    exit 2
fi

umask 077
# jq writes the TOML: every string goes through tojson, whose escapes are
# all valid in a TOML basic string, so no option can break the file.
jq -r --argjson mqtt "$mqtt" '
  def s: tojson;
  def opt(k; v): if v == null or v == "" then empty else "\(k) = \(v)" end;
  ($mqtt.data // $mqtt) as $m
  | [
      "# Made by the energy2mqtt add-on from its options; edits are overwritten.",
      "[mqtt]",
      "url = \((if ($m.ssl // false) then "mqtts" else "mqtt" end) + "://" + $m.host + ":" + ($m.port | tostring) | s)",
      opt("username"; $m.username | select(. != null) | s),
      opt("password"; $m.password | select(. != null) | s),
      "base_topic = \(.base_topic | s)",
      "client_id = \(("energy2mqtt-addon-" + (.base_topic | gsub("/"; "-"))) | s)",
      "",
      "[log]",
      "level = \(.log_level | s)",
      "",
      "[storage]",
      "dir = \("/data" | s)",
      "",
      (if (.tapo_email // "") != "" then
        "[tapo]", "email = \(.tapo_email | s)", opt("password"; .tapo_password | select(. != null and . != "") | s), ""
      else empty end),
      (.inverters[]? |
        "[[inverter]]",
        "id = \(.id | s)",
        opt("name"; .name | select(. != null) | s),
        "transport = \((.transport // "solarman") | s)",
        "host = \(.host | s)",
        opt("port"; .port),
        opt("serial"; .serial),
        ""),
      (.plugs[]? |
        "[[plug]]",
        "id = \(.id | s)",
        opt("name"; .name | select(. != null) | s),
        "host = \(.host | s)",
        opt("inverter"; .inverter | select(. != null and . != "") | s),
        opt("priority"; .priority),
        opt("sheddable"; .sheddable),
        opt("nominal_w"; .nominal_w),
        ""),
      (.packs[]? |
        "[[bms]]",
        "id = \(.id | s)",
        opt("name"; .name | select(. != null) | s),
        "mac = \(.mac | s)",
        "")
    ]
  | .[]
' "$options" > "$out.new"
mv "$out.new" "$out"

if [ "${GENERATE_ONLY:-0}" = "1" ]; then
    exit 0
fi
exec /usr/local/bin/energy2mqtt run --config "$out"
