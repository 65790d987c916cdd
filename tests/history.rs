//! The history recipe (telegraf/, influxdb/, grafana/) against the
//! bridge's real payloads and a real InfluxDB.
//!
//! Always (no external programs, milliseconds): telegraf.conf subscribes to
//! state and event topics only, with fixed client ids, persistent sessions
//! and QoS 1, and holds no secrets; the continuous queries cover every
//! field Telegraf writes; the dashboards are valid JSON with unique uids
//! and panel ids, refer only to the provisioned datasource uid and take
//! device ids from template variables.
//!
//! With `E2M_TEST_HISTORY=1` (and then `influxd` and `influx` must be
//! installed: Debian's `influxdb` and `influxdb-client`), also live:
//! `energy2mqtt demo` runs on free ports until it has shed a plug and
//! raised an alert; every JSON path and type telegraf.conf names is
//! checked against what it published; the messages become the line
//! protocol Telegraf's json_v2 parser makes of them (a small model, see
//! `telegraf_model`: Telegraf itself cannot be installed here); they are
//! written to a private influxd provisioned by influxdb/provision.sh; the
//! continuous queries' own SELECTs are run; and every dashboard query,
//! annotation and template variable, on raw and on 5-minute data, must
//! return values.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_energy2mqtt");
const DATASOURCE_UID: &str = "energy2mqtt-influxdb";
const DB: &str = "energy2mqtt";

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn wait_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as i64
}

// ---------------------------------------------------------------------------
// telegraf.conf as data

fn telegraf_conf() -> toml::Table {
    read("telegraf/telegraf.conf")
        .parse()
        .expect("telegraf.conf is TOML")
}

fn consumers(conf: &toml::Table) -> Vec<toml::Table> {
    conf["inputs"]["mqtt_consumer"]
        .as_array()
        .expect("[[inputs.mqtt_consumer]]")
        .iter()
        .map(|c| c.as_table().expect("consumer table").clone())
        .collect()
}

fn strings(v: &toml::Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("string").to_string())
        .collect()
}

/// MQTT topic filter matching (`+` one level, `#` the rest).
fn topic_matches(filter: &str, topic: &str) -> bool {
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    for (i, level) in f.iter().enumerate() {
        if *level == "#" {
            return true;
        }
        match t.get(i) {
            Some(x) if *level == "+" || level == x => {}
            _ => return false,
        }
    }
    f.len() == t.len()
}

// ---------------------------------------------------------------------------
// The model of Telegraf's json_v2 parser and metricpass filter.
//
// It covers the subset telegraf.conf uses, and refuses (panics on) any
// option outside it, so the config cannot drift past what this test
// proves. Rules from Telegraf's plugins/parsers/json_v2/README.md and
// docs/CONFIGURATION.md:
// * every [[json_v2]] block runs on every message of its consumer;
// * a [[field]] / [[tag]] path is a GJSON path; the name is `rename` or
//   the path's last element; a missing path is an error for the whole
//   message unless `optional = true`; a JSON null is skipped;
// * `type` converts: float from numbers, int from numbers, bool, string.
//   Telegraf converts more loosely (any value to a string, floats to int
//   by truncation); the model accepts only values that convert exactly,
//   so a payload change that would silently alter a series fails here;
// * topic_parsing: `_` skips a level, other names become tags;
// * a metric without fields is dropped;
// * metricpass (CEL) keeps a metric when the expression is true; the
//   model evaluates the one form telegraf.conf uses: clauses
//   `(name == "m" && "key" in fields)` or `(name == "m" && tags.k == "v")`
//   joined by `||`;
// * without timestamp_path a metric carries the time it was received,
//   rounded to the input's `precision` (Go's time.Round: halves up); two
//   points of one series with one timestamp are one point in InfluxDB,
//   the later write's fields winning.

#[derive(Debug, Clone)]
struct Metric {
    name: String,
    tags: BTreeMap<String, String>,
    fields: BTreeMap<String, FieldValue>,
    time_ns: i64,
}

#[derive(Debug, Clone, PartialEq)]
enum FieldValue {
    Float(f64),
    Int(i64),
    Bool(bool),
    Str(String),
}

const CONSUMER_KEYS: &[&str] = &[
    "servers",
    "topics",
    "client_id",
    "persistent_session",
    "qos",
    "username",
    "password",
    "topic_tag",
    "data_format",
    "metricpass",
    "precision",
    "topic_parsing",
    "json_v2",
];

fn gjson_get<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    assert!(
        !path.contains(['#', '*', '?', '@', '|', '\\']),
        "path {path:?}: the model follows plain dotted paths only"
    );
    path.split('.').try_fold(doc, |v, key| v.get(key))
}

fn convert(v: &Value, ty: &str) -> Result<FieldValue, String> {
    match (ty, v) {
        ("float", Value::Number(n)) => Ok(FieldValue::Float(n.as_f64().expect("finite"))),
        ("int", Value::Number(n)) => n
            .as_i64()
            .map(FieldValue::Int)
            .ok_or_else(|| format!("{v} is not an integer")),
        ("bool", Value::Bool(b)) => Ok(FieldValue::Bool(*b)),
        ("string", Value::String(s)) => Ok(FieldValue::Str(s.clone())),
        _ => Err(format!("{v} is not a {ty}")),
    }
}

fn leaf_name(set: &toml::Table) -> String {
    set.get("rename")
        .and_then(toml::Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| {
            let path = set["path"].as_str().expect("path");
            path.rsplit('.').next().expect("a path element").to_string()
        })
}

fn optional(set: &toml::Table) -> bool {
    set.get("optional")
        .and_then(toml::Value::as_bool)
        .unwrap_or(false)
}

