"""The steering evaluation harness and its scorers, on the tiny random model and a local
OpenAI-compatible HTTP server."""

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import torch

from ssae_lens.generation import generate_texts
from ssae_lens.steering import SteeringVector, steer
from ssae_lens.steering.evaluation import evaluate_steering
from ssae_lens.steering.scorers import (
    KeywordScorer,
    LikelihoodCoherenceScorer,
    LinearProbe,
    LLMJudgeError,
    LLMJudgeScorer,
    ProbeScorer,
    Scorer,
)

HOOK = "blocks.1.hook_resid_post"
PROMPTS = ["The cat sat", "She walked to the"]


def char_scorer(texts, prompts):
    """A deterministic behaviour score in [0, 1] that varies with the text."""
    return [(sum(map(ord, t)) % 101) / 100 for t in texts]


@pytest.fixture(scope="module")
def vector(tiny_model):
    torch.manual_seed(0)
    return SteeringVector(torch.randn(tiny_model.cfg.d_model), HOOK)


# ----------------------------------------------------------------------------- keyword scorer
def test_keyword_scorer_counts():
    scorer = KeywordScorer(["love", "movie", "good day"])
    assert scorer.count("I LOVE love this lovely Movie.") == 3  # not "lovely"
    assert scorer.count("a good day, a good night") == 1
    assert KeywordScorer(["love"], whole_words=False).count("I love this lovely day") == 2
    assert KeywordScorer(["Love"], case_sensitive=True).count("love Love") == 1
    # "good day" wins over "good" where both match.
    assert KeywordScorer(["good", "good day"]).count("a good day and a good night") == 2
    assert scorer(["no match here", "love", "love the movie"], ["p"] * 3) == [0.0, 1.0, 1.0]
    graded = KeywordScorer(["love", "movie"], saturation=4)
    assert graded(["", "love", "love movie love", "love " * 9], ["p"] * 4) == [0, 0.25, 0.75, 1]
    assert isinstance(scorer, Scorer)
    with pytest.raises(ValueError, match="at least one non-empty keyword"):
        KeywordScorer([" "])


# ----------------------------------------------------------------------------- linear probe
def test_probe_separates_linearly_separable_activations():
    torch.manual_seed(0)
    w_true = torch.randn(16)
    x = torch.randn(400, 16) * 3 + 1.0
    margin = x @ w_true
    keep = margin.abs() > 1.0  # a clear margin
    x, y = x[keep], (margin[keep] > 0).float()
    train, test = slice(0, 200), slice(200, None)
    probe = LinearProbe.fit(x[train], y[train], l2=1e-4)
    for part in (train, test):
        p = probe.predict_proba(x[part])
        assert ((p > 0.5).float() == y[part]).float().mean() > 0.97
        assert ((p >= 0) & (p <= 1)).all()
    # The probe direction (back in raw feature units) aligns with the true one.
    w_raw = probe.weight / probe.scale
    assert torch.cosine_similarity(w_raw, w_true, dim=0) > 0.9
    with pytest.raises(ValueError, match="both classes"):
        LinearProbe.fit(x[:10], torch.ones(10))


def test_probe_scorer_on_tiny_model(tiny_model):
    positive = ["I love this wonderful movie", "it is brilliant and moving", "I love the cat"]
    negative = ["I hate this terrible movie", "it is boring and dull", "I hate the dog"]
    scorer = ProbeScorer.fit(tiny_model, positive, negative, HOOK, l2=1e-3)
    scores = scorer(positive + negative + [""], ["p"] * 7)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert all(s > 0.5 for s in scores[:3]) and all(s < 0.5 for s in scores[3:6])
    assert scores[6] == 0.0  # empty continuation


