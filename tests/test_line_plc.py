"""PLC sinks against real local servers (asyncua, pymodbus), their recipe keys, and the GenICam source
through a fake harvesters module that follows harvesters.core.Harvester's API."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
import time
import types

import numpy as np
import pytest
import yaml
from conftest import require_module

from promptdet.errors import PromptdetError, UsageError
from promptdet.line.pipeline import LineStats, run_line
from promptdet.line.recipe import load_recipe, recipe_from_dict
from promptdet.line.sinks import JsonlSink, build_sinks
from promptdet.line.sources import Backoff, Frame

FAST = {"retries": 2, "backoff_s": 0.001, "backoff_max_s": 0.002}
VERDICTS = ["PASS", "FAIL", "ERROR", "PASS"]


def _record(i: int, verdict: str) -> dict:
    return {"schema": "promptdet.verdict/1", "part_id": f"p{i}", "ts": 1000.0 + i, "verdict": verdict,
            "reasons": [], "latency_ms": 5.0, "deadline_ms": 500.0, "checks": {}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.005)


def _spooled(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# -- OPC UA -------------------------------------------------------------------------------------
def _start_opcua(port: int):
    """A local asyncua server with Line1.{Verdict String, Code Int16, Fail Boolean, Score Double,
    When DateTime, PartId String}; returns (server, {name: node})."""
    ua = require_module("asyncua", "pip install 'asyncua>=1.1'").ua
    from asyncua.sync import Server

    server = Server()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/")
    idx = server.register_namespace("urn:promptdet:test")
    line = server.nodes.objects.add_object(idx, "Line1")
    nodes = {}
    for name, vtype, initial in [("Verdict", ua.VariantType.String, ""), ("Code", ua.VariantType.Int16, -1),
                                 ("Fail", ua.VariantType.Boolean, False), ("Score", ua.VariantType.Double, -1.0),
                                 ("When", ua.VariantType.DateTime, None), ("PartId", ua.VariantType.String, "")]:
        node = line.add_variable(f"ns={idx};s=Line1.{name}", name, initial, varianttype=vtype)
        node.set_writable()
        nodes[name] = node
    server.start()
    return server, nodes


@pytest.fixture(scope="module")
def opcua():
    port = _free_port()
    server, nodes = _start_opcua(port)
    yield f"opc.tcp://127.0.0.1:{port}/", nodes
    server.stop()


@pytest.mark.parametrize("name, expected", [
    ("Verdict", ["PASS", "FAIL", "ERROR", "PASS"]),
    ("Code", [0, 1, 2, 0]),
    ("Fail", [False, True, True, False]),  # ERROR is never written as a pass
    ("Score", [0.0, 1.0, 2.0, 0.0]),
])
def test_opcua_sink_writes_each_verdict_in_the_nodes_type(opcua, name, expected):
    from promptdet.line.plc import OpcuaSink

    endpoint, nodes = opcua
    sink = OpcuaSink(endpoint, f"ns=2;s=Line1.{name}", part_id_node="ns=2;s=Line1.PartId", **FAST)
    seen = []
    for i, verdict in enumerate(VERDICTS):
        sink.put(_record(i, verdict))
        _wait_for(lambda: sink.counts["written"] == i + 1)
        seen.append((nodes[name].read_value(), nodes["PartId"].read_value()))
    assert sink.close(timeout=10)
    assert seen == [(v, f"p{i}") for i, v in enumerate(expected)]
    assert sink.counts["errors"] == 0 and sink.counts["spooled"] == 0


def test_opcua_node_of_the_wrong_type_is_reported_and_spooled(opcua, tmp_path):
    from promptdet.line.plc import OpcuaSink

    endpoint, _ = opcua
    sink = OpcuaSink(endpoint, "ns=2;s=Line1.When", spool_dir=tmp_path, **FAST)
    sink.put(_record(0, "FAIL"))
    assert sink.close(timeout=10)
    assert sink.counts["written"] == 0 and sink.counts["spooled"] == 1
    assert "DateTime" in sink.last_error and "String, Boolean or a numeric type" in sink.last_error


def test_opcua_server_down_spools_then_replays_when_it_is_up(tmp_path):
    require_module("asyncua", "pip install 'asyncua>=1.1'")
    from promptdet.line.plc import OpcuaSink

    port = _free_port()  # nothing listens here yet: the PLC is off
    endpoint = f"opc.tcp://127.0.0.1:{port}/"
    down = OpcuaSink(endpoint, "ns=2;s=Line1.Code", part_id_node="ns=2;s=Line1.PartId", spool_dir=tmp_path, **FAST)
    for i, verdict in enumerate(VERDICTS[:3]):
        assert down.put(_record(i, verdict))  # never blocks, never raises
    assert down.close(timeout=10)
    assert down.counts["spooled"] == 3 and down.counts["written"] == 0 and down.counts["errors"] >= 1
    assert [r["part_id"] for r in _spooled(tmp_path / "opcua.jsonl")] == ["p0", "p1", "p2"]

    server, nodes = _start_opcua(port)  # the PLC is back
    try:
        up = OpcuaSink(endpoint, "ns=2;s=Line1.Code", part_id_node="ns=2;s=Line1.PartId", spool_dir=tmp_path,
                       **FAST).start()
        assert up.close(timeout=10)
        assert up.counts["replayed"] == 3 and up.counts["written"] == 3 and up.counts["spooled"] == 0
        assert nodes["Code"].read_value() == 2 and nodes["PartId"].read_value() == "p2"  # the last one, ERROR
    finally:
        server.stop()
    assert not (tmp_path / "opcua.jsonl").exists() and not (tmp_path / "opcua.replay.jsonl").exists()


# -- Modbus TCP ---------------------------------------------------------------------------------
class ModbusServer:
    """pymodbus' asyncio TCP server on its own thread and loop, 100 coils and 100 holding registers."""

    def __init__(self, port: int):
        require_module("pymodbus", "pip install 'pymodbus>=3.6'")
        from pymodbus import datastore
        from pymodbus.server import ModbusTcpServer

        device_cls = getattr(datastore, "ModbusDeviceContext", None) or datastore.ModbusSlaveContext  # < 3.10
        device = device_cls(co=datastore.ModbusSequentialDataBlock(1, [0] * 100),  # 1 = protocol address 0
                            hr=datastore.ModbusSequentialDataBlock(1, [99] * 100))
        context = datastore.ModbusServerContext(device, single=True)
        self.loop = asyncio.new_event_loop()
        self.server = None

        async def serve():  # the server must be made on the loop that runs it
            self.server = ModbusTcpServer(context, address=("127.0.0.1", port))
            await self.server.serve_forever()

        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(serve(),), daemon=True)
        self.thread.start()
        _wait_for(lambda: _listening(port))

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.shutdown(), self.loop).result(10)
        self.thread.join(10)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