/// One clause of the metricpass expression.
#[derive(Debug)]
enum Pass {
    HasField(String, String),
    TagIs(String, String, String),
}

fn parse_metricpass(expr: &str) -> Vec<Pass> {
    expr.split("||")
        .map(|clause| {
            let c = clause.trim().trim_start_matches('(').trim_end_matches(')');
            let (name, cond) = c
                .split_once("&&")
                .unwrap_or_else(|| panic!("metricpass clause {c:?}: expected `name == .. && ..`"));
            let name = name
                .trim()
                .strip_prefix("name == ")
                .map(|n| n.trim_matches('"').to_string())
                .unwrap_or_else(|| panic!("metricpass clause {c:?}: no `name ==`"));
            let cond = cond.trim();
            if let Some(key) = cond.strip_suffix(" in fields") {
                Pass::HasField(name, key.trim_matches('"').to_string())
            } else if let Some((tag, value)) = cond
                .strip_prefix("tags.")
                .and_then(|rest| rest.split_once(" == "))
            {
                Pass::TagIs(name, tag.to_string(), value.trim_matches('"').to_string())
            } else {
                panic!("metricpass condition {cond:?} is outside the model");
            }
        })
        .collect()
}

fn passes(rules: &[Pass], m: &Metric) -> bool {
    rules.iter().any(|r| match r {
        Pass::HasField(n, k) => *n == m.name && m.fields.contains_key(k),
        Pass::TagIs(n, k, v) => *n == m.name && m.tags.get(k) == Some(v),
    })
}

/// The metrics one consumer makes of one message, or the parse error
/// that would make Telegraf drop it.
fn telegraf_model(
    consumer: &toml::Table,
    topic: &str,
    payload: &[u8],
    time_ns: i64,
) -> Result<Vec<Metric>, String> {
    for key in consumer.keys() {
        assert!(
            CONSUMER_KEYS.contains(&key.as_str()),
            "mqtt_consumer option {key:?} is outside the model"
        );
    }
    assert_eq!(consumer["data_format"].as_str(), Some("json_v2"));
    let doc: Value = serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
    let mut topic_tags = BTreeMap::new();
    for tp in consumer
        .get("topic_parsing")
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
    {
        let tp = tp.as_table().expect("topic_parsing table");
        for key in tp.keys() {
            assert!(
                key == "topic" || key == "tags",
                "topic_parsing option {key:?} is outside the model"
            );
        }
        if topic_matches(tp["topic"].as_str().expect("topic"), topic) {
            let names = tp["tags"].as_str().expect("tags");
            for (name, level) in names.split('/').zip(topic.split('/')) {
                if name != "_" {
                    topic_tags.insert(name.to_string(), level.to_string());
                }
            }
        }
    }
    let precision_ns = consumer
        .get("precision")
        .and_then(toml::Value::as_str)
        .map(|p| match p {
            "1s" => 1_000_000_000,
            "1ms" => 1_000_000,
            other => panic!("precision {other:?} is outside the model"),
        })
        .unwrap_or(1);
    let time_ns = (time_ns + precision_ns / 2) / precision_ns * precision_ns;
    let rules = consumer
        .get("metricpass")
        .and_then(toml::Value::as_str)
        .map(parse_metricpass);
    let mut out = Vec::new();
    for block in consumer["json_v2"].as_array().expect("[[json_v2]]") {
        let block = block.as_table().expect("json_v2 table");
        for key in block.keys() {
            assert!(
                ["measurement_name", "field", "tag"].contains(&key.as_str()),
                "json_v2 option {key:?} is outside the model"
            );
        }
        let mut m = Metric {
            name: block["measurement_name"]
                .as_str()
                .expect("name")
                .to_string(),
            tags: topic_tags.clone(),
            fields: BTreeMap::new(),
            time_ns,
        };
        for (kind, sets) in [("tag", block.get("tag")), ("field", block.get("field"))] {
            for set in sets.and_then(toml::Value::as_array).into_iter().flatten() {
                let set = set.as_table().expect("field/tag table");
                let path = set["path"].as_str().expect("path");
                match gjson_get(&doc, path) {
                    None if optional(set) => {}
                    None => return Err(format!("path {path} not found")),
                    Some(Value::Null) => {}
                    Some(v) if kind == "tag" => {
                        let s = match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        m.tags.insert(leaf_name(set), s);
                    }
                    Some(v) => {
                        let ty = set["type"].as_str().expect("every field names its type");
                        let value = convert(v, ty).map_err(|e| format!("{path}: {e}"))?;
                        m.fields.insert(leaf_name(set), value);
                    }
                }
            }
        }
        if m.fields.is_empty() {
            continue;
        }
        if rules.as_ref().is_some_and(|r| !passes(r, &m)) {
            continue;
        }
        out.push(m);
    }
    Ok(out)
}

fn escape_key(s: &str) -> String {
    s.replace(',', "\\,")
        .replace('=', "\\=")
        .replace(' ', "\\ ")
}

fn line_protocol(m: &Metric) -> String {
    let mut line = escape_key(&m.name);
    for (k, v) in &m.tags {
        line.push_str(&format!(",{}={}", escape_key(k), escape_key(v)));
    }
    let fields: Vec<String> = m
        .fields
        .iter()
        .map(|(k, v)| {
            let v = match v {
                FieldValue::Float(f) => format!("{f}"),
                FieldValue::Int(i) => format!("{i}i"),
                FieldValue::Bool(b) => b.to_string(),
                FieldValue::Str(s) => {
                    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
                }
            };
            format!("{}={v}", escape_key(k))
        })
        .collect();
    format!("{line} {} {}", fields.join(","), m.time_ns)
}

