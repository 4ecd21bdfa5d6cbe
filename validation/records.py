"""Reading and writing the kit's JSON-lines files: prompts and traces (answers files: outputs.py).

A file is JSON lines (one object per line; blank lines and a UTF-8 byte-order mark are fine) or one JSON array of
the same objects. Every problem is an InputError whose message names the file and the line and says how to fix it;
`validate.py` prints it as one `error: <what> — <how to fix>` line and exits with status 2.
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Callable

from checkpoint import write_atomic

SCHEMA, VERSION = "specstream-trace", 1
TRACE_HEADER = (f'{{"type": "header", "schema": "{SCHEMA}", "version": {VERSION}, "settings": {{"gamma": 4, "k": 2, '
                f'"tree_cap": null, "prune_threshold": null}}}}')
FIX_TRACE = "see the trace format in VALIDATING.md §3"
FIX_PROMPTS = 'one {"id": str, "prompt_ids": [int], "max_new_tokens": int, "eos_id": int or null} per line'


class InputError(ValueError):
    """A file that cannot be read as the kit's formats say (exit status 2)."""


def write_jsonl(path: str, records: list[dict]) -> str:
    """One compact JSON object per line, written atomically."""
    text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)

    def write(tmp: str):
        with open(tmp, "w") as f:
            f.write(text)
    return write_atomic(path, write)


# ---- JSON objects with their line numbers ----

