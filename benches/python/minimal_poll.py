"""A minimal Python process doing what the bridge does on the wire:

* Deye: ONE kept pysolarmanv5 connection; the identity block (0..22) once,
  then every 5 s the two blocks the bridge reads (src/drivers/deye/registers/
  single_phase_lv.rs: 59..112 and 150..194), i.e. 2 round trips per poll;
* Tapo: python-kasa, one device object per plug, all 4 plugs every 5 s.

Nothing else (no decoding, no MQTT): a lower bound for a Python bridge.
Started by benches/side_by_side.rs; one line per event on stderr:
`POLL <ms>` per Deye poll (the two block reads), `PLUGS <ms> <ok>/<n>` per
plug round, `ERROR ...` on failures.

usage: minimal_poll.py INVERTER_PORT SERIAL USER PASSWORD PLUG_PORT...
"""
import asyncio
import sys
import threading
import time

try:
    from pysolarmanv5 import PySolarmanV5
    from kasa import Credentials, Device, DeviceConfig
    from kasa.deviceconfig import (
        DeviceConnectionParameters,
        DeviceEncryptionType,
        DeviceFamily,
    )
except ImportError as e:  # the bench checks first; this is the fallback
    print(f"MISSING {e}", file=sys.stderr, flush=True)
    sys.exit(3)

HOST = "127.0.0.1"
IDENTITY = (0, 23)
BLOCKS = [(59, 54), (150, 45)]
INTERVAL_S = 5.0


def log(line):
    print(line, file=sys.stderr, flush=True)


def deye_loop(port, serial, stop):
    m = None
    while not stop.is_set():
        t = time.monotonic()
        try:
            if m is None:
                m = PySolarmanV5(HOST, serial, port=port, mb_slave_id=1, socket_timeout=10)
                m.read_holding_registers(*IDENTITY)
                t = time.monotonic()
            words = []
            for start, count in BLOCKS:
                words.extend(m.read_holding_registers(start, count))
            log(f"POLL {(time.monotonic() - t) * 1e3:.1f}")
        except Exception as e:
            log(f"ERROR deye {type(e).__name__}: {e}")
            if m is not None:
                try:
                    m.disconnect()
                except Exception:
                    pass
                m = None
        stop.wait(max(0.0, INTERVAL_S - (time.monotonic() - t)))


def plug_config(port, user, password):
    return DeviceConfig(
        host=HOST,
        port_override=port,
        timeout=5,
        credentials=Credentials(user, password),
        connection_type=DeviceConnectionParameters(
            DeviceFamily.SmartTapoPlug, DeviceEncryptionType.Klap, login_version=2
        ),
    )


async def tapo_loop(ports, user, password):
    devices = {}

    async def one(port):
        dev = devices.get(port)
        if dev is None:
            dev = await Device.connect(config=plug_config(port, user, password))
            devices[port] = dev
        else:
            await dev.update()
        energy = dev.modules.get("Energy")
        return dev.is_on, energy.current_consumption if energy else None

    while True:
        t = time.monotonic()
        results = await asyncio.gather(*(one(p) for p in ports), return_exceptions=True)
        ok = sum(1 for r in results if not isinstance(r, BaseException))
        for r in results:
            if isinstance(r, BaseException):
                log(f"ERROR tapo {type(r).__name__}: {r}")
        log(f"PLUGS {(time.monotonic() - t) * 1e3:.1f} {ok}/{len(ports)}")
        await asyncio.sleep(max(0.0, INTERVAL_S - (time.monotonic() - t)))


def main():
    if len(sys.argv) < 5:
        log(__doc__)
        sys.exit(2)
    port, serial, user, password = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    plugs = [int(p) for p in sys.argv[5:]]
    stop = threading.Event()
    threading.Thread(target=deye_loop, args=(port, serial, stop), daemon=True).start()
    log("READY")
    try:
        asyncio.run(tapo_loop(plugs, user, password))
    finally:
        stop.set()


if __name__ == "__main__":
    main()