/// Which output (retention policy) takes a measurement: the outputs'
/// namepass / namedrop.
fn retention_policy_for(conf: &toml::Table, measurement: &str) -> String {
    let outputs = conf["outputs"]["influxdb"].as_array().expect("outputs");
    let mut rps = Vec::new();
    for o in outputs {
        let o = o.as_table().expect("output table");
        let pass = o.get("namepass").map(strings);
        let drop = o.get("namedrop").map(strings).unwrap_or_default();
        let takes = pass.is_none_or(|p| p.iter().any(|n| n == measurement))
            && !drop.iter().any(|n| n == measurement);
        if takes {
            rps.push(o["retention_policy"].as_str().expect("rp").to_string());
        }
    }
    assert_eq!(
        rps.len(),
        1,
        "{measurement} goes to exactly one output: {rps:?}"
    );
    rps.remove(0)
}

// ---------------------------------------------------------------------------
// Static checks

/// Every json_v2 field of every consumer: (measurement, name, type).
fn telegraf_fields(conf: &toml::Table) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for c in consumers(conf) {
        for block in c["json_v2"].as_array().expect("json_v2") {
            let name = block["measurement_name"].as_str().expect("name");
            for f in block
                .get("field")
                .and_then(toml::Value::as_array)
                .into_iter()
                .flatten()
            {
                let f = f.as_table().expect("field");
                out.push((
                    name.to_string(),
                    leaf_name(f),
                    f["type"].as_str().expect("type").to_string(),
                ));
            }
        }
    }
    out
}

#[test]
fn telegraf_subscribes_to_state_and_event_topics_only() {
    let conf = telegraf_conf();
    let cs = consumers(&conf);
    let mut ids = BTreeSet::new();
    let mut filters = Vec::new();
    for c in &cs {
        let id = c["client_id"].as_str().expect("a fixed client_id");
        assert!(ids.insert(id.to_string()), "client_id {id} used twice");
        assert_eq!(c["persistent_session"].as_bool(), Some(true), "{id}");
        assert_eq!(c["qos"].as_integer(), Some(1), "{id}");
        for secret in ["username", "password"] {
            let v = c[secret].as_str().expect(secret);
            assert!(
                v.starts_with("${") && v.ends_with('}'),
                "{id} {secret}: from the environment"
            );
        }
        filters.extend(strings(&c["topics"]));
    }
    for o in conf["outputs"]["influxdb"].as_array().expect("outputs") {
        for secret in ["username", "password"] {
            let v = o[secret].as_str().expect(secret);
            assert!(
                v.starts_with("${INFLUX_"),
                "output {secret}: from the environment"
            );
        }
        assert_eq!(o["database"].as_str(), Some(DB));
    }
    // Topics the bridge uses (docs/TOPICS.md), with a device named
    // "boiler" and an inverter named "inverter".
    let wanted = [
        "energy2mqtt/boiler",
        "energy2mqtt/bridge",
        "energy2mqtt/alerts",
        "energy2mqtt/balancer/inverter",
        "energy2mqtt/alerts/event",
        "energy2mqtt/bridge/event",
    ];
    let unwanted = [
        "energy2mqtt/boiler/set",
        "energy2mqtt/boiler/set/state",
        "energy2mqtt/boiler/get",
        "energy2mqtt/boiler/availability",
        "energy2mqtt/bridge/state",
        "energy2mqtt/bridge/info",
        "energy2mqtt/bridge/request/info",
        "energy2mqtt/bridge/response/info",
        "energy2mqtt/balancer/inverter/set",
        "energy2mqtt/alerts/set",
        "homeassistant/status",
        "homeassistant/sensor/boiler/power/config",
    ];
    for t in wanted {
        assert!(
            filters.iter().any(|f| topic_matches(f, t)),
            "{t} is not consumed"
        );
    }
    for t in unwanted {
        let hit: Vec<_> = filters.iter().filter(|f| topic_matches(f, t)).collect();
        assert!(
            hit.is_empty(),
            "{t} must not be consumed, but {hit:?} match it"
        );
    }
    // Each message is parsed by exactly one consumer.
    for t in wanted {
        let n = filters.iter().filter(|f| topic_matches(f, t)).count();
        assert_eq!(n, 1, "{t} matched by {n} subscriptions");
    }
    let text = read("telegraf/telegraf.conf");
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        assert!(
            !line.contains("password = \"") || line.contains("${"),
            "a literal password in telegraf.conf: {line}"
        );
    }
}

/// The continuous queries, by measurement: `mean`/`last` per field name.
fn continuous_queries() -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for line in read("influxdb/init.iql").lines() {
        let Some(rest) = line.strip_prefix("CREATE CONTINUOUS QUERY ") else {
            continue;
        };
        let select = rest
            .split_once(" BEGIN SELECT ")
            .and_then(|(_, s)| s.split_once(" INTO "))
            .expect("BEGIN SELECT .. INTO")
            .0;
        let into = rest.split_once(" INTO ").expect("INTO").1;
        let target = into.split_once(" FROM ").expect("FROM").0;
        assert!(
            target.starts_with(&format!("\"{DB}\".\"five_min\".")),
            "CQ writes to five_min: {target}"
        );
        let measurement = target.rsplit('.').next().expect("m").trim_matches('"');
        let source = into.split_once(" FROM ").expect("FROM").1;
        assert!(
            source.starts_with(&format!(
                "\"{DB}\".\"raw\".\"{measurement}\" GROUP BY time(5m), *"
            )),
            "CQ for {measurement} reads raw and keeps every tag: {source}"
        );
        let mut fields = BTreeMap::new();
        for item in select.split(", ") {
            let (func, rest) = item.split_once("(\"").expect("func(\"field\")");
            let (field, alias) = rest.split_once("\") AS \"").expect("AS");
            assert_eq!(format!("{field}\""), alias, "a CQ keeps the field name");
            fields.insert(field.to_string(), func.to_string());
        }
        out.insert(measurement.to_string(), fields);
    }
    out
}