class ModbusReader:
    """A second Modbus master, like the PLC program or an HMI reading the value back."""

    def __init__(self, port: int):
        from pymodbus.client import ModbusTcpClient

        self.client = ModbusTcpClient("127.0.0.1", port=port, timeout=2)
        assert self.client.connect()

    def coil(self, address: int) -> bool:
        return bool(self.client.read_coils(address, count=1).bits[0])

    def register(self, address: int) -> int:
        return self.client.read_holding_registers(address, count=1).registers[0]


@pytest.fixture(scope="module")
def modbus():
    port = _free_port()
    server = ModbusServer(port)
    reader = ModbusReader(port)
    yield port, reader
    reader.client.close()
    server.stop()


@pytest.mark.parametrize("target, expected", [
    ({"coil": 17}, [False, True, True, False]),  # FAIL and ERROR set the coil
    ({"register": 40}, [0, 1, 2, 0]),
])
def test_modbus_sink_writes_each_verdict(modbus, target, expected):
    from promptdet.line.plc import ModbusSink

    port, reader = modbus
    sink = ModbusSink("127.0.0.1", port, **target, **FAST)
    read = (lambda: reader.coil(17)) if "coil" in target else (lambda: reader.register(40))
    seen = []
    for i, verdict in enumerate(VERDICTS):
        sink.put(_record(i, verdict))
        _wait_for(lambda: sink.counts["written"] == i + 1)
        seen.append(read())
    assert sink.close(timeout=10)
    assert seen == expected and sink.counts["errors"] == 0
    assert reader.register(41) == 99 and reader.coil(16) is False  # the neighbours are untouched


