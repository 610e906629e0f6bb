"""seq2seq-serve: the HTTP API against seq2seq-decode, dynamic batching under concurrent clients, bad
requests, the token, and the web page (TestClient in-process; a real uvicorn server on loopback)."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi", reason="seq2seq-serve needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx (the serve extra)")
pytest.importorskip("uvicorn", reason="seq2seq-serve needs the serve extra: pip install -e '.[serve]'")

import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from helpers.commands import run_cli  # noqa: E402
from helpers.corpora import toy_corpus_lines  # noqa: E402
from seq2seq.serve import GENERATE_PATHS, Server, create_app  # noqa: E402

INPUTS = toy_corpus_lines(12, seed=21)[0]


def make_client(run_dir: Path, **settings) -> TestClient:
    return TestClient(create_app(Server.from_runs({"toy": run_dir}, **settings)))


@pytest.fixture(scope="module")
def client(trained_run):
    with make_client(trained_run[1]) as c:
        yield c


def one_line_error(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and "\n" not in body["error"], body
    return body["error"]


# ---------------------------------------------------------------- results
def test_outputs_keep_input_order_and_equal_seq2seq_decode(trained_run, client, tmp_path):
    _, run_dir = trained_run
    inputs = INPUTS[:6] + ["", INPUTS[6]]
    answer = client.post("/v1/generate", json={"model": "toy", "inputs": inputs,
                                               "options": {"beam_size": 3, "nbest": 2}})
    assert answer.status_code == 200, answer.text
    outputs = answer.json()["outputs"]
    assert len(outputs) == len(inputs) and outputs[6] == {"text": "", "score": 0.0, "logprob": 0.0,
                                                          "nbest": [{"text": "", "score": 0.0, "logprob": 0.0}]}
    # seq2seq-decode's n-best output (index, score, text) for the same inputs and settings
    (tmp_path / "in.txt").write_text("\n".join(inputs) + "\n")
    proc = run_cli("decode", f"run={run_dir}", f"input={tmp_path / 'in.txt'}", "output=-",
                   "generation.beam_size=3", "generation.nbest=2")
    rows = [line.split("\t") for line in proc.stdout.splitlines()]
    served = [(i, h["score"], h["text"]) for i, out in enumerate(outputs) for h in out["nbest"]]
    assert [(i, t) for i, _, t in served] == [(int(r[0]), r[2]) for r in rows]
    # decode prints 4 decimals (and may run on other threads than this process: bits may differ)
    assert [s for _, s, _ in served] == pytest.approx([float(r[1]) for r in rows], abs=5.1e-5)
    assert [out["text"] for out in outputs] == [out["nbest"][0]["text"] for out in outputs]
    # in input order: each input alone gives the same text; a request of one input in reverse order too
    reverse = client.post("/v1/generate", json={"inputs": inputs[::-1], "options": {"beam_size": 3, "nbest": 2}})
    assert [o["text"] for o in reverse.json()["outputs"]] == [o["text"] for o in outputs][::-1]


def test_scores_equal_decode_ids_exactly(trained_run, client):
    """The same function seq2seq-decode calls, with the run's saved generation settings: identical floats."""
    from seq2seq.runs import RunFolder
    from seq2seq.generation.decoding import decode_ids
    from seq2seq.generation.options import GenerationOptions
    from seq2seq.serve import default_generation

    _, run_dir = trained_run
    model, tokenizer, _ = RunFolder(run_dir).load()
    composed = {**default_generation(), "len_penalty": 1.3}
    settings = RunFolder(run_dir).generation_settings(composed, ["generation.len_penalty=1.3"])
    results = decode_ids(model, tokenizer.encode_src(INPUTS), GenerationOptions(**settings), batch_tokens=6000,
                         device=torch.device("cpu"))
    answer = client.post("/v1/generate", json={"inputs": INPUTS, "options": {"len_penalty": 1.3}}).json()
    assert [o["score"] for o in answer["outputs"]] == [hyps[0].score for hyps in results]
    assert [o["text"] for o in answer["outputs"]] == tokenizer.decode_tgt([hyps[0].tokens for hyps in results])
    assert answer["options"]["beam_size"] == settings["beam_size"] and answer["options"]["len_penalty"] == 1.3