# ----------------------------------------------------------------------------- coherence
def test_likelihood_coherence_matches_reference(tiny_model):
    scorer = LikelihoodCoherenceScorer(tiny_model, batch_size=2)
    prompts = ["The cat", "She walked", "one two", "He was"]
    texts = [" sat on the mat", " to the market and bought bread", " three", ""]
    scores = scorer(texts, prompts)
    log_v = math.log(tiny_model.cfg.d_vocab)
    for text, prompt, score in zip(texts, prompts, scores, strict=True):
        assert 0.0 <= score <= 1.0
        if not text:
            assert score == 0.0
            continue
        p_tok = tiny_model.to_tokens(prompt)
        c_tok = tiny_model.to_tokens(text, prepend_bos=False)
        with torch.no_grad():
            loss = tiny_model(
                torch.cat([p_tok, c_tok], 1), return_type="loss", loss_per_token=True
            )[0]
        nll = loss[p_tok.shape[1] - 1 :].mean().item()
        ids = c_tok[0].tolist()
        bigrams = list(zip(ids, ids[1:], strict=False)) or [tuple(ids)]
        distinct = len(set(bigrams)) / len(bigrams)
        fluency = min(1.0, max(0.0, 1 - nll / log_v))
        assert score == pytest.approx(fluency * distinct, abs=1e-5)
    # Batching (right padding) gives the same numbers as scoring one text at a time.
    singles = [scorer([t], [p])[0] for t, p in zip(texts, prompts, strict=True)]
    assert scores == pytest.approx(singles, abs=1e-5)


def test_repetition_penalty_lowers_coherence(tiny_model, monkeypatch):
    scorer = LikelihoodCoherenceScorer(tiny_model)
    varied = " the cat sat on the mat"
    looped = " the the the the the the"
    assert scorer.distinct_ngram_fraction(varied) == 1.0
    n = len(tiny_model.to_tokens(looped, prepend_bos=False)[0])
    assert scorer.distinct_ngram_fraction(looped) == pytest.approx(1 / (n - 1))
    # With equal likelihood, the loop scores lower by exactly its distinct-bigram fraction.
    monkeypatch.setattr(scorer, "nll", lambda texts, prompts: [2.0] * len(texts))
    high, low = scorer([varied, looped], ["p", "p"])
    assert low < high
    assert low / high == pytest.approx(1 / (n - 1))
    # A stricter calibration (fluent_nll) maps the same loss higher, capped at 1.
    stretched = LikelihoodCoherenceScorer(tiny_model, fluent_nll=2.5)
    monkeypatch.setattr(stretched, "nll", lambda texts, prompts: [2.0] * len(texts))
    assert stretched([varied], ["p"]) == [1.0]
    with pytest.raises(ValueError, match="fluent_nll"):
        LikelihoodCoherenceScorer(tiny_model, fluent_nll=100.0)