def read_records(path: str) -> list[tuple[int, dict]]:
    """The JSON objects of a file, each with its line number in the file: JSON lines, or one JSON array."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise InputError(f"{path}: cannot read it ({e.strerror}) — check the path") from e
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark is dropped
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text (byte {e.start} is 0x{raw[e.start]:02x}): a binary file? — give "
                         f"the JSON-lines file") from e
    if text.lstrip().startswith("["):
        records = array_records(path, text)
    else:
        records = []
        for n, line in enumerate(text.split("\n"), 1):
            if line.strip():
                try:
                    records.append((n, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}, line {n}, column {e.colno}: not JSON ({e.msg}) — write one JSON "
                                     f"object per line") from e
    for n, r in records:
        if not isinstance(r, dict):
            raise InputError(f"{path}, line {n}: a JSON {type(r).__name__} where an object was expected: "
                             f"{shown(r)} — write one JSON object per line")
    return records


JSON_SPACE = re.compile(r"[ \t\n\r]*")


def array_records(path: str, text: str) -> list[tuple[int, object]]:
    """The items of a file holding one JSON array, each with the file line where it starts."""
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}, line {e.lineno}, column {e.colno}: not JSON ({e.msg}) — write JSON lines, or "
                         f"one JSON array of objects") from e
    if not isinstance(items, list):
        raise InputError(f"{path}: not a JSON array — write JSON lines, or one JSON array of objects")
    decoder, lines, line, start = json.JSONDecoder(), [], 1, 0
    i = JSON_SPACE.match(text, text.index("[") + 1).end()
    while text[i] != "]":  # the text is valid JSON: walk the items to find where each starts
        line, start = line + text.count("\n", start, i), i
        lines.append(line)
        i = JSON_SPACE.match(text, decoder.raw_decode(text, i)[1]).end()
        if text[i] == ",":
            i = JSON_SPACE.match(text, i + 1).end()
    return list(zip(lines, items))


def shown(value) -> str:
    """A value as JSON (NaN and infinities as such), cut to 60 characters."""
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def get(record: dict, field: str):
    """record["a"]["b"] for field "a.b"; None when absent."""
    for key in field.split("."):
        record = record.get(key) if isinstance(record, dict) else None
    return record


# ---- field types ----

def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def list_of(check: Callable) -> Callable:
    return lambda v: isinstance(v, list) and all(check(x) for x in v)


def or_null(check: Callable) -> Callable:
    return lambda v: v is None or check(v)


INTS, INT_LISTS = (list_of(is_int), "a list of integers"), (list_of(list_of(is_int)), "a list of lists of integers")
IDS = (lambda v: list_of(is_int)(v) and len(v) > 0, "a non-empty list of integers")
COUNT = (lambda v: is_int(v) and v >= 0, "an integer >= 0")
Field = tuple[str, bool, Callable, str]  # name, required, type check, what it must be
CALL_FIELDS: tuple[Field, ...] = (
    ("prompt", True, lambda v: isinstance(v, str), "a string (the prompt id)"),
    ("call", True, lambda v: is_int(v) and v >= 0, "an integer >= 0 (0 = the prefill)"),
    ("tree.tokens", True, *INTS), ("tree.parents", True, *INTS),
    ("path", True, *INTS), ("committed", True, *INTS),
    ("cache_len", False, *COUNT),
    ("tree.depths", False, *INTS), ("tree.positions", False, *INTS),
    ("draft_topk.tokens", False, *INT_LISTS),
    ("draft_topk.logprobs", False, list_of(list_of(is_number)), "a list of lists of numbers"),
    ("early_exit.probs", False, list_of(or_null(is_number)), "a list of numbers (null for the root)"),
    ("early_exit.survivors", False, *INTS),
    ("main_argmax", False, list_of(or_null(is_int)), "a list of integers (null for a pruned node)"),
    ("main_top5.tokens", False, list_of(or_null(list_of(is_int))), "a list of lists of integers (null: pruned)"),
    ("main_top5.logprobs", False, list_of(or_null(list_of(is_number))), "a list of lists of numbers (null: pruned)"),
)
PROMPT_FIELDS: tuple[Field, ...] = (  # a trace's prompt records
    ("prompt", True, lambda v: isinstance(v, str), "a string (the prompt id)"), ("prompt_ids", True, *IDS),
    ("max_new_tokens", False, *COUNT), ("eos_id", False, is_int, "an integer or null"),
)
PROMPTS_FILE_FIELDS: tuple[Field, ...] = (  # a prompts file's records
    ("id", True, lambda v: isinstance(v, str), "a string"), ("prompt_ids", True, *IDS),
    ("max_new_tokens", True, *COUNT), ("eos_id", False, is_int, "an integer or null"),
)
SETTINGS_FIELDS: tuple[Field, ...] = (
    ("gamma", True, lambda v: is_int(v) and v >= 1, "an integer >= 1"),
    ("k", True, lambda v: is_int(v) and v >= 1, "an integer >= 1"),
    ("tree_cap", False, lambda v: is_int(v) and v >= 1, "an integer >= 1 or null (the full tree)"),
    ("prune_threshold", False, lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1) or null (no pruning)"),
    ("stream_pass", False, lambda v: v in ("tree", "accepted"), '"tree" or "accepted"'),
    ("decoding", False, lambda v: v == "greedy", '"greedy"'),
)


def check_fields(where: str, record: dict, fields: tuple[Field, ...], fix: str) -> None:
    """Raise an InputError naming the first field that is missing (when required) or of the wrong type."""
    for name, required, check, wanted in fields:
        outer = name.split(".")[0]
        if "." in name and record.get(outer) is not None and not isinstance(record[outer], dict):
            raise InputError(f"{where}: {outer} must be an object, got {shown(record[outer])} — {fix}")
        value = get(record, name)
        if value is None:
            if required:
                raise InputError(f"{where}: the required field {name} is missing — {fix}")
        elif not check(value):
            raise InputError(f"{where}: {name} must be {wanted}, got {shown(value)} — {fix}")


def check_header(path: str, line: int, head: dict, schema: str, example: str, fix: str) -> None:
    """The first record of a trace or answers file: its type, schema, version and settings."""
    where = f"{path}, line {line}"
    if head.get("type") != "header":
        raise InputError(f"{where}: the first record must be the header, got {shown(head)} — start the file "
                         f"with {example}")
    if head.get("schema") != schema:
        raise InputError(f"{where}: schema {shown(head.get('schema'))}, this tool reads \"{schema}\" — start the "
                         f"file with {example}")
    if not is_int(head.get("version")) or head["version"] != VERSION:
        raise InputError(f"{where}: {schema} version {shown(head.get('version'))}, this tool reads version "
                         f"{VERSION} — write version {VERSION} ({fix})")
    if not isinstance(head.get("settings"), dict):
        raise InputError(f"{where}: the header needs its decoding settings, an object — {fix}")
    check_fields(where, head["settings"], SETTINGS_FIELDS, fix)
    for key, null in (("tree_cap", "the full tree"), ("prune_threshold", "no pruning")):
        if key not in head["settings"]:
            raise InputError(f"{where}: settings.{key} is missing (null means {null}) — {fix}")


# ---- prompts ----

def read_prompts(path: str) -> list[dict]:
    """Prompts file: JSON lines {"id": str, "prompt_ids": [int], "max_new_tokens": int, "eos_id": int | null}."""
    prompts, seen = [], {}
    for n, p in read_records(path):
        where = f"{path}, line {n}"
        check_fields(where, p, PROMPTS_FILE_FIELDS, FIX_PROMPTS)
        if p["id"] in seen:
            raise InputError(f"{where}: prompt id {shown(p['id'])} again (first at line {seen[p['id']]}) — give "
                             f"every prompt its own id")
        seen[p["id"]] = n
        prompts.append(p)
    return prompts


# ---- traces ----

@dataclasses.dataclass
class Trace:
    """A trace file as read: its header, prompt records and call records, and where each call record is."""
    path: str
    header: dict
    prompts: dict[str, dict]           # prompt records by prompt id
    calls: dict[str, list[dict]]       # call records by prompt id, sorted by call index
    lines: dict[tuple[str, int], int]  # (prompt id, call index) -> line in the file


def read_trace(path: str) -> Trace:
    """Read and check a trace: header first, then prompt and call records (types, lengths, indices)."""
    records = read_records(path)
    if not records:
        raise InputError(f"{path}: the file is empty — a trace starts with its header, {TRACE_HEADER}")
    check_header(path, records[0][0], records[0][1], SCHEMA, TRACE_HEADER, FIX_TRACE)
    trace = Trace(path, records[0][1], {}, {}, {})
    for n, r in records[1:]:
        where = f"{path}, line {n}"
        if r.get("type") == "prompt":
            check_fields(where, r, PROMPT_FIELDS, FIX_TRACE)
            if r["prompt"] in trace.prompts:
                raise InputError(f"{where}: a second prompt record for {shown(r['prompt'])} — keep one per prompt")
            trace.prompts[r["prompt"]] = r
        elif r.get("type") == "call":
            check_fields(where, r, CALL_FIELDS, FIX_TRACE)
            check_call_shapes(where, r)
            key = (r["prompt"], r["call"])
            if key in trace.lines:
                raise InputError(f"{where}: a second record of prompt {r['prompt']}, call {r['call']} (first at line "
                                 f"{trace.lines[key]}) — write each call once")
            trace.lines[key] = n
            trace.calls.setdefault(r["prompt"], []).append(r)
        else:
            raise InputError(f"{where}: type {shown(r.get('type'))}: after the header a trace holds \"prompt\" and "
                             f"\"call\" records only — {FIX_TRACE}")
    for calls in trace.calls.values():
        calls.sort(key=lambda r: r["call"])
    return trace


PER_NODE = ("tree.parents", "tree.depths", "tree.positions", "early_exit.probs", "main_argmax", "main_top5.tokens",
            "main_top5.logprobs")


def check_call_shapes(where: str, r: dict) -> None:
    """One entry per drafted node in every per-node list, node indices inside the tree, top-k lists that pair up."""
    n = len(r["tree"]["tokens"])
    if n == 0:
        raise InputError(f"{where}: tree.tokens is empty — a tree holds at least its root (call 0: the prompt)")
    for name in PER_NODE:
        value = get(r, name)
        if value is not None and len(value) != n:
            raise InputError(f"{where}: {name} has {len(value)} entries for {n} nodes in tree.tokens — one entry "
                             f"per drafted node, breadth first")
    for name, low in (("tree.parents", -1), ("path", 0), ("early_exit.survivors", 0)):
        bad = [i for i in get(r, name) or [] if not low <= i < n]
        if bad:
            raise InputError(f"{where}: {name} holds {bad[0]}, not a node index (the tree has {n} nodes) — "
                             f"{'-1 for the root, else ' if low < 0 else ''}an index into tree.tokens")
    for field in ("draft_topk", "main_top5"):
        tokens, logprobs = get(r, f"{field}.tokens"), get(r, f"{field}.logprobs")
        if tokens is not None and logprobs is not None and \
                [None if t is None else len(t) for t in tokens] != [None if p is None else len(p) for p in logprobs]:
            raise InputError(f"{where}: {field}.tokens and {field}.logprobs differ in shape — one log-probability "
                             f"per token")
