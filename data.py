"""The real tasks of the paper (E2E, ATIS text-to-SQL, DialogSum): loaders, a compact GPT-2 vocabulary and
deterministic training batches of the form  prompt, SEP, completion, EOS  (loss on completion + EOS only).

    from data import CompactVocab, TaskData, load_task
    train = load_task("e2e", "train")                  # list[Example(prompt, completion, references)]
    vocab = CompactVocab.build(t for ex in train for t in (ex.prompt, ex.completion))
    idx, targets, loss_mask = TaskData(vocab, train, block_size=256).batch(step=0, batch_size=16)

The data folder is `--data-dir` / `data_dir`, else $SPECSTREAM_DATA, else ../shared/data.
A machine without that folder fetches the data sets from their public sources (sha256-checked, see the end of
this file):

    python data.py download --to data     # or: make data; then pass --data-dir data (or SPECSTREAM_DATA=data)
"""
from __future__ import annotations

import csv
import functools
import hashlib
import http.client
import io
import json
import os
import pathlib
import re
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from typing import Iterable

import torch
from tqdm import tqdm

from cli import ArgumentParser

ROOT = pathlib.Path(__file__).resolve().parent
DEFAULT_DATA_DIR = ROOT.parent / "shared" / "data"
TIKTOKEN_CACHE = ROOT.parent / "shared" / "tiktoken_cache"
EOS, SEP, UNK = 0, 1, 2  # the compact vocabulary's specials; GPT-2 tokens start at id 3
UNK_TEXT = "\ufffd"      # how decode renders UNK (the Unicode replacement character)
# decoding budget per task: room for every E2E and DialogSum test reference, 84% of the SQL ones
MAX_NEW_TOKENS = {"e2e": 80, "sql": 360, "dialogsum": 96}
SPLITS = {"e2e": ("train", "dev", "test"), "sql": ("train", "dev", "test"), "dialogsum": ("train", "test")}


@functools.lru_cache(maxsize=None)
def gpt2_encoding():
    """tiktoken's GPT-2 BPE. Offline: uses ../shared/tiktoken_cache when $TIKTOKEN_CACHE_DIR is unset."""
    import tiktoken
    if "TIKTOKEN_CACHE_DIR" not in os.environ and TIKTOKEN_CACHE.is_dir():
        os.environ["TIKTOKEN_CACHE_DIR"] = str(TIKTOKEN_CACHE)
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:
        raise RuntimeError(f"cannot load the GPT-2 BPE files ({e}); without internet, set TIKTOKEN_CACHE_DIR to a "
                           f"folder holding tiktoken's cached files (e.g. ../shared/tiktoken_cache)") from e


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """The data folder: `data_dir` (--data-dir), else $SPECSTREAM_DATA, else ../shared/data."""
    if data_dir is not None:
        path, source = pathlib.Path(data_dir), "--data-dir"
    elif os.environ.get("SPECSTREAM_DATA"):
        path, source = pathlib.Path(os.environ["SPECSTREAM_DATA"]), "$SPECSTREAM_DATA"
    else:
        path, source = DEFAULT_DATA_DIR, "the default"
    if not path.is_dir():
        raise FileNotFoundError(f"data folder {path} (from {source}) does not exist: pass --data-dir DIR, set "
                                f"SPECSTREAM_DATA=DIR, or put the data sets at {DEFAULT_DATA_DIR}")
    return path


@dataclass
class Example:
    prompt: str
    completion: str        # the training target (and the first reference)
    references: list[str]  # all references, for metrics
    slots: dict[str, str] = field(default_factory=dict)  # placeholder -> value, for `relexicalise` (E2E only)