#[test]
fn continuous_queries_cover_every_field_telegraf_writes() {
    let conf = telegraf_conf();
    let cqs = continuous_queries();
    let mut expected: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (m, field, ty) in telegraf_fields(&conf) {
        if retention_policy_for(&conf, &m) != "raw" {
            continue;
        }
        // Means for numbers; strings and booleans cannot be averaged, the
        // last value of each 5 minutes stands for them.
        let func = if ty == "float" || ty == "int" {
            "mean"
        } else {
            "last"
        };
        expected
            .entry(m)
            .or_default()
            .insert(field, func.to_string());
    }
    assert_eq!(cqs, expected, "influxdb/init.iql vs telegraf.conf");
    let iql = read("influxdb/init.iql");
    assert!(iql.contains("CREATE RETENTION POLICY \"raw\" ON \"energy2mqtt\" DURATION 30d"));
    assert!(iql.contains("CREATE RETENTION POLICY \"five_min\" ON \"energy2mqtt\" DURATION INF"));
}

fn dashboards() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(repo("grafana/dashboards")).expect("grafana/dashboards") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).expect("dashboard");
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
            out.push((path.file_name().unwrap().to_string_lossy().into_owned(), v));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Every query of a dashboard: (what, InfluxQL, is a time series).
fn dashboard_queries(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            let q = t["query"].as_str().expect("raw InfluxQL");
            out.push((
                format!("panel {:?} {}", p["title"], t["refId"]),
                q.to_string(),
            ));
        }
    }
    for a in d["annotations"]["list"].as_array().expect("annotations") {
        out.push((
            format!("annotation {:?}", a["name"]),
            a["query"].as_str().expect("query").to_string(),
        ));
    }
    out
}

fn datasource_refs(v: &Value, out: &mut Vec<Value>) {
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                if k == "datasource" {
                    out.push(x.clone());
                }
                datasource_refs(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| datasource_refs(x, out)),
        _ => {}
    }
}

#[test]
fn dashboards_lint() {
    let provisioned = read("grafana/provisioning/datasources/energy2mqtt.yaml");
    let uids: Vec<&str> = provisioned
        .lines()
        .filter_map(|l| l.trim().strip_prefix("uid:"))
        .map(str::trim)
        .collect();
    assert_eq!(uids, [DATASOURCE_UID], "one datasource, with the fixed uid");
    assert!(provisioned.contains("type: influxdb") && provisioned.contains("dbName: energy2mqtt"));
    assert!(
        provisioned.contains("password: ${"),
        "the password comes from the environment"
    );
    let provider = read("grafana/provisioning/dashboards/energy2mqtt.yaml");
    assert!(provider.contains("type: file"));
    // Where docker-compose.yml mounts grafana/dashboards.
    let compose = read("docker-compose.yml");
    let mount = compose
        .lines()
        .find_map(|l| l.trim().strip_prefix("- ./grafana/dashboards:"))
        .expect("compose mounts grafana/dashboards");
    let mounted = mount.trim_end_matches(":ro");
    assert!(
        provider.contains(&format!("path: {mounted}\n")),
        "the dashboard provider reads {mounted}"
    );

    let all = dashboards();
    let titles: Vec<&str> = all
        .iter()
        .map(|(_, d)| d["title"].as_str().expect("title"))
        .collect();
    for want in [
        "Overview",
        "Battery",
        "Inverter",
        "Plugs and balancer",
        "Alerts",
    ] {
        assert!(
            titles.iter().any(|t| t.ends_with(want)),
            "no {want} dashboard in {titles:?}"
        );
    }
    let mut dash_uids = BTreeSet::new();
    for (file, d) in &all {
        let uid = d["uid"].as_str().expect("a stable uid");
        assert!(
            dash_uids.insert(uid.to_string()),
            "{file}: uid {uid} used twice"
        );
        let text = serde_json::to_string(d).expect("json");
        assert!(
            !text.contains("${DS_"),
            "{file}: an exported ${{DS_..}} input"
        );
        let mut ids = BTreeSet::new();
        for p in d["panels"].as_array().expect("panels") {
            let id = p["id"].as_i64().expect("panel id");
            assert!(ids.insert(id), "{file}: panel id {id} used twice");
            assert!(
                !p["targets"].as_array().expect("targets").is_empty(),
                "{file}: panel {id} has no query"
            );
        }
        let mut refs = Vec::new();
        datasource_refs(d, &mut refs);
        assert!(!refs.is_empty());
        for r in refs {
            assert_eq!(
                r["uid"].as_str(),
                Some(DATASOURCE_UID),
                "{file}: datasource {r}"
            );
            assert_eq!(
                r["type"].as_str(),
                Some("influxdb"),
                "{file}: datasource {r}"
            );
        }
        for v in d["templating"]["list"].as_array().expect("templating") {
            if v["type"] == "query" {
                let q = v["query"].as_str().expect("variable query");
                assert!(
                    q.starts_with("SHOW TAG VALUES FROM "),
                    "{file}: variable {q}"
                );
            }
        }
        // No device id is written into a query: they come from variables.
        for (what, q) in dashboard_queries(d) {
            for id in [
                "battery1",
                "battery2",
                "boiler",
                "heater",
                "fridge",
                "lamp",
                "'inverter'",
            ] {
                assert!(!q.contains(id), "{file} {what}: hard-coded {id}");
            }
            assert!(q.contains("$timeFilter"), "{file} {what}: no $timeFilter");
        }
    }
}

