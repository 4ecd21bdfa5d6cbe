"""The outputs-only check (VALIDATING.md §6), for an implementation that cannot write traces.

An answers file is JSON lines: a header with the decoding settings, then one record per prompt,
{"prompt_id", "output_ids", "accept_lengths", "forward_calls"}. The check decodes every prompt with this project's
generate_speculative under the same settings (float64) and fails unless every prompt of the prompts file is
answered exactly once, every output equals the reference's, the accounting adds up, and the candidate needs as
many forward calls as the reference within DRAFT_TOLERANCE: an exact port that drafts badly is reported as
"lossless but drafting differs".
"""
from __future__ import annotations

import dataclasses

from validation.compare import first_index
from validation.records import (COUNT, INTS, Field, InputError, check_fields, check_header, read_prompts,
                                read_records)
from validation.traces import load_model

ANSWERS_SCHEMA = "specstream-answers"
ANSWERS_HEADER = (f'{{"type": "header", "schema": "{ANSWERS_SCHEMA}", "version": 1, "settings": {{"gamma": 4, '
                  f'"k": 2, "tree_cap": null, "prune_threshold": null, "stream_pass": "tree"}}}}')
FIX_ANSWERS = "see the answers format in VALIDATING.md §6"
ANSWER_FIELDS: tuple[Field, ...] = (
    ("prompt_id", True, lambda v: isinstance(v, str), "a string (an id of the prompts file)"),
    ("output_ids", True, *INTS),
    ("accept_lengths", True, INTS[0], "a list of integers (tokens committed by each decode call)"),
    ("forward_calls", True, COUNT[0], "an integer >= 0 (every model call, the prefill included)"),
)
# Drafting may cost the candidate this share of the reference's forward calls more or fewer (at least one call):
# a float32 port can see a near tie in a stream's top-k, at a cap or at the pruning threshold fall the other way,
# which changes one call's length and so the prompt's number of calls by about one (VALIDATING.md §6).
DRAFT_TOLERANCE = 0.02


@dataclasses.dataclass
class Answer:
    """One record of an answers file."""
    prompt_id: str
    output_ids: list[int]
    accept_lengths: list[int]
    forward_calls: int
    line: int


def read_answers(path: str) -> tuple[dict, list[Answer]]:
    """The header and the answers of an answers file (({}, []) for a file without records)."""
    records = read_records(path)
    if not records:
        return {}, []
    line, head = records[0]
    check_header(path, line, head, ANSWERS_SCHEMA, ANSWERS_HEADER, FIX_ANSWERS)
    if "stream_pass" not in head["settings"]:
        raise InputError(f"{path}, line {line}: settings.stream_pass is missing — \"tree\" or \"accepted\"")
    answers = []
    for n, r in records[1:]:
        check_fields(f"{path}, line {n}", r, ANSWER_FIELDS, FIX_ANSWERS)
        answers.append(Answer(r["prompt_id"], r["output_ids"], r["accept_lengths"], r["forward_calls"], n))
    return head, answers


def accounting(output: list[int], lengths: list[int], gamma: int) -> tuple[list[int] | None, str | None]:
    """Decode-call lengths under docs/CONVENTIONS.md (bonus token included, prefill's token excluded) recovered from
    an `accept_lengths` list, and what was wrong with it (None when it already follows the conventions)."""
    n, s, m = len(output), sum(lengths), len(lengths)
    if s == n - 1 and all(1 <= a <= gamma + 1 for a in lengths):
        return lengths, None
    if s == n and m > 0 and lengths[0] == 1:
        return lengths[1:], ("the list starts with the prefill's token: the prefill is a forward call, but not a "
                             "decode call (docs/CONVENTIONS.md); dropped it")
    if m > 0 and s == n - 1 + m:
        return [a - 1 for a in lengths], ("every call counts one token too many: the bonus token counted twice "
                                          "(accepted drafts + 1, and + 1 again); took 1 off each")
    if m > 0 and s == n - 1 - m:
        return [a + 1 for a in lengths], ("the bonus/root token is not counted: docs/CONVENTIONS.md counts it in every "
                                          "decode call; added 1 to each")
    if s == n - 1:
        bad = [a for a in lengths if not 1 <= a <= gamma + 1]
        return None, f"a decode call commits 1..γ+1 = 1..{gamma + 1} tokens; got {bad[:5]}"
    return None, (f"accept_lengths sum to {s}, but the {n} output tokens need {n - 1} after the prefill's first "
                  f"token: the lists do not account for the output")


