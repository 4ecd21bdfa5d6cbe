"""Tests of data.py: the loaders on the real data sets (skipped without ../shared/data or $SPECSTREAM_DATA),
data-folder resolution, clear errors for missing or malformed files, the compact vocabulary, and training
batches (loss exactly on completion + EOS, padding ignored, prompts cut from the left)."""
import io
import json
import os
import re
import subprocess
import sys

import pytest
import torch

import data
from data import EOS, SEP, UNK, CompactVocab, Example, TaskData, encode_example, load_task, prompt_ids


def _real_data_dir():
    try:
        return data.resolve_data_dir()
    except FileNotFoundError:
        return None


REAL = _real_data_dir()
needs_data = pytest.mark.skipif(REAL is None, reason="no data folder (../shared/data or $SPECSTREAM_DATA): "
                                                     "the real-data tests need the data sets")
TOKENIZER_FILES = os.environ.get("TIKTOKEN_CACHE_DIR") or (str(data.TIKTOKEN_CACHE) if data.TIKTOKEN_CACHE.is_dir() else None)
needs_tokenizer = pytest.mark.skipif(TOKENIZER_FILES is None or not os.path.isdir(TOKENIZER_FILES),
                                     reason="the GPT-2 tokenizer files are not on this machine (../shared/tiktoken_cache"
                                            " or $TIKTOKEN_CACHE_DIR), and tests never download")
COUNTS = {"e2e": {"train": 4245, "dev": 51, "test": 630}, "sql": {"train": 4347, "dev": 486, "test": 447},
          "dialogsum": {"train": 500, "test": 500}}


@pytest.fixture(scope="module")
def real():
    """{(task, split): examples} for every task and split of the real data."""
    return {(task, split): load_task(task, split) for task, splits in data.SPLITS.items() for split in splits}


def training_texts(examples):
    return [t for ex in examples for t in (ex.prompt, ex.completion, *ex.references)]


# ------------------------------------------------------------------------------------------------------------
# loaders on the real data
# ------------------------------------------------------------------------------------------------------------

@needs_data
def test_counts(real):
    assert {task: {split: len(real[task, split]) for split in splits} for task, splits in data.SPLITS.items()} == COUNTS
    assert data.task_summary("e2e") == COUNTS["e2e"]


@needs_data
def test_e2e_references_grouped(real):
    train, test = real["e2e", "train"], real["e2e", "test"]
    assert sum(len(ex.references) for ex in test) == 4693  # every row of testset_w_refs.csv, grouped by MR
    assert len({ex.prompt for ex in test}) == 630
    assert all(ex.completion == ex.references[0] for ex in test)
    first = test[0]
    assert first.prompt == "name[Blue Spice], eatType[coffee shop], area[city centre]"
    assert first.references == ["A coffee shop in the city centre area called Blue Spice.",
                                "Blue Spice is a coffee shop in city centre."]
    alimentum = [ex for ex in train if ex.prompt == train[0].prompt]
    assert len(alimentum) == 6 and all(ex.references == [a.completion for a in alimentum] for ex in alimentum)
    assert len({ex.prompt for ex in train}) == 547 - 51  # the dev split holds out 51 whole MRs


@needs_data
def test_sql_variables_filled(real):
    entries = json.loads((REAL / "text2sql" / "atis.json").read_text())
    names = {v["name"] for e in entries for v in e["variables"]}
    names |= {n for e in entries for s in e["sentences"] for n in s["variables"]}
    placeholder = re.compile(r"\b(" + "|".join(sorted(names, key=len, reverse=True)) + r")\b")
    examples = [ex for split in ("train", "dev", "test") for ex in real["sql", split]]
    assert not [ex.completion for ex in examples if placeholder.search(ex.completion)]
    # one question of atis.json names departure_time2, which has no value anywhere in its entry (a data defect)
    left = [ex.prompt for ex in examples if placeholder.search(ex.prompt)]
    assert left == ["show me the flights from BOSTON to PITTSBURGH next wednesday night after departure_time2 o'clock"]
    first = real["sql", "train"][0]
    assert first.prompt == "list all the flights that arrive at MKE from various cities"
    assert 'AIRPORTalias0.AIRPORT_CODE = "MKE"' in first.completion and first.references == [first.completion]
    assert all(ex.completion.startswith("SELECT") or ex.completion.startswith("(") for ex in examples)


