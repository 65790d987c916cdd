#!/usr/bin/env python3
"""Writes grafana/dashboards/*.json, the energy2mqtt history dashboards.

The dashboards are generated so that every panel follows the same rules
(InfluxQL in raw mode, the provisioned datasource uid, device ids from
template variables, the $rp switch between raw and 5-minute data); edit
this file and run it again (python3 grafana/build_dashboards.py) rather
than editing the JSON. tests/history.rs lints the JSON and runs every
query against a real InfluxDB.
"""

import json
import pathlib

DS = {"type": "influxdb", "uid": "energy2mqtt-influxdb"}
OUT = pathlib.Path(__file__).resolve().parent / "dashboards"


def rp_var():
    # Raw data is kept 30 days; five_min keeps 5-minute means for years
    # under the same names (influxdb/init.iql), so every panel reads
    # "$rp"."<measurement>" and works on both.
    return {
        "name": "rp",
        "label": "Data",
        "type": "custom",
        "query": "raw,five_min",
        "current": {"text": "raw", "value": "raw"},
        "options": [
            {"text": "raw", "value": "raw", "selected": True},
            {"text": "five_min", "value": "five_min", "selected": False},
        ],
        "multi": False,
        "includeAll": False,
    }


def tag_var(name, label, measurement, key="device"):
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": f'SHOW TAG VALUES FROM "{measurement}" WITH KEY = "{key}"',
        "definition": f'SHOW TAG VALUES FROM "{measurement}" WITH KEY = "{key}"',
        "refresh": 2,
        "sort": 1,
        "multi": True,
        "includeAll": True,
        "current": {"text": ["All"], "value": ["$__all"]},
        "options": [],
    }


def annotation(name, query, text, tags, color):
    # Grafana's InfluxDB annotations: the query's rows become annotations,
    # textColumn their text, tagsColumn their tags.
    return {
        "name": name,
        "datasource": DS,
        "enable": True,
        "iconColor": color,
        "query": query,
        "textColumn": text,
        "tagsColumn": tags,
    }


SHED = annotation(
    "Balancer shed/restore",
    'SELECT "plug", "reason", "load_w", "limit_w" FROM "events"."events" '
    "WHERE \"type\" = 'balancer_action' AND $timeFilter",
    "reason",
    "action,plug",
    "orange",
)
ALERTS = annotation(
    "Alerts raised/cleared",
    'SELECT "message", "rule", "value" FROM "events"."events" '
    "WHERE \"source\" = 'alerts' AND $timeFilter",
    "message",
    "event_type,level,device",
    "red",
)


class Dash:
    def __init__(self, uid, title, variables, annotations=()):
        self.uid = uid
        self.title = title
        self.variables = variables
        self.annotations = list(annotations)
        self.panels = []
        self.y = 0
        self.x = 0
        self.row_h = 0

    def panel(self, kind, title, queries, w=12, h=8, unit=None, fmt="time_series", extra=None):
        if self.x + w > 24:
            self.x = 0
            self.y += self.row_h
            self.row_h = 0
        p = {
            "id": len(self.panels) + 1,
            "type": kind,
            "title": title,
            "datasource": DS,
            "gridPos": {"x": self.x, "y": self.y, "w": w, "h": h},
            "targets": [
                {
                    "refId": chr(ord("A") + i),
                    "datasource": DS,
                    "rawQuery": True,
                    "query": q,
                    "resultFormat": fmt,
                    "alias": "$tag_device $col" if fmt == "time_series" else "",
                }
                for i, q in enumerate(queries)
            ],
            "fieldConfig": {"defaults": {"unit": unit} if unit else {}, "overrides": []},
            "options": {},
        }
        if extra:
            p.update(extra)
        self.panels.append(p)
        self.x += w
        self.row_h = max(self.row_h, h)

    def json(self):
        return {
            "uid": self.uid,
            "title": self.title,
            "tags": ["energy2mqtt"],
            "schemaVersion": 39,
            "version": 1,
            "editable": True,
            "time": {"from": "now-24h", "to": "now"},
            "refresh": "30s",
            "timezone": "browser",
            "templating": {"list": self.variables},
            "annotations": {"list": self.annotations},
            "panels": self.panels,
        }


def ts(measurement, var, selects, group="", fill="fill(null)"):
    """A time-series query per device, averaged per Grafana interval."""
    where = f'"{var[1]}" =~ /^${var[0]}$/ AND ' if var else ""
    return (
        f'SELECT {selects} FROM "$rp"."{measurement}" WHERE {where}$timeFilter '
        f'GROUP BY time($__interval){group} {fill}'
    ).strip()


def agg(measurement, var, selects, group):
    where = f'"{var[1]}" =~ /^${var[0]}$/ AND ' if var else ""
    return f'SELECT {selects} FROM "$rp"."{measurement}" WHERE {where}$timeFilter GROUP BY {group}'


