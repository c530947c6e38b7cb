"""Mutation testing, module by module: how many planted bugs the tests catch.

    nice -n 19 python tools/mutate.py                     # every module below (about half an hour on 2 cores)
    nice -n 19 python tools/mutate.py text/cache line/rules

Each module is mutated by mutmut in a scratch copy of the checkout (--work, one folder per module, so
runs never share state and the checkout stays clean), with only the test files that cover it;
mutmut then runs, for each mutant, only the tests that reach the mutated function. It prints
killed / survived / score per module, score = killed / (killed + survived); a mutant no test reaches
counts as survived; one whose tests run past mutmut's time limit is shown apart, out of the score. Run it on demand, not in CI: `mutmut browse` in a module's folder shows each
surviving mutant's diff.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# module -> (files to mutate, the test files that cover them)
MODULES = {
    "runtime/preprocess": (["promptdet/runtime/preprocess.py"], ["tests/test_preprocess.py"]),
    "runtime/postprocess": (["promptdet/runtime/postprocess.py"], ["tests/test_postprocess.py"]),
    # not the test that loads the bundled model at two sizes: seconds per mutant for what the stand-ins cover
    "runtime/multiscale": (["promptdet/runtime/multiscale.py"],
                           ["tests/test_line_multiscale.py", "-k", "not bundled_model"]),
    "line/rules": (["promptdet/line/rules.py"], ["tests/test_line_rules.py"]),
    "line/sinks": (["promptdet/line/sinks.py"], ["tests/test_line_sinks.py", "tests/test_line_sink_writers.py"]),
    "train/evaluate": (["promptdet/train/evaluate.py"], ["tests/test_evaluate.py"]),
    "data/formats": (["promptdet/data/formats/*"],
                     ["tests/test_formats.py", "tests/test_formats_messages.py", "tests/test_jsonl.py"]),
    "data/synth/instruct": (["promptdet/data/synth/instruct.py"],
                            ["tests/test_instructions.py", "tests/test_logic_instructions.py",
                             "tests/test_user_vocab.py", "tests/test_empty_answers.py"]),
    # stand-ins for the export and the torch model: test_export.py exports a real model per run
    "export/verify": (["promptdet/export/verify.py"], ["tests/test_export_parity.py"]),
    # the cache's own tests: the encoder tests that also use it load MiniLM, slow enough per mutant to
    # run past mutmut's time limit
    "text/cache": (["promptdet/text/cache.py"], ["tests/test_text.py", "-k", "test_cache_ and not hit"]),
}


def _copy_checkout(dst: Path) -> None:
    """The tracked and the untracked-but-not-ignored files: what a clean clone plus your edits holds."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


def _config(mutate: list[str], tests: list[str], top_level: list[str]) -> str:
    def toml_list(items):
        return "[" + ", ".join(json.dumps(i) for i in items) + "]"

    return (
            "[tool.mutmut]\n"
            'source_paths = ["promptdet"]\n'
            f"only_mutate = {toml_list(mutate)}\n"
            f"pytest_add_cli_args_test_selection = {toml_list(tests)}\n"
            'pytest_add_cli_args = ["-p", "no:cacheprovider"]\n'
            f"also_copy = {toml_list(top_level)}\n")


def run_module(name: str, work: Path, max_children: int) -> dict:
    mutate, tests = MODULES[name]
    folder = work / name.replace("/", "-")
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    _copy_checkout(folder)
    # mutmut reads [tool.mutmut] from pyproject.toml; the copy's gets this module's section
    top_level = sorted(p.name for p in folder.iterdir() if p.name not in ("promptdet", "tests", "mutants"))
    pyproject = folder / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + "\n" + _config(mutate, tests, top_level))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    t0 = time.time()
    log = (folder / "mutmut.log").open("w")
    subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children)], cwd=folder,
                   env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    subprocess.run([sys.executable, "-m", "mutmut", "export-cicd-stats"], cwd=folder, env=env, stdout=log,
                   stderr=subprocess.STDOUT, check=False)
    stats_file = folder / "mutants" / "mutmut-cicd-stats.json"
    stats = json.loads(stats_file.read_text()) if stats_file.is_file() else {}
    stats["minutes"] = round((time.time() - t0) / 60, 1)
    stats["folder"] = str(folder)
    return stats


def line(name: str, s: dict) -> str:
    if "killed" not in s:
        return f"{name:<22} no result (see {s['folder']}/mutmut.log)"
    # a mutant whose tests ran past mutmut's time limit is left out of the score, and shown apart
    killed = s["killed"]
    survived = s["survived"] + s.get("no_tests", 0)
    done = killed + survived
    score = f"{100 * killed / done:5.1f}%" if done else "  -  "
    other = {k: s[k] for k in ("suspicious", "skipped", "segfault") if s.get(k)}
    return (f"{name:<22} killed {killed:>4} ({s.get('timeout', 0)} by timeout)  survived {survived:>4} "
            f"(no test {s.get('no_tests', 0)})  score {score}  {other or ''}  {s['minutes']} min")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("modules", nargs="*", help=f"default: all of {', '.join(MODULES)}")
    ap.add_argument("--work", type=Path, default=Path("/tmp/promptdet-mutate"), help="scratch folder")
    ap.add_argument("--max-children", type=int, default=2, help="mutants tested at once")
    args = ap.parse_args()
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        ap.error(f"unknown module {', '.join(unknown)} (known: {', '.join(MODULES)})")
    results = {}
    for name in args.modules or list(MODULES):
        results[name] = run_module(name, args.work, args.max_children)
        print(line(name, results[name]), flush=True)
    (args.work / "scores.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