def test_modbus_server_down_spools_and_the_line_goes_on_then_replays(tmp_path):
    require_module("pymodbus", "pip install 'pymodbus>=3.6'")
    from promptdet.line.plc import ModbusSink

    port = _free_port()
    sinks = [ModbusSink("127.0.0.1", port, register=3, spool_dir=tmp_path / "spool", timeout_s=0.5, **FAST),
             JsonlSink(tmp_path / "r.jsonl")]

    def inspector(frame):  # the model's place: FAIL on odd parts
        return _record(frame.index, "FAIL" if frame.index % 2 else "PASS"), {}

    frames = (Frame(np.zeros((8, 8, 3), np.uint8), i, time.time()) for i in range(5))
    t0 = time.monotonic()
    stats = run_line(frames, inspector, sinks, threading.Event(), LineStats(), sink_timeout_s=10)
    assert time.monotonic() - t0 < 10 and stats.parts == 5
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 5  # the other sink got every part
    assert sinks[0].counts["spooled"] == 5 and "127.0.0.1" in sinks[0].last_error

    server = ModbusServer(port)  # the PLC is back: the next start replays the spool in order
    try:
        sink = ModbusSink("127.0.0.1", port, register=3, spool_dir=tmp_path / "spool", **FAST).start()
        assert sink.close(timeout=10)
        assert sink.counts["replayed"] == 5 and sink.counts["written"] == 5
        reader = ModbusReader(port)
        assert reader.register(3) == 0  # part 4, PASS, was the last
        reader.client.close()
    finally:
        server.stop()


def test_malformed_verdict_is_dropped_not_written(modbus, tmp_path):
    from promptdet.line.plc import ModbusSink

    port, reader = modbus
    sink = ModbusSink("127.0.0.1", port, register=50, spool_dir=tmp_path, **FAST)
    sink.put({"part_id": "x", "ts": 1.0, "verdict": "MAYBE"})
    sink.put(_record(1, "FAIL"))
    assert sink.close(timeout=10)
    assert sink.counts["dropped"] == 1 and sink.counts["written"] == 1 and reader.register(50) == 1


@pytest.mark.parametrize("module, cls, args, hint", [
    ("asyncua", "OpcuaSink", ("opc.tcp://plc:4840", "ns=2;s=V"), "pip install 'asyncua>=1.1'"),
    ("pymodbus", "ModbusSink", ("plc",), "pip install 'pymodbus>=3.6'"),
])
def test_missing_plc_library_says_how_to_install(monkeypatch, module, cls, args, hint):
    import builtins

    from promptdet.line import plc

    real_import = builtins.__import__

    def without(name, *a, **k):
        if name.split(".")[0] == module:
            raise ImportError(f"No module named {module!r}")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", without)
    with pytest.raises(PromptdetError, match=hint.replace("(", r"\(")) as err:
        getattr(plc, cls)(*args, coil=1) if cls == "ModbusSink" else getattr(plc, cls)(*args)
    assert "\n" not in str(err.value)


# -- recipe keys ----------------------------------------------------------------------------------
MINIMAL = {"version": 1, "source": {"uri": "line.mp4"},
           "checks": [{"name": "missing_cap", "prompt": "bottles with a missing cap", "fail_if": "count >= 1"}]}
OPCUA = {"endpoint": "opc.tcp://plc:4840", "node": "ns=2;s=Line1.Verdict"}


def _recipe(sinks: dict | None = None, source: dict | None = None) -> dict:
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    if sinks:
        data["sinks"] = sinks
    if source:
        data["source"] = source
    return data


