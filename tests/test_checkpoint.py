"""Tests of checkpoint.py: training checkpoints round-trip bit for bit, are written atomically and fail with clear
errors (the portable safetensors format is tested with the validation kit, test_validate.py)."""
import json
import os
from dataclasses import asdict

import pytest
import torch

from checkpoint import load_model, save_checkpoint, write_atomic
from helpers import ATOL, make_model, tokens
from model import GPT


def save_pt(obj, path):
    """A raw .pt file, written the way checkpoints are."""
    write_atomic(str(path), lambda tmp: torch.save(obj, tmp))


def test_checkpoint_round_trip(tiny_config, tmp_path):
    model = make_model(tiny_config(lora_rank=2, prune_rank=2), seed=36, lora_b=True)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(str(path), model, step=7)
    save_checkpoint(str(path), model, step=8)  # overwrite
    assert os.listdir(tmp_path) == ["ckpt.pt"]
    loaded = load_model(str(path)).double().eval()
    assert loaded.config == model.config
    assert torch.load(path, weights_only=True)["step"] == 8
    idx = tokens(model.config, 2, 12)
    with torch.no_grad():
        a, b = model(idx), loaded(idx)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.stream_logits, b.stream_logits)


def test_checkpoint_of_a_merged_lora_model_round_trips(tiny_config, tmp_path):
    """Saving after merge_lora must not apply the LoRA update twice after loading."""
    model = make_model(tiny_config(lora_rank=2), seed=37, lora_b=True)
    model.merge_lora()
    path = tmp_path / "merged.pt"
    save_checkpoint(str(path), model)
    loaded = load_model(str(path)).double().eval()
    idx = tokens(model.config, 1, 10)
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx).logits, model(idx).logits, atol=ATOL, rtol=0)


def test_save_is_atomic(tiny_config, tmp_path):
    model = make_model(tiny_config(), seed=38)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(str(path), model)
    before = path.read_bytes()
    with pytest.raises(Exception):
        save_checkpoint(str(path), model, bad=lambda: 0)  # not serialisable: fails half-way
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no temp file left behind
    assert path.read_bytes() == before  # the old checkpoint is intact
    load_model(str(path))
    save_pt({"a": torch.zeros(2)}, tmp_path / "sub" / "x.pt")  # creates the folder
    assert os.listdir(tmp_path / "sub") == ["x.pt"]


def test_checkpoint_errors(tiny_config, tmp_path):
    with pytest.raises(FileNotFoundError):
        load_model(str(tmp_path / "missing.pt"))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(os.urandom(2048))
    with pytest.raises(ValueError, match="corrupt"):
        load_model(str(corrupt))
    small = GPT(tiny_config(n_embd=16))
    big_cfg = tiny_config(n_embd=32)
    mism = tmp_path / "mismatch.pt"
    save_pt(dict(config=asdict(big_cfg), model=small.state_dict()), mism)
    with pytest.raises(ValueError, match="shape"):
        load_model(str(mism))
    unknown = tmp_path / "unknown.pt"
    save_pt(dict(config=dict(asdict(small.config), foo=1), model=small.state_dict()), unknown)
    with pytest.raises(ValueError, match="foo"):
        load_model(str(unknown))
    streams = tmp_path / "streams.pt"  # weights of a γ=3 model under a γ=0 config: unexpected stream_emb
    save_pt(dict(config=asdict(tiny_config(n_streams=0)), model=small.state_dict()), streams)
    with pytest.raises(ValueError, match="stream_emb"):
        load_model(str(streams))
    bad_cfg = tmp_path / "badcfg.pt"
    save_pt(dict(config=dict(asdict(small.config), dropout=2.0), model=small.state_dict()), bad_cfg)
    with pytest.raises(ValueError, match="dropout"):
        load_model(str(bad_cfg))
    no_model = tmp_path / "nomodel.pt"
    save_pt(dict(config=asdict(small.config)), no_model)
    with pytest.raises(ValueError):
        load_model(str(no_model))
    not_dict = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), not_dict)
    with pytest.raises(ValueError):
        load_model(str(not_dict))