// ---------------------------------------------------------------------------
// Live: the demo, its payloads, a real influxd

/// An `influxd` on loopback with its own directories and free ports.
struct Influxd {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Influxd {
    fn start(dir: &Path) -> Self {
        let port = free_port();
        let rpc = free_port();
        let conf = format!(
            "reporting-disabled = true\n\
             bind-address = \"127.0.0.1:{rpc}\"\n\
             [meta]\n  dir = \"{d}/meta\"\n\
             [data]\n  dir = \"{d}/data\"\n  wal-dir = \"{d}/wal\"\n  query-log-enabled = false\n\
             [http]\n  bind-address = \"127.0.0.1:{port}\"\n  log-enabled = false\n\
             [continuous_queries]\n  enabled = true\n",
            d = dir.display()
        );
        let conf_path = dir.join("influxdb.conf");
        std::fs::write(&conf_path, conf).expect("influxdb.conf");
        let log = std::fs::File::create(dir.join("influxd.log")).expect("log");
        let child = Command::new("influxd")
            .arg("-config")
            .arg(&conf_path)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start influxd");
        let me = Self {
            child,
            port,
            dir: dir.to_path_buf(),
        };
        assert!(
            wait_port(port, Duration::from_secs(30)),
            "influxd did not listen:\n{}",
            me.log()
        );
        me
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("influxd.log")).unwrap_or_default()
    }

    /// One HTTP/1.0 exchange: the server closes the connection after the
    /// answer, so no chunking or keep-alive to handle.
    fn http(&self, method: &str, path_query: &str, body: &str) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect influxd");
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let req = format!(
            "{method} {path_query} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).expect("send");
        let mut resp = String::new();
        s.read_to_string(&mut resp).expect("read answer");
        let status = resp
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP status in {resp:?}"));
        let body = resp
            .split_once("\r\n\r\n")
            .map(|x| x.1)
            .unwrap_or("")
            .to_string();
        (status, body)
    }

    fn write(&self, rp: &str, lines: &[String]) {
        let (status, body) = self.http(
            "POST",
            &format!("/write?db={DB}&rp={rp}&precision=ns"),
            &lines.join("\n"),
        );
        assert_eq!(status, 204, "write to {rp}: {body}");
    }

    /// The first statement's result; an error in it fails the test.
    fn query(&self, q: &str) -> Value {
        let enc: String = url::form_urlencoded::byte_serialize(q.as_bytes()).collect();
        let (status, body) = self.http("GET", &format!("/query?db={DB}&epoch=ms&q={enc}"), "");
        assert_eq!(status, 200, "{q}: {body}");
        let v: Value = serde_json::from_str(&body).expect("query answer is JSON");
        let r = v["results"][0].clone();
        assert!(r.get("error").is_none(), "{q}: {}", r["error"]);
        r
    }
}

impl Drop for Influxd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every row value of every series, without the time column.
fn values(result: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for s in result["series"].as_array().into_iter().flatten() {
        for row in s["values"].as_array().into_iter().flatten() {
            out.extend(row.as_array().expect("row").iter().skip(1).cloned());
        }
    }
    out
}