# ----------------------------------------------------------------------------- harness
def test_harness_end_to_end(tiny_model, vector, tmp_path):
    state = torch.get_rng_state()
    sweep = dict(
        prompts=PROMPTS,
        scales=[8.0, 2.0],
        behavior_scorer=char_scorer,
        max_new_tokens=6,
        n_samples=2,
        do_sample=True,
        seed=3,
        batch_size=3,
    )
    result = evaluate_steering(tiny_model, vector, **sweep)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    assert [r.scale for r in result.results] == [0.0, 2.0, 8.0]
    assert len(result.samples) == 3 * len(PROMPTS) * 2
    assert all(r.n_texts == 4 for r in result.results)

    # Per-scale numbers are the means over that scale's samples; the metric is their max.
    coherence = LikelihoodCoherenceScorer(tiny_model)
    hand_scores = {}
    for r in result.results:
        rows = result.samples_at(r.scale)
        texts, prompts = [s.text for s in rows], [s.prompt for s in rows]
        b, c = char_scorer(texts, prompts), coherence(texts, prompts)
        assert [s.behavior for s in rows] == pytest.approx(b)
        assert [s.coherence for s in rows] == pytest.approx(c, abs=1e-6)
        assert r.behavior == pytest.approx(sum(b) / 4)
        assert r.coherence == pytest.approx(sum(c) / 4, abs=1e-6)
        products = sum(x * y for x, y in zip(b, c, strict=True)) / 4
        assert r.mean_of_products == pytest.approx(products, abs=1e-6)
        hand_scores[r.scale] = sum(b) / 4 * sum(c) / 4
        assert r.product_of_means == pytest.approx(hand_scores[r.scale], abs=1e-6)
        for cell in ("behavior", "coherence", "product_of_means", "mean_of_products"):
            low, high = r.interval(cell)
            assert low <= r.value(cell) + 1e-12 and r.value(cell) <= high + 1e-12
    # The default metric is the reference's: max over scales of mean(b) x mean(c).
    assert result.metric == "product_of_means"
    assert result.best_score == pytest.approx(max(hand_scores.values()), abs=1e-6)
    assert result.best_scale == max(hand_scores, key=hand_scores.get)
    low, high = result.metric_ci
    assert low <= result.best_score <= high

    # Scale 0 is the unsteered model: rows [p0, p0, p1] then [p1] (batch_size 3), sampled
    # with seeds 3 and 4 exactly as a plain generation call of those batches.
    expected = {}
    for c, chunk in enumerate([[(0, 0), (0, 1), (1, 0)], [(1, 1)]]):
        prompts = [PROMPTS[i] for i, _ in chunk]
        texts = generate_texts(tiny_model, prompts, 6, seed=3 + c)
        for key, text in zip(chunk, texts, strict=True):
            expected[key] = text
    index = {p: i for i, p in enumerate(PROMPTS)}
    assert {(index[s.prompt], s.sample): s.text for s in result.samples_at(0.0)} == expected
    for s in result.samples:
        assert s.unsteered == expected[index[s.prompt], s.sample]
    # Steering at scale 8 changes the text (same seeds, so only the vector differs).
    assert [s.text for s in result.samples_at(8.0)] != [s.text for s in result.samples_at(0.0)]

    # Same seed, same result.
    again = evaluate_steering(tiny_model, vector, **sweep)
    assert again.samples == result.samples

    # Outputs: table, markdown, JSON, plot.
    assert [row["scale"] for row in result.table()] == [0.0, 2.0, 8.0]
    md = result.to_markdown(examples=2)
    assert md.count("\n|") >= 3 + 2 + 3
    assert "| 0 (unsteered) |" in md or "| **0 (unsteered)** |" in md
    assert f"**{result.best_score:.3f} [" in md
    assert f"{result.best_score:.3f} [{low:.3f}, {high:.3f}]" in md
    data = json.loads(json.dumps(result.to_dict()))
    assert data["best_score"] == result.best_score and len(data["samples"]) == 12
    assert data["metric_ci"] == [low, high]
    by_products = evaluate_steering(tiny_model, vector, **sweep, metric="mean_of_products")
    assert by_products.best_score == max(r.mean_of_products for r in result.results)
    path = result.plot(tmp_path / "sweep.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_greedy_scale_matches_steered_generate(tiny_model, vector):
    result = evaluate_steering(
        tiny_model,
        vector,
        prompts=PROMPTS[:1],
        scales=[4.0],
        behavior_scorer=char_scorer,
        coherence_scorer=char_scorer,
        max_new_tokens=5,
        positions="generated",
    )
    tokens = tiny_model.to_tokens(PROMPTS[0])
    expected = {}
    for scale in (0.0, 4.0):
        with steer(tiny_model, vector, scale=scale, positions="generated"):
            out = tiny_model.generate(
                tokens, max_new_tokens=5, do_sample=False, verbose=False, return_type="tokens"
            )
        expected[scale] = _decode(tiny_model, out[0, tokens.shape[1] :])
    assert {s.scale: s.text for s in result.samples} == expected
    assert result.settings["positions"] == "generated"


def test_harness_bad_input(tiny_model, vector):
    kwargs = dict(
        prompts=PROMPTS,
        scales=[1.0],
        behavior_scorer=char_scorer,
        coherence_scorer=char_scorer,
        max_new_tokens=2,
    )
    with pytest.raises(ValueError, match="do_sample=True or n_samples=1"):
        evaluate_steering(tiny_model, vector, **{**kwargs, "n_samples": 2})
    with pytest.raises(ValueError, match="positions must be one of"):
        evaluate_steering(tiny_model, vector, **{**kwargs, "positions": [0, 1]})
    with pytest.raises(ValueError, match="finite"):
        evaluate_steering(tiny_model, vector, **{**kwargs, "scales": [float("nan")]})
    with pytest.raises(TypeError, match="single string"):
        evaluate_steering(tiny_model, vector, **{**kwargs, "prompts": "The cat"})
    with pytest.raises(ValueError, match=r"behavior_scorer returned 1.5 .* values in \[0, 1\]"):
        evaluate_steering(
            tiny_model, vector, **{**kwargs, "behavior_scorer": lambda t, p: [1.5] * len(t)}
        )
    with pytest.raises(ValueError, match="coherence_scorer returned 1 scores"):
        evaluate_steering(tiny_model, vector, **{**kwargs, "coherence_scorer": lambda t, p: [1]})
    with pytest.raises(ValueError, match="Unknown 'score'"):
        evaluate_steering(tiny_model, vector, **{**kwargs, "metric": "score"})
    with pytest.raises(ValueError, match="level must be in"):
        evaluate_steering(tiny_model, vector, **{**kwargs, "level": 95})


def _decode(model, ids):
    ids = ids.tolist()
    eos = model.tokenizer.eos_token_id
    if eos in ids:
        ids = ids[: ids.index(eos)]
    return model.tokenizer.decode(ids, skip_special_tokens=True)


# ----------------------------------------------------------------------------- LLM judge
class JudgeServer:
    """An OpenAI-compatible stub on 127.0.0.1: checks each request's shape, answers with the
    queued replies, and stops itself after ``max_requests`` or ``lifetime`` seconds."""

    def __init__(self, replies, max_requests=10, lifetime=20.0):
        self.replies = list(replies)
        self.requests = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body}
                )
                problem = _request_problem(self.path, self.headers, body)
                status, reply = (400, {"error": problem}) if problem else server.replies.pop(0)
                if status == "sleep":
                    time.sleep(reply)
                    return
                payload = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.timeout = 0.1
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.stop = threading.Event()
        deadline = time.monotonic() + lifetime

        def serve():
            handled = 0
            while handled < max_requests and not self.stop.is_set():
                if time.monotonic() > deadline:
                    break
                before = len(self.requests)
                self.httpd.handle_request()
                handled += len(self.requests) - before
            self.httpd.server_close()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5)


