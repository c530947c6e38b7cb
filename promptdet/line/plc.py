"""Verdicts to a PLC: an OPC UA variable (asyncua) or a Modbus TCP coil or holding register (pymodbus).

Both are ``Sink`` subclasses, so they get the same contract as every other sink: their own bounded
queue and thread, retries with back-off, a disk spool on failure and replay at the next start, and
a connection opened lazily on the worker thread and reopened after any failure. Each part's verdict
is written in order, one request per part, so the tag holds the newest part's verdict.

Verdict values:

=========================  ======  ======  =======
target                      PASS    FAIL    ERROR
=========================  ======  ======  =======
OPC UA String variable      "PASS"  "FAIL"  "ERROR"
OPC UA Boolean variable     false   true    true
OPC UA numeric variable     0       1       2
Modbus coil                 0       1       1
Modbus holding register     0       1       2
=========================  ======  ======  =======

An ERROR part is never written as a pass: a coil or Boolean cannot say ERROR, so it says FAIL.
"""

from __future__ import annotations

import inspect

from promptdet.errors import PromptdetError
from promptdet.line.sinks import Sink, _require

VERDICT_CODES = {"PASS": 0, "FAIL": 1, "ERROR": 2}


def _verdict(record: dict) -> str:
    verdict = record.get("verdict") if isinstance(record, dict) else None
    if verdict not in VERDICT_CODES:
        raise ValueError(f"verdict must be one of {', '.join(VERDICT_CODES)}, got {verdict!r}")
    return verdict


class OpcuaSink(Sink):
    """Writes each verdict to the OPC UA variable ``node`` in that node's data type (see the module
    table), and the part id to ``part_id_node`` (a String variable) in the same Write request.

    The data type is read once per connection, so the recipe never has to repeat what the PLC
    programmer declared. Values are written without timestamps: some PLCs refuse a client's timestamp.
    """

    kind = "opcua"

    def __init__(self, endpoint: str, node: str, part_id_node: str | None = None, timeout_s: float = 4.0,
                 **kwargs):
        _require("asyncua", "OPC UA sink", "asyncua>=1.1")
        if not endpoint.startswith("opc.tcp://"):
            raise PromptdetError(f"opcua sink: endpoint must start with opc.tcp://, got {endpoint!r}")
        super().__init__(**kwargs)
        self.endpoint, self.node_id, self.part_id_node_id, self.timeout_s = endpoint, node, part_id_node, timeout_s
        self._client = None
        self._nodes: list = []
        self._verdict_type = None
        self._convert = None

    def prepare(self, record: dict) -> tuple[str, str]:
        return _verdict(record), str(record.get("part_id", ""))

    def _connect(self) -> None:
        from asyncua import ua
        from asyncua.sync import Client

        # The sync client runs asyncua's event loop on its own thread, so its keep-alive and
        # secure-channel renewal keep running between parts; a request waits at most timeout_s.
        client = Client(self.endpoint, timeout=self.timeout_s, sync_wrapper_timeout=3 * self.timeout_s + 5)
        try:
            client.connect()
            node = client.get_node(self.node_id)
            vtype = node.read_data_type_as_variant_type()
            convert = _opcua_converter(vtype)
            if convert is None:
                raise PromptdetError(f"opcua sink: node {self.node_id} is a {vtype.name} variable; make it String, "
                                     f"Boolean or a numeric type to hold the verdict")
            nodes = [node]
            if self.part_id_node_id is not None:
                id_node = client.get_node(self.part_id_node_id)
                id_type = id_node.read_data_type_as_variant_type()
                if id_type != ua.VariantType.String:
                    raise PromptdetError(f"opcua sink: part_id_node {self.part_id_node_id} is a {id_type.name} "
                                         f"variable; it must be String")
                nodes.insert(0, id_node)  # first in the request: the id is there when the verdict changes
        except BaseException:
            _close_opcua(client)
            raise
        self._client, self._nodes, self._verdict_type, self._convert = client, nodes, vtype, convert

    def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            _close_opcua(client)

    def write(self, payloads: list) -> None:
        from asyncua import ua

        while payloads:
            verdict, part_id = payloads[0]
            value = ua.Variant(self._convert(verdict), self._verdict_type)
            values = [ua.DataValue(value)]  # no SourceTimestamp: some servers reject a client's timestamp
            if len(self._nodes) == 2:
                values.insert(0, ua.DataValue(ua.Variant(part_id, ua.VariantType.String)))
            self._client.write_values(self._nodes, values)  # raises on a bad status for either node
            del payloads[0]


