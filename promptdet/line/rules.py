"""Pass/fail rules and verdicts for one inspected part.

A check's ``fail_if`` is a tiny boolean language over what the model found for that check::

    count >= 1
    count == 0 or max_score < 0.4
    not (count >= 2 and max_score > 0.9)

Names: ``count`` (detections left after the conf and ROI filters) and ``max_score`` (their best
score, 0.0 when there are none). Operators: ``>= > <= < == !=``, ``and``, ``or``, ``not``,
parentheses. Numbers are integers or decimals. It is parsed by hand into a small tree, never
``eval``: a recipe comes from a file that anyone on the line may edit, and must not run code.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Sequence, Union

import numpy as np

from promptdet.errors import PromptdetError

VARIABLES = ("count", "max_score")
COMPARISONS = (">=", "<=", "==", "!=", ">", "<")
MAX_RULE_CHARS = 200  # a rule is one line in a recipe; anything longer is a mistake, not a rule
VERDICTS = ("PASS", "FAIL", "ERROR")
TIMEOUT = "timeout"
UNFAMILIAR = "unfamiliar"  # the frame is unlike the training images: the model cannot judge it

_TOKEN = re.compile(r"\s*(?:(?P<num>\d+(?:\.\d*)?|\.\d+)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
                    r"|(?P<op>>=|<=|==|!=|>|<)|(?P<paren>[()]))")


class RuleError(PromptdetError):
    """A ``fail_if`` that cannot be parsed; the message names the check and shows the expression."""


# The tree: a comparison leaf, or a boolean node over children.
@dataclass(frozen=True)
class Compare:
    left: Union[str, float]   # a variable name or a number
    op: str
    right: Union[str, float]


@dataclass(frozen=True)
class BoolOp:
    op: str                   # 'and', 'or' or 'not'
    args: tuple


Node = Union[Compare, BoolOp]


@dataclass(frozen=True)
class Rule:
    """A parsed ``fail_if``. ``fails(count, max_score)`` is True when the part fails this check."""

    expr: str
    tree: Node

    def fails(self, count: int, max_score: float) -> bool:
        return _eval(self.tree, {"count": float(count), "max_score": float(max_score)})


def parse_rule(expr: str, check: str = "?") -> Rule:
    """Parse a ``fail_if`` expression; raises RuleError naming ``check`` on any mistake."""
    if not isinstance(expr, str) or not expr.strip():
        raise RuleError(f"check '{check}': fail_if must be a non-empty expression such as 'count >= 1'")
    if len(expr) > MAX_RULE_CHARS:
        raise RuleError(f"check '{check}': fail_if is longer than {MAX_RULE_CHARS} characters")
    parser = _Parser(expr, check)
    tree = parser.parse()
    return Rule(expr, tree)


def _tokenize(expr: str, check: str) -> list[tuple[str, str, int]]:
    """[(kind, text, position)]; kinds: num, name, op, paren, end."""
    tokens, pos = [], 0
    while pos < len(expr):
        if expr[pos:].strip() == "":
            break
        m = _TOKEN.match(expr, pos)
        if m is None or m.end() == pos:
            # Report it only when the parser gets there, so '__import__(' reads as an unknown name.
            at = pos + len(expr[pos:]) - len(expr[pos:].lstrip())
            tokens.append(("bad", expr[at], at))
            break
        kind = m.lastgroup
        tokens.append((kind, m.group(kind), m.start(kind)))
        pos = m.end()
    tokens.append(("end", "", len(expr)))
    return tokens


def _error(expr: str, check: str, pos: int, problem: str) -> RuleError:
    return RuleError(f"check '{check}': fail_if {expr!r}: {problem} at column {pos + 1} (allowed: count, "
                     f"max_score, numbers, {' '.join(COMPARISONS)}, and, or, not, parentheses)")


class _Parser:
    """Recursive descent: or_expr := and_expr ('or' and_expr)*; and_expr := not_expr ('and' not_expr)*;
    not_expr := 'not' not_expr | '(' or_expr ')' | operand OP operand."""

    def __init__(self, expr: str, check: str):
        self.expr, self.check = expr, check
        self.tokens = _tokenize(expr, check)
        self.i = 0

    def peek(self):
        return self.tokens[self.i]

    def take(self):
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def fail(self, problem: str, tok=None) -> RuleError:
        tok = tok or self.peek()
        return _error(self.expr, self.check, tok[2], problem)

    def parse(self) -> Node:
        tree = self.or_expr()
        if self.peek()[0] != "end":
            kind, text, _ = self.peek()
            raise self.fail(f"unexpected character {text!r}" if kind == "bad" else f"unexpected {text!r}")
        return tree

    def or_expr(self) -> Node:
        args = [self.and_expr()]
        while self.peek()[:2] == ("name", "or"):
            self.take()
            args.append(self.and_expr())
        return args[0] if len(args) == 1 else BoolOp("or", tuple(args))

    def and_expr(self) -> Node:
        args = [self.not_expr()]
        while self.peek()[:2] == ("name", "and"):
            self.take()
            args.append(self.not_expr())
        return args[0] if len(args) == 1 else BoolOp("and", tuple(args))

    def not_expr(self) -> Node:
        tok = self.peek()
        if tok[:2] == ("name", "not"):
            self.take()
            return BoolOp("not", (self.not_expr(),))
        if tok[:2] == ("paren", "("):
            self.take()
            inner = self.or_expr()
            if self.peek()[:2] != ("paren", ")"):
                raise self.fail("expected ')'")
            self.take()
            return inner
        left = self.operand()
        op = self.peek()
        if op[0] != "op":
            if op[0] == "bad":
                raise self.fail(f"unexpected character {op[1]!r}")
            raise self.fail(f"expected a comparison ({' '.join(COMPARISONS)}) after {left!r}")
        self.take()
        right = self.operand()
        if isinstance(left, float) and isinstance(right, float):
            raise self.fail("a comparison needs count or max_score on one side", op)
        return Compare(left, op[1], right)

    def operand(self) -> Union[str, float]:
        tok = self.take()
        if tok[0] == "num":
            return float(tok[1])
        if tok[0] == "name" and tok[1] in VARIABLES:
            return tok[1]
        if tok[0] == "end":
            raise self.fail("ends early: expected count, max_score or a number", tok)
        if tok[0] == "bad":
            raise self.fail(f"unexpected character {tok[1]!r}", tok)
        if tok[0] == "name":
            raise self.fail(f"unknown name {tok[1]!r}: expected count, max_score or a number", tok)
        raise self.fail(f"expected count, max_score or a number, got {tok[1]!r}", tok)


_COMPARE = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b,
            "<": lambda a, b: a < b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b}


def _eval(node: Node, env: dict[str, float]) -> bool:
    if isinstance(node, Compare):
        left = env[node.left] if isinstance(node.left, str) else node.left
        right = env[node.right] if isinstance(node.right, str) else node.right
        return _COMPARE[node.op](left, right)
    if node.op == "not":
        return not _eval(node.args[0], env)
    if node.op == "and":
        return all(_eval(a, env) for a in node.args)
    return any(_eval(a, env) for a in node.args)


ROI_MODES = ("centre", "inside")


def roi_keep(boxes_xyxy: np.ndarray, roi_xyxy: Sequence[float] | None, mode: str = "centre") -> np.ndarray:
    """bool [N]: boxes [N, 4] in ``roi_xyxy`` (edges included); all True if None.

    mode "centre": the box's centre is in the ROI. "inside": the whole box is, so a part cut by the
    edge of the ROI (or of the frame, with an ROI a few pixels in from it) is not judged at all.
    """
    if mode not in ROI_MODES:
        raise ValueError(f"roi mode must be one of {', '.join(ROI_MODES)}, got {mode!r}")
    boxes = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
    if roi_xyxy is None:
        return np.ones(len(boxes), bool)
    x1, y1, x2, y2 = (float(v) for v in roi_xyxy)
    if mode == "inside":
        return (boxes[:, 0] >= x1) & (boxes[:, 1] >= y1) & (boxes[:, 2] <= x2) & (boxes[:, 3] <= y2)
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    return (cx >= x1) & (cx <= x2) & (cy >= y1) & (cy <= y2)


@dataclass
class CheckResult:
    """One check on one part. boxes_xyxy [N, 4] float32 pixels and scores [N] float32 are what is left
    after the conf and ROI filters; ``failed`` is the rule's answer (None when ``error`` is set)."""

    name: str
    boxes_xyxy: np.ndarray
    scores: np.ndarray
    failed: bool | None
    rule: str = ""
    error: str | None = None

    @property
    def count(self) -> int:
        return int(len(self.scores))

    @property
    def max_score(self) -> float:
        return float(self.scores.max()) if len(self.scores) else 0.0

    @property
    def passed(self) -> bool:
        return self.error is None and self.failed is False

    def to_dict(self) -> dict:
        out = {"passed": self.passed, "count": self.count, "max_score": round(self.max_score, 5),
               "rule": self.rule, "boxes": np.round(self.boxes_xyxy.astype(np.float64), 2).tolist(),
               "scores": np.round(self.scores.astype(np.float64), 5).tolist()}
        if self.error is not None:
            out["error"] = self.error
        return out