def _request_problem(path, headers, body):
    if path != "/v1/chat/completions":
        return f"wrong path {path}"
    if headers.get("Content-Type") != "application/json":
        return "wrong content type"
    if headers.get("Authorization") != "Bearer sk-test":
        return "missing bearer token"
    if body.get("model") != "judge-model" or not isinstance(body.get("messages"), list):
        return "bad body"
    message = body["messages"][-1]
    if message.get("role") != "user" or "Continuation:" not in message.get("content", ""):
        return "bad message"
    if not isinstance(body.get("max_tokens"), int) or body.get("temperature") != 0.0:
        return "bad sampling settings"
    return None


def completion(content):
    return 200, {
        "id": "x",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
    }


@pytest.fixture
def judge_server():
    servers = []

    def start(replies, **kwargs):
        servers.append(JudgeServer(replies, **kwargs))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def test_llm_judge_scores_and_request_shape(judge_server):
    server = judge_server([completion("7"), completion("Score: 9/10"), completion("**3**")])
    judge = LLMJudgeScorer(
        server.url, "judge-model", api_key="sk-test", criterion="The text is about cats."
    )
    assert judge(["a cat", "cats!", "dogs"], ["p1", "p2", "p3"]) == pytest.approx([0.7, 0.9, 0.3])
    assert len(server.requests) == 3
    content = server.requests[0]["body"]["messages"][-1]["content"]
    assert "The text is about cats." in content and "p1" in content and "a cat" in content


