"""Reads our Tapo plug simulator with python-kasa's API, twice with a pause
between, and prints what it saw as one JSON object. With a short
server-side session the second read needs python-kasa's 403 recovery.

usage: kasa_client.py PORT USERNAME PASSWORD PAUSE_S
"""
import asyncio
import json
import sys

from kasa import Credentials, Device, DeviceConfig
from kasa.deviceconfig import (
    DeviceConnectionParameters,
    DeviceEncryptionType,
    DeviceFamily,
)


def snapshot(dev):
    energy = dev.modules.get("Energy")
    return {
        "alias": dev.alias,
        "model": dev.model,
        "is_on": dev.is_on,
        "power_w": energy.current_consumption if energy else None,
    }


async def main():
    port, user, password, pause = (
        int(sys.argv[1]),
        sys.argv[2],
        sys.argv[3],
        float(sys.argv[4]),
    )
    cfg = DeviceConfig(
        host="127.0.0.1",
        port_override=port,
        timeout=5,
        credentials=Credentials(user, password),
        connection_type=DeviceConnectionParameters(
            DeviceFamily.SmartTapoPlug, DeviceEncryptionType.Klap, login_version=2
        ),
    )
    dev = await Device.connect(config=cfg)
    try:
        first = snapshot(dev)
        await asyncio.sleep(pause)
        await dev.update()
        second = snapshot(dev)
    finally:
        await dev.disconnect()
    print(json.dumps({"first": first, "second": second}))


asyncio.run(main())