def metrics(lengths: list[int], n_out: int, gamma: int, max_new_tokens: int) -> dict:
    """docs/CONVENTIONS.md §8 from per-decode-call lengths: CR (plain greedy calls / calls), tokens per call,
    acceptance by depth."""
    attempted, accepted, done = [0] * gamma, [0] * gamma, 1
    for a in lengths:
        drafted = min(gamma, max_new_tokens - done - 1)
        for j in range(1, drafted + 1):
            attempted[j - 1] += a - 1 >= j - 1
            accepted[j - 1] += a - 1 >= j
        done += a
    return dict(calls=1 + len(lengths), ar_calls=n_out, cr=n_out / (1 + len(lengths)),
                tokens_per_call=(n_out - 1) / len(lengths) if lengths else float("nan"),
                attempted=attempted, accepted=accepted)


def coverage(answers: list[Answer], ids: list[str], prompts_path: str) -> list[str]:
    """Every prompt answered exactly once, no answer for a prompt the prompts file lacks: the failures, if any."""
    lines_of: dict[str, list[int]] = {}
    for a in answers:
        lines_of.setdefault(a.prompt_id, []).append(a.line)
    problems = [f"{pid}: {len(lines)} answers (lines {', '.join(map(str, lines))}): give each prompt exactly one"
                for pid, lines in lines_of.items() if len(lines) > 1]
    extra = [f"{pid} (line {lines[0]})" for pid, lines in lines_of.items() if pid not in ids]
    if extra:
        problems.append(f"answers for prompts that {prompts_path} lacks: {', '.join(extra)}")
    missing = [pid for pid in ids if pid not in lines_of]
    if missing:
        problems.append(f"no answer for {', '.join(missing)}: every prompt of {prompts_path} needs one")
    return problems


def check_answer(a: Answer, reference_tokens: list[int], reference_lengths: list[int], gamma: int
                 ) -> tuple[str, list[int] | None]:
    """One answer against the reference's run of its prompt: a report line, and the candidate's decode-call
    lengths when the output is exact and the accounting adds up (None: the answer fails)."""
    out = a.output_ids
    if out != reference_tokens:
        i = first_index(out, reference_tokens)
        return (f"{a.prompt_id}: FAILED: the output differs from the reference at token {i}: reference "
                f"{reference_tokens[i:i + 5]}, candidate {out[i:i + 5]}"), None
    lengths, problem = accounting(out, a.accept_lengths, gamma)
    if problem:
        return f"{a.prompt_id}: FAILED: inconsistent accounting: {problem}", None
    if a.forward_calls != 1 + len(lengths):
        return (f"{a.prompt_id}: FAILED: forward_calls is {a.forward_calls}, but accept_lengths lists "
                f"{len(lengths)} decode calls: forward calls = 1 (the prefill) + decode calls"), None
    return (f"{a.prompt_id}: output == reference ({len(out)} tokens); forward calls: candidate {1 + len(lengths)}, "
            f"reference {1 + len(reference_lengths)}"), lengths


def tokens_per_call(lengths: list[int]) -> float:
    return sum(lengths) / len(lengths) if lengths else 0.0


def drafting(runs: list[tuple[str, list[int], list[int]]]) -> tuple[bool, list[str]]:
    """Drafting verdict over (prompt id, reference lengths, candidate lengths) of the exact answers: the
    candidate's forward calls must be the reference's within DRAFT_TOLERANCE."""
    ref_calls = sum(1 + len(r) for _, r, _ in runs)
    cand_calls = sum(1 + len(c) for _, _, c in runs)
    if all(r == c for _, r, c in runs):
        return True, [f"drafting: every decode call commits as many tokens as the reference's ({cand_calls} "
                      f"forward calls)"]
    pid, r, c = max(runs, key=lambda run: abs(tokens_per_call(run[1]) - tokens_per_call(run[2])))
    most = max(range(min(len(r), len(c))), key=lambda i: abs(r[i] - c[i]), default=None)
    at_call = "" if most is None else (f", most at its decode call {most + 1} (reference {r[most]} tokens, "
                                       f"candidate {c[most]})")
    where = (f"tokens per decode call differ most at prompt {pid} (reference {tokens_per_call(r):.2f}, candidate "
             f"{tokens_per_call(c):.2f}){at_call}, first at decode call {first_index(r, c) + 1}")
    allowed = max(1, int(DRAFT_TOLERANCE * ref_calls))
    if abs(cand_calls - ref_calls) <= allowed:
        return True, [f"drafting: within the tolerance ({cand_calls} forward calls, reference {ref_calls}, "
                      f"± {allowed} allowed); {where}"]
    lines = [f"FAILED: lossless but drafting differs: the candidate needs {cand_calls} forward calls, the reference "
             f"{ref_calls} (± {allowed} allowed); {where}"]
    if all(n == 1 for _, _, c in runs for n in c):
        lines.append("no draft was ever accepted (CR 1.00): the outputs are exact but never faster than plain greedy "
                     "decoding. Check verification: a child is accepted iff its token equals the main argmax at "
                     "its parent (not at the child itself)")
    return False, lines