struct Demo {
    child: Child,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// config/demo.toml with every `port = N` on a free port: the demo's own
/// simulator ports are fixed and a test must not depend on them. The
/// arrays of tables (`[[plug]]`, ...) replace the built-in ones when
/// `--config` merges, so the whole document is repeated.
fn demo_overlay() -> String {
    fn free_ports(v: &mut toml::Value) {
        match v {
            toml::Value::Table(t) => {
                for (k, x) in t.iter_mut() {
                    if k == "port" && x.is_integer() {
                        *x = toml::Value::Integer(i64::from(free_port()));
                    } else {
                        free_ports(x);
                    }
                }
            }
            toml::Value::Array(a) => a.iter_mut().for_each(free_ports),
            _ => {}
        }
    }
    let mut doc: toml::Value = read("config/demo.toml")
        .parse::<toml::Table>()
        .expect("demo.toml")
        .into();
    free_ports(&mut doc);
    toml::to_string(&doc).expect("overlay")
}

#[derive(Clone)]
struct Message {
    topic: String,
    payload: Vec<u8>,
    time_ns: i64,
}

fn collect(port: u16, into: Arc<Mutex<Vec<Message>>>) {
    let mut opts = rumqttc::MqttOptions::new(format!("e2m-history-{port}"), "127.0.0.1", port);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut connection) = rumqttc::Client::new(opts, 256);
    std::thread::spawn(move || {
        for ev in connection.iter() {
            match ev {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    let _ = client.subscribe("energy2mqtt/#", rumqttc::QoS::AtLeastOnce);
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    into.lock().expect("messages").push(Message {
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                        time_ns: now_ns(),
                    });
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    });
}

/// A connected MQTT client that publishes (QoS 1, not retained).
fn publisher(port: u16) -> impl Fn(&str, &str) {
    let opts = rumqttc::MqttOptions::new(format!("e2m-history-pub-{port}"), "127.0.0.1", port);
    let (client, mut connection) = rumqttc::Client::new(opts, 16);
    std::thread::spawn(move || {
        for ev in connection.iter() {
            if ev.is_err() {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    });
    move |topic: &str, payload: &str| {
        client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.as_bytes())
            .expect("queue a publish");
    }
}

fn provision(influx: &Influxd) -> String {
    let out = Command::new("sh")
        .arg(repo("influxdb/provision.sh"))
        .env("INFLUX_HOST", "127.0.0.1")
        .env("INFLUX_PORT", influx.port.to_string())
        .output()
        .expect("run influxdb/provision.sh");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "provision.sh failed:\n{text}");
    text
}

#[test]
fn history_pipeline_on_the_demo() {
    if std::env::var("E2M_TEST_HISTORY").as_deref() != Ok("1") {
        eprintln!(
            "history pipeline not run: set E2M_TEST_HISTORY=1 (needs influxd and influx, Debian influxdb + influxdb-client)"
        );
        return;
    }
    for tool in ["influxd", "influx"] {
        let found = Command::new(tool)
            .arg("-version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        assert!(
            found,
            "E2M_TEST_HISTORY=1 but `{tool}` is not installed (apt-get install influxdb influxdb-client)"
        );
    }
    let started = Instant::now();
    let tmp = tempfile::tempdir().expect("tempdir");

    // The demo first: it needs the longest (a shed after ~25 s, an alert
    // after ~100 s); influxd starts and is provisioned meanwhile.
    let broker = free_port();
    let overlay = tmp.path().join("demo.toml");
    std::fs::write(&overlay, demo_overlay()).expect("overlay");
    let log = std::fs::File::create(tmp.path().join("demo.log")).expect("demo log");
    let _demo = Demo {
        child: Command::new(BIN)
            .arg("demo")
            .arg("--config")
            .arg(&overlay)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("E2M_BROKER__LISTEN", format!("127.0.0.1:{broker}"))
            .env("E2M_STORAGE__DIR", tmp.path().join("storage"))
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start energy2mqtt demo"),
    };
    assert!(
        wait_port(broker, Duration::from_secs(30)),
        "the demo's broker did not listen"
    );
    let messages = Arc::new(Mutex::new(Vec::new()));
    collect(broker, messages.clone());
    // Events the demo does not make by itself, so that every event field
    // the config names is seen: a command for an unknown device
    // (command_error, with "error"), and a plug timer (plug_automation,
    // with "state") on the lamp, switched off first so the timer switches.
    // They are sent once the bridge publishes the lamp's state (it
    // subscribes before that) and again every 10 s until they show.
    let publisher = publisher(broker);
    let mut timer_sent = false;
    let mut last_nudge: Option<Instant> = None;

    let idb_dir = tmp.path().join("influxdb");
    std::fs::create_dir_all(&idb_dir).expect("influx dir");
    let influx = Influxd::start(&idb_dir);
    let first = provision(&influx);
    assert!(first.contains("provision: done"), "{first}");
    // Again: the stack may run it on every start.
    provision(&influx);
    let rps = influx.query(&format!("SHOW RETENTION POLICIES ON \"{DB}\""));
    let rp_rows: Vec<String> = rps["series"][0]["values"]
        .as_array()
        .expect("rps")
        .iter()
        .map(|r| format!("{} {} {}", r[0], r[1], r[4]))
        .collect();
    for want in [
        "\"raw\" \"720h0m0s\" true",
        "\"five_min\" \"0s\" false",
        "\"events\" \"0s\" false",
    ] {
        assert!(
            rp_rows.iter().any(|r| r == want),
            "{want} not in {rp_rows:?}"
        );
    }

    // Until the demo has shed a plug and raised an alert: then every
    // measurement and annotation has something.
    let deadline = Instant::now() + Duration::from_secs(170);
    loop {
        let have = messages.lock().expect("messages").clone();
        let shed = have.iter().any(|m| {
            m.topic == "energy2mqtt/bridge/event"
                && String::from_utf8_lossy(&m.payload).contains("\"shed\"")
        });
        let alert = have.iter().any(|m| m.topic == "energy2mqtt/alerts/event");
        let balancer = have
            .iter()
            .filter(|m| m.topic.starts_with("energy2mqtt/balancer/"))
            .count();
        let event = |kind: &str| {
            have.iter().any(|m| {
                m.topic == "energy2mqtt/bridge/event"
                    && String::from_utf8_lossy(&m.payload).contains(&format!("\"type\":\"{kind}\""))
            })
        };
        let (command_error, automation) = (event("command_error"), event("plug_automation"));
        let lamp_seen = have.iter().any(|m| m.topic == "energy2mqtt/lamp");
        if lamp_seen && last_nudge.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
            if !command_error {
                publisher("energy2mqtt/ghost/set", "ON");
            }
            if !timer_sent {
                publisher("energy2mqtt/lamp/set", "{\"state\":\"OFF\"}");
            }
            last_nudge = Some(Instant::now());
        }
        if !timer_sent
            && have.iter().any(|m| {
                m.topic == "energy2mqtt/lamp"
                    && String::from_utf8_lossy(&m.payload).contains("\"state\":\"OFF\"")
            })
        {
            publisher("energy2mqtt/lamp/set", "{\"timer\":1}");
            timer_sent = true;
        }
        if shed && alert && balancer >= 3 && command_error && automation {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after {:?}: shed event {shed}, alert event {alert}, balancer states {balancer}, \
             command_error {command_error}, plug_automation {automation} (timer sent {timer_sent})",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let collected_after = started.elapsed();
    let msgs = messages.lock().expect("messages").clone();

    // The device kinds as the bridge itself states them.
    let info = msgs
        .iter()
        .rev()
        .find(|m| m.topic == "energy2mqtt/bridge/info")
        .expect("bridge/info");
    let info: Value = serde_json::from_slice(&info.payload).expect("info JSON");
    let mut measurement_of: BTreeMap<String, &str> = BTreeMap::new();
    for d in info["devices"].as_array().expect("devices") {
        let m = match d["kind"].as_str().expect("kind") {
            "bms" => "packs",
            "inverter" => "inverters",
            "plug" => "plugs",
            other => panic!("a device kind the recipe does not know: {other}"),
        };
        measurement_of.insert(d["id"].as_str().expect("id").to_string(), m);
    }
    measurement_of.insert("bridge".into(), "bridge");
    measurement_of.insert("alerts".into(), "alerts");

    // Every message through the consumers that subscribe to it.
    let conf = telegraf_conf();
    let cs = consumers(&conf);
    let mut metrics: Vec<Metric> = Vec::new();
    let mut by_measurement: BTreeMap<String, Vec<(Value, Metric)>> = BTreeMap::new();
    let mut consumed = 0;
    for m in &msgs {
        if m.payload.is_empty() {
            continue;
        }
        for c in &cs {
            if !strings(&c["topics"])
                .iter()
                .any(|f| topic_matches(f, &m.topic))
            {
                continue;
            }
            consumed += 1;
            let out = telegraf_model(c, &m.topic, &m.payload, m.time_ns).unwrap_or_else(|e| {
                panic!(
                    "Telegraf would drop {}: {e}\n{}",
                    m.topic,
                    String::from_utf8_lossy(&m.payload)
                )
            });
            let doc: Value = serde_json::from_slice(&m.payload).expect("json");
            if let Some(id) = m
                .topic
                .strip_prefix("energy2mqtt/")
                .filter(|t| !t.contains('/'))
            {
                // One state object is one point, in its kind's measurement.
                let names: Vec<&str> = out.iter().map(|x| x.name.as_str()).collect();
                let want = measurement_of
                    .get(id)
                    .unwrap_or_else(|| panic!("state of an unknown device {id}"));
                assert_eq!(names, [*want], "{}", m.topic);
                assert_eq!(out[0].tags.get("device").map(String::as_str), Some(id));
            } else {
                assert_eq!(out.len(), 1, "{}: {out:?}", m.topic);
            }
            for x in out {
                by_measurement
                    .entry(x.name.clone())
                    .or_default()
                    .push((doc.clone(), x.clone()));
                metrics.push(x);
            }
        }
    }
    assert!(consumed > 100, "only {consumed} messages consumed");

    // Every path telegraf.conf names exists in its kind's payloads: all
    // fields are optional (one subscription carries every kind), so a
    // misspelt path would otherwise go unnoticed. A pack has no
    // cell_NN_voltage past its cell_count, a P100 no power or energy.
    for c in &cs {
        for block in c["json_v2"].as_array().expect("json_v2") {
            let name = block["measurement_name"].as_str().expect("name");
            let docs = by_measurement
                .get(name)
                .unwrap_or_else(|| panic!("no {name} metric from the demo"));
            for f in block
                .get("field")
                .and_then(toml::Value::as_array)
                .into_iter()
                .flatten()
            {
                let f = f.as_table().expect("field");
                let path = f["path"].as_str().expect("path");
                let cell = path
                    .strip_prefix("cell_")
                    .and_then(|r| r.strip_suffix("_voltage"))
                    .and_then(|n| n.parse::<i64>().ok());
                let expected_in = |doc: &Value| match cell {
                    Some(n) => doc["cell_count"].as_i64().is_some_and(|c| n <= c),
                    None => true,
                };
                let found = docs
                    .iter()
                    .any(|(doc, _)| gjson_get(doc, path).is_some_and(|v| !v.is_null()));
                let beyond_cells = cell.is_some() && !docs.iter().any(|(d, _)| expected_in(d));
                assert!(found || beyond_cells, "{name}: no payload has {path}");
                for (doc, _) in docs {
                    if expected_in(doc) && cell.is_some() {
                        assert!(
                            gjson_get(doc, path).is_some(),
                            "{name}: a pack lacks {path}"
                        );
                    }
                }
            }
        }
    }
    // The strings the dashboards show are there.
    let has = |m: &str, f: &str| {
        by_measurement[m]
            .iter()
            .any(|(_, x)| x.fields.contains_key(f))
    };
    for (m, f) in [
        ("inverters", "running_state"),
        ("packs", "balancer_state"),
        ("packs", "alarms"),
        ("plugs", "state"),
        // The Shelly washer's lifetime counter, the Energy dashboard's source.
        ("plugs", "energy_total"),
        ("plugs", "voltage"),
        ("balancer", "state"),
        ("events", "message"),
        ("events", "plug"),
    ] {
        assert!(has(m, f), "{m} has no {f}");
    }
    let plug_models: BTreeSet<&str> = by_measurement["plugs"]
        .iter()
        .filter_map(|(_, x)| x.tags.get("model").map(String::as_str))
        .collect();
    assert_eq!(
        plug_models,
        BTreeSet::from(["P100", "P110", "Shelly Plus Plug S"])
    );

    // Into InfluxDB, each measurement through its output.
    let t_first = metrics.iter().map(|m| m.time_ns).min().expect("metrics");
    let mut per_rp: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in &metrics {
        per_rp
            .entry(retention_policy_for(&conf, &m.name))
            .or_default()
            .push(line_protocol(m));
    }
    for (rp, lines) in &per_rp {
        influx.write(rp, lines);
    }
    // For tests/history/disk_use.py, which measures a year's disk use
    // from these points (docs/HISTORY.md).
    if let Some(path) = std::env::var_os("E2M_HISTORY_DUMP") {
        let mut text = String::new();
        for (rp, lines) in &per_rp {
            for l in lines {
                text.push_str(&format!("{rp}\t{l}\n"));
            }
        }
        std::fs::write(path, text).expect("E2M_HISTORY_DUMP");
    }
    // What went in comes back: a point per pack state and second, the
    // last SOC (max_by_key keeps the last of equal times: the later write).
    for pack in ["battery1", "battery2"] {
        let sent: Vec<&Metric> = by_measurement["packs"]
            .iter()
            .map(|(_, m)| m)
            .filter(|m| m.tags["device"] == pack)
            .collect();
        let r = influx.query(&format!(
            "SELECT count(\"voltage\"), last(\"soc\") FROM \"raw\".\"packs\" WHERE \"device\" = '{pack}'"
        ));
        let row = &r["series"][0]["values"][0];
        // A point per distinct (rounded) time: a pack publishes every
        // second, so now and then two land in one second and one is kept.
        let times: BTreeSet<i64> = sent.iter().map(|m| m.time_ns).collect();
        assert!(
            times.len() * 10 >= sent.len() * 9,
            "{pack}: most seconds have a point"
        );
        assert_eq!(row[1].as_u64(), Some(times.len() as u64), "{pack} points");
        let last_soc = sent
            .iter()
            .max_by_key(|m| m.time_ns)
            .expect("a pack point")
            .fields["soc"]
            .clone();
        assert_eq!(
            FieldValue::Float(row[2].as_f64().expect("soc")),
            last_soc,
            "{pack} soc"
        );
    }

    // The continuous queries as stored by the server, run over the test's
    // time range (they would run by themselves every 5 minutes).
    let t_end = now_ns() + 60_000_000_000;
    let five = 300_000_000_000i64;
    let (from, to) = ((t_first / five) * five, (t_end / five + 1) * five);
    let stored = influx.query("SHOW CONTINUOUS QUERIES");
    let mut ran = 0;
    for s in stored["series"].as_array().expect("cq series") {
        if s["name"] != DB {
            continue;
        }
        for row in s["values"].as_array().expect("cqs") {
            let text = row[1].as_str().expect("cq text");
            let select = text
                .split_once(" BEGIN ")
                .and_then(|(_, r)| r.strip_suffix(" END"))
                .expect("BEGIN .. END");
            let (head, group) = select.split_once(" GROUP BY ").expect("GROUP BY");
            influx.query(&format!(
                "{head} WHERE time >= {from} AND time < {to} GROUP BY {group}"
            ));
            ran += 1;
        }
    }
    assert_eq!(ran, continuous_queries().len(), "every CQ is stored");
    // A 5-minute mean is the mean of the raw points in it.
    let q = |rp: &str| {
        influx.query(&format!(
            "SELECT mean(\"soc\") FROM \"{rp}\".\"packs\" WHERE \"device\" = 'battery1' \
             AND time >= {from} AND time < {to} GROUP BY time(5m) fill(none)"
        ))
    };
    let (raw, rolled) = (values(&q("raw")), values(&q("five_min")));
    assert!(!raw.is_empty());
    assert_eq!(raw.len(), rolled.len());
    for (a, b) in raw.iter().zip(&rolled) {
        let (a, b) = (a.as_f64().expect("mean"), b.as_f64().expect("mean"));
        assert!((a - b).abs() < 1e-9, "five_min {b} vs raw {a}");
    }

    // Every dashboard query, as Grafana sends it, on raw and on 5-minute data.
    let time_filter = format!(
        "time >= {}ms and time <= {}ms",
        from / 1_000_000,
        t_end / 1_000_000
    );
    let mut checked = 0;
    for (file, d) in dashboards() {
        // Template variables first: their values fill the queries, as a
        // multi-value "All" (Grafana writes `(a|b)` into a regex).
        let mut vars: BTreeMap<String, String> = BTreeMap::new();
        for v in d["templating"]["list"].as_array().expect("templating") {
            let name = v["name"].as_str().expect("name");
            if v["type"] == "query" {
                let r = influx.query(v["query"].as_str().expect("query"));
                let got: Vec<String> = values(&r)
                    .iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect();
                assert!(!got.is_empty(), "{file}: variable {name} has no values");
                for id in &got {
                    let kind = measurement_of.get(id.as_str()).copied();
                    assert!(
                        kind.is_some() || name == "balancer",
                        "{file}: variable {name} offers {id}, no device"
                    );
                }
                vars.insert(name.to_string(), format!("({})", got.join("|")));
                checked += 1;
            }
        }
        for rp in ["raw", "five_min"] {
            for (what, q) in dashboard_queries(&d) {
                let mut q = q
                    .replace("$timeFilter", &time_filter)
                    .replace("$__interval", "10s")
                    .replace("$rp", rp);
                for (name, value) in &vars {
                    q = q.replace(&format!("${name}"), value);
                }
                // A `$` left before a name is a variable this test does not
                // know (the regex anchors in `/^...$/` stay).
                let unknown = q.match_indices('$').any(|(at, _)| {
                    q[at + 1..].starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                });
                assert!(!unknown, "{file} {what}: unsubstituted variable in {q}");
                let r = influx.query(&q);
                let got = values(&r);
                assert!(
                    got.iter().any(|v| !v.is_null()),
                    "{file} {what} ({rp}): no data from {q}"
                );
                checked += 1;
            }
        }
    }
    eprintln!(
        "history: {} messages, {} points, {checked} queries with data; demo ran {:?}, whole test {:?}",
        msgs.len(),
        metrics.len(),
        collected_after,
        started.elapsed()
    );
}
