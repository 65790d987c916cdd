"""Prints the Python requirements of every integration the HA test loads.

Run with the HA venv's python after `pip install homeassistant==...`:
install.sh pip-installs what this prints, so that Home Assistant then
starts with `--skip-pip` and needs no network.

The integrations: those bootstrap always sets up (core, logging/http,
frontend, the default set), those the test's configuration.yaml and
onboarding name, and MQTT; then, recursively, their manifests'
`dependencies` and `after_dependencies` (an after-dependency is only set
up when something else loads it, but its requirement costs little and
saves an import error when it is).
"""

import json
import pathlib

import homeassistant.bootstrap as bootstrap
import homeassistant.components as components

# configuration.yaml of tests/home_assistant.rs, onboarding, and the one
# integration the test adds through its config flow.
CONFIGURED = {"http", "recorder", "energy", "automation", "blueprint", "onboarding", "mqtt", "api", "config", "websocket_api", "auth"}
# The onboarding's core_config step starts these integrations' config
# flows (homeassistant/components/onboarding/views.py); without their
# requirements each flow logs an import error.
ONBOARDING = {"google_translate", "met", "radio_browser", "shopping_list"}


def manifest(domain):
    path = pathlib.Path(components.__path__[0]) / domain / "manifest.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def main():
    seeds = set(CONFIGURED) | ONBOARDING
    seeds |= bootstrap.CORE_INTEGRATIONS
    seeds |= bootstrap.LOGGING_AND_HTTP_DEPS_INTEGRATIONS
    seeds |= bootstrap.FRONTEND_INTEGRATIONS
    seeds |= bootstrap.DEFAULT_INTEGRATIONS
    for _name, domains, _timeout in bootstrap.STAGE_0_INTEGRATIONS:
        seeds |= set(domains)
    todo = sorted(seeds)
    seen = set()
    requirements = set()
    while todo:
        domain = todo.pop()
        if domain in seen:
            continue
        seen.add(domain)
        m = manifest(domain)
        if m is None:
            continue
        requirements.update(m.get("requirements", []))
        todo.extend(m.get("dependencies", []))
        todo.extend(m.get("after_dependencies", []))
    for r in sorted(requirements):
        print(r)


if __name__ == "__main__":
    main()