@pytest.mark.parametrize("data, message", [
    (_recipe({"opcua": {**OPCUA, "nodeid": "x"}}), "sinks.opcua: unknown key 'nodeid'"),
    (_recipe({"opcua": {"endpoint": "opc.tcp://plc:4840"}}), "sinks.opcua: missing key 'node'"),
    (_recipe({"opcua": {**OPCUA, "endpoint": "http://plc"}}), "sinks.opcua.endpoint: must start with opc.tcp://"),
    (_recipe({"opcua": {**OPCUA, "node": "Line1.Verdict"}}), "sinks.opcua.node: 'Line1.Verdict' is not an OPC UA"),
    (_recipe({"opcua": {**OPCUA, "part_id_node": "ns=2;x=1"}}), "sinks.opcua.part_id_node: 'ns=2;x=1' is not"),
    (_recipe({"opcua": {**OPCUA, "part_id_node": OPCUA["node"]}}), "sinks.opcua.part_id_node: must be a different"),
    (_recipe({"opcua": {**OPCUA, "timeout_s": 0}}), "sinks.opcua.timeout_s: must be positive"),
    (_recipe({"modbus": {"host": "plc", "coil": 1, "slave": 2}}), "sinks.modbus: unknown key 'slave'"),
    (_recipe({"modbus": {"host": "plc", "coil": 70000}}), "sinks.modbus.coil: must be a 0-based Modbus address"),
    (_recipe({"modbus": {"host": "plc", "register": -1}}), "sinks.modbus.register: must be a 0-based"),
    (_recipe({"modbus": {"host": "plc", "coil": 1, "register": 2}}), "set exactly one of 'coil' or 'register'"),
    (_recipe({"modbus": {"host": "plc", "coil": 1, "unit_id": 256}}), "sinks.modbus.unit_id: must be 0-255"),
    (_recipe({"modbus": {"host": "plc", "coil": 1, "port": 0}}), "sinks.modbus.port: must be a TCP port"),
    (_recipe({"modbus": {"host": "plc", "coil": 1, "timeout_s": -1}}), "sinks.modbus.timeout_s: must be positive"),
    (_recipe(source={"uri": "genicam:///opt/p.cti?serial=1&colour=red"}),
     "source.uri: unknown genicam key 'colour' (valid: serial, model, vendor, name, id)"),
    (_recipe(source={"uri": "genicam:///opt/p.cti?serial="}), "source.uri: genicam key 'serial' needs a value"),
    (_recipe(source={"uri": "genicam:///opt/producer.so"}), "source.uri: '/opt/producer.so' is not a GenTL producer"),
    (_recipe(source={"uri": "genicam:///opt/p.cti", "kind": "camera"}),
     "source.kind: a genicam:// uri needs kind genicam or auto"),
    (_recipe(source={"uri": 0, "kind": "genicam"}), "source.uri: kind genicam needs genicam://"),
    (_recipe(source={"uri": "line.mp4", "kind": "gige"}), "source.kind: unknown value 'gige'"),
])
def test_bad_plc_and_genicam_keys_are_named(assert_recipe_rejected, data, message):
    assert_recipe_rejected(data, message)


def test_good_plc_and_genicam_recipe_builds_the_sinks(tmp_path):
    require_module("asyncua", "pip install 'asyncua>=1.1'")
    require_module("pymodbus", "pip install 'pymodbus>=3.6'")
    recipe = recipe_from_dict(_recipe(
        {"opcua": {**OPCUA, "part_id_node": "nsu=urn:line;s=PartId", "timeout_s": 1},
         "modbus": {"host": "plc", "register": 12, "unit_id": 0}, "spool_dir": str(tmp_path)},
        {"uri": "genicam:///opt/p.cti?serial=A1&model=acA1920", "trigger": "free-run"}))
    assert recipe.sinks.opcua.part_id_node == "nsu=urn:line;s=PartId" and recipe.sinks.modbus.port == 502
    sinks = build_sinks(recipe.sinks)  # nothing connects before the first record
    assert [(s.kind, s.spool_path.parent) for s in sinks] == [("opcua", tmp_path), ("modbus", tmp_path)]
    assert sinks[1].register == 12 and sinks[1].unit_id == 0 and sinks[1].coil is None