def test_prefixes_per_input_equal_seq2seq_decode_with_a_prefix_file(trained_run, client, tmp_path):
    _, run_dir = trained_run
    inputs = INPUTS[:4]
    prefixes = ["", " ".join(INPUTS[1].split()[:1]), "", "the"]
    body = [{"text": t, "prefix": p} if p else t for t, p in zip(inputs, prefixes)]
    answer = client.post("/v1/generate", json={"inputs": body, "options": {"beam_size": 3}})
    assert answer.status_code == 200, answer.text
    texts = [o["text"] for o in answer.json()["outputs"]]
    (tmp_path / "in.txt").write_text("\n".join(inputs) + "\n")
    (tmp_path / "prefix.txt").write_text("\n".join(prefixes) + "\n")
    proc = run_cli("decode", f"run={run_dir}", f"input={tmp_path / 'in.txt'}", f"prefix={tmp_path / 'prefix.txt'}",
                   "generation.beam_size=3")
    assert texts == proc.stdout.splitlines()
    assert texts[3].startswith("the")
    plain = client.post("/v1/generate", json={"inputs": [inputs[0]], "options": {"beam_size": 3}}).json()
    assert plain["outputs"][0]["text"] == texts[0]  # an input without a prefix is decoded as without any


def test_constraints_per_input_and_per_request(client):
    from helpers.corpora import TRANSLATE

    words = sorted(TRANSLATE.values())
    inputs = INPUTS[:3]
    answer = client.post("/v1/generate", json={"inputs": inputs, "constraints": [[words[0]], [], [words[1], words[2]]],
                                               "options": {"beam_size": 4, "max_len_b": 20}})
    assert answer.status_code == 200, answer.text
    outputs = answer.json()["outputs"]
    assert words[0] in outputs[0]["text"].split() and {words[1], words[2]} <= set(outputs[2]["text"].split())
    assert outputs[0]["unmet_constraints"] == [] and "unmet_constraints" not in outputs[1]
    objects = client.post("/v1/generate", json={"inputs": [{"text": inputs[0], "constraints": [words[0]]}, inputs[1]],
                                                "options": {"beam_size": 4, "max_len_b": 20}}).json()
    assert [o["text"] for o in objects["outputs"]] == [o["text"] for o in outputs[:2]]
    tight = client.post("/v1/generate", json={"inputs": inputs[:1], "constraints": [[words[3], words[4]]],
                                              "options": {"beam_size": 2, "max_len_a": 0, "max_len_b": 1}}).json()
    assert len(tight["outputs"][0]["unmet_constraints"]) >= 1
    bad = client.post("/v1/generate", json={"inputs": inputs[:2], "constraints": [["a"]]})
    assert bad.status_code == 400 and "one list of phrases per input (2)" in bad.json()["error"]
    greedy = client.post("/v1/generate", json={"inputs": inputs[:1], "constraints": [["a"]],
                                               "options": {"strategy": "greedy", "beam_size": 1}})
    assert greedy.status_code == 400 and "constraints need beam search" in greedy.json()["error"]


def test_an_ensemble_is_served_as_one_model(trained_run, client):
    _, run_dir = trained_run
    server = Server.from_runs({"pair": [run_dir, run_dir], "toy": run_dir}, checkpoint=["best"],
                              ensemble={"weights": [2, 1], "combine": "prob"})
    with TestClient(create_app(server)) as pair:
        listed = {m["name"]: m for m in pair.get("/v1/models").json()["models"]}
        assert listed["pair"]["ensemble"] == {"checkpoints": [f"{run_dir.name}/best.pt"] * 2,
                                              "weights": [2 / 3, 1 / 3], "combine": "prob"}
        assert "ensemble" not in listed["toy"]
        both = pair.post("/v1/generate", json={"model": "pair", "inputs": INPUTS[:5], "options": {"beam_size": 3}})
        one = client.post("/v1/generate", json={"inputs": INPUTS[:5], "options": {"beam_size": 3}})
    assert [o["text"] for o in both.json()["outputs"]] == [o["text"] for o in one.json()["outputs"]]
    assert [o["logprob"] for o in both.json()["outputs"]] == pytest.approx(
        [o["logprob"] for o in one.json()["outputs"]], abs=1e-4)


