"""Saving and loading weights.

Two formats:
  - training checkpoints (.pt): the GPTConfig, the model's (unmerged) weights and whatever a training stage adds
    (optimizer, step, history, vocabulary, ...), written by `save_checkpoint`, read by `read_checkpoint` /
    `load_model`;
  - the portable format other implementations read (`export_portable`, `load_portable`): model.safetensors with
    Hugging Face GPT-2 names for the base, config.json (GPT-2's fields plus our GPTConfig under "specstream")
    and vocabulary.json. `load_hf_gpt2` reads a Hugging Face GPT-2 folder.

Every file is written through `write_atomic`: a crash never leaves half a file.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import tempfile
from typing import Callable

import torch
import torch.nn as nn

from cli import warn
from model import GPT, GPTConfig, LoRALinear, is_stream_param


def write_atomic(path: str, write: Callable[[str], None]) -> str:
    """Call write(tmp) on a temporary file in the folder of `path`, then rename it to `path` (atomic on POSIX).
    The folder is created if needed; on any error the temporary file is removed and `path` is left as it was."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def write_json(path: str, obj, indent: int | None = 1) -> str:
    """JSON (indented by `indent` spaces, None: compact), atomically."""
    def dump(tmp: str):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=indent)
            f.write("\n")
    return write_atomic(path, dump)


# ---- training checkpoints (.pt) ----

def save_checkpoint(path: str, model: GPT, **entries) -> str:
    """config + weights (+ entries: tensors, numbers, strings, lists, dicts) in one .pt file, atomically.
    Checkpoints always hold unmerged weights (see GPT.merge_lora); a merged model is merged again afterwards."""
    merged = [m for m in model.modules() if isinstance(m, LoRALinear) and m.merged]
    model.merge_lora(False)
    try:
        obj = dict(config=dataclasses.asdict(model.config), model=model.state_dict(), **entries)
        return write_atomic(path, lambda tmp: torch.save(obj, tmp))
    finally:
        for m in merged:
            m.merge(True)