def test_the_example_recipes_commented_plc_and_genicam_lines_load(tmp_path):
    """Each commented-out opcua/modbus sink and genicam uri in configs/line.example.yaml is valid as written."""
    from pathlib import Path

    lines = (Path(__file__).resolve().parents[1] / "configs/line.example.yaml").read_text().splitlines()
    commented = [i for i, line in enumerate(lines)
                 if line.lstrip().startswith(("# opcua: {", "# modbus: {", '# uri: "genicam://'))]
    assert len(commented) == 4
    loaded = []
    for i in commented:
        variant = list(lines)
        variant[i] = variant[i].replace("# ", "", 1)
        if "genicam" in variant[i]:
            variant = [v for v in variant if not v.startswith("  uri: line.mp4")]
        (tmp_path / "line.yaml").write_text("\n".join(variant))
        recipe = load_recipe(tmp_path / "line.yaml")
        loaded.append(recipe.sinks.opcua or recipe.sinks.modbus or recipe.source.uri)
    assert loaded[0].startswith("genicam://") and "serial=" in loaded[0]
    assert loaded[1].part_id_node == "ns=2;s=Line1.PartId"
    assert (loaded[2].coil, loaded[3].register) == (17, 100)


# -- GenICam ----------------------------------------------------------------------------------------
class FakeBuffer:
    def __init__(self, image: np.ndarray, fmt: str, log: list):
        h, w = image.shape[:2]
        component = types.SimpleNamespace(data=image.reshape(-1), width=w, height=h, data_format=fmt)
        self.payload = types.SimpleNamespace(components=[component])
        self.log = log

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.log.append("queue")  # harvesters' Buffer.__exit__ gives the buffer back to the producer


class FakeAcquirer:
    """ImageAcquirer: start(), try_fetch(timeout=) -> Buffer | None, stop(), destroy()."""

    def __init__(self, plan: list, log: list):
        self.plan, self.log = plan, log

    def start(self):
        self.log.append("start")

    def try_fetch(self, *, timeout: float, is_raw: bool = False):
        step = self.plan.pop(0) if self.plan else "lost"
        if step == "lost":
            raise RuntimeError("GenTL: device lost")
        if step is None:
            time.sleep(min(timeout, 0.01))
            return None  # no trigger yet
        return FakeBuffer(*step, self.log)

    def stop(self):
        self.log.append("stop")

    def destroy(self):
        self.log.append("destroy")


def fake_harvesters(monkeypatch, sessions: list) -> list:
    """Install a fake ``harvesters.core``; each create() gives the next session's acquirer (a list of
    fetch results), or raises when that session is the string "absent". Returns the call log."""
    log: list = []

    class Harvester:
        def __init__(self):
            self.files: list[str] = []

        def add_file(self, file_path: str, check_existence: bool = False, check_validity: bool = False):
            self.files.append(file_path)

        def update(self):
            log.append("update")

        def create(self, search_key=None, *, config=None):
            log.append(("create", search_key))
            session = sessions.pop(0) if sessions else "absent"
            if session == "absent":
                raise ValueError("no device found: provide sufficient search key")
            return FakeAcquirer(session, log)

        def reset(self):
            log.append("reset")

    package = types.ModuleType("harvesters")
    core = types.ModuleType("harvesters.core")
    core.Harvester = Harvester
    package.core = core
    monkeypatch.setitem(sys.modules, "harvesters", package)
    monkeypatch.setitem(sys.modules, "harvesters.core", core)
    return log


def _mono(value: int) -> tuple:
    return np.full((6, 8), value, np.uint8), "Mono8"


def test_genicam_frames_come_through_and_a_lost_camera_reconnects(monkeypatch, tmp_path):
    from promptdet.line.genicam import GenICamSource

    cti = tmp_path / "producer.cti"
    cti.write_bytes(b"")
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[..., 0] = 200  # red in RGB order
    log = fake_harvesters(monkeypatch, [[_mono(1), None, _mono(2), (rgb, "RGB8"), "lost"], "absent", "absent",
                                        [_mono(3)]])
    events = []
    src = GenICamSource(f"genicam://{cti}?serial=A1", Backoff(0.01, 0.02), on_event=events.append,
                        fetch_timeout_s=0.05)
    got = []
    for frame in src.frames():
        got.append(frame.image)
        if len(got) == 4:
            src.stop()
    assert [g.shape for g in got] == [(6, 8, 3)] * 4 and all(g.dtype == np.uint8 for g in got)
    assert [int(g[0, 0, 0]) for g in (got[0], got[1], got[3])] == [1, 2, 3]
    assert got[2][0, 0].tolist() == [0, 0, 200]  # RGB8 became BGR
    assert ("create", {"serial_number": "A1"}) in log and log.count("queue") == 4  # every buffer given back
    assert src.stats.frames == 4 and src.stats.reconnects == 1 and src.stats.downtime_s >= 0.02
    assert [e["event"] for e in events] == ["down", "down", "reconnected"]
    assert "device lost" in events[0]["reason"] and "no device found" in events[1]["reason"]
    assert log[-3:] == ["stop", "destroy", "reset"]  # the camera is released when the line stops