def test_attention_matrix_of_each_output(client):
    answer = client.post("/v1/translate", json={"inputs": INPUTS[:3], "options": {"attention": True}})
    assert answer.status_code == 200, answer.text
    for out in answer.json()["outputs"]:
        att = out["attention"]
        assert att["source"][-1] == "</s>" and att["target"][-1] == "</s>"
        assert len(att["weights"]) == len(att["target"]) and {len(r) for r in att["weights"]} == {len(att["source"])}
        assert all(abs(sum(row) - 1) < 1e-2 for row in att["weights"])  # softmax rows (rounded to 4 digits)
    plain = client.post("/v1/generate", json={"inputs": INPUTS[:3]}).json()
    assert all("attention" not in o for o in plain["outputs"])
    assert [o["text"] for o in plain["outputs"]] == [o["text"] for o in answer.json()["outputs"]]


def test_models_health_and_generation_defaults(trained_run):
    _, run_dir = trained_run
    with make_client(run_dir, generation={"beam_size": 2}, max_inputs=3) as c:
        models = c.get("/v1/models").json()
        (toy,) = models["models"]
        assert toy["name"] == "toy" and toy["generation"]["beam_size"] == 2
        assert toy["architecture"]["encoder"]["name"] == "transformer" and toy["architecture"]["parameters"] > 0
        assert toy["vocabulary"]["joint"] is True and models["limits"]["max_inputs"] == 3
        assert "beam_size" in models["options"] and "print_alignment" not in models["options"]
        answer = c.post("/v1/generate", json={"inputs": INPUTS[:2]}).json()
        assert answer["options"]["beam_size"] == 2
        health = c.get("/health").json()
        assert health["status"] == "ok" and health["models"] == ["toy"]
        assert health["requests"] == 1 and health["inputs"] == 2 and health["batches"] == 1


# ---------------------------------------------------------------- bad requests
BAD = [
    ("not json", b"{", 400, "not valid JSON"),
    ("not an object", b"[1, 2]", 400, "JSON object"),
    ("unknown field", {"inputs": ["a"], "input": "a"}, 400, "unknown field(s): input"),
    ("inputs not a list", {"inputs": "the cat"}, 400, "inputs must be a list of strings"),
    ("an input not a string", {"inputs": ["the cat", 3]}, 400, "inputs[1] must be a string or an object"),
    ("an input object without text", {"inputs": [{"prefix": "a"}]}, 400, "inputs[0].text must be a string"),
    ("an input object with another field", {"inputs": [{"text": "a", "constraint": "b"}]}, 400,
     "inputs[0]: unknown field(s) constraint (known: text, prefix, constraints)"),
    ("a prefix not a string", {"inputs": [{"text": "a", "prefix": 3}]}, 400, "inputs[0].prefix must be a string"),
    ("no inputs", {"inputs": []}, 400, "inputs is empty"),
    ("missing inputs", {"model": "toy"}, 400, "inputs must be a list of strings"),
    ("unknown model", {"model": "en-fr", "inputs": ["a"]}, 404, "unknown model 'en-fr' (served: toy)"),
    ("model not a string", {"model": ["toy"], "inputs": ["a"]}, 400, "model must be a string"),
    ("too many inputs", {"inputs": ["the cat"] * 5}, 413, "5 inputs in one request; this server takes at most 4"),
    ("too long input", {"inputs": ["the cat", "the cat " * 20]}, 413, "inputs[1] is"),
    ("beam_size=0", {"inputs": ["a"], "options": {"beam_size": 0}}, 400, "options.beam_size=0 must be at least 1"),
    ("beam_size a string", {"inputs": ["a"], "options": {"beam_size": "5"}}, 400, "beam_size must be an integer"),
    ("beam_size a bool", {"inputs": ["a"], "options": {"beam_size": True}}, 400, "beam_size must be an integer"),
    ("beam_size a float", {"inputs": ["a"], "options": {"beam_size": 2.5}}, 400, "beam_size must be an integer"),
    ("beam too large", {"inputs": ["a"], "options": {"beam_size": 100}}, 400, "max_beam_size=8"),
    ("unknown option", {"inputs": ["a"], "options": {"beam": 4}}, 400, "unknown option(s): beam"),
    ("options not an object", {"inputs": ["a"], "options": [4]}, 400, "options must be an object"),
    ("nbest over beam", {"inputs": ["a"], "options": {"beam_size": 2, "nbest": 3}}, 400, "options.nbest=3"),
    ("bad strategy", {"inputs": ["a"], "options": {"strategy": "viterbi"}}, 400, "options.strategy must be"),
    ("negative top_k", {"inputs": ["a"], "options": {"top_k": -1}}, 400, "options.top_k=-1"),
    ("top_p out of range", {"inputs": ["a"], "options": {"top_p": 1.5}}, 400, "options.top_p=1.5"),
    ("attention not a bool", {"inputs": ["a"], "options": {"attention": "yes"}}, 400, "options.attention must be"),
    ("nested too deeply", b"[" * 100_000, 400, "nested too deeply"),
    ("lone surrogate", b'{"inputs": ["the \\ud800 cat"]}', 400, "inputs[0] is not valid Unicode"),
    ("huge integer", {"inputs": ["a"], "options": {"max_len_b": 10**40}}, 400, "out of range"),
    ("no such layer", {"inputs": ["a"], "options": {"attention": True, "attention_layer": 7}}, 400, "layer"),
]


