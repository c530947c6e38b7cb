"""Fault drill for the inspection line: does any judged part end up without its record?

    python benchmarks/line_faults.py [--parts 60] [--only kill disk broker flood]

Each scenario runs the real line (``promptdet.line.run.inspect_line``: sources, sinks, spool, HTTP
endpoint) with a stand-in model (fixed detections, 20 ms a part), so it needs no export and
measures the line, not the model:

* kill@T: the line is SIGKILLed T seconds in (three moments), then started again on the same
  folder, which delivers every part again (so a part judged before the kill is judged again);
* disk: output on a 2 MB tmpfs (root only), FAIL images on, spool on another disk; then a restart
  with space replays the spool;
* broker-dead / broker-frozen: an MQTT sink to a real mosquitto that is killed (then restarted),
  or SIGSTOPped for 3 s (then SIGCONTed) mid-run;
* flood: trigger software, 200 POST /trigger as fast as they go.

Per scenario: parts judged (distinct part ids), JSONL lines, SQLite rows, spooled, delivered
(distinct part ids in every audit sink, or received by an MQTT subscriber) and lost (judged but in
no record of a sink). Lost must be 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class StandIn:
    """The model's place: one box per part, 20 ms; every judged part id is appended to a log (fsync)."""

    backend, imgsz = "stand-in", 64

    def __init__(self, prompts, log_path: Path | None = None, delay_s: float = 0.02):
        self.prompts, self.log_path, self.delay_s = prompts, log_path, delay_s

    def __call__(self, image, name=None, frame=None, read_ms=0.0, keep_image=True):
        from promptdet.structures import Detections

        time.sleep(self.delay_s)
        if self.log_path is not None and name not in (None, "warm-up"):
            with open(self.log_path, "a") as f:
                f.write(Path(str(name)).stem + "\n")
                f.flush()
                os.fsync(f.fileno())
        return Detections(np.array([[4, 4, 20, 20]], np.float32), np.array([0.9], np.float32), np.zeros(1, np.int64),
                          self.prompts, (image.shape[1], image.shape[0]), name, {"infer": self.delay_s * 1e3}, frame)


def make_parts(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(folder / f"part{i:04d}.png"), rng.integers(0, 255, (120, 160, 3), np.uint8))


def recipe_dict(out: Path, uri: str, **extra) -> dict:
    d = {"version": 1, "model": {"weights": "stand-in"},
         "checks": [{"name": "defect", "prompt": "find the defective parts", "fail_if": "count >= 1"}],
         "source": {"uri": uri, "trigger": "every-frame"},
         "sinks": {"jsonl": {"path": str(out / "results.jsonl"), "fsync": "record"},
                   "sqlite": {"path": str(out / "results.db")}, "spool_dir": str(out / "spool")},
         "deadline_ms": 60000, "stats": {"interval_s": 3600}}
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(d.get(key), dict):
            d[key] = {**d[key], **value}
        else:
            d[key] = value
    return d


def run_line(recipe: dict, log_path: Path | None, max_parts: int | None = None) -> int:
    """inspect_line with the stand-in; returns 0, or 1 when the line reported lost records."""
    from promptdet.errors import PromptdetError
    from promptdet.line import run
    from promptdet.line.recipe import recipe_from_dict

    run.build_predictor = lambda r: StandIn(r.prompts, log_path)
    try:
        run.inspect_line(recipe_from_dict(recipe, "drill"), quiet=not os.environ.get("DRILL_VERBOSE"), max_parts=max_parts)
    except PromptdetError as exc:
        print(f"line: {exc}", file=sys.stderr)
        return 1
    return 0


def child_main(recipe_path: str, log_path: str) -> None:
    sys.exit(run_line(json.loads(Path(recipe_path).read_text()), Path(log_path)))


def start_child(recipe: dict, work: Path) -> subprocess.Popen:
    (work / "recipe.json").write_text(json.dumps(recipe))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, __file__, "--child", str(work / "recipe.json"), str(work / "judged.log")],
                            env=env, stderr=subprocess.DEVNULL)


# ---------------------------------------------------------------- counting
def jsonl_ids(path: Path) -> tuple[int, set[str]]:
    lines = 0
    ids: set[str] = set()
    for p in [path, *path.parent.glob(f"{path.stem}.*{path.suffix}")]:
        if p.is_file():
            for line in p.read_bytes().splitlines():
                try:
                    ids.add(json.loads(line)["part_id"])
                    lines += 1
                except (ValueError, KeyError):
                    pass
    return lines, ids