def test_llm_judge_harmonic_mean_of_axbench_criteria(judge_server):
    # Text 1: concept 2, instruction 1, fluency 2 -> 1, 0.5, 1 -> 3 / (1 + 2 + 1) = 0.75.
    # Text 2: instruction 0 -> 0 whatever the others. Text 3: all 1 -> 0.5.
    replies = ["2", "1", "2", "2", "0", "2", "1", "1", "1"]
    server = judge_server([completion(r) for r in replies])
    judge = LLMJudgeScorer.axbench(server.url, "judge-model", "weddings", api_key="sk-test")
    assert judge(["a", "b", "c"], ["p1", "p2", "p3"]) == pytest.approx([0.75, 0.0, 0.5])
    assert len(server.requests) == 9
    contents = [r["body"]["messages"][-1]["content"] for r in server.requests[:3]]
    assert "weddings" in contents[0] and "0 if the continuation" in contents[0]
    assert "relevant, sensible continuation" in contents[1] and "fluent" in contents[2]
    assert all("Continuation: a" in c for c in contents)

    server = judge_server([completion("2"), completion("1")])
    two = LLMJudgeScorer(
        server.url, "judge-model", api_key="sk-test", max_score=2,
        criterion={"on topic": "The text is about cats.", "polite": "The text is polite."},
    )  # fmt: skip
    assert two.score_criteria("text", "p") == {"on topic": 1.0, "polite": 0.5}
    with pytest.raises(ValueError, match="non-empty criterion"):
        LLMJudgeScorer(server.url, "m", criterion={"a": ""})


def test_llm_judge_retries_and_errors(judge_server):
    server = judge_server([(500, {"error": "busy"}), completion("8")])
    judge = LLMJudgeScorer(
        server.url + "/chat/completions",
        "judge-model",
        api_key="sk-test",
        criterion="c",
        backoff=0.0,
    )
    assert judge.score("text", "prompt") == pytest.approx(0.8)
    assert len(server.requests) == 2

    server = judge_server([completion("no idea"), (200, {"unexpected": True})])
    judge = LLMJudgeScorer(server.url, "judge-model", api_key="sk-test", criterion="c")
    with pytest.raises(LLMJudgeError, match="has no score: 'no idea'"):
        judge.score("text", "prompt")
    with pytest.raises(LLMJudgeError, match=r"choices\[0\].message.content"):
        judge.score("text", "prompt")

    server = judge_server([("sleep", 1.0)])
    judge = LLMJudgeScorer(
        server.url, "judge-model", api_key="sk-test", criterion="c", timeout=0.2, max_retries=0
    )
    with pytest.raises(LLMJudgeError, match=r"timeout=0.2s"):
        judge.score("text", "prompt")

    server = judge_server([])
    judge = LLMJudgeScorer(server.url, "judge-model", criterion="c")  # no api key
    with pytest.raises(LLMJudgeError, match="refused the request: HTTP 400.*bearer"):
        judge.score("text", "prompt")

    with pytest.raises(ValueError, match="pass criterion="):
        LLMJudgeScorer(server.url, "judge-model")


def test_llm_judge_unreachable():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    judge = LLMJudgeScorer(
        f"http://127.0.0.1:{port}", "m", criterion="c", max_retries=1, backoff=0.0, timeout=2.0
    )
    assert judge.url == f"http://127.0.0.1:{port}/v1/chat/completions"
    with pytest.raises(LLMJudgeError, match="after 2 attempts: cannot reach the server"):
        judge.score("text", "prompt")


@pytest.mark.parametrize(
    ("reply", "max_score", "expected"),
    [
        ("7", 10, 0.7),
        ("Score: 8/10", 10, 0.8),
        ("I'd rate it 6 out of 10.", 10, 0.6),
        ("On a scale of 0-10, this is a 3.", 10, 0.3),
        ("Rating: 4", 10, 0.4),
        ("70%", 10, 0.7),
        ("0.25", 1, 0.25),
        ("**10**", 10, 1.0),
    ],
)
def test_llm_judge_parse_score(reply, max_score, expected):
    judge = LLMJudgeScorer("http://127.0.0.1:1", "m", criterion="c", max_score=max_score)
    assert judge.parse_score(reply) == pytest.approx(expected)


def test_llm_judge_parse_rejects_out_of_scale():
    judge = LLMJudgeScorer("http://127.0.0.1:1", "m", criterion="c")
    with pytest.raises(LLMJudgeError, match="outside 0..10"):
        judge.parse_score("12")