# Every data file is checked against the size and sha256 of the copy our results were measured on (FILES, at the
# end of this file), once per file and modification time: a truncated or edited file is refused, never trained on.
# Own data of other content is allowed with `use_unverified_data()` (train_task.py / bench.py --unverified-data);
# `unverified_files()` then lists what was read unchecked, so that results can say so.
ALLOW_UNVERIFIED = False
_VERIFIED: dict[str, tuple[int, int]] = {}  # path -> (mtime_ns, size) of a file whose sha256 matched
_UNVERIFIED: set[str] = set()


def use_unverified_data(allowed: bool = True):
    """Accept data files whose content differs from the published data sets (your own data)."""
    global ALLOW_UNVERIFIED
    ALLOW_UNVERIFIED = allowed


def unverified_files() -> list[str]:
    """The data files read so far whose content is not the published one (with use_unverified_data)."""
    return sorted(_UNVERIFIED)


def _check_file(path: pathlib.Path) -> pathlib.Path:
    """`path` if it exists and holds the published content (see FILES), else a clear error."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the data folder lacks this file — make data fetches it")
    name = f"{path.parent.name}/{path.name}"
    stat = path.stat()
    if name not in FILES or _VERIFIED.get(str(path)) == (stat.st_mtime_ns, stat.st_size):
        return path
    size, digest = FILES[name]
    problem = (f"has {stat.st_size:,} bytes, not {size:,} (truncated or edited?)" if stat.st_size != size
               else "has other content than the published file (its sha256 differs)" if sha256_of(path) != digest
               else None)
    if problem is None:
        _VERIFIED[str(path)] = (stat.st_mtime_ns, stat.st_size)
    elif ALLOW_UNVERIFIED:
        _UNVERIFIED.add(str(path))
    else:
        raise ValueError(f"{path} {problem} — run `make data` (python data.py download --to DIR) for the published "
                         f"data sets, or pass --unverified-data to use your own")
    return path


def _read_text(path: pathlib.Path) -> str:
    """A checked UTF-8 text file, or an error naming the file."""
    try:
        return _check_file(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}) — give the data set's text "
                         f"file (make data fetches the published ones)") from None


def _read_csv(path: pathlib.Path, columns: tuple[str, ...]) -> list[tuple[str, ...]]:
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"{path}: line 1: header {reader.fieldnames} lacks column(s) {missing}")
    rows = []
    for row in reader:
        empty = [c for c in columns if not row.get(c)]
        if empty:
            raise ValueError(f"{path}: line {reader.line_num}: missing or empty {empty}")
        rows.append(tuple(row[c] for c in columns))
    return rows


def _read_jsonl(path: pathlib.Path, keys: tuple[str, ...]) -> list[tuple[str, ...]]:
    rows = []
    for n, line in enumerate(_read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {n}: not valid JSON ({e.msg})") from None
        missing = [k for k in keys if not isinstance(row, dict) or not isinstance(row.get(k), str)]
        if missing:
            raise ValueError(f"{path}: line {n}: missing key(s) {missing} (or not a string)")
        rows.append(tuple(row[k] for k in keys))
    return rows


def is_e2e_dev_mr(mr: str) -> bool:
    """The development split: the MRs of devset.csv whose CRC-32 is 0 mod 10 (51 of 547 MRs, 427 rows), held out
    whole (all references of an MR together), so that model selection never sees the test file."""
    return zlib.crc32(mr.encode()) % 10 == 0


def _load_e2e(folder: pathlib.Path, split: str) -> list[Example]:
    """devset.csv = train + dev (one example per row; dev = whole MRs, see `is_e2e_dev_mr`), testset_w_refs.csv =
    test (one example per distinct MR)."""
    rows = _read_csv(folder / "e2e" / ("testset_w_refs.csv" if split == "test" else "devset.csv"), ("mr", "ref"))
    if split != "test":
        rows = [(mr, ref) for mr, ref in rows if is_e2e_dev_mr(mr) == (split == "dev")]
    refs: dict[str, list[str]] = {}  # MR -> its references, in file order
    for mr, ref in rows:
        refs.setdefault(mr, []).append(ref)
    if split == "train":
        return [Example(mr, ref, list(refs[mr])) for mr, ref in rows]
    return [Example(mr, r[0], r) for mr, r in refs.items()]


# E2E delexicalisation. The training file names only 20 restaurants (and 11 landmarks for `near`); 9 of the 18
# test names never occur in it, and a small model trained on the raw text writes a restaurant it knows instead of
# copying an unseen name. So, as E2E systems usually do, the values of `name` and `near` become placeholders in the
# MR and in the reference, the model learns to write the placeholder, and the output gets the value back by string
# replacement. Copying is then exact by construction for any name, seen or not.
E2E_PLACEHOLDERS = {"name": "X-name", "near": "X-near"}
E2E_ATTRIBUTES = ("name", "eatType", "food", "priceRange", "customer rating", "area", "familyFriendly", "near")


def mr_values(mr: str) -> dict[str, str]:
    """The attributes of an E2E MR: "name[Aromi], eatType[coffee shop]" -> {"name": "Aromi", "eatType": ...}."""
    return {key.strip(): value for key, value in re.findall(r"([^,\[\]]+)\[([^\]]*)\]", mr)}


def mr_problems(mr: str) -> list[str]:
    """What in an E2E MR is not `attribute[value]` with a known attribute and a value: each such part, described
    (the model would see it as plain text, and a name in it would not be delexicalised)."""
    problems = []
    for part in (p.strip() for p in mr.split(",") if p.strip()):
        m = re.fullmatch(r"([^\[\]]+)\[([^\[\]]*)\]", part)
        if m is None:
            problems.append(f"{part!r} is not attribute[value]")
        elif m.group(1).strip() not in E2E_ATTRIBUTES:
            problems.append(f"{m.group(1).strip()!r} is not an E2E attribute ({', '.join(E2E_ATTRIBUTES)})")
        elif not m.group(2).strip():
            problems.append(f"{part!r} has no value")
    return problems


def delexicalise(ex: Example) -> Example:
    """An E2E example with its `name` and `near` values replaced by placeholders in prompt and completion (the
    references stay as they are: metrics compare relexicalised outputs with them); `slots` maps back."""
    values = mr_values(ex.prompt)
    slots = {E2E_PLACEHOLDERS[k]: values[k] for k in E2E_PLACEHOLDERS if values.get(k)}
    prompt, completion = ex.prompt, ex.completion
    for key, placeholder in E2E_PLACEHOLDERS.items():
        if values.get(key):  # an empty value stays as it is: no placeholder without a value to put back
            prompt = prompt.replace(f"{key}[{values[key]}]", f"{key}[{placeholder}]")
    for placeholder, value in sorted(slots.items(), key=lambda kv: -len(kv[1])):  # longer value first
        completion = completion.replace(value, placeholder)
    return Example(prompt, completion, ex.references, slots)


def relexicalise(text: str, slots: dict[str, str]) -> str:
    """Put the values back in place of the placeholders (the inverse of `delexicalise` on model outputs)."""
    for placeholder, value in slots.items():
        text = text.replace(placeholder, value)
    return text


def _fill(template: str, values: dict[str, str]) -> str:
    """Replace each variable name (a whole word such as city_name0, quoted or not) by its value."""
    if not values:
        return template
    names = "|".join(map(re.escape, sorted(values, key=len, reverse=True)))
    return re.sub(rf"\b({names})\b", lambda m: values[m.group(1)], template)


def _load_sql(folder: pathlib.Path, split: str) -> list[Example]:
    """ATIS: one example per question of the split; variables filled with the question's values, else with
    the entry's `example` values. Completion = the first SQL query."""
    path = folder / "text2sql" / "atis.json"
    try:
        entries = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None
    examples = []
    for n, entry in enumerate(entries):
        try:
            defaults = {v["name"]: v["example"] for v in entry["variables"]}
            sql = entry["sql"][0]
            for s in entry["sentences"]:
                if s["question-split"] == split:
                    values = {**defaults, **s["variables"]}
                    filled = _fill(sql, values)
                    examples.append(Example(_fill(s["text"], values), filled, [filled]))
        except (KeyError, IndexError, TypeError) as e:
            raise ValueError(f"{path}: entry {n}: malformed ({type(e).__name__}: {e}); expected keys sql (a "
                             f"non-empty list), sentences (text, question-split, variables), variables") from None
    return examples