def _close_opcua(client) -> None:
    try:
        client.disconnect()
    except Exception:  # noqa: BLE001 - the server is gone; disconnect() still stops the client's own thread
        pass


def _opcua_converter(vtype):
    """verdict -> value for a variable of VariantType ``vtype`` (see the module table), or None."""
    from asyncua import ua

    t = ua.VariantType
    if vtype == t.String:
        return str
    if vtype == t.Boolean:
        return lambda verdict: verdict != "PASS"
    if vtype in (t.SByte, t.Byte, t.Int16, t.UInt16, t.Int32, t.UInt32, t.Int64, t.UInt64):
        return VERDICT_CODES.__getitem__
    if vtype in (t.Float, t.Double):
        return lambda verdict: float(VERDICT_CODES[verdict])
    return None


class ModbusSink(Sink):
    """Writes each verdict to one coil (FAIL and ERROR = 1, PASS = 0) or one holding register
    (PASS 0, FAIL 1, ERROR 2) of a Modbus TCP server; addresses are 0-based protocol addresses."""

    kind = "modbus"

    def __init__(self, host: str, port: int = 502, coil: int | None = None, register: int | None = None,
                 unit_id: int = 1, timeout_s: float = 2.0, **kwargs):
        _require("pymodbus.client", "Modbus sink", "pymodbus>=3.6")
        if (coil is None) == (register is None):
            raise PromptdetError("modbus sink: set exactly one of coil or register")
        super().__init__(**kwargs)
        self.host, self.port, self.coil, self.register = host, port, coil, register
        self.unit_id, self.timeout_s = unit_id, timeout_s
        self._client = None
        self._unit_kw = "device_id"

    def prepare(self, record: dict) -> int:
        code = VERDICT_CODES[_verdict(record)]
        return int(code != 0) if self.coil is not None else code

    def _connect(self) -> None:
        from pymodbus.client import ModbusTcpClient

        # pymodbus' own retries stay off: the sink retries with back-off and spools, and a dead PLC
        # must not hold a batch for retries x timeout seconds first.
        client = ModbusTcpClient(self.host, port=self.port, timeout=self.timeout_s, retries=0)
        if not client.connect():
            client.close()
            raise ConnectionError(f"cannot connect to Modbus TCP {self.host}:{self.port}")
        # pymodbus 3.10 renamed the unit id argument from slave to device_id
        params = inspect.signature(client.write_coil).parameters
        self._unit_kw = "device_id" if "device_id" in params else "slave"
        self._client = client

    def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def write(self, payloads: list) -> None:
        unit = {self._unit_kw: self.unit_id}
        while payloads:
            if self.coil is not None:
                response = self._client.write_coil(self.coil, bool(payloads[0]), **unit)
            else:
                response = self._client.write_register(self.register, payloads[0], **unit)
            if response is None or response.isError():
                target = f"coil {self.coil}" if self.coil is not None else f"register {self.register}"
                raise OSError(f"Modbus write of {target} on {self.host}:{self.port} unit {self.unit_id} "
                              f"failed: {response}")
            del payloads[0]


def build_plc_sinks(spec, **kwargs) -> list[Sink]:
    """The OPC UA and Modbus sinks that a recipe's ``sinks`` section names."""
    sinks: list[Sink] = []
    if spec.opcua:
        o = spec.opcua
        sinks.append(OpcuaSink(o.endpoint, o.node, o.part_id_node, o.timeout_s, **kwargs))
    if spec.modbus:
        m = spec.modbus
        sinks.append(ModbusSink(m.host, m.port, m.coil, m.register, m.unit_id, m.timeout_s, **kwargs))
    return sinks