@needs_data
def test_dialogsum(real):
    train, test = real["dialogsum", "train"], real["dialogsum", "test"]
    assert train[0].prompt.startswith("#Person1#: Hello, how are you doing today?")
    assert train[0].completion.startswith("#Person2# has trouble breathing.")
    assert all(ex.references == [ex.completion] for ex in train)
    assert all(len(ex.references) == 3 and ex.completion == ex.references[0] for ex in test)
    assert test[0].references[2].startswith("Ms. Dawson takes a dictation for #Person1#")


# ------------------------------------------------------------------------------------------------------------
# data folder and bad data
# ------------------------------------------------------------------------------------------------------------

def test_resolve_data_dir(tmp_path, monkeypatch):
    explicit, env = tmp_path / "a", tmp_path / "b"
    explicit.mkdir(), env.mkdir()
    monkeypatch.setenv("SPECSTREAM_DATA", str(env))
    assert data.resolve_data_dir(explicit) == explicit  # the argument wins over the environment
    assert data.resolve_data_dir() == env
    monkeypatch.delenv("SPECSTREAM_DATA")
    monkeypatch.setattr(data, "DEFAULT_DATA_DIR", tmp_path)
    assert data.resolve_data_dir() == tmp_path
    for missing in (tmp_path / "nope", None):
        monkeypatch.setattr(data, "DEFAULT_DATA_DIR", tmp_path / "nowhere")
        with pytest.raises(FileNotFoundError, match="--data-dir.*SPECSTREAM_DATA"):
            data.resolve_data_dir(missing)
    monkeypatch.setenv("SPECSTREAM_DATA", str(tmp_path / "gone"))
    with pytest.raises(FileNotFoundError, match="gone.*SPECSTREAM_DATA"):
        data.resolve_data_dir()


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def own_data(monkeypatch):
    """Data files of our own making (not the published content): accepted only with use_unverified_data."""
    monkeypatch.setattr(data, "ALLOW_UNVERIFIED", True)


def test_bad_data(tmp_path, own_data):
    with pytest.raises(FileNotFoundError, match="devset.csv"):
        load_task("e2e", "train", tmp_path)
    write(tmp_path / "e2e" / "devset.csv", 'meaning,ref\n"name[X]",X is.\n')
    with pytest.raises(ValueError, match=r"devset.csv: line 1: .*\['mr'\]"):
        load_task("e2e", "train", tmp_path)
    write(tmp_path / "e2e" / "devset.csv", 'mr,ref\n"name[X]",X is.\n"name[Y]",\n')
    with pytest.raises(ValueError, match=r"devset.csv: line 3: .*\['ref'\]"):
        load_task("e2e", "train", tmp_path)
    write(tmp_path / "dialogsum" / "dialogsum.dev.jsonl", '{"dialogue": "a", "summary": "b"}\n{"dialogue": \n')
    with pytest.raises(ValueError, match="dialogsum.dev.jsonl: line 2: not valid JSON"):
        load_task("dialogsum", "train", tmp_path)
    write(tmp_path / "dialogsum" / "dialogsum.dev.jsonl", '{"dialogue": "a", "summary": "b"}\n\n{"dialogue": "c"}\n')
    with pytest.raises(ValueError, match=r"dialogsum.dev.jsonl: line 3: .*summary"):
        load_task("dialogsum", "train", tmp_path)
    write(tmp_path / "text2sql" / "atis.json", json.dumps([{"sql": [], "sentences": [], "variables": []}]))
    with pytest.raises(ValueError, match="atis.json: entry 0: malformed"):
        load_task("sql", "train", tmp_path)
    (tmp_path / "e2e" / "devset.csv").write_bytes(b"mr,ref\n\xff\xfe\x00binary")
    with pytest.raises(ValueError, match=r"devset.csv: not UTF-8 text .* — give the data set's text file"):
        load_task("e2e", "train", tmp_path)
    with pytest.raises(ValueError, match=r"is a file, not a folder — give --to"):
        data.download(tmp_path / "e2e" / "devset.csv", quiet=True)
    with pytest.raises(ValueError, match="unknown task"):
        load_task("geo", "train", tmp_path)
    with pytest.raises(ValueError, match="no split 'dev'"):
        load_task("dialogsum", "dev", tmp_path)


