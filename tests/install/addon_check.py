"""Checks the Home Assistant add-on's files against what the add-on format
requires (https://developers.home-assistant.io/docs/add-ons/configuration):
run by tests/install.rs with a python that has PyYAML.

usage: addon_check.py REPO_ROOT CRATE_VERSION
"""
import os
import re
import sys

import yaml

root, crate_version = sys.argv[1], sys.argv[2]
errors = []


def load(rel):
    with open(os.path.join(root, rel), encoding="utf-8") as f:
        return yaml.safe_load(f)


repo = load("repository.yaml")
for key in ("name", "url"):
    if not repo.get(key):
        errors.append(f"repository.yaml: {key} missing")

cfg = load("addon/config.yaml")
for key in ("name", "version", "slug", "description", "arch"):
    if key not in cfg:
        errors.append(f"config.yaml: required key {key} missing")
if str(cfg.get("version")) != crate_version:
    errors.append(f"config.yaml: version {cfg.get('version')!r} is not the crate's {crate_version!r}")
if not re.fullmatch(r"[a-z0-9_]+", str(cfg.get("slug", ""))):
    errors.append("config.yaml: slug must be lowercase letters, digits and _")
known_arch = {"aarch64", "amd64", "armhf", "armv7", "i386"}
arch = cfg.get("arch") or []
if not arch or set(arch) - known_arch:
    errors.append(f"config.yaml: arch {arch} (known: {sorted(known_arch)})")
if "mqtt:need" not in (cfg.get("services") or []):
    errors.append("config.yaml: services must contain mqtt:need")
for key in ("host_network", "host_dbus"):
    if cfg.get(key) is not True:
        errors.append(f"config.yaml: {key} must be true (LAN devices, BlueZ)")
if cfg.get("privileged") or cfg.get("full_access"):
    errors.append("config.yaml: the add-on must not be privileged")

TYPE = re.compile(
    r"(str|bool|email|url|password|port|int(\(\d*,\d*\))?|float(\([\d.]*,[\d.]*\))?"
    r"|match\(.+\)|list\([^()]+\))\??"
)


def check_schema(path, schema, options):
    if isinstance(schema, dict):
        for key, sub in schema.items():
            check_schema(f"{path}.{key}", sub, None if options is None else options.get(key))
        if isinstance(options, dict):
            for key in options:
                if key not in schema:
                    errors.append(f"config.yaml: option {path}.{key} has no schema")
    elif isinstance(schema, list):
        if len(schema) != 1:
            errors.append(f"config.yaml: schema {path} must be a list of one element")
        else:
            for i, item in enumerate(options or []):
                check_schema(f"{path}[{i}]", schema[0], item)
            check_schema(f"{path}[]", schema[0], None)
    elif not isinstance(schema, str) or not TYPE.fullmatch(schema):
        errors.append(f"config.yaml: schema {path} has an unknown type {schema!r}")
    elif isinstance(schema, str) and schema.startswith("match(") and isinstance(options, str):
        if not re.fullmatch(schema[len("match("):schema.rindex(")")], options):
            errors.append(f"config.yaml: default {path} = {options!r} does not match {schema}")


options, schema = cfg.get("options"), cfg.get("schema")
if not isinstance(options, dict) or not isinstance(schema, dict):
    errors.append("config.yaml: options and schema must be maps")
else:
    for key in options:
        if key not in schema:
            errors.append(f"config.yaml: option {key} has no schema")
    for key, sub in schema.items():
        optional = isinstance(sub, str) and sub.endswith("?")
        if key not in options and not optional and not isinstance(sub, list):
            errors.append(f"config.yaml: required option {key} has no default")
        check_schema(key, sub, options.get(key))
    if not str(schema.get("tapo_password", "")).startswith("password"):
        errors.append("config.yaml: tapo_password must be a password field")

build = load("addon/build.yaml")
build_from = (build or {}).get("build_from") or {}
for a in arch:
    if a not in build_from:
        errors.append(f"build.yaml: no build_from for {a}")
    elif not str(build_from[a]).endswith(":" + crate_version):
        errors.append(f"build.yaml: {a} builds from {build_from[a]}, not version {crate_version}")

run = os.path.join(root, "addon/run.sh")
if not os.access(run, os.X_OK):
    errors.append("addon/run.sh is not executable")

if errors:
    print("\n".join(errors))
    sys.exit(1)
print(f"add-on OK: {cfg['name']} {cfg['version']} for {', '.join(arch)}")
