"""A line-oriented client of a running Home Assistant, for tests/home_assistant.rs.

Run with the HA venv's python (it has aiohttp):

    .venv-ha/bin/python tests/ha/ha_client.py http://127.0.0.1:PORT

Reads one JSON request per line on stdin and answers each with one JSON
line on stdout, so the Rust test drives Home Assistant without a WebSocket
or HTTP client of its own:

    {"op": "onboard", "mqtt_port": 1883}
        create the owner through the onboarding API, finish the onboarding
        steps, add the MQTT integration through its config flow; answers
        {"ok": true, "entry": <config entry>}
    {"op": "rest", "method": "GET", "path": "/api/states", "json": ...}
        answers {"ok": true, "status": 200, "body": <JSON or text>}
    {"op": "ws", "msg": {"type": "config/entity_registry/list"}}
        one WebSocket command (the id is added); answers
        {"ok": true, "success": true, "result": ...} or with "error"
    {"op": "wait_up", "timeout": 120, "path": "/api/", "auth": true}
        polls the path until Home Assistant answers 200 (at start, after a
        restart)

Any failure answers {"ok": false, "error": "..."}: the Rust side reports it.
"""

import asyncio
import json
import sys
import time

import aiohttp

USER = {"name": "Test", "username": "test", "password": "e2m-test-password", "language": "en"}


class Client:
    def __init__(self, base):
        self.base = base.rstrip("/")
        self.client_id = self.base + "/"
        self.session = None
        self.token = None
        self.ws = None
        self.next_id = 1

    async def start(self):
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))

    def headers(self):
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def rest(self, method, path, body=None, form=None, auth=True):
        kwargs = {"headers": self.headers() if auth else {}}
        if body is not None:
            kwargs["json"] = body
        if form is not None:
            kwargs["data"] = form
        async with self.session.request(method, self.base + path, **kwargs) as r:
            text = await r.text()
            try:
                parsed = json.loads(text) if text else None
            except ValueError:
                parsed = text
            return r.status, parsed

    async def expect(self, method, path, body=None, form=None, auth=True, ok=(200, 201)):
        status, parsed = await self.rest(method, path, body, form, auth)
        if status not in ok:
            raise RuntimeError(f"{method} {path}: HTTP {status}: {parsed}")
        return parsed

    async def onboard(self, mqtt_port):
        user = dict(USER, client_id=self.client_id)
        code = (await self.expect("POST", "/api/onboarding/users", user, auth=False))["auth_code"]
        tokens = await self.expect(
            "POST",
            "/auth/token",
            form={"grant_type": "authorization_code", "code": code, "client_id": self.client_id},
            auth=False,
        )
        self.token = tokens["access_token"]
        await self.expect("POST", "/api/onboarding/core_config", {})
        await self.expect("POST", "/api/onboarding/analytics", {})
        await self.expect(
            "POST",
            "/api/onboarding/integration",
            {"client_id": self.client_id, "redirect_uri": self.client_id + "?auth_callback=1"},
        )
        # The short-lived token expires after 30 minutes; the test may
        # restart Home Assistant, so take a long-lived one.
        self.token = await self.ws_result(
            {"type": "auth/long_lived_access_token", "client_name": "e2m-test", "lifespan": 1}
        )
        return {"entry": await self.add_mqtt(mqtt_port), "token": self.token}

    async def add_mqtt(self, port):
        flow = await self.expect(
            "POST", "/api/config/config_entries/flow", {"handler": "mqtt", "show_advanced_options": False}
        )
        # The flow may open with a menu or the broker form, depending on
        # whether a supervisor add-on was discovered; here it never is.
        for _ in range(5):
            if flow.get("type") == "create_entry":
                return flow.get("result")
            if flow.get("type") == "abort":
                raise RuntimeError(f"MQTT config flow aborted: {flow}")
            step = flow.get("step_id")
            if flow.get("type") == "menu":
                body = {"next_step_id": "broker"}
            elif step == "broker":
                body = {"broker": "127.0.0.1", "port": port}
            else:
                body = {}
            flow = await self.expect("POST", f"/api/config/config_entries/flow/{flow['flow_id']}", body)
        raise RuntimeError(f"MQTT config flow did not finish: {flow}")

    async def ws_connect(self):
        self.ws = await self.session.ws_connect(self.base + "/api/websocket", max_msg_size=0)
        hello = await self.ws.receive_json()
        if hello.get("type") != "auth_required":
            raise RuntimeError(f"websocket: {hello}")
        await self.ws.send_json({"type": "auth", "access_token": self.token})
        auth = await self.ws.receive_json()
        if auth.get("type") != "auth_ok":
            raise RuntimeError(f"websocket auth: {auth}")

    async def ws_call(self, msg):
        for attempt in range(2):
            try:
                if self.ws is None or self.ws.closed:
                    await self.ws_connect()
                msg_id = self.next_id
                self.next_id += 1
                await self.ws.send_json(dict(msg, id=msg_id))
                while True:
                    reply = await asyncio.wait_for(self.ws.receive_json(), 60)
                    if reply.get("id") == msg_id and reply.get("type") == "result":
                        return reply
            except (aiohttp.ClientError, TypeError, ConnectionError, asyncio.TimeoutError):
                # Home Assistant restarted under us: connect again once.
                self.ws = None
                if attempt:
                    raise

    async def ws_result(self, msg):
        reply = await self.ws_call(msg)
        if not reply.get("success"):
            raise RuntimeError(f"{msg.get('type')}: {reply.get('error')}")
        return reply.get("result")

    async def wait_up(self, timeout, path, auth):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                status, body = await self.rest("GET", path, auth=auth)
                if status == 200:
                    self.ws = None
                    return {}
                last = f"HTTP {status}: {body}"
            except (aiohttp.ClientError, ConnectionError, asyncio.TimeoutError) as e:
                last = repr(e)
            await asyncio.sleep(0.5)
        raise RuntimeError(f"Home Assistant not up after {timeout} s: {last}")

    async def handle(self, req):
        op = req.get("op")
        if op == "onboard":
            return await self.onboard(req["mqtt_port"])
        if op == "rest":
            status, body = await self.rest(req.get("method", "GET"), req["path"], req.get("json"))
            return {"status": status, "body": body}
        if op == "ws":
            reply = await self.ws_call(req["msg"])
            return {"success": bool(reply.get("success")), "result": reply.get("result"), "error": reply.get("error")}
        if op == "wait_up":
            return await self.wait_up(req.get("timeout", 120), req.get("path", "/api/"), req.get("auth", True))
        raise RuntimeError(f"unknown op {op!r}")


async def main():
    client = Client(sys.argv[1])
    await client.start()
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        try:
            req = json.loads(line)
            out = dict(await client.handle(req), ok=True)
        except Exception as e:  # every failure goes back to the test, which prints it
            out = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
    await client.session.close()


if __name__ == "__main__":
    asyncio.run(main())