def test_sql_filling(tmp_path, own_data):
    """Sentence values first, else the entry's example; whole words only (city_name1 is not in city_name10)."""
    entry = {"sql": ['SELECT X FROM T WHERE A = "city_name1" AND B = "city_name10" AND C = year0 ;', "SELECT 2"],
             "variables": [{"name": "city_name1", "example": "BOSTON"}, {"name": "city_name10", "example": "ROME"},
                           {"name": "year0", "example": "1991"}],
             "sentences": [{"text": "city_name1 to city_name10 in year0", "question-split": "train",
                            "variables": {"city_name1": "DENVER"}},
                           {"text": "from city_name1", "question-split": "test", "variables": {}}]}
    write(tmp_path / "text2sql" / "atis.json", json.dumps([entry]))
    [ex] = load_task("sql", "train", tmp_path)
    assert ex.prompt == "DENVER to ROME in 1991"
    assert ex.completion == 'SELECT X FROM T WHERE A = "DENVER" AND B = "ROME" AND C = 1991 ;' == ex.references[0]
    assert [ex.prompt for ex in load_task("sql", "test", tmp_path)] == ["from BOSTON"]


# ------------------------------------------------------------------------------------------------------------
# vocabulary
# ------------------------------------------------------------------------------------------------------------

@needs_data
@needs_tokenizer
def test_vocab_round_trip_on_training_text(real):
    for task in data.SPLITS:
        texts = training_texts(real[task, "train"])
        vocab = CompactVocab.build(texts)
        enc = data.gpt2_encoding()
        assert vocab.size == 3 + len({t for text in texts for t in enc.encode_ordinary(text)})
        assert vocab.unseen_rate(texts) == 0.0
        for text in texts:
            ids = vocab.encode(text)
            assert UNK not in ids and vocab.decode(ids) == text, (task, text)


@needs_tokenizer
def test_vocab_specials_and_unk():
    enc = data.gpt2_encoding()
    assert enc.encode_ordinary("hello world hello") == [31373, 995, 23748]  # "hello", " world", " hello"
    vocab = CompactVocab.build(["hello world"])
    assert (vocab.EOS, vocab.SEP, vocab.UNK, vocab.size) == (0, 1, 2, 5)
    assert vocab.gpt2_ids == [995, 31373] and vocab.encode("hello world") == [4, 3]  # increasing GPT-2 ids
    assert vocab.encode("hello world hello") == [4, 3, UNK]
    assert vocab.decode([EOS, 4, SEP, 3, UNK, EOS]) == "hello world\ufffd"
    assert vocab.unseen_rate(["hello world hello"]) == pytest.approx(1 / 3)
    assert vocab.unseen_rate(["hello world", " hello hello"]) == pytest.approx(2 / 4)
    assert vocab.unseen_rate([]) == 0.0
    assert vocab.encode("<|endoftext|>") == [UNK] * len(enc.encode_ordinary("<|endoftext|>"))  # ordinary text
    with pytest.raises(ValueError, match="outside the vocabulary"):
        vocab.decode([5])


