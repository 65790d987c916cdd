"""Reads our Solarman V5 simulator with pysolarmanv5, the independent client
most Deye tools are built on, and prints what it got as one JSON object.

usage: pysolarmanv5_client.py PORT SERIAL WRONG_SERIAL
"""
import json
import sys

from pysolarmanv5 import PySolarmanV5, V5FrameError

port, serial, wrong = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
out = {}

m = PySolarmanV5("127.0.0.1", serial, port=port, mb_slave_id=1, socket_timeout=5)
out["identity"] = m.read_holding_registers(0, 23)
out["block_a"] = m.read_holding_registers(59, 54)
out["block_b"] = m.read_holding_registers(150, 45)
out["battery_power"] = m.read_holding_register_formatted(190, 1, signed=True)
out["write"] = m.write_multiple_holding_registers(245, [3210])
out["written"] = m.read_holding_registers(245, 1)
try:
    m.read_holding_registers(0, 126)
    out["too_many"] = "no error"
except Exception as e:  # umodbus raises its own exception per Modbus code
    out["too_many"] = type(e).__name__
m.disconnect()

w = PySolarmanV5("127.0.0.1", wrong, port=port, mb_slave_id=1, socket_timeout=5)
try:
    w.read_holding_registers(0, 1)
    out["wrong_serial"] = "no error"
except V5FrameError as e:
    out["wrong_serial"] = str(e)
w.disconnect()

print(json.dumps(out))