def summary(runs: list[tuple[str, list[int], list[int]]], outputs: dict[str, int], gamma: int,
            budgets: dict[str, int]) -> str:
    """CR, tokens per decode call and acceptance by depth over all exact answers, candidate and reference."""
    def total(which: int) -> str:
        calls = ar = tokens = decode = 0
        attempted, accepted = [0] * gamma, [0] * gamma
        for run in runs:
            m = metrics(run[which], outputs[run[0]], gamma, budgets[run[0]])
            calls, ar, tokens, decode = calls + m["calls"], ar + m["ar_calls"], tokens + sum(run[which]), \
                decode + len(run[which])
            attempted = [x + y for x, y in zip(attempted, m["attempted"])]
            accepted = [x + y for x, y in zip(accepted, m["accepted"])]
        rates = " ".join(f"{a / t:.2f}" if t else "-" for a, t in zip(accepted, attempted))
        return f"CR {ar / calls:.2f}, {tokens / max(decode, 1):.2f} tokens per decode call, acceptance {rates}"
    return (f"all ({len(runs)} prompts; CR = plain greedy calls / calls, prefill included; tokens per decode call "
            f"with the bonus token; acceptance at depth 1..{gamma}):\n  candidate: {total(2)}\n"
            f"  reference: {total(1)}")


def check_outputs(model_dir: str, answers_path: str, prompts_path: str) -> tuple[bool, list[str]]:
    """The outputs-only check: (passed, report lines)."""
    prompts = {p["id"]: p for p in read_prompts(prompts_path)}
    head, answers = read_answers(answers_path)
    if not answers:
        return False, [f"FAILED: {answers_path} holds no answers: every prompt of {prompts_path} is missing "
                       f"({', '.join(prompts)})"]
    failures = [f"FAILED: {problem}" for problem in coverage(answers, list(prompts), prompts_path)]
    passed = not failures
    s, model, lines, runs, seen = head["settings"], load_model(model_dir), [], [], set()
    for a in answers:
        if a.prompt_id not in prompts or a.prompt_id in seen:
            continue
        seen.add(a.prompt_id)
        ref = reference_run(model, prompts[a.prompt_id], s, answers_path)
        line, lengths = check_answer(a, ref.tokens, ref.accepted_lengths, s["gamma"])
        lines.append(line)
        passed &= lengths is not None
        if lengths is not None:
            runs.append((a.prompt_id, ref.accepted_lengths, lengths))
    if runs:
        drafted_ok, verdict = drafting(runs)
        lines += verdict + [summary(runs, {a.prompt_id: len(a.output_ids) for a in answers}, s["gamma"],
                                    {pid: p["max_new_tokens"] for pid, p in prompts.items()})]
        passed &= drafted_ok
    return passed, lines + failures


def reference_run(model, prompt: dict, settings: dict, answers_path: str):
    """This project's generate_speculative on one prompt with the answers file's settings."""
    from generate import generate_speculative
    s = settings
    try:
        return generate_speculative(model, prompt["prompt_ids"], prompt["max_new_tokens"], s["gamma"], s["k"],
                                    s.get("tree_cap"), s.get("prune_threshold"), prompt.get("eos_id"),
                                    stream_pass=s["stream_pass"])
    except ValueError as e:
        raise InputError(f"{answers_path}: the reference model cannot decode with these settings ({e}) — use "
                         f"settings it supports") from e


def answers_header(settings: dict, implementation: str) -> dict:
    """The first line of an answers file."""
    keys = ("gamma", "k", "tree_cap", "prune_threshold", "stream_pass")
    return dict(type="header", schema=ANSWERS_SCHEMA, version=1, implementation=implementation,
                settings={key: settings.get(key) for key in keys})