def _load_dialogsum(folder: pathlib.Path, split: str) -> list[Example]:
    """dialogsum.dev.jsonl = train (one summary), dialogsum.test.jsonl = test (summary1..3)."""
    if split == "train":
        rows = _read_jsonl(folder / "dialogsum" / "dialogsum.dev.jsonl", ("dialogue", "summary"))
        return [Example(d, s, [s]) for d, s in rows]
    rows = _read_jsonl(folder / "dialogsum" / "dialogsum.test.jsonl", ("dialogue", "summary1", "summary2", "summary3"))
    return [Example(d, refs[0], list(refs)) for d, *refs in rows]


def _splits(task: str) -> tuple[str, ...]:
    if task not in SPLITS:
        raise ValueError(f"unknown task {task!r}: choose one of {list(SPLITS)}")
    return SPLITS[task]


def load_task(task: str, split: str, data_dir: str | os.PathLike | None = None,
              delexicalised: bool = False) -> list[Example]:
    """Examples of `task` ("e2e", "sql", "dialogsum") and `split` ("train", "dev" for e2e and sql, "test").
    delexicalised=True: what the models see (E2E names and landmarks as placeholders, see `delexicalise`; the
    other tasks are unchanged)."""
    if split not in _splits(task):
        raise ValueError(f"task {task!r} has no split {split!r}: choose one of {list(SPLITS[task])}")
    loader = {"e2e": _load_e2e, "sql": _load_sql, "dialogsum": _load_dialogsum}[task]
    examples = loader(resolve_data_dir(data_dir), split)
    return [delexicalise(ex) for ex in examples] if delexicalised and task == "e2e" else examples


