"""Drives energy2mqtt's simulated Shelly with aioshelly, Home Assistant's
Shelly library, the way the integration does: /shelly over HTTP, then an
RpcDevice over the /rpc WebSocket (initialise, read status and config,
switch the relay off and on, poll), and one plain HTTP RPC call with
aiohttp's own digest authentication. Prints one JSON object; the Rust test
(tests/shelly.rs) asserts on it.

usage: shelly_client.py PORT [PASSWORD]
"""

import asyncio
import json
import sys

import aiohttp
from aioshelly.common import ConnectionOptions, get_info
from aioshelly.exceptions import InvalidAuthError, ShellyError
from aioshelly.rpc_device import RpcDevice

HOST = "127.0.0.1"


async def wait_for(predicate, seconds=5.0):
    """Polls predicate until it holds; returns whether it did."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


def switch_view(status):
    sw = status["switch:0"]
    return {
        "output": sw["output"],
        "apower": sw.get("apower"),
        "voltage": sw.get("voltage"),
        "current": sw.get("current"),
        "aenergy_total": sw.get("aenergy", {}).get("total"),
        "temperature_c": sw.get("temperature", {}).get("tC"),
        "errors": sw.get("errors", []),
    }


async def run(port, password):
    out = {}
    async with aiohttp.ClientSession() as session:
        info = await get_info(session, HOST, port=port)
        out["info"] = {
            k: info.get(k) for k in ("id", "mac", "model", "gen", "fw_id", "ver", "auth_en", "auth_domain")
        }

        options = ConnectionOptions(
            HOST,
            username="admin" if password is not None else None,
            password=password,
            port=port,
        )
        device = await RpcDevice.create(session, None, options)
        updates = []
        device.subscribe_updates(lambda _dev, kind: updates.append(kind.name))
        try:
            await device.initialize()
        except InvalidAuthError as err:
            out["error"] = "InvalidAuthError"
            out["error_detail"] = str(err)
            await device.shutdown()
            return out
        except ShellyError as err:
            out["error"] = type(err).__name__
            out["error_detail"] = str(err)
            await device.shutdown()
            return out

        out["initialized"] = device.initialized
        out["requires_auth"] = device.requires_auth
        out["gen"] = device.gen
        out["model"] = device.model
        out["hostname"] = device.hostname
        out["name"] = device.name
        out["firmware_version"] = device.firmware_version
        out["firmware_supported"] = device.firmware_supported
        out["status"] = switch_view(device.status)
        out["rssi"] = device.status["wifi"]["rssi"]
        out["power_limit"] = device.config["switch:0"]["power_limit"]

        await device.switch_set(0, False)
        # The device tells its WebSocket peers (NotifyStatus); aioshelly
        # merges that into device.status, as Home Assistant relies on.
        out["notified_off"] = await wait_for(lambda: device.status["switch:0"]["output"] is False)
        out["after_off"] = (await device.call_rpc("Switch.GetStatus", {"id": 0}))["output"]
        out["apower_off"] = (await device.call_rpc("Switch.GetStatus", {"id": 0}))["apower"]

        await device.switch_set(0, True)
        out["notified_on"] = await wait_for(lambda: device.status["switch:0"]["output"] is True)
        out["after_on"] = (await device.call_rpc("Switch.GetStatus", {"id": 0}))["output"]

        await device.poll()
        out["polled"] = switch_view(device.status)
        out["updates"] = sorted(set(updates))
        try:
            await device.call_rpc("Switch.Set", {"id": 7, "on": True})
            out["bad_switch"] = None
        except ShellyError as err:
            out["bad_switch"] = getattr(err, "code", None)
        await device.shutdown()

        # Plain HTTP RPC with aiohttp's own RFC 7616 digest implementation.
        middlewares = ()
        if password is not None:
            middlewares = (aiohttp.DigestAuthMiddleware("admin", password),)
        async with session.get(
            f"http://{HOST}:{port}/rpc/Switch.GetStatus?id=0", middlewares=middlewares
        ) as resp:
            out["http_status"] = resp.status
            out["http_output"] = (await resp.json())["output"] if resp.status == 200 else None
    return out


def main():
    port = int(sys.argv[1])
    password = sys.argv[2] if len(sys.argv) > 2 else None
    result = asyncio.run(asyncio.wait_for(run(port, password), 60))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