@needs_tokenizer
def test_vocab_to_dict_round_trip():
    vocab = CompactVocab.build(["The Eagle is a coffee shop.", "naïve café ☕"])
    buf = io.BytesIO()
    torch.save({"vocab": vocab.to_dict()}, buf)
    buf.seek(0)
    again = CompactVocab.from_dict(torch.load(buf, weights_only=True)["vocab"])
    assert again.gpt2_ids == vocab.gpt2_ids and again.size == vocab.size
    assert again.decode(again.encode("naïve café ☕")) == "naïve café ☕"
    with pytest.raises(ValueError, match="not a CompactVocab dict"):
        CompactVocab.from_dict({"ids": [1]})
    with pytest.raises(ValueError, match="GPT-2 ids must lie"):
        CompactVocab([10 ** 6])


def test_tokenizer_offline():
    """A fresh process without TIKTOKEN_CACHE_DIR loads GPT-2 from ../shared/tiktoken_cache (no network here)."""
    if not data.TIKTOKEN_CACHE.is_dir():
        pytest.skip(f"{data.TIKTOKEN_CACHE} is absent (tiktoken downloads the files where there is internet)")
    env = {k: v for k, v in os.environ.items() if k != "TIKTOKEN_CACHE_DIR"}
    code = "import os, data; print(data.gpt2_encoding().encode('hello world'), os.environ['TIKTOKEN_CACHE_DIR'])"
    out = subprocess.run([sys.executable, "-c", code], cwd=data.ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[31373,", "995]", str(data.TIKTOKEN_CACHE)]


# ------------------------------------------------------------------------------------------------------------
# sequences and batches
# ------------------------------------------------------------------------------------------------------------

WORDS = "one two three four five six seven eight nine ten"


def small_vocab():
    return CompactVocab.build([WORDS])


@needs_tokenizer
def test_encode_example_layout_and_truncation():
    vocab = small_vocab()
    ex = Example("one two three four", " five six", [" five six"])
    prompt, completion = vocab.encode(ex.prompt), vocab.encode(ex.completion)
    ids, n = encode_example(vocab, ex, 100)
    assert ids == prompt + [SEP] + completion + [EOS] and n == len(prompt) == 4
    ids, n = encode_example(vocab, ex, 6)  # room for 2 prompt tokens: the last two are kept
    assert ids == prompt[-2:] + [SEP] + completion + [EOS] and n == 2
    ids, n = encode_example(vocab, ex, 4)  # no prompt token left, the completion is whole
    assert ids == [SEP] + completion + [EOS] and n == 0
    with pytest.raises(ValueError, match="does not fit in 3 tokens"):
        encode_example(vocab, ex, 3)
    assert prompt_ids(vocab, ex, 100) == prompt + [SEP]
    assert prompt_ids(vocab, ex, 3) == prompt[-2:] + [SEP]
    with pytest.raises(ValueError, match="max_prompt_len"):
        prompt_ids(vocab, ex, 0)


@needs_tokenizer
def test_batch_loss_mask_exact():
    vocab = small_vocab()
    examples = [Example("one two three", " four five", []), Example("six", " seven", [])]
    seqs = [encode_example(vocab, ex, 100) for ex in examples]
    td = TaskData(vocab, examples, block_size=16)
    idx, targets, mask = td.batch(step=3, batch_size=8)
    assert idx.shape == targets.shape == mask.shape and mask.dtype == torch.bool
    assert idx.shape[1] == max(len(ids) for ids, _ in seqs) - 1 <= 16
    seen = set()
    for row in range(8):
        k = next(k for k, (ids, _) in enumerate(seqs) if idx[row, :len(ids) - 1].tolist() == ids[:-1])
        (ids, n), L = seqs[k], len(seqs[k][0])
        seen.add(k)
        assert targets[row, :L - 1].tolist() == ids[1:]                       # targets[t] = x[t+1]
        assert (targets[row, L - 1:] == -1).all() and (idx[row, L - 1:] == EOS).all()  # padding
        assert mask[row].nonzero().flatten().tolist() == list(range(n, L - 1))  # from SEP's position on
        assert targets[row][mask[row]].tolist() == vocab.encode(examples[k].completion) + [EOS]
        assert idx[row, n] == SEP
    assert seen == {0, 1}


@needs_tokenizer
def test_batch_deterministic_and_skips():
    vocab = small_vocab()
    words = WORDS.split()
    examples = [Example(" ".join(words[i:i + 3]), " " + " ".join(words[i + 3:i + 3 + i % 4 + 1]), [])
                for i in range(6)]
    td = TaskData(vocab, examples, block_size=8)
    a, b = td.batch(5, 4, seed=1), td.batch(5, 4, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(td.batch(6, 4, seed=1)[0], a[0]) and not torch.equal(td.batch(5, 4, seed=2)[0], a[0])
    assert td.skipped == 0
    short = TaskData(vocab, examples, block_size=4)  # completions of 1, 2, 3, 4, 1, 2 tokens; 5 ids fit
    assert short.skipped == 1 and [len(ids) for ids, _ in short.encoded] == [5] * 5
    with pytest.raises(ValueError, match="none of the 6 examples fits block_size=1"):
        TaskData(vocab, examples, block_size=1)


@needs_data
@needs_tokenizer
def test_batch_on_real_data(real):
    train = real["e2e", "train"]
    vocab = CompactVocab.build(training_texts(train))
    td = TaskData(vocab, train, block_size=64)
    assert td.skipped == sum(len(vocab.encode(ex.completion)) + 2 > 65 for ex in train)
    idx, targets, mask = td.batch(0, 16)
    assert idx.shape[1] <= 64 and ((targets != -1) | ~mask).all()
    for row in range(16):
        sep = (idx[row] == SEP).nonzero().flatten().tolist()
        assert len(sep) == 1 and mask[row].nonzero().flatten()[0] == sep[0]
        assert vocab.decode(targets[row][mask[row]].tolist()) in {ex.completion for ex in train}


@pytest.mark.skipif(not all((data.DEFAULT_DATA_DIR / p).is_file() for p in data.FILES), reason="no reference data")
def test_a_truncated_or_edited_data_file_is_refused(tmp_path, monkeypatch):
    """Every data file is checked against the published size and sha256 when it is loaded; other content is read
    only after use_unverified_data(), and unverified_files() then names it."""
    folder = tmp_path / "data"
    (folder / "e2e").mkdir(parents=True)
    original = (data.DEFAULT_DATA_DIR / "e2e" / "devset.csv").read_bytes()
    (folder / "e2e" / "devset.csv").write_bytes(original[:len(original) // 2])  # cut mid-file
    with pytest.raises(ValueError, match=r"devset.csv has 580,652 bytes, not 1,161,305 \(truncated.*make data.*"
                                         r"--unverified-data"):
        load_task("e2e", "train", folder)
    (folder / "e2e" / "devset.csv").write_bytes(original.replace(b"Aromi", b"Aroma", 1))  # same size, edited
    with pytest.raises(ValueError, match="devset.csv has other content than the published file"):
        load_task("e2e", "train", folder)
    monkeypatch.setattr(data, "ALLOW_UNVERIFIED", True)
    monkeypatch.setattr(data, "_UNVERIFIED", set())
    assert len(load_task("e2e", "train", folder)) > 0
    assert data.unverified_files() == [str(folder / "e2e" / "devset.csv")]
    (folder / "e2e" / "devset.csv").write_bytes(original)  # the published file again: verified, and remembered
    monkeypatch.setattr(data, "ALLOW_UNVERIFIED", False)
    assert load_task("e2e", "train", folder) == load_task("e2e", "train")
    assert str(folder / "e2e" / "devset.csv") in data._VERIFIED