def sqlite_ids(path: Path) -> tuple[int, set[str]]:
    if not path.is_file():
        return 0, set()
    with sqlite3.connect(path) as con:
        rows = [r[0] for r in con.execute("SELECT part_id FROM results")]
    return len(rows), set(rows)


def spooled(spool: Path) -> int:
    return sum(len(p.read_bytes().splitlines()) for p in spool.glob("*.jsonl")) if spool.is_dir() else 0


def judged_ids(log_path: Path) -> set[str]:
    return set(log_path.read_text().split()) if log_path.is_file() else set()


def row(name: str, judged: set[str], out: Path, delivered_sets: list[set[str]], note: str = "") -> dict:
    jl, jids = jsonl_ids(out / "results.jsonl")
    sq, sids = sqlite_ids(out / "results.db")
    sets = delivered_sets or [jids, sids]
    delivered = set.intersection(*sets) if sets else set()
    return {"scenario": name, "judged": len(judged), "jsonl": jl, "sqlite": sq, "spooled": spooled(out / "spool"),
            "delivered": len(delivered & judged), "lost": len(judged - set.union(*sets)) if sets else len(judged),
            "note": note}


# ---------------------------------------------------------------- scenarios
def scenario_kill(base: Path, parts: int, at_s: float) -> dict:
    work = base / f"kill{at_s:g}"
    work.mkdir()
    make_parts(work / "parts", parts)
    out = work / "out"
    recipe = recipe_dict(out, str(work / "parts"))
    proc = start_child(recipe, work)
    time.sleep(at_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = len(judged_ids(work / "judged.log"))
    rc = start_child(recipe, work).wait(300)  # a restart: the folder delivers every part again
    return row(f"kill@{at_s:g}s", judged_ids(work / "judged.log"), out, [],
               f"{before} judged before the kill; restart exit {rc}")


def scenario_disk(base: Path, parts: int) -> dict:
    if os.geteuid() != 0:
        return {"scenario": "disk", "note": "skipped: mounting a tmpfs needs root"}
    work = base / "disk"
    disk = work / "disk"
    disk.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], check=True)
    try:
        make_parts(work / "parts", parts)
        out = disk
        recipe = recipe_dict(out, str(work / "parts"), sinks={"spool_dir": str(work / "spool"),
                                                             "images": {"dir": str(disk / "fail")}})
        (disk / "ballast").write_bytes(b"\0" * (1536 * 1024))  # the disk is nearly full from the start
        rc1 = run_line(recipe, work / "judged.log")
        during = row("disk", judged_ids(work / "judged.log"), out, [])
        during["spooled"] = spooled(work / "spool")  # the spool is on the other disk
        (disk / "ballast").unlink()
        recipe["source"]["uri"] = str(work / "empty")
        (work / "empty").mkdir()
        rc2 = run_line(recipe, None)  # space again: the restart replays the spool
        jl, jids = jsonl_ids(out / "results.jsonl")
        sq, sids = sqlite_ids(out / "results.db")
        judged = judged_ids(work / "judged.log")
        return {**during,
                "note": f"during the run: JSONL {during['jsonl']}, SQLite {during['sqlite']}, exit {rc1}; after the "
                        f"replay: JSONL {jl}, SQLite {sq}, exit {rc2}",
                "jsonl": jl, "sqlite": sq, "delivered": len(judged & jids & sids), "lost": len(judged - (jids | sids))}
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def start_broker(conf: Path, port: int) -> subprocess.Popen:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    # persistence: the subscriber's session (and the QoS 1 messages queued for it) survive a broker restart
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                    f"persistence_location {conf.parent}/\nautosave_interval 1\n")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("mosquitto did not start")