INV = ("inverter", "device")
PACK = ("pack", "device")
PLUG = ("plug", "device")
BAL = ("balancer", "inverter")
BY_DEV = ', "device"'
TODAY = {"timeFrom": "now/d", "hideTimeOverride": False}


def overview():
    d = Dash(
        "energy2mqtt-overview",
        "energy2mqtt: Overview",
        [rp_var(), tag_var("inverter", "Inverter", "inverters")],
        [SHED, ALERTS],
    )
    d.panel(
        "timeseries",
        "Power flows (battery > 0 discharging, grid > 0 importing)",
        [ts("inverters", INV, 'mean("pv_power") AS "PV", mean("load_power") AS "Load", '
            'mean("grid_power") AS "Grid", mean("battery_power") AS "Battery"', BY_DEV)],
        w=24, unit="watt",
    )
    d.panel("timeseries", "State of charge",
            [ts("inverters", INV, 'mean("battery_soc") AS "SOC (inverter)"', BY_DEV),
             ts("packs", None, 'mean("soc") AS "SOC"', BY_DEV)],
            unit="percent", extra={"fieldConfig": {"defaults": {"unit": "percent", "min": 0, "max": 100}, "overrides": []}})
    d.panel("stat", "Today's energy",
            [agg("inverters", INV, 'last("pv_energy_today") AS "PV", last("load_energy_today") AS "Load", '
                 'last("grid_import_today") AS "Grid import", last("grid_export_today") AS "Grid export", '
                 'last("battery_charge_today") AS "Battery charge", '
                 'last("battery_discharge_today") AS "Battery discharge"', '"device"')],
            w=8, unit="kwatth", extra=TODAY)
    d.panel("gauge", "Self-sufficiency today (1 - grid import / load)",
            [agg("inverters", INV, '100 * (1 - last("grid_import_today") / last("load_energy_today")) '
                 'AS "Self-sufficiency"', '"device"')],
            w=4, unit="percent",
            extra={**TODAY, "fieldConfig": {"defaults": {"unit": "percent", "min": 0, "max": 100}, "overrides": []}})
    return d


def battery():
    d = Dash("energy2mqtt-battery", "energy2mqtt: Battery",
             [rp_var(), tag_var("pack", "Pack", "packs")], [ALERTS])
    d.panel("timeseries", "Pack voltage", [ts("packs", PACK, 'mean("voltage") AS "V"', BY_DEV)], unit="volt")
    d.panel("timeseries", "Pack current (> 0 charging)",
            [ts("packs", PACK, 'mean("current") AS "A"', BY_DEV)], unit="amp")
    d.panel("timeseries", "State of charge", [ts("packs", PACK, 'mean("soc") AS "SOC"', BY_DEV)], unit="percent")
    d.panel("timeseries", "Temperatures",
            [ts("packs", PACK, 'mean("temperature_1") AS "T1", mean("temperature_2") AS "T2", '
                'mean("mosfet_temperature") AS "MOSFET"', BY_DEV)], unit="celsius")
    # Every cell that the pack reports: a field regex, so 8, 16 or 24
    # cells need no change.
    cells = ts("packs", PACK, 'mean(/^cell_[0-9]+_voltage$/)', BY_DEV)
    d.panel("timeseries", "Cell voltages", [cells], w=24, h=10, unit="volt")
    d.panel("heatmap", "Cell voltage distribution", [cells], unit="volt",
            extra={"options": {"calculate": True, "yAxis": {"unit": "volt"}, "color": {"scheme": "Spectral"}}})
    d.panel("timeseries", "Cell delta (max - min)",
            [ts("packs", PACK, 'mean("cell_delta_voltage") AS "delta", max("cell_delta_voltage") AS "delta max"',
                BY_DEV)], unit="volt")
    d.panel("bargauge", "Charged / discharged in the range",
            [agg("packs", PACK, 'spread("energy_charged") AS "charged", '
                 'spread("energy_discharged") AS "discharged"', '"device"')], unit="kwatth")
    d.panel("state-timeline", "Alarms, balancer, charge status",
            [ts("packs", PACK, 'last("alarms") AS "alarms", last("balancer_state") AS "balancer", '
                'last("charge_status") AS "charge"', BY_DEV, fill="fill(previous)")])
    return d