@pytest.fixture(scope="module")
def strict_client(trained_run):
    with make_client(trained_run[1], max_inputs=4, max_input_tokens=30, max_beam_size=8,
                     max_request_bytes=200_000) as c:
        yield c


@pytest.mark.parametrize("body,status,message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_request_gets_a_4xx_with_one_line(strict_client, body, status, message):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    error = one_line_error(strict_client.post("/v1/generate", content=content), status)
    assert message in error
    good = strict_client.post("/v1/generate", json={"inputs": ["the cat"]})  # and the server goes on serving
    assert good.status_code == 200 and good.json()["outputs"][0]["text"]


def test_oversized_body_nan_unknown_path_and_method(strict_client):
    assert "max_request_bytes" in one_line_error(
        strict_client.post("/v1/generate", json={"inputs": ["the cat " * 30_000]}), 413)
    nan = b'{"inputs": ["a"], "options": {"temperature": NaN}}'
    assert "finite" in one_line_error(strict_client.post("/v1/generate", content=nan), 400)
    one_line_error(strict_client.get("/v1/nothing"), 404)
    one_line_error(strict_client.get("/v1/generate"), 405)
    assert strict_client.get("/health").json()["status"] == "ok"


def test_a_busy_model_answers_503_and_finishes_what_it_took(trained_run):
    from seq2seq.serve import ApiError, request_options

    server = Server.from_runs({"toy": trained_run[1]}, max_inputs=2, max_pending_inputs=2, batch_wait_ms=1500)
    try:
        served = server.models["toy"]
        opts, attention = request_options(served.defaults, {}, server.limits)
        first = served.worker.submit(server.job(served, ["the cat", "a dog"], opts, attention))
        with pytest.raises(ApiError) as busy:  # the first request's inputs still wait for company
            served.worker.submit(server.job(served, ["red house"], opts, attention))
        assert busy.value.status == 503 and "busy" in busy.value.message
        assert len(first.result(timeout=60)) == 2
    finally:
        server.close()


def test_a_failed_decode_is_a_500_for_its_request_only(client, monkeypatch):
    import seq2seq.backends.pytorch as decoding  # the served models decode through the PyTorch backend

    real = decoding.decode_ids

    def broken(model, src_ids, *args, **kwargs):
        raise RuntimeError("out of\nsomething")

    monkeypatch.setattr(decoding, "decode_ids", broken)
    error = one_line_error(client.post("/v1/generate", json={"inputs": ["the cat"]}), 500)
    assert error == "decoding failed: RuntimeError: out of something"
    monkeypatch.setattr(decoding, "decode_ids", real)
    assert client.post("/v1/generate", json={"inputs": ["the cat"]}).status_code == 200


def test_model_is_required_when_several_are_served(trained_run):
    _, run_dir = trained_run
    with TestClient(create_app(Server.from_runs({"a": run_dir, "b": run_dir}))) as c:
        assert "say which model" in one_line_error(c.post("/v1/generate", json={"inputs": ["the cat"]}), 400)
        assert c.post("/v1/generate", json={"model": "b", "inputs": ["the cat"]}).json()["model"] == "b"
        assert [m["name"] for m in c.get("/v1/models").json()["models"]] == ["a", "b"]


def test_bearer_token(trained_run):
    _, run_dir = trained_run
    with make_client(run_dir, auth_token="s3cret") as c:
        for path, method in (("/v1/models", "get"), ("/v1/generate", "post"), ("/v1/translate", "post")):
            kwargs = {"json": {"inputs": ["the cat"]}} if method == "post" else {}
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                response = getattr(c, method)(path, headers=headers, **kwargs)
                assert "token" in one_line_error(response, 401)
                assert response.headers["www-authenticate"] == "Bearer"
            ok = getattr(c, method)(path, headers={"Authorization": "Bearer s3cret"}, **kwargs)
            assert ok.status_code == 200, ok.text
        assert c.get("/health").status_code == 200 and c.get("/").status_code == 200  # no secrets there


def test_cli_errors_are_one_line_with_exit_code_2(trained_run, tmp_path):
    missing = run_cli("serve", check=False)
    assert missing.returncode == 2 and missing.stderr.startswith("seq2seq-serve: error: ")
    assert "models" in missing.stderr and len(missing.stderr.splitlines()) == 1
    nowhere = run_cli("serve", f"models={{toy: {tmp_path / 'nowhere'}}}", check=False)
    assert nowhere.returncode == 2 and "run folder not found" in nowhere.stderr
    string = run_cli("serve", f"models={trained_run[1]}", check=False)
    assert string.returncode == 2 and "models must map names to run folders" in string.stderr
    bad = run_cli("serve", f"models={{toy: {trained_run[1]}}}", "generation.beam_size=0", check=False)
    assert bad.returncode == 2 and "beam_size=0" in bad.stderr and len(bad.stderr.splitlines()) == 1


# ---------------------------------------------------------------- a real server, many clients
class LiveServer:
    """uvicorn serving app on a free loopback port, in a thread; stopped by stop()."""

    def __init__(self, app):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


def test_32_concurrent_clients_get_the_single_request_answers_and_are_batched(trained_run):
    _, run_dir = trained_run
    server = Server.from_runs({"toy": run_dir}, batch_wait_ms=50)
    live = LiveServer(create_app(server))
    try:
        # 64 requests: one or two inputs each, two different option sets (which must not be mixed up)
        requests = []
        for i in range(64):
            inputs = [INPUTS[i % len(INPUTS)]] + ([INPUTS[(i * 5) % len(INPUTS)]] if i % 3 == 0 else [])
            options = {"beam_size": 2} if i % 2 else {"beam_size": 4, "len_penalty": 0.8}
            requests.append({"model": "toy", "inputs": inputs, "options": options})
        with httpx.Client(base_url=live.url, timeout=60) as http:
            alone = {}
            for body in requests:  # the answers of requests sent one at a time
                key = json.dumps(body, sort_keys=True)
                if key not in alone:
                    response = http.post("/v1/generate", json=body)
                    assert response.status_code == 200, response.text
                    alone[key] = response.json()["outputs"]
            before = http.get("/health").json()

            def send(body):
                response = http.post("/v1/generate", json=body)
                return response.status_code, response.json()

            with ThreadPoolExecutor(max_workers=32) as pool:
                answers = list(pool.map(send, requests, timeout=120))
            after = http.get("/health").json()
        for body, (status, answer) in zip(requests, answers):
            assert status == 200, answer
            expected = alone[json.dumps(body, sort_keys=True)]
            assert [o["text"] for o in answer["outputs"]] == [o["text"] for o in expected]
            # other sentences in the batch change the padding, so the floats may differ in the last bits
            assert [o["score"] for o in answer["outputs"]] == pytest.approx([o["score"] for o in expected], abs=1e-4)
            assert answer["options"]["beam_size"] == body["options"]["beam_size"]
        batches = after["batches"] - before["batches"]
        assert after["requests"] - before["requests"] == 64 and after["errors"] == 0
        assert batches < 64 and after["max_batch_requests"] > 1, after  # requests were decoded together
        assert sum(a["batch"]["requests"] > 1 for _, a in answers) > 0
    finally:
        live.stop()


# ---------------------------------------------------------------- the web page
def test_page_has_the_form_and_calls_existing_endpoints(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    for element in ('id="generate-form"', 'id="inputs"', '<textarea', 'id="model"', '<select', 'id="beam-size"',
                    'id="attention"', 'id="outputs"', 'id="heatmap"', 'id="token"'):
        assert element in html, element
    assert "http://" not in html and "https://" not in html and "<script src" not in html  # no CDN, no build
    endpoints = dict(re.findall(r'(\w+): "(v1/[\w/]+)"', html))
    assert endpoints == {"models": "v1/models", "generate": "v1/generate"}
    assert "/" + endpoints["generate"] in GENERATE_PATHS
    assert client.get("/" + endpoints["models"]).status_code == 200
    # what the page's script sends
    body = {"model": "toy", "inputs": ["the cat"], "options": {"beam_size": 5, "attention": True}}
    answer = client.post("/" + endpoints["generate"], json=body)
    assert answer.status_code == 200 and "weights" in answer.json()["outputs"][0]["attention"]


DOM_STUB = r"""
// Just enough of a DOM to run the page's script in node: elements by id, createElement, tables, a <select>
// that picks its first option, and fetch against the live server.
class El {
  constructor(tag, id) { Object.assign(this, {tag, id, children: [], style: {}, dataset: {}, listeners: {}, _text: "",
    value: "", checked: true, hidden: true, className: "", title: "", disabled: false}); }
  set textContent(t) { this._text = t; this.children = []; if (this.tag === "select") this.value = ""; }
  get textContent() { return this._text + this.children.map((c) => c.textContent).join(""); }
  appendChild(c) { this.children.push(c); if (this.tag === "select" && !this.value) this.value = c.value; return c; }
  insertRow() { return this.appendChild(new El("tr")); }
  insertCell() { return this.appendChild(new El("td")); }
  addEventListener(kind, f) { this.listeners[kind] = f; }
  all(cls) { return (this.className === cls ? [this] : []).concat(...this.children.map((c) => c.all(cls))); }
}
const [base, script, query] = process.argv.slice(2);
const ids = ["generate-form", "model", "beam-size", "attention", "token", "inputs", "submit", "status", "outputs",
             "attention-panel", "heatmap-pick", "heatmap"];
const els = Object.fromEntries(ids.map((id) => [id, new El(id === "model" ? "select" : "x", id)]));
els["beam-size"].value = "5";
const body = new El("body");
global.document = { getElementById: (id) => els[id], createElement: (tag) => new El(tag), body };
global.location = { search: query };
const realFetch = globalThis.fetch;
global.fetch = (url, options) => realFetch(base + "/" + url, options);
require("vm").runInThisContext(require("fs").readFileSync(script, "utf8"));
const started = Date.now();
const poll = setInterval(() => {
  if (!body.dataset.state && Date.now() - started < 60000) return;
  clearInterval(poll);
  console.log(JSON.stringify({state: body.dataset.state || null, status: els.status.textContent,
    models: els.model.children.map((o) => o.value), model: els.model.value,
    outputs: els.outputs.all("text").map((e) => e.textContent),
    cells: els.heatmap.all("cell").length, panelHidden: els["attention-panel"].hidden}));
}, 50);
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="no node on PATH: the page's script is not run")
def test_page_script_runs_against_a_live_server_in_node(trained_run, tmp_path):
    """The page's own script (with a stub DOM) lists the models, generates and fills the heatmap table."""
    _, run_dir = trained_run
    live = LiveServer(create_app(Server.from_runs({"toy": run_dir})))
    try:
        with httpx.Client(base_url=live.url, timeout=60) as http:
            html = http.get("/").text
            expected = http.post("/v1/generate", json={"inputs": ["the cat sees a dog", "red house"],
                                                       "options": {"beam_size": 3, "attention": True}}).json()
        (tmp_path / "page.js").write_text(re.search(r"<script>(.*)</script>", html, re.S).group(1))
        (tmp_path / "stub.js").write_text(DOM_STUB)
        proc = subprocess.run(["node", str(tmp_path / "stub.js"), live.url, str(tmp_path / "page.js"),
                               "?q=the%20cat%20sees%20a%20dog%0Ared%20house&beam=3"],
                              capture_output=True, text=True, timeout=120)
    finally:
        live.stop()
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["state"] == "done", seen
    assert seen["models"] == ["toy"] and seen["model"] == "toy"
    assert seen["outputs"] == [o["text"] for o in expected["outputs"]]
    first = expected["outputs"][0]["attention"]
    assert seen["cells"] == len(first["source"]) * len(first["target"]) and seen["panelHidden"] is False


def _chromium() -> str | None:
    """A Chromium binary: $SEQ2SEQ_CHROMIUM, or one on PATH (Debian: apt-get install chromium chromium-driver)."""
    if os.environ.get("SEQ2SEQ_CHROMIUM"):
        return os.environ["SEQ2SEQ_CHROMIUM"]
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def _browser_missing() -> str | None:
    """Why the real-browser test cannot run here, or None when it can."""
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install -e '.[dev]')"
    if _chromium() is None:
        return "no Chromium (SEQ2SEQ_CHROMIUM, or chromium / chromium-browser / google-chrome on PATH)"
    if shutil.which("chromedriver") is None:
        return "no chromedriver on PATH (Debian: apt-get install chromium-driver)"
    return None


@pytest.mark.skipif(_browser_missing() is not None, reason=f"the page is not tried in a real browser: {_browser_missing()}")
def test_page_in_headless_chromium_typing_and_pressing_generate_draws_the_heatmap(trained_run, tmp_path):
    """A user's path through the page in headless Chromium: type two lines, press Generate, read the outputs
    and the heatmap. SEQ2SEQ_SCREENSHOT=<file.png> keeps a screenshot of the result; SEQ2SEQ_PAGE_RUN=<run
    folder> serves that run (as "en-de", with two English sentences) instead of the toy model."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    name, run_dir, lines = "toy", trained_run[1], ["the cat sees a dog", "red house"]
    if os.environ.get("SEQ2SEQ_PAGE_RUN"):
        name, run_dir = "en-de", Path(os.environ["SEQ2SEQ_PAGE_RUN"])
        lines = ["A little girl in a pink dress is climbing the stairs.", "Two men are talking on a bench."]
    live = LiveServer(create_app(Server.from_runs({name: run_dir})))
    options = webdriver.ChromeOptions()
    options.binary_location = _chromium()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,900"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    try:
        with httpx.Client(base_url=live.url, timeout=60) as http:
            expected = http.post("/v1/generate", json={"inputs": lines,
                                                       "options": {"beam_size": 3, "attention": True}}).json()
        browser.get(live.url + "/")
        WebDriverWait(browser, 60).until(lambda b: b.find_elements(By.CSS_SELECTOR, f"#model option[value='{name}']"))
        beam = browser.find_element(By.ID, "beam-size")
        beam.clear()
        beam.send_keys("3")
        browser.find_element(By.ID, "inputs").send_keys("\n".join(lines))
        browser.find_element(By.ID, "submit").click()
        WebDriverWait(browser, 60).until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-state")
                                         in ("done", "error"))
        assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done", \
            browser.find_element(By.ID, "status").text
        outputs = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#outputs li .text")]
        assert outputs == [o["text"] for o in expected["outputs"]]
        first = expected["outputs"][0]["attention"]
        assert browser.find_element(By.ID, "attention-panel").is_displayed()
        cells = browser.find_elements(By.CSS_SELECTOR, "#heatmap .cell")
        assert len(cells) == len(first["source"]) * len(first["target"])  # a cell per (target, source) piece pair
        if os.environ.get("SEQ2SEQ_SCREENSHOT"):
            browser.save_screenshot(os.environ["SEQ2SEQ_SCREENSHOT"])
    finally:
        browser.quit()
        live.stop()