def evaluate_check(name: str, rule: Rule, boxes_xyxy, scores, roi_xyxy=None, conf: float = 0.0,
                   roi_mode: str = "centre") -> CheckResult:
    """Filter one check's detections (score >= conf, in the ROI by ``roi_mode``) and apply its rule.

    boxes_xyxy [N, 4] in frame pixels, scores [N] in 0-1; N may be 0.
    """
    boxes = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
    scores = np.asarray(scores, np.float32).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"check '{name}': {len(boxes)} boxes but {len(scores)} scores")
    keep = (scores >= conf) & roi_keep(boxes, roi_xyxy, roi_mode)
    boxes, scores = boxes[keep], scores[keep]
    max_score = float(scores.max()) if len(scores) else 0.0
    return CheckResult(name, boxes, scores, rule.fails(len(scores), max_score), rule.expr)


@dataclass
class Verdict:
    """The answer for one part: PASS, FAIL or ERROR, with reasons and every check's result.

    reasons: 'timeout' (deadline missed), 'failed: <check>' (a rule fired), 'error: <message>'.
    ERROR means the line could not judge the part; treat it as a reject at the PLC, like FAIL.
    """

    part_id: str
    verdict: str
    reasons: list[str]
    checks: list[CheckResult]
    latency_ms: float
    deadline_ms: float | None
    ts: float = field(default_factory=time.time)

    def to_record(self) -> dict:
        """The JSON-ready form that every sink stores (schema ``promptdet.verdict/1``)."""
        return {"schema": "promptdet.verdict/1", "part_id": self.part_id, "ts": round(self.ts, 6),
                "verdict": self.verdict, "reasons": list(self.reasons), "latency_ms": round(self.latency_ms, 3),
                "deadline_ms": self.deadline_ms, "checks": {c.name: c.to_dict() for c in self.checks}}