def read_checkpoint(path: str, map_location="cpu") -> dict:
    """The dict saved by `save_checkpoint`, with clear errors for a missing, corrupt or foreign file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist — train it first (python train_toy.py, "
                                f"python train_task.py) or check the path")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"checkpoint {path} is corrupt or not a torch file ({type(e).__name__}: {e}) — "
                         f"delete it and train again") from e
    if not isinstance(ckpt, dict):
        raise ValueError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a checkpoint's dict — give a .pt "
                         f"file that train_toy.py or train_task.py wrote")
    return ckpt


def load_model(path: str, map_location="cpu") -> GPT:
    """The GPT of a checkpoint file, in training mode as nn.Module makes it (call .eval() to decode). A checkpoint
    of an interrupted stage loads with a warning that says so."""
    ckpt = read_checkpoint(path, map_location)
    if "config" not in ckpt or "model" not in ckpt:
        raise ValueError(f"{path} is not a specstream checkpoint (it lacks 'config' or 'model') — give a .pt file "
                         f"that train_toy.py or train_task.py wrote")
    model = GPT(config_from_dict(ckpt["config"], path))
    load_weights(model, ckpt["model"], path)
    if ckpt.get("done") is False:
        warn(f"{path} is an unfinished checkpoint (stage {ckpt.get('stage')!r} stopped at step {ckpt.get('step')}): "
             f"its run was interrupted — run the training command again to finish it")
    return model


def config_from_dict(d: dict, source: str = "checkpoint") -> GPTConfig:
    """GPTConfig(**d), refusing fields this version does not know and a config without the model's shape (a
    default would silently build another model); features added later (e.g. stream_adapter_rank) default to off."""
    if not isinstance(d, dict):
        raise ValueError(f"{source}: the config is a {type(d).__name__}, not a dict of GPTConfig fields")
    known = {f.name for f in dataclasses.fields(GPTConfig)}
    unknown, missing = set(d) - known, {"vocab_size", "block_size", "n_layer", "n_head", "n_embd"} - set(d)
    if unknown:
        raise ValueError(f"{source}: unknown config fields {sorted(unknown)}; was it written by another version?")
    if missing:
        raise ValueError(f"{source}: the config lacks {sorted(missing)} — write it again with this version")
    return GPTConfig(**d)


def load_weights(model: nn.Module, state_dict: dict, source: str = "checkpoint"):
    """load_state_dict with an error that lists what is missing, unexpected or of the wrong shape."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [f"{k}: {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(f"{source} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                         f"shape mismatches {shapes[:5]}")
    check_finite(state_dict, source)
    model.load_state_dict(state_dict)


def check_finite(state_dict: dict[str, torch.Tensor], source: str):
    """Refuse weights holding NaN or inf (a diverged run, a corrupt file): they decode to garbage silently."""
    for name, t in state_dict.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            bad = (~torch.isfinite(t)).sum().item()
            raise ValueError(f"{source}: tensor {name} holds {bad} NaN or inf value(s): the weights are broken — "
                             f"train again or restore the file")


# ---- the portable format: safetensors with Hugging Face GPT-2 names ----

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
BASE_NAME = re.compile(r"transformer\.(wte|wpe|ln_f|h\.\d+\.(ln_1|ln_2|attn\.c_attn|attn\.c_proj|mlp\.c_fc|"
                       r"mlp\.c_proj))\.(weight|bias)")  # the tensors of HF's GPT-2, under the same names


def conv1d_layout(name: str, t: torch.Tensor) -> torch.Tensor:
    """HF GPT-2's Conv1D stores the four projection weights as (in, out), nn.Linear as (out, in): transpose those
    four base tensors, leave every other one. The same call converts in both directions."""
    return t.t() if BASE_NAME.fullmatch(name) and name.endswith(CONV1D) else t


def portable_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """The model with LoRA merged, under Hugging Face GPT-2 names for the base (Conv1D layout) and
    "specstream." + our own name for every other tensor (stream embeddings, pruning adapter, Medusa heads, a
    stream-side adapter). The tied LM head is wte."""
    merged = copy.deepcopy(model).cpu()
    merged.merge_lora()
    plain = GPT(dataclasses.replace(model.config, lora_rank=0))
    source = merged.state_dict()
    plain.load_state_dict({name: source[name] for name in plain.state_dict()})
    out = {}
    for name, t in plain.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied to transformer.wte.weight
        key = name if BASE_NAME.fullmatch(name) else "specstream." + name
        out[key] = conv1d_layout(key, t).contiguous().clone()
    return out


def hf_config(model: GPT, eos_id: int | None) -> dict:
    """config.json: what transformers.GPT2LMHeadModel needs, plus every GPTConfig field under "specstream"."""
    c = model.config
    eos = 0 if eos_id is None else eos_id
    return dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], vocab_size=c.vocab_size,
                n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head, n_inner=None,
                activation_function="gelu_new", layer_norm_epsilon=1e-5, resid_pdrop=0.0, embd_pdrop=0.0,
                attn_pdrop=0.0, tie_word_embeddings=True, bos_token_id=eos, eos_token_id=eos,
                specstream=dataclasses.asdict(dataclasses.replace(c, lora_rank=0)))


def vocabulary_json(vocab, vocab_size: int) -> dict:
    """The token mapping: a word list (toy models: id = index) or a compact GPT-2 vocabulary (task models)."""
    if isinstance(vocab, list):
        out = dict(kind="words", rule="token id i is the word tokens[i]; text = words joined by spaces",
                   tokens=vocab, eos_id=vocab.index("<eos>") if "<eos>" in vocab else None)
        size = len(vocab)
    elif isinstance(vocab, dict) and "gpt2_ids" in vocab:
        out = dict(kind="gpt2-compact", rule="ids 0, 1, 2 are EOS, SEP, UNK; id i >= 3 is the GPT-2 BPE token "
                   "gpt2_ids[i - 3] (tiktoken 'gpt2'); see data.CompactVocab", gpt2_ids=vocab["gpt2_ids"], eos_id=0)
        size = 3 + len(vocab["gpt2_ids"])
    else:
        raise ValueError(f"unknown vocabulary entry of type {type(vocab).__name__}: expected a word list or "
                         f"CompactVocab.to_dict()")
    if size != vocab_size:
        raise ValueError(f"the vocabulary has {size} tokens but the model vocab_size={vocab_size}: wrong vocabulary?")
    return out