def task_summary(task: str, data_dir: str | os.PathLike | None = None) -> dict[str, int]:
    """Number of examples per split, e.g. {"train": 4672, "test": 630}."""
    return {split: len(load_task(task, split, data_dir)) for split in _splits(task)}


class CompactVocab:
    """GPT-2 BPE restricted to the token ids that occur in the training text, renumbered densely.

    Ids: 0 = EOS, 1 = SEP (between prompt and completion), 2 = UNK, then the seen GPT-2 ids in increasing order.
    Policy for unseen text: a GPT-2 token that never occurred in the training text encodes to UNK (so it is
    lost: measure how often with `unseen_rate`); decode renders UNK as "\\ufffd" and EOS / SEP as "".
    decode(encode(text)) == text exactly for every text whose GPT-2 tokens were all seen.
    """
    EOS, SEP, UNK = EOS, SEP, UNK
    N_SPECIAL = 3

    def __init__(self, gpt2_ids: Iterable[int]):
        self.gpt2_ids = sorted({int(i) for i in gpt2_ids})
        if self.gpt2_ids and not 0 <= self.gpt2_ids[0] <= self.gpt2_ids[-1] < gpt2_encoding().n_vocab:
            raise ValueError(f"GPT-2 ids must lie in [0, {gpt2_encoding().n_vocab}); got {self.gpt2_ids[-1]}")
        self.compact = {g: i + self.N_SPECIAL for i, g in enumerate(self.gpt2_ids)}

    @classmethod
    def build(cls, texts: Iterable[str]) -> CompactVocab:
        """The vocabulary of the GPT-2 tokens of `texts` (the training prompts and completions)."""
        enc = gpt2_encoding()
        return cls(t for text in texts for t in enc.encode_ordinary(text))

    @property
    def size(self) -> int:
        return self.N_SPECIAL + len(self.gpt2_ids)

    def encode(self, text: str) -> list[int]:
        """Compact ids of `text`; GPT-2 tokens unseen in training become UNK. Special-token text such as
        "<|endoftext|>" is ordinary text here."""
        return [self.compact.get(t, UNK) for t in gpt2_encoding().encode_ordinary(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of compact ids: EOS and SEP give "", UNK gives "\\ufffd"; bytes that are not valid UTF-8 (a cut
        multi-byte character) are replaced by "\\ufffd" too."""
        enc, out = gpt2_encoding(), []
        for i in map(int, ids):
            if not 0 <= i < self.size:
                raise ValueError(f"id {i} is outside the vocabulary (size {self.size})")
            if i >= self.N_SPECIAL:
                out.append(enc.decode_single_token_bytes(self.gpt2_ids[i - self.N_SPECIAL]))
            elif i == UNK:
                out.append(UNK_TEXT.encode())
        return b"".join(out).decode("utf-8", errors="replace")

    def unseen_rate(self, texts: Iterable[str]) -> float:
        """Fraction of the GPT-2 tokens of `texts` that are not in the vocabulary (0.0 for no tokens)."""
        total = unseen = 0
        for text in texts:
            tokens = gpt2_encoding().encode_ordinary(text)
            total += len(tokens)
            unseen += sum(t not in self.compact for t in tokens)
        return unseen / total if total else 0.0

    def to_dict(self) -> dict:
        """Plain lists only: safe in a checkpoint loaded with torch.load(weights_only=True)."""
        return {"gpt2_ids": list(self.gpt2_ids)}

    @classmethod
    def from_dict(cls, d: dict) -> CompactVocab:
        if not isinstance(d, dict) or not isinstance(d.get("gpt2_ids"), list):
            raise ValueError("not a CompactVocab dict: expected {'gpt2_ids': [int, ...]} (from CompactVocab.to_dict)")
        return cls(d["gpt2_ids"])


def encode_example(vocab: CompactVocab, ex: Example, max_len: int) -> tuple[list[int], int]:
    """ids = prompt, SEP, completion, EOS (at most max_len ids) and n_prompt, the number of prompt tokens kept
    (ids[n_prompt] is SEP). A prompt too long is cut from its left (its start is dropped) so that the
    completion always fits whole; a completion that cannot fit raises ValueError."""
    prompt, completion = vocab.encode(ex.prompt), vocab.encode(ex.completion)
    room = max_len - len(completion) - 2
    if room < 0:
        raise ValueError(f"a completion of {len(completion)} tokens (+ SEP + EOS) does not fit in {max_len} "
                         f"tokens: use a larger block size")
    prompt = prompt[max(0, len(prompt) - room):]
    return prompt + [SEP] + completion + [EOS], len(prompt)


def prompt_ids(vocab: CompactVocab, ex: Example, max_prompt_len: int) -> list[int]:
    """What decoding starts from: prompt tokens then SEP, at most max_prompt_len ids (prompt cut from its left)."""
    if max_prompt_len < 1:
        raise ValueError(f"max_prompt_len must be >= 1 (room for SEP), got {max_prompt_len}")
    prompt = vocab.encode(ex.prompt)
    return prompt[max(0, len(prompt) - max_prompt_len + 1):] + [SEP]


class TaskData:
    """Encoded examples, each cut to fit one block_size window (block_size + 1 ids), and deterministic batches.
    Examples whose completion alone cannot fit are left out and counted in `skipped` (report it)."""

    def __init__(self, vocab: CompactVocab, examples: list[Example], block_size: int):
        self.vocab, self.block_size = vocab, block_size
        self.encoded = [encode_example(vocab, ex, block_size + 1) for ex in examples
                        if len(vocab.encode(ex.completion)) + 2 <= block_size + 1]  # (ids, n_prompt) pairs
        self.skipped = len(examples) - len(self.encoded)
        if not self.encoded:
            raise ValueError(f"none of the {len(examples)} examples fits block_size={block_size}: use a larger one")

    @classmethod
    def from_sequences(cls, vocab: CompactVocab, sequences: list[tuple[list[int], list[int]]],
                       block_size: int) -> TaskData:
        """Training data from token ids: (prompt ids ending with SEP, completion ids) pairs, e.g. the model's own
        greedy continuations (self-distillation: ids as generated, never re-tokenised). Pairs longer than
        block_size + 1 ids are left out (`skipped`)."""
        data = cls.__new__(cls)
        data.vocab, data.block_size = vocab, block_size
        data.encoded = [(p + c, len(p) - 1) for p, c in sequences if len(p) + len(c) <= block_size + 1]
        data.skipped = len(sequences) - len(data.encoded)
        if not data.encoded:
            raise ValueError(f"none of the {len(sequences)} sequences fits block_size={block_size}")
        return data

    def batch(self, step: int, batch_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Examples drawn with replacement, a function of (step, seed) only, right-padded with EOS to the
        longest one. Returns idx (B, T), targets (B, T) with targets[:, t] = x[t+1] (-1 on padding) and
        loss_mask (B, T), True exactly where targets[:, t] is a completion token or the final EOS."""
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        picks = [self.encoded[i] for i in torch.randint(0, len(self.encoded), (batch_size,), generator=g).tolist()]
        T = max(len(ids) for ids, _ in picks) - 1
        x = torch.full((batch_size, T + 1), EOS, dtype=torch.long)
        targets = torch.full((batch_size, T), -1, dtype=torch.long)
        loss_mask = torch.zeros((batch_size, T), dtype=torch.bool)
        for b, (ids, n) in enumerate(picks):
            x[b, :len(ids)] = torch.tensor(ids)
            targets[b, :len(ids) - 1] = x[b, 1:len(ids)]
            loss_mask[b, n:len(ids) - 1] = True  # position n holds SEP: it predicts the first completion token
        return x[:, :-1], targets, loss_mask


# --------------------------------------------------------------------------------------------------------------------
# `python data.py download --to DIR` (`make data`): the data sets from their public sources, each file checked
# against the sha256 of the copy in ../shared/data, so a download is byte-identical to what the results used.

GITHUB_RAW = "https://raw.githubusercontent.com"
SOURCES = {  # local folder -> (GitHub repository, commit, folder inside the repository) of each data set
    "e2e": ("tuetschek/e2e-dataset", "ab0d967dd5729ce455ef14ba9ffafc456a335264", ""),
    "text2sql": ("jkkummerfeld/text2sql-data", "5050bad2309a93636ea4788d3660c9202bf11e0e", "data/"),
    "dialogsum": ("cylnlp/dialogsum", "848cc8c05e0a04def79326539de827f1b28786a0", "DialogSum_Data/"),
}
FILES = {  # local path -> (size in bytes, sha256)
    "e2e/devset.csv": (1161305, "fc26b78cdb849c80545f513b223d1e051138b43882eeb79e3eb153e689c864f9"),
    "e2e/testset_w_refs.csv": (1310822, "edc8db685e39bb9824d5bd70c18b1c9b0412d14b527aa960e2d1c8251ee15ccd"),
    "text2sql/atis.json": (4038696, "ce2d0bf341718061dc0e2ecc50d200b191121c762bb29c24b28749a2ebc9f4c7"),
    "text2sql/geography.json": (306096, "b20ad8ed357029c9efa49aa64434729f624591850f66b1137cabcc0e45273c1b"),
    "text2sql/geography-db.added-in-2020.sqlite":
        (65536, "98955372123cd9a8e761b00c2c67fbf221f1b8699927add538b53154c702dd3c"),
    "dialogsum/dialogsum.dev.jsonl": (471830, "436721e0a3571eef7072964f80e042fb151d8c6178db1a688ce8f803bbf0a13f"),
    "dialogsum/dialogsum.test.jsonl": (639707, "6de36eca7e7b9b10975fd5ea3f47391df172d8b3c15d03d84d763cbaab015fda"),
}


def source_url(path: str, base_url: str = GITHUB_RAW) -> str:
    """Where `path` (e.g. "e2e/devset.csv") lives upstream: <base_url>/<repository>/<commit>/<folder><file>."""
    folder, name = path.split("/")
    repo, commit, prefix = SOURCES[folder]
    return f"{base_url.rstrip('/')}/{repo}/{commit}/{prefix}{name}"


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(url: str, dest: pathlib.Path, sha256: str, bar: tqdm):
    """Download `url` to `dest` atomically: into a temporary file next to it, renamed to `dest` only once its
    sha256 matches. Raises ConnectionError (unreachable) or ValueError (other content), both naming the file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=60) as response:
                    for chunk in iter(lambda: response.read(1 << 16), b""):
                        out.write(chunk)
                        h.update(chunk)
                        bar.update(len(chunk))
            except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as e:
                raise ConnectionError(
                    f"cannot download {url} ({getattr(e, 'reason', e)}). Without network: copy the data folder "
                    f"(e2e/, text2sql/, dialogsum/) from a machine that has it, and pass --data-dir DIR (or set "
                    f"SPECSTREAM_DATA=DIR) to train_task.py and bench.py") from None
        if h.hexdigest() != sha256:
            raise ValueError(f"{dest.name}: the sha256 of {url} is {h.hexdigest()}, expected {sha256}: the file is "
                             f"corrupted or not the pinned version (data.SOURCES); nothing was written")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def download(to: str | os.PathLike, base_url: str = GITHUB_RAW, quiet: bool = False) -> list[pathlib.Path]:
    """Fetch every file of FILES into `to`, laid out like ../shared/data (e2e/, text2sql/, dialogsum/). Files
    already there with the right sha256 are kept, so a second run downloads nothing. Returns the local paths."""
    to = pathlib.Path(to)
    if to.exists() and not to.is_dir():
        raise ValueError(f"{to} is a file, not a folder — give --to the folder to download into")
    todo = [p for p in FILES if not ((to / p).is_file() and sha256_of(to / p) == FILES[p][1])]
    with tqdm(total=sum(FILES[p][0] for p in todo), unit="B", unit_scale=True, desc="download", disable=quiet,
              dynamic_ncols=True) as bar:
        for p in todo:
            bar.set_postfix_str(p)
            fetch(source_url(p, base_url), to / p, FILES[p][1], bar)
    return [to / p for p in FILES]


def main(argv: list[str] | None = None):
    p = ArgumentParser(prog="data.py", description="The real-task data sets. `download` fetches E2E, ATIS + "
                       "GeoQuery and DialogSum from GitHub at pinned commits (data.SOURCES) and checks each file's "
                       "sha256.")
    commands = p.add_subparsers(dest="command", required=True)
    d = commands.add_parser("download", help="fetch the data sets into a folder (then use it as --data-dir)")
    d.add_argument("--to", required=True, help="destination folder (created; e2e/, text2sql/, dialogsum/ inside)")
    d.add_argument("--base-url", default=GITHUB_RAW, help=f"where <repository>/<commit>/<path> are served "
                   f"(default {GITHUB_RAW}; a file:// URL for a local mirror)")
    args = p.parse_args(argv)
    try:
        download(args.to, args.base_url)
    except (ConnectionError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    print(f"{len(FILES)} files in {args.to}, sha256 checked: use them with --data-dir {args.to} "
          f"(or SPECSTREAM_DATA={args.to})")


if __name__ == "__main__":
    main()