def test_non_finite_weights_are_refused_with_the_tensor_named(tiny_config, tmp_path):
    """One NaN in a checkpoint or in the portable safetensors: loading stops and names the tensor (it would decode
    to an empty output silently)."""
    from checkpoint import export_portable, load_portable
    model = make_model(tiny_config(), seed=39).float()
    with torch.no_grad():
        model.transformer.h[1].mlp.c_fc.weight[3, 2] = float("nan")
    save_checkpoint(str(tmp_path / "nan.pt"), model)
    with pytest.raises(ValueError, match=r"nan.pt: tensor transformer.h.1.mlp.c_fc.weight holds 1 NaN or inf"):
        load_model(str(tmp_path / "nan.pt"))
    with torch.no_grad():
        model.transformer.h[1].mlp.c_fc.weight[3, 2] = 0.0
    save_checkpoint(str(tmp_path / "ok.pt"), model)
    export_portable(str(tmp_path / "ok.pt"), str(tmp_path / "portable"))
    from safetensors.torch import load_file, save_file
    weights = load_file(str(tmp_path / "portable" / "model.safetensors"))
    weights["transformer.wpe.weight"][0, 0] = float("inf")
    save_file(weights, str(tmp_path / "portable" / "model.safetensors"))
    with pytest.raises(ValueError, match="tensor transformer.wpe.weight holds 1 NaN or inf"):
        load_portable(str(tmp_path / "portable"))


def test_broken_portable_files_name_the_file(tiny_config, tmp_path):
    """A truncated or garbage safetensors file, an invalid config.json and a config without the model's shape each
    get one clear error that names the file."""
    from checkpoint import export_portable, load_portable
    save_checkpoint(str(tmp_path / "ok.pt"), make_model(tiny_config(), seed=40).float())
    folder = tmp_path / "portable"
    export_portable(str(tmp_path / "ok.pt"), str(folder))
    weights = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(weights[:len(weights) // 2])
    with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors file"):
        load_portable(str(folder))
    (folder / "model.safetensors").write_bytes(weights)
    config = (folder / "config.json").read_text()
    (folder / "config.json").write_text(config[:-10])
    with pytest.raises(ValueError, match=r"config.json: line \d+: not valid JSON"):
        load_portable(str(folder))
    broken = json.loads(config)
    del broken["specstream"]["n_embd"]
    (folder / "config.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match=r"the config lacks \['n_embd'\]"):
        load_portable(str(folder))


def test_export_into_an_earlier_export_or_a_file(tiny_config, tmp_path):
    """Exporting over an earlier export leaves no file of the old one (its vocabulary.json would describe other
    weights); a path that is a file is refused."""
    from checkpoint import export_portable
    save_checkpoint(str(tmp_path / "words.pt"), make_model(tiny_config(), seed=41).float(),
                    vocabulary=[f"w{i}" for i in range(64)])
    save_checkpoint(str(tmp_path / "plain.pt"), make_model(tiny_config(), seed=42).float())
    export_portable(str(tmp_path / "words.pt"), str(tmp_path / "out"))
    assert (tmp_path / "out" / "vocabulary.json").exists()
    export_portable(str(tmp_path / "plain.pt"), str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "model.safetensors"]
    with pytest.raises(ValueError, match="is a file, not a folder"):
        export_portable(str(tmp_path / "plain.pt"), str(tmp_path / "plain.pt"))



def test_a_full_disk_leaves_no_temporary_file(tmp_path, monkeypatch):
    """write_json on a full disk: the error comes through, and neither the file nor a temporary one is left."""
    import errno
    import checkpoint

    def no_space(obj, f, **kwargs):
        f.write("{")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.json, "dump", no_space)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.write_json(str(tmp_path / "cache.json"), {"a": 1})
    assert os.listdir(tmp_path) == []