def decide(check_results: Sequence[CheckResult], deadline_ms: float | None, elapsed_ms: float, *,
           part_id: str = "", error: str | None = None, ts: float | None = None, unfamiliar: bool = False) -> Verdict:
    """Combine check results into a verdict.

    ERROR when ``error`` is given, any check has one, or the frame is ``unfamiliar`` (unlike the
    model's training images: its empty answer would be a PASS nobody can vouch for; reason
    ``unfamiliar``); otherwise FAIL when the deadline was missed
    (fail-safe: a late answer cannot be trusted to reach the reject gate in time) or any rule fired;
    else PASS. An empty ``check_results`` with no error is an ERROR: nothing was judged.
    """
    reasons: list[str] = []
    if error is not None:
        reasons.append(f"error: {error}")
    reasons += [f"error: {c.name}: {c.error}" for c in check_results if c.error is not None]
    if not check_results and error is None:
        reasons.append("error: no checks were evaluated")
    if unfamiliar:
        reasons.append(UNFAMILIAR)
    late = deadline_ms is not None and (not math.isfinite(elapsed_ms) or elapsed_ms > deadline_ms)
    if late:
        reasons.append(TIMEOUT)
    reasons += [f"failed: {c.name}" for c in check_results if c.error is None and c.failed]
    if unfamiliar or any(r.startswith("error:") for r in reasons):
        verdict = "ERROR"
    elif reasons:
        verdict = "FAIL"
    else:
        verdict = "PASS"
    return Verdict(part_id, verdict, reasons, list(check_results), float(elapsed_ms), deadline_ms,
                   time.time() if ts is None else ts)
