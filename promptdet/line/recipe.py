"""The line recipe: what `promptdet inspect --config line.yaml` runs, as typed dataclasses.

YAML is only its file form. Unknown keys, wrong types and bad values fail at load time with the file
and the key path (``line.yaml: checks[1].fail_if: ...``), so a typo never reaches the line.
Relative paths (weights, source, sink files) are taken from the working directory, like every other
promptdet command. ``configs/line.example.yaml`` documents every field.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, get_type_hints


from promptdet.config import ConfigError, from_dict, read_yaml, short
from promptdet.limits import IMAGES_MIN_FREE_MB, MAX_PROMPTS
from promptdet.line.rules import ROI_MODES, Rule, RuleError, parse_rule

RECIPE_VERSION = 1
BACKENDS = ("auto", "torch", "onnx")
SOURCE_KINDS = ("auto", "video", "camera", "folder", "genicam")
TRIGGERS = ("free-run", "every-frame", "software")
FSYNC_MODES = ("record", "batch")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# OPC UA NodeId text (Part 6, 5.3.1.10): an optional ns=<index>; or nsu=<uri>; then i=, s=, g= or b=.
_NODE_ID = re.compile(r"^((ns=\d+|nsu=[^;]+);)?[isgb]=.+$")


@dataclass
class ModelSpec:
    """weights: checkpoint, run folder or ONNX export folder (None = the bundled model).
    provider: onnxruntime execution provider (None = the best available). imgsz None = training size;
    a list of sizes runs the model at each and merges the boxes of each prompt (see ``sizes``).
    detector: another detector graph of the export folder, e.g. ``detector_int8.onnx`` from
    ``promptdet export --int8`` (None = the export's default graph; ONNX backend only)."""

    weights: str | None = None
    backend: str = "auto"
    provider: str | None = None
    detector: str | None = None
    imgsz: int | list[int] | None = None
    conf: float = 0.25

    @property
    def sizes(self) -> list[int | None]:
        """The inference sizes, one or more (None = the training size)."""
        return list(self.imgsz) if isinstance(self.imgsz, list) else [self.imgsz]


@dataclass
class CheckSpec:
    """One question asked of every part. roi: [x1, y1, x2, y2] in frame pixels; a detection counts
    when its centre is inside (roi_mode "centre") or when all of it is ("inside"). conf: this
    check's score threshold (None = model.conf)."""

    name: str
    prompt: str
    fail_if: str
    roi: list[float] | None = None
    roi_mode: str = "centre"
    conf: float | None = None

    @cached_property
    def rule(self) -> Rule:
        return parse_rule(self.fail_if, self.name)


@dataclass
class ReconnectSpec:
    """Back-off between reopen attempts of a lost camera or stream: doubles from initial_s up to max_s."""

    initial_s: float = 1.0
    max_s: float = 30.0


@dataclass
class SourceSpec:
    """uri: video path, camera index, rtsp/http URL, GStreamer pipeline string, a folder to watch, or a
    GenICam camera through a GenTL producer: genicam://<producer .cti path>[?serial=...] (kind genicam)."""

    uri: str | int
    kind: str = "auto"
    trigger: str = "every-frame"
    reconnect: ReconnectSpec = field(default_factory=ReconnectSpec)


@dataclass
class JsonlSinkSpec:
    """fsync 'record' survives power loss per part; 'batch' syncs once per written batch (faster).
    rotate_mb: start a new file past this size (0 = never)."""

    path: str
    fsync: str = "batch"
    rotate_mb: float = 100.0


@dataclass
class SqliteSinkSpec:
    path: str


@dataclass
class ImagesSinkSpec:
    """Annotated images of FAIL parts only; the oldest are deleted past max_files. Below min_free_mb
    of free space on their disk they are skipped, so the audit records (JSONL, SQLite) keep the space."""

    dir: str
    max_files: int = 1000
    min_free_mb: float = IMAGES_MIN_FREE_MB


@dataclass
class MqttSinkSpec:
    host: str
    port: int = 1883
    topic: str = "promptdet/verdicts"
    qos: int = 1


@dataclass
class WebhookSinkSpec:
    url: str
    timeout_s: float = 2.0


@dataclass
class OpcuaSinkSpec:
    """Writes each part's verdict to the variable ``node`` (NodeId text, e.g. "ns=2;s=Line1.Verdict") in the
    node's own data type: String "PASS"/"FAIL"/"ERROR", Boolean true = FAIL or ERROR, a number 0 PASS,
    1 FAIL, 2 ERROR. part_id_node: a String variable that gets the part id in the same write request, so
    the PLC can tell two equal verdicts in a row apart. timeout_s: per request."""

    endpoint: str
    node: str
    part_id_node: str | None = None
    timeout_s: float = 4.0


@dataclass
class ModbusSinkSpec:
    """Writes the verdict to exactly one coil (1 = FAIL or ERROR, 0 = PASS) or holding register
    (0 PASS, 1 FAIL, 2 ERROR) of the Modbus TCP server at host:port. Addresses are 0-based protocol
    addresses (coil 17 is the 18th coil, "00018" in 1-based PLC notation). unit_id: the device (slave) id."""

    host: str
    port: int = 502
    coil: int | None = None
    register: int | None = None
    unit_id: int = 1
    timeout_s: float = 2.0


@dataclass
class SinksSpec:
    """Where verdicts go; each is optional. spool_dir keeps what a sink could not deliver, for replay."""

    jsonl: JsonlSinkSpec | None = None
    sqlite: SqliteSinkSpec | None = None
    images: ImagesSinkSpec | None = None
    mqtt: MqttSinkSpec | None = None
    webhook: WebhookSinkSpec | None = None
    opcua: OpcuaSinkSpec | None = None
    modbus: ModbusSinkSpec | None = None
    spool_dir: str = "runs/line/spool"


@dataclass
class StatsSpec:
    """port: serve /health and /metrics on it (None = off; opt-in). interval_s: log a stats line this often.
    token: POST /trigger then needs the header 'Authorization: Bearer <token>' (None = no token)."""

    port: int | None = None
    interval_s: float = 10.0
    token: str | None = None


@dataclass
class LineRecipe:
    version: int
    checks: list[CheckSpec]
    source: SourceSpec
    model: ModelSpec = field(default_factory=ModelSpec)
    sinks: SinksSpec = field(default_factory=SinksSpec)
    deadline_ms: float = 500.0
    stats: StatsSpec = field(default_factory=StatsSpec)
    file: str = ""  # where it was read from; set by the loader, not in YAML

    @property
    def prompts(self) -> list[str]:
        """The checks' prompts in check order: prompt i belongs to checks[i]."""
        return [c.prompt for c in self.checks]


def load_recipe(path: str | Path) -> LineRecipe:
    """Read and validate a line recipe YAML; raises ConfigError naming the file and the key."""
    path = Path(path)
    recipe = recipe_from_dict(read_yaml(path, "line recipe"), str(path))
    recipe.file = str(path)
    return recipe


def recipe_from_dict(data: Any, where: str = "recipe") -> LineRecipe:
    """Build and validate a LineRecipe from a plain mapping (the parsed YAML)."""
    if isinstance(data, dict) and "version" in data and data["version"] != RECIPE_VERSION:
        # Checked before the keys: a newer recipe's unknown keys would hide the real problem.
        raise ConfigError(f"{where}: version: recipe version {short(data['version'])} is not supported "
                          f"(this promptdet reads version {RECIPE_VERSION})")
    recipe = _build(LineRecipe, data, where, "")
    _validate(recipe, where)
    return recipe


def _where(file: str, keys: str) -> str:
    return f"{file}: {keys}" if keys else file


def _optional_of(hint):
    """For ``X | None`` return X, else None."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and type(None) in typing.get_args(hint):
            return args[0]
    return None


def _build(cls, data: Any, file: str, keys: str):
    """from_dict for nested dataclasses: sub-mappings and lists of them are built first, and the
    optional scalars that from_dict does not type-check are checked here."""
    if not isinstance(data, dict):
        return from_dict(cls, data, _where(file, keys))  # raises 'expected a mapping'
    hints = get_type_hints(cls)
    data = dict(data)
    for f in dataclasses.fields(cls):
        if f.name not in data or f.name == "file":
            continue
        key = f"{keys}.{f.name}" if keys else f.name
        value, hint = data[f.name], hints[f.name]
        inner = _optional_of(hint) or hint
        if dataclasses.is_dataclass(inner):
            if value is None and inner is not hint:
                continue
            if value is None:  # an empty section in YAML ('reconnect:') means the defaults
                value = {}
            data[f.name] = _build(inner, value, file, key)
        elif typing.get_origin(inner) is list and dataclasses.is_dataclass(typing.get_args(inner)[0]):
            if not isinstance(value, list):
                raise ConfigError(f"{_where(file, key)}: expected a list, got {short(value)}")
            item_cls = typing.get_args(inner)[0]
            data[f.name] = [_build(item_cls, v, file, f"{key}[{i}]") for i, v in enumerate(value)]
        elif value is not None and inner is not hint:
            _check_scalar(inner, value, _where(file, key))
    return from_dict(cls, data, _where(file, keys))


def _check_scalar(hint, value, where: str) -> None:
    bad_number = isinstance(value, bool) or not isinstance(value, (int, float))
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where}: expected an integer, got {short(value)}")
    if hint is float and bad_number:
        raise ConfigError(f"{where}: expected a number, got {short(value)}")
    if hint is str and not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {short(value)}")
    if typing.get_origin(hint) is list:
        if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
            raise ConfigError(f"{where}: expected a list of numbers, got {short(value)}")


def _choice(value: str, choices: tuple[str, ...], where: str) -> None:
    if value not in choices:
        raise ConfigError(f"{where}: unknown value {short(value)} (valid: {', '.join(choices)})")


def _positive(value: float | None, where: str, allow_zero: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise ConfigError(f"{where}: must be {'zero or more' if allow_zero else 'positive'}, got {value}")


def _validate(r: LineRecipe, file: str) -> None:
    w = lambda keys: _where(file, keys)
    m = r.model
    _choice(m.backend, BACKENDS, w("model.backend"))
    if m.detector is not None and (m.backend == "torch" or Path(m.detector).name != m.detector):
        raise ConfigError(f"{w('model.detector')}: a file name inside the ONNX export folder that model.weights "
                          f"names (e.g. detector_int8.onnx), for backend onnx or auto; got {short(m.detector)} with "
                          f"backend {m.backend}")
    if m.imgsz is not None:  # None: the training size
        if not m.sizes or any(isinstance(s, bool) or not isinstance(s, int) for s in m.sizes):
            raise ConfigError(f"{w('model.imgsz')}: expected an integer or a list of integers, got {short(m.imgsz)}")
        for s in m.sizes:
            if s % 32 or s < 64:
                raise ConfigError(f"{w('model.imgsz')}: must be a multiple of 32 and at least 64, got {s}")
        if len(set(m.sizes)) != len(m.sizes):
            raise ConfigError(f"{w('model.imgsz')}: a size is listed twice in {m.imgsz}")
    if not 0.0 <= m.conf <= 1.0:
        raise ConfigError(f"{w('model.conf')}: must be in 0-1, got {m.conf}")

    if not r.checks:
        raise ConfigError(f"{w('checks')}: a recipe needs at least one check")
    if len(r.checks) > MAX_PROMPTS:
        raise ConfigError(f"{w('checks')}: {len(r.checks)} checks; at most {MAX_PROMPTS} (each is a prompt)")
    seen: set[str] = set()
    for i, c in enumerate(r.checks):
        at = f"checks[{i}]"
        if not _IDENTIFIER.match(c.name):
            # Names become SQL/JSON keys, metric labels and MQTT topic parts, so keep them plain.
            raise ConfigError(f"{w(at + '.name')}: {short(c.name)} must be identifier-like (letters, digits, '_'; "
                              f"not starting with a digit), e.g. missing_cap")
        if c.name in seen:
            raise ConfigError(f"{w(at + '.name')}: duplicate check name {short(c.name)}; each check needs its own name")
        seen.add(c.name)
        if "\0" in c.prompt:
            raise ConfigError(f"{w(at + '.prompt')}: contains a NUL character; remove it")
        if not c.prompt.strip():
            raise ConfigError(f"{w(at + '.prompt')}: check {short(c.name)} needs a non-empty prompt")
        try:
            c.rule  # noqa: B018 - parsing now turns a bad rule into a load-time error
        except RuleError as exc:
            raise ConfigError(f"{w(at + '.fail_if')}: {exc}") from None
        if c.roi is not None:
            if len(c.roi) != 4:
                raise ConfigError(f"{w(at + '.roi')}: expected [x1, y1, x2, y2], got {short(c.roi)}")
            x1, y1, x2, y2 = c.roi
            if x1 < 0 or y1 < 0 or x2 <= x1 or y2 <= y1:
                raise ConfigError(f"{w(at + '.roi')}: needs 0 <= x1 < x2 and 0 <= y1 < y2 (frame pixels), "
                                  f"got {short(c.roi)}")
        if c.roi_mode not in ROI_MODES:
            raise ConfigError(f"{w(at + '.roi_mode')}: must be one of {', '.join(ROI_MODES)}, got {short(c.roi_mode)}")
        if c.conf is not None and not 0.0 <= c.conf <= 1.0:
            raise ConfigError(f"{w(at + '.conf')}: must be in 0-1, got {c.conf}")

    s = r.source
    if isinstance(s.uri, bool) or not isinstance(s.uri, (str, int)) or (isinstance(s.uri, str) and not s.uri.strip()):
        raise ConfigError(f"{w('source.uri')}: expected a path, URL, pipeline or camera index, got {short(s.uri)}")
    _choice(s.kind, SOURCE_KINDS, w("source.kind"))
    _validate_genicam(s, w)
    _choice(s.trigger, TRIGGERS, w("source.trigger"))
    _positive(s.reconnect.initial_s, w("source.reconnect.initial_s"))
    if s.reconnect.max_s < s.reconnect.initial_s:
        raise ConfigError(f"{w('source.reconnect.max_s')}: must be at least initial_s ({s.reconnect.initial_s})")

    k = r.sinks
    if k.jsonl:
        _choice(k.jsonl.fsync, FSYNC_MODES, w("sinks.jsonl.fsync"))
        _positive(k.jsonl.rotate_mb, w("sinks.jsonl.rotate_mb"), allow_zero=True)
    if k.images:
        _positive(k.images.max_files, w("sinks.images.max_files"))
        _positive(k.images.min_free_mb, w("sinks.images.min_free_mb"), allow_zero=True)
    if k.mqtt:
        _port(k.mqtt.port, w("sinks.mqtt.port"))
        if k.mqtt.qos not in (0, 1, 2):
            raise ConfigError(f"{w('sinks.mqtt.qos')}: must be 0, 1 or 2, got {k.mqtt.qos}")
    if k.webhook:
        if not k.webhook.url.startswith(("http://", "https://")):
            raise ConfigError(f"{w('sinks.webhook.url')}: must start with http:// or https://, got {short(k.webhook.url)}")
        _positive(k.webhook.timeout_s, w("sinks.webhook.timeout_s"))
    if k.opcua:
        if not k.opcua.endpoint.startswith("opc.tcp://"):
            raise ConfigError(f"{w('sinks.opcua.endpoint')}: must start with opc.tcp://, got {short(k.opcua.endpoint)}")
        for key in ("node", "part_id_node"):
            node = getattr(k.opcua, key)
            if node is not None and not _NODE_ID.match(node):
                raise ConfigError(f"{w('sinks.opcua.' + key)}: {short(node)} is not an OPC UA NodeId; write it like "
                                  f"'ns=2;s=Line1.Verdict' or 'ns=3;i=1001'")
        if k.opcua.part_id_node == k.opcua.node:
            raise ConfigError(f"{w('sinks.opcua.part_id_node')}: must be a different node from 'node'")
        _positive(k.opcua.timeout_s, w("sinks.opcua.timeout_s"))
    if k.modbus:
        _port(k.modbus.port, w("sinks.modbus.port"))
        if (k.modbus.coil is None) == (k.modbus.register is None):
            raise ConfigError(f"{w('sinks.modbus')}: set exactly one of 'coil' or 'register'")
        key = "coil" if k.modbus.coil is not None else "register"
        address = getattr(k.modbus, key)
        if not 0 <= address <= 65535:
            raise ConfigError(f"{w('sinks.modbus.' + key)}: must be a 0-based Modbus address (0-65535), got {address}")
        if not 0 <= k.modbus.unit_id <= 255:
            raise ConfigError(f"{w('sinks.modbus.unit_id')}: must be 0-255, got {k.modbus.unit_id}")
        _positive(k.modbus.timeout_s, w("sinks.modbus.timeout_s"))

    if not r.deadline_ms > 0:
        raise ConfigError(f"{w('deadline_ms')}: must be positive, got {r.deadline_ms}")
    if r.stats.port is not None:
        _port(r.stats.port, w("stats.port"))
    _positive(r.stats.interval_s, w("stats.interval_s"))


def _validate_genicam(s: SourceSpec, w) -> None:
    """A genicam:// uri and kind genicam go together, and the uri's query names known device keys."""
    is_genicam = isinstance(s.uri, str) and s.uri.startswith("genicam://")
    if s.kind == "genicam" and not isinstance(s.uri, str):
        raise ConfigError(f"{w('source.uri')}: kind genicam needs genicam://<producer .cti path>[?serial=...], "
                          f"got {short(s.uri)}")
    if is_genicam and s.kind not in ("auto", "genicam"):
        raise ConfigError(f"{w('source.kind')}: a genicam:// uri needs kind genicam or auto, got {short(s.kind)}")
    if is_genicam or s.kind == "genicam":
        from promptdet.line.genicam import parse_genicam_uri  # no harvesters import: only the uri syntax

        try:
            parse_genicam_uri(s.uri)
        except ValueError as exc:
            raise ConfigError(f"{w('source.uri')}: {exc}") from None


def _port(port: int, where: str) -> None:
    if not 1 <= port <= 65535:
        raise ConfigError(f"{where}: must be a TCP port (1-65535), got {port}")