def export_portable(checkpoint: str, out_dir: str, vocabulary=None) -> str:
    """CHECKPOINT (.pt) -> OUT_DIR/model.safetensors, config.json and, when known, vocabulary.json (the
    checkpoint's own vocabulary, else `vocabulary`: a word list or CompactVocab.to_dict())."""
    from safetensors.torch import save_file
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"{out_dir} is a file, not a folder — give the folder to export into")
    ckpt = read_checkpoint(checkpoint)
    model = load_model(checkpoint)
    vocab = ckpt.get("vocabulary", vocabulary)
    voc = None if vocab is None else vocabulary_json(vocab, model.config.vocab_size)
    weights = portable_state_dict(model)
    write_atomic(os.path.join(out_dir, "model.safetensors"),
                 lambda tmp: save_file(weights, tmp, metadata={"format": "pt"}))
    write_json(os.path.join(out_dir, "config.json"), hf_config(model, None if voc is None else voc["eos_id"]))
    if voc is not None:
        write_json(os.path.join(out_dir, "vocabulary.json"), voc)
    elif os.path.exists(os.path.join(out_dir, "vocabulary.json")):  # an earlier export's: not these weights'
        os.remove(os.path.join(out_dir, "vocabulary.json"))
    return out_dir


def read_portable(model_dir: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """An `export_portable` folder as (config.json, state dict under our own names, nn.Linear layout, with the
    tied lm_head.weight): what another implementation reads by hand."""
    config = read_json(os.path.join(model_dir, "config.json"))
    weights = {}
    for name, t in read_safetensors(os.path.join(model_dir, "model.safetensors")).items():
        weights[name.removeprefix("specstream.")] = conv1d_layout(name, t)
    weights["lm_head.weight"] = weights["transformer.wte.weight"]
    return config, weights


def read_json(path: str) -> dict:
    """A JSON object from a file, with errors that name the file and the line."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist — write the folder with validate.py export") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f"line {e.lineno}: " if isinstance(e, json.JSONDecodeError) else ""
        raise ValueError(f"{path}: {where}not valid JSON ({e}) — write it again with validate.py export") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a JSON {type(obj).__name__}, not an object — write it again with validate.py "
                         f"export")
    return obj


def read_safetensors(path: str) -> dict[str, torch.Tensor]:
    """safetensors' load_file, with errors that name the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist — write the folder with validate.py export")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e}) — export it again") from None


def load_portable(model_dir: str) -> GPT:
    """Load an `export_portable` folder back into GPT, bit for bit (config.json's "specstream" entry is the
    GPTConfig)."""
    config, weights = read_portable(model_dir)
    if config.get("specstream") is None:
        raise ValueError(f"{model_dir}/config.json has no 'specstream' entry: write it with validate.py export")
    model = GPT(config_from_dict(config["specstream"], model_dir))
    load_weights(model, weights, model_dir)
    return model


def load_hf_gpt2(local_dir: str, n_streams: int = 0, n_msa_layers: int = 0, **overrides) -> GPT:
    """A Hugging Face GPT-2 checkpoint (config.json + model.safetensors or pytorch_model.bin) in a local folder
    as GPT, optionally with streams (their new parameters keep a fresh initialisation)."""
    hf = read_json(os.path.join(local_dir, "config.json"))
    if hf.get("activation_function", "gelu_new") != "gelu_new" or hf.get("layer_norm_epsilon", 1e-5) != 1e-5 \
            or hf.get("n_inner") not in (None, 4 * hf["n_embd"]):
        raise ValueError(f"{local_dir}: only GPT-2's gelu_new activation, layer_norm_epsilon=1e-5 and a 4x MLP "
                         f"are supported by this model")
    config = GPTConfig(vocab_size=hf["vocab_size"], block_size=hf["n_positions"], n_layer=hf["n_layer"],
                       n_head=hf["n_head"], n_embd=hf["n_embd"], bias=True, n_streams=n_streams,
                       n_msa_layers=n_msa_layers, **overrides)
    st, bin_ = os.path.join(local_dir, "model.safetensors"), os.path.join(local_dir, "pytorch_model.bin")
    if os.path.exists(st):
        hf_sd = read_safetensors(st)
    elif os.path.exists(bin_):
        hf_sd = torch.load(bin_, map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"{local_dir} has neither model.safetensors nor pytorch_model.bin")
    hf_sd = {k.removeprefix("transformer."): v for k, v in hf_sd.items()}
    model = GPT(config)
    with torch.no_grad():
        for name, p in model.state_dict().items():
            if "lora_" in name or name.startswith("prune_adapter.") or is_stream_param(name):
                continue  # new parameters: keep their initialisation
            src = hf_sd["wte.weight"] if name == "lm_head.weight" else hf_sd[name.removeprefix("transformer.")]
            p.copy_(conv1d_layout(name, src))
    check_finite(model.state_dict(), local_dir)
    return model