def inverter():
    d = Dash("energy2mqtt-inverter", "energy2mqtt: Inverter",
             [rp_var(), tag_var("inverter", "Inverter", "inverters")], [SHED, ALERTS])
    d.panel("timeseries", "PV strings",
            [ts("inverters", INV, 'mean("pv1_power") AS "PV1", mean("pv2_power") AS "PV2", '
                'mean("pv_power") AS "PV"', BY_DEV)], unit="watt")
    d.panel("timeseries", "Ports",
            [ts("inverters", INV, 'mean("inverter_power") AS "inverter", mean("load_power") AS "load", '
                'mean("grid_power") AS "grid", mean("gen_port_power") AS "generator"', BY_DEV)], unit="watt")
    d.panel("timeseries", "Battery (inverter side)",
            [ts("inverters", INV, 'mean("battery_power") AS "W"', BY_DEV),
             ts("inverters", INV, 'mean("battery_voltage") AS "V", mean("battery_current") AS "A"', BY_DEV)],
            unit="watt")
    d.panel("timeseries", "Voltages",
            [ts("inverters", INV, 'mean("grid_voltage") AS "grid", mean("load_voltage") AS "load"', BY_DEV)],
            unit="volt")
    d.panel("timeseries", "Grid frequency",
            [ts("inverters", INV, 'mean("grid_frequency") AS "Hz"', BY_DEV)], unit="hertz")
    d.panel("timeseries", "Temperatures",
            [ts("inverters", INV, 'mean("heatsink_temperature") AS "heatsink", mean("dc_temperature") AS "DC", '
                'mean("battery_temperature") AS "battery"', BY_DEV)], unit="celsius")
    d.panel("barchart", "Daily energy",
            [f'SELECT max("pv_energy_today") AS "PV", max("load_energy_today") AS "load", '
             f'max("grid_import_today") AS "import", max("grid_export_today") AS "export" '
             f'FROM "$rp"."inverters" WHERE "device" =~ /^$inverter$/ AND $timeFilter '
             f'GROUP BY time(1d), "device" fill(none)'], unit="kwatth")
    d.panel("state-timeline", "Running state, faults, warnings, grid",
            [ts("inverters", INV, 'last("running_state") AS "state", last("faults") AS "faults", '
                'last("warnings") AS "warnings", last("grid_connected") AS "grid"', BY_DEV,
                fill="fill(previous)")])
    return d


def plugs():
    d = Dash("energy2mqtt-plugs", "energy2mqtt: Plugs and balancer",
             [rp_var(), tag_var("plug", "Plug", "plugs"), tag_var("balancer", "Balancer", "balancer", "inverter")],
             [SHED])
    d.panel("timeseries", "Plug power (metering plugs)",
            [ts("plugs", PLUG, 'mean("power") AS "W"', BY_DEV)], unit="watt")
    d.panel("state-timeline", "On / off",
            [ts("plugs", PLUG, 'last("state") AS "state"', BY_DEV, fill="fill(previous)")])
    d.panel("timeseries", "Balancer: limit vs load",
            [ts("balancer", BAL, 'mean("limit_w") AS "limit", mean("load_w") AS "load", '
                'mean("shed_power_w") AS "shed"', ', "inverter"')], unit="watt")
    d.panel("state-timeline", "Balancer state",
            [ts("balancer", BAL, 'last("state") AS "state", last("shedding") AS "shedding"', ', "inverter"',
                fill="fill(previous)")])
    # A Tapo counts today's energy itself; a Shelly has only its lifetime
    # counter, whose spread over today is the same figure.
    d.panel("bargauge", "Energy today",
            [agg("plugs", PLUG, 'last("energy_today") AS "kWh"', '"device"'),
             agg("plugs", PLUG, 'spread("energy_total") AS "kWh"', '"device"')], unit="kwatth", extra=TODAY)
    d.panel("table", "Shed and restore",
            ['SELECT "inverter", "action", "plug", "reason", "load_w", "limit_w", "plug_w" FROM "events"."events" '
             "WHERE \"type\" = 'balancer_action' AND $timeFilter"], fmt="table")
    # The balancer panels group by inverter, not device: alias by that tag.
    for p in d.panels:
        for t in p["targets"]:
            if '"balancer"' in t["query"]:
                t["alias"] = "$tag_inverter $col"
    return d


def alerts():
    d = Dash("energy2mqtt-alerts", "energy2mqtt: Alerts", [rp_var()], [ALERTS, SHED])
    d.panel("timeseries", "Active alerts", [ts("alerts", None, 'max("active") AS "active"', "")],
            extra={"fieldConfig": {"defaults": {"min": 0, "decimals": 0}, "overrides": []}})
    d.panel("state-timeline", "Families", [ts("alerts", None, 'last(/^family_/)', "", fill="fill(previous)")])
    d.panel("table", "Raised and cleared",
            ['SELECT "event_type", "level", "device", "rule", "message", "value", "threshold" '
             "FROM \"events\".\"events\" WHERE \"source\" = 'alerts' AND $timeFilter"],
            w=24, fmt="table")
    d.panel("table", "Bridge events",
            ['SELECT "type", "device", "action", "plug", "reason", "error" '
             "FROM \"events\".\"events\" WHERE \"source\" = 'bridge' AND $timeFilter"],
            w=24, fmt="table")
    return d


def main():
    OUT.mkdir(exist_ok=True)
    for build in (overview, battery, inverter, plugs, alerts):
        d = build()
        path = OUT / f"{d.uid.removeprefix('energy2mqtt-')}.json"
        path.write_text(json.dumps(d.json(), indent=2) + "\n")
        print(path)


if __name__ == "__main__":
    main()
