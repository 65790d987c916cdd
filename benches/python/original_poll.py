"""The original app's polling method (RondaYummy/bms-monitor-ble, see
../shared/specs/original-app.md §1 and §6), stripped to its I/O:

* Deye: every cycle a NEW pysolarmanv5 connection, then the registers the
  original read (python/deye/read_deye.py, spec §6), ONE register per
  request, then disconnect and sleep 3 s (the original's `run_deye_loop`);
* Tapo: every 5 s, all plugs in parallel (at most 5 at a time), one cached
  device object per plug; python-kasa stands in for the PyP100 fork the
  original used (`update()` = get_device_info (+ energy on a P110)).

No web server, no database, no BLE: what is measured is the polling alone.
Started by benches/side_by_side.rs; one line per event on stderr:
`POLL <ms>` per completed Deye cycle (connect .. disconnect),
`PLUGS <ms> <ok>/<n>` per plug round, `ERROR ...` on failures.

usage: original_poll.py INVERTER_PORT SERIAL USER PASSWORD PLUG_PORT...
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
# Spec §6, in its order: 186/187 PV1/PV2 W; 178 load; 169 grid; 190 battery
# W; 183 battery V; 184 SOC; 108 daily PV; 0x60-0x61 total PV; 70/71 daily
# battery charge/discharge; 72-73 total charge; 74-75 total discharge;
# 76/77 daily grid in/out; 78+80 total grid in; 81-82 total grid out;
# 84 daily load; 85-86 total load; 279/280 PV V; 281/282 PV A; 258/259
# load V/Hz; 191 battery A; 173/174 grid V/Hz.
REGISTERS = [
    186, 187, 178, 169, 190, 183, 184, 108, 0x60, 0x61, 70, 71, 72, 73, 74,
    75, 76, 77, 78, 80, 81, 82, 84, 85, 86, 279, 280, 281, 282, 258, 259,
    191, 173, 174,
]
DEYE_SLEEP_S = 3.0
TAPO_INTERVAL_S = 5.0
TAPO_PARALLEL = 5


def log(line):
    print(line, file=sys.stderr, flush=True)


def deye_loop(port, serial, stop):
    while not stop.is_set():
        t = time.monotonic()
        try:
            m = PySolarmanV5(HOST, serial, port=port, mb_slave_id=1, socket_timeout=10)
            try:
                values = {}
                for reg in REGISTERS:
                    values[reg] = m.read_holding_registers(reg, 1)[0]
            finally:
                m.disconnect()
            log(f"POLL {(time.monotonic() - t) * 1e3:.1f}")
        except Exception as e:  # the original swallowed these too
            log(f"ERROR deye {type(e).__name__}: {e}")
        stop.wait(DEYE_SLEEP_S)


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
    gate = asyncio.Semaphore(TAPO_PARALLEL)

    async def one(port):
        async with gate:
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
        await asyncio.sleep(max(0.0, TAPO_INTERVAL_S - (time.monotonic() - t)))


def main():
    if len(sys.argv) < 5:
        log(__doc__)
        sys.exit(2)
    port, serial, user, password = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    plugs = [int(p) for p in sys.argv[5:]]
    stop = threading.Event()
    # pysolarmanv5 is synchronous: its loop runs on a thread of its own,
    # beside the asyncio loop that polls the plugs.
    threading.Thread(target=deye_loop, args=(port, serial, stop), daemon=True).start()
    log("READY")
    try:
        asyncio.run(tapo_loop(plugs, user, password))
    finally:
        stop.set()


if __name__ == "__main__":
    main()