def test_genicam_through_the_recipe_and_open_source(monkeypatch, tmp_path):
    from promptdet.line.run import open_source

    cti = tmp_path / "producer.cti"
    cti.write_bytes(b"")
    fake_harvesters(monkeypatch, [[_mono(7), _mono(8)]])
    recipe = recipe_from_dict(_recipe(source={"uri": f"genicam://{cti}", "reconnect": {"initial_s": 0.01}}))
    stop = threading.Event()
    frames, src = open_source(recipe, stop, None)
    first = next(frames)
    src.stop()
    assert type(src).__name__ == "GenICamSource" and int(first.image[0, 0, 0]) == 7 and first.index == 0


def test_missing_harvesters_is_one_line_with_the_install_hint(monkeypatch, tmp_path):
    from promptdet.line.genicam import GenICamSource

    monkeypatch.setitem(sys.modules, "harvesters", None)  # import harvesters -> ImportError
    monkeypatch.setitem(sys.modules, "harvesters.core", None)
    with pytest.raises(PromptdetError) as err:
        GenICamSource(f"genicam://{tmp_path / 'p.cti'}")
    assert str(err.value) == "the GenICam source needs harvesters: pip install 'harvesters>=1.4'"


def test_genicam_without_a_producer_says_where_to_point(monkeypatch, tmp_path):
    from promptdet.line.genicam import GenICamSource

    fake_harvesters(monkeypatch, [])
    with pytest.raises(UsageError, match="no GenTL producer at"):
        GenICamSource(f"genicam://{tmp_path / 'missing.cti'}")
    monkeypatch.setenv("GENICAM_GENTL64_PATH", str(tmp_path))
    with pytest.raises(UsageError, match="set GENICAM_GENTL64_PATH"):
        GenICamSource("genicam://")
    (tmp_path / "vendor.cti").write_bytes(b"")
    assert GenICamSource("genicam://").cti_files == [str(tmp_path / "vendor.cti")]


@pytest.mark.parametrize("fmt, data, expected_bgr", [
    ("Mono8", np.array([[10, 20]], np.uint8), [[10, 10, 10], [20, 20, 20]]),
    ("Mono12", np.array([[4095, 16]], np.uint16), [[255, 255, 255], [1, 1, 1]]),
    ("RGB8", np.array([[[1, 2, 3], [4, 5, 6]]], np.uint8), [[3, 2, 1], [6, 5, 4]]),
    ("BGR8", np.array([[[1, 2, 3], [4, 5, 6]]], np.uint8), [[1, 2, 3], [4, 5, 6]]),
    ("RGBa8", np.array([[[1, 2, 3, 9], [4, 5, 6, 9]]], np.uint8), [[3, 2, 1], [6, 5, 4]]),
])
def test_to_bgr_table(fmt, data, expected_bgr):
    from promptdet.line.genicam import to_bgr

    out = to_bgr(data.reshape(-1), data.shape[1], data.shape[0], fmt)
    assert out.dtype == np.uint8 and out.tolist() == [expected_bgr]
    assert not np.may_share_memory(out, data)  # the producer reuses its buffer


def test_to_bgr_bayer_and_unsupported():
    from promptdet.line.genicam import to_bgr

    red = np.zeros((4, 4), np.uint8)
    red[0::2, 0::2] = 255  # RGGB: only the R sites lit
    out = to_bgr(red.reshape(-1), 4, 4, "BayerRG8")
    assert out.shape == (4, 4, 3) and out[..., 2].mean() > 100 and out[..., 0].max() == 0
    with pytest.raises(UsageError, match="pixel format YCbCr422_8 is not supported"):
        to_bgr(np.zeros(32, np.uint8), 4, 4, "YCbCr422_8")
    with pytest.raises(ValueError, match="not 5x4 pixels"):
        to_bgr(np.zeros(16, np.uint8), 5, 4, "Mono8")