def subscribe(port: int, got: set[str], counter: list[int]):
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"drill-sub-{port}", clean_session=False)
    client.reconnect_delay_set(0.1, 0.5)

    def on_connect(c, userdata, flags, reason, props):
        c.subscribe("drill/#", qos=1)

    def on_message(c, userdata, msg):
        got.add(json.loads(msg.payload)["part_id"])
        counter[0] += 1

    client.on_connect, client.on_message = on_connect, on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def scenario_broker(base: Path, parts: int, mode: str) -> dict:
    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        return {"scenario": f"broker-{mode}", "note": "skipped: mosquitto is not installed"}
    work = base / f"broker-{mode}"
    work.mkdir()
    make_parts(work / "parts", parts)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    broker = start_broker(work / "m.conf", port)
    got: set[str] = set()
    received = [0]
    sub = subscribe(port, got, received)
    time.sleep(1.5)  # subscribed, and the session saved by the broker
    out = work / "out"
    recipe = recipe_dict(out, str(work / "parts"), sinks={"mqtt": {"host": "127.0.0.1", "port": port,
                                                                   "topic": "drill/verdicts"}})
    line = threading.Thread(target=run_line, args=(recipe, work / "judged.log"))
    line.start()
    time.sleep(0.5)
    if mode == "dead":  # dead until the run ends: the sink must spool, and the restart replay
        broker.kill()
        broker.wait()
        line.join()
        broker = start_broker(work / "m.conf", port)
    else:
        broker.send_signal(signal.SIGSTOP)
        time.sleep(3.0)
        broker.send_signal(signal.SIGCONT)
        line.join()
    time.sleep(1.5)  # the subscriber reconnects and subscribes again (a clean session misses what came before)
    # what the MQTT sink spooled while the broker was away is replayed by a restart (or within 5 s)
    was_spooled = spooled(out / "spool")
    (work / "empty").mkdir()
    recipe["source"]["uri"] = str(work / "empty")
    run_line(recipe, None)
    time.sleep(1.0)
    sub.loop_stop()
    sub.disconnect()
    broker.terminate()
    broker.wait()
    judged = judged_ids(work / "judged.log")
    r = row(f"broker-{mode}", judged, out, [])
    return {**r, "spooled": was_spooled, "delivered": len(judged & got), "lost": len(judged - got),
            "note": f"MQTT: {received[0]} messages received, {len(got)} distinct parts"
                    + (f"; missing {min(judged - got)}..{max(judged - got)}" if judged - got else "")}


def scenario_flood(base: Path) -> dict:
    work = base / "flood"
    work.mkdir()
    make_parts(work / "parts", 40)  # a watched folder: parts keep their frames, later triggers wait for one
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = work / "out"
    recipe = recipe_dict(out, str(work / "parts"), source={"uri": str(work / "parts"), "trigger": "software"},
                         stats={"port": port, "interval_s": 3600}, deadline_ms=500)
    stop_after: list[int] = []
    codes: list[int] = []

    def flood():
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        for i in range(200):
            req = urllib.request.Request(f"http://127.0.0.1:{port}/trigger?part_id=T{i:03d}", data=b"", method="POST")
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    codes.append(r.status)
            except urllib.error.HTTPError as exc:
                codes.append(exc.code)
        stop_after.append(codes.count(202))

    threading.Thread(target=flood, daemon=True).start()
    from promptdet.line import run
    from promptdet.line.recipe import recipe_from_dict

    run.build_predictor = lambda r: StandIn(r.prompts, work / "judged.log")
    stopper = threading.Thread(target=lambda: (time.sleep(12), os.kill(os.getpid(), signal.SIGINT)), daemon=True)
    stopper.start()
    try:
        run.inspect_line(recipe_from_dict(recipe, "drill"), quiet=True)
    except Exception as exc:  # noqa: BLE001 - reported in the table
        print(f"flood: {exc}", file=sys.stderr)
    _, jids = jsonl_ids(out / "results.jsonl")
    accepted = {f"T{i:03d}" for i, c in enumerate(codes) if c == 202}
    return {**row("flood", accepted, out, []), "judged": len(accepted), "lost": len(accepted - jids),
            "delivered": len(accepted & jids),
            "note": f"{codes.count(202)} triggers accepted (202), {codes.count(503)} refused (503) of {len(codes)}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", type=int, default=100)
    ap.add_argument("--only", nargs="*", default=["kill", "disk", "broker", "flood"])
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_main(*args.child)
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="promptdet-faults-") as tmp:
        base = Path(tmp)
        if "kill" in args.only:
            rows += [scenario_kill(base, args.parts, t) for t in (0.8, 1.5, 2.2)]
        if "disk" in args.only:
            rows.append(scenario_disk(base, 150))
        if "broker" in args.only:
            rows += [scenario_broker(base, args.parts, m) for m in ("dead", "frozen")]
        if "flood" in args.only:
            rows.append(scenario_flood(base))
    cols = ["scenario", "judged", "jsonl", "sqlite", "spooled", "delivered", "lost"]
    print("| " + " | ".join(cols) + " | note |")
    print("|" + "---|" * (len(cols) + 1))
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "-")) for c in cols) + f" | {r.get('note', '')} |")
    lost = sum(r.get("lost", 0) for r in rows)
    print(f"lost in all: {lost}")
    sys.exit(1 if lost else 0)


if __name__ == "__main__":
    main()
