"""`charlstm serve`: the API's shapes and refusals (Starlette's test client), a real uvicorn on 127.0.0.1
(streaming, OpenAI shapes, cancellation by disconnect), the sampler's batching, and the page in Chromium."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():  # Starlette 1.x suggests httpx2 for its test client; httpx is what the extra installs
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

from conftest import main_outcome

from charlstm.analysis.scoring import surprisal
from charlstm.generation.batching import BatchedSampler
from charlstm.generation.controls import GenerationRequest, SamplingOptions
from charlstm.generation.generator import Generator
from charlstm.interface import server
from charlstm.training.checkpoint import load


def make_app(run: Path, names: int = 1, limits: server.ServeLimits = server.ServeLimits(), api_key: str | None = None):
    models = server.serve_models([load(run) for _ in range(names)], "fp32", limits.max_rows)
    return server.create_app(models, limits, api_key), models


@pytest.fixture(scope="module")
def client(trained_run: Path) -> Iterator[TestClient]:
    app, _ = make_app(trained_run, limits=server.ServeLimits(max_length=2000, max_body_bytes=10_000, max_samples=4))
    with TestClient(app) as test_client:
        yield test_client


def ndjson(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line]


# -- the API's shapes -----------------------------------------------------------------------------------

def test_health_and_models_describe_each_served_run(client: TestClient):
    assert client.get("/health").json() == {"status": "ok", "models": ["tiny"], "live_requests": 0}
    (model,) = client.get("/api/models").json()["models"]
    assert model["name"] == "tiny" and model["cell"] == "lstm" and model["layers"] == 2 and model["hidden_size"] == 48
    assert model["vocab_size"] == len(load(model["checkpoint"]).vocab) and model["val_loss"] > 0
    assert client.get("/v1/models").json()["data"] == [
        {"id": "tiny", "object": "model", "created": pytest.approx(time.time(), abs=600), "owned_by": "charlstm"}]


def test_generate_streams_ndjson_pieces_then_a_summary_line(client: TestClient):
    response = client.post("/api/generate", json={"prompt": "The cat", "length": 120, "seed": 3})
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/x-ndjson")
    *pieces, last = ndjson(response.text)
    assert pieces and all(set(piece) == {"index", "text"} for piece in pieces)
    assert last["done"] is True and last["model"] == "tiny" and last["generated_chars"] == 120
    (sample,) = last["samples"]
    assert sample["finish_reason"] == "length" and sample["chars"] == sample["generated"] == 120 and sample["seed"] == 3
    assert last["prompt_chars"] == 7
    assert len("".join(piece["text"] for piece in pieces)) == 120


def test_a_seeded_request_draws_what_charlstm_sample_draws(client: TestClient, trained_run: Path):
    loaded = load(trained_run)
    expected = Generator(loaded.model, loaded.vocab).generate("The cat", 200, 0.9, 5, None, 2, seed=11)
    body = {"prompt": "The cat", "length": 200, "temperature": 0.9, "top_k": 5, "n": 2, "seed": 11, "stream": False}
    result = client.post("/api/generate", json=body).json()
    assert [sample["text"] for sample in result["samples"]] == expected
    streamed = ndjson(client.post("/api/generate", json={**body, "stream": True}).text)
    for index in range(2):
        assert "".join(p["text"] for p in streamed if p.get("index") == index and "text" in p) == expected[index]


def test_a_stop_string_ends_the_sample_and_is_left_out(client: TestClient):
    body = {"prompt": "The cat", "length": 1000, "seed": 0, "stop": ["."], "stream": False, "temperature": 0.5}
    (sample,) = client.post("/api/generate", json=body).json()["samples"]
    assert sample["finish_reason"] == "stop" and "." not in sample["text"] and sample["chars"] == len(sample["text"]) < 1000
    unstopped = client.post("/api/generate", json={**body, "stop": None}).json()["samples"][0]["text"]
    assert unstopped.startswith(sample["text"] + ".")  # the same draw, cut where the stop string began
    streamed = ndjson(client.post("/api/generate", json={**body, "stream": True}).text)
    assert "".join(p.get("text", "") for p in streamed[:-1]) == sample["text"]


def test_min_p_lines_and_keep_stop_reach_the_draw(client: TestClient, trained_run: Path):
    loaded = load(trained_run)
    body = {"prompt": "The cat", "length": 300, "seed": 6, "min_p": 0.2, "stream": False}
    (sample,) = client.post("/api/generate", json=body).json()["samples"]
    request = GenerationRequest("The cat", 300, SamplingOptions(min_p=0.2), seed=6)
    assert sample["text"] == Generator(loaded.model, loaded.vocab).complete(request)[0].text
    lines = {"prompt": "The cat", "length": 2000, "seed": 6, "lines": 2, "stream": False}
    two_lines = client.post("/api/generate", json=lines).json()["samples"][0]
    assert two_lines["finish_reason"] == "lines" and two_lines["text"].count("\n") == 1
    request = GenerationRequest("The cat", 2000, seed=6, lines=2)
    assert two_lines["text"] == Generator(loaded.model, loaded.vocab).complete(request)[0].text
    kept = client.post("/api/generate", json={**body, "stop": " ", "keep_stop": True}).json()["samples"][0]
    assert kept["finish_reason"] == "stop" and kept["text"].endswith(" ") and kept["stop"] == " "


def test_logprobs_give_each_characters_log_probability_and_the_top_k(client: TestClient):
    body = {"prompt": "The cat", "length": 30, "seed": 2, "logprobs": 3, "stream": False}
    (sample,) = client.post("/api/generate", json=body).json()["samples"]
    assert [entry["char"] for entry in sample["logprobs"]] == list(sample["text"])
    for entry in sample["logprobs"]:
        best = max(top["logprob"] for top in entry["top"])
        assert len(entry["top"]) == 3 and entry["logprob"] <= best + 1e-6 <= 1e-6


def test_v1_completions_answers_in_openai_shape(client: TestClient):
    body = {"model": "tiny", "prompt": ["The cat"], "max_tokens": 12, "n": 2, "seed": 1, "logprobs": 1}
    result = client.post("/v1/completions", json=body).json()
    assert result["object"] == "text_completion" and result["id"].startswith("cmpl-") and result["model"] == "tiny"
    assert [choice["index"] for choice in result["choices"]] == [0, 1]
    for choice in result["choices"]:
        assert len(choice["text"]) == 12 and choice["finish_reason"] == "length"
        assert choice["logprobs"]["tokens"] == list(choice["text"]) and choice["logprobs"]["text_offset"][0] == 7
    assert result["usage"] == {"prompt_tokens": 7, "completion_tokens": 24, "total_tokens": 31}
    default = client.post("/v1/completions", json={"prompt": "The"}).json()  # one model: "model" may be left out
    assert len(default["choices"][0]["text"]) == 16 and default["choices"][0]["logprobs"] is None


def test_score_gives_the_surprisal_charlstm_score_computes(client: TestClient, trained_run: Path):
    text = "The cat sat on the mat.\nZebra"
    result = client.post("/api/score", json={"text": text}).json()
    expected = surprisal(load(trained_run), text)
    assert result["unknown"] == {"Z": 1} and result["bits"][text.index("Z")] is None
    scored = [b for b in result["bits"] if b is not None]
    assert scored == pytest.approx(expected.scored.tolist(), abs=1e-3)
    assert result["mean_bits"] == pytest.approx(expected.mean_bits) and result["spans"][0]["bits"] > 0


# -- refusals ---------------------------------------------------------------------------------------

REFUSALS = [
    ("/api/generate", b"{not json", 400, "not valid JSON"),
    ("/api/generate", b"[1, 2]", 400, "must be a JSON object"),
    ("/api/generate", {"model": "nope"}, 404, 'no model "nope" here; the models are: tiny'),
    ("/api/generate", {"temperature": "hot"}, 422, 'temperature must be a number at least 0 and at most 100, not "hot"'),
    ("/api/generate", {"temperature": -1}, 422, "temperature must be at least 0"),
    ("/api/generate", {"top_p": 0}, 422, "top_p must be above 0"),
    ("/api/generate", {"top_k": 10_000}, 422, "top_k 10000 is larger than the vocabulary"),
    ("/api/generate", {"length": 2001}, 422, "this server's --max-length is 2000"),
    ("/api/generate", {"length": 2.5}, 422, "length must be an integer"),
    ("/api/generate", {"n": 5}, 422, "this server's limit is 4"),
    ("/api/generate", {"stream": "yes"}, 422, "stream must be true or false"),
    ("/api/generate", {"stop": [""]}, 422, "stop must be a non-empty string"),
    ("/api/generate", {"unknown": "drop"}, 422, "unknown must be one of error, skip, replace"),
    ("/api/generate", {"min_p": 1.5}, 422, "min_p must be at least 0 and at most 1"),
    ("/api/generate", {"lines": 0}, 422, "lines must be at least 1"),
    ("/api/generate", {"seed": -1}, 422, "seed must be at least 0"),
    ("/api/generate", {"lenght": 10}, 422, 'unknown field(s) "lenght"'),
    ("/api/generate", {"prompt": "Zzyzx"}, 422, "never saw: 'Z', 'x', 'y', 'z'"),
    ("/api/generate", {"prompt": "x" * 20_000}, 413, "over this server's limit of 10,000 bytes"),
    ("/v1/completions", {"prompt": "The", "echo": True}, 422, "echo is not supported"),
    ("/v1/completions", {"prompt": ["a", "b"]}, 422, "one prompt per request"),
    ("/v1/completions", {"max_tokens": 0}, 422, "max_tokens must be at least 1"),
    ("/api/score", {"text": ""}, 422, "text is empty"),
    ("/api/score", {"text": "Zzz"}, 422, "none of the text's characters is in the model's vocabulary"),
]


@pytest.mark.parametrize("route, body, status, message", REFUSALS)
def test_a_bad_request_is_refused_with_json_saying_what_to_change(client: TestClient, route, body, status, message):
    response = client.post(route, content=body) if isinstance(body, bytes) else client.post(route, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"] and error["code"] == status


def test_unknown_characters_may_be_skipped_as_the_unknown_field_says(client: TestClient):
    body = {"prompt": "Zzyzx cat", "length": 5, "unknown": "skip", "stream": False}
    assert client.post("/api/generate", json=body).json()["samples"][0]["chars"] == 5


def test_unknown_routes_and_methods_answer_json(client: TestClient):
    assert client.get("/api/nothing").status_code == 404 and "/api/generate" in client.get("/x").json()["error"]["message"]
    assert client.get("/api/generate").json()["error"]["message"] == "GET is not allowed on /api/generate"


def test_an_api_key_guards_every_api_route_but_not_the_page_or_health(trained_run: Path):
    app, _ = make_app(trained_run, api_key="s3cret")
    with TestClient(app) as guarded:
        for method, route in [("GET", "/api/models"), ("GET", "/v1/models"), ("POST", "/api/generate"),
                              ("POST", "/v1/completions"), ("POST", "/api/score")]:
            missing = guarded.request(method, route, json={"prompt": "a", "text": "a"})
            assert missing.status_code == 401 and "needs an API key" in missing.json()["error"]["message"]
            wrong = guarded.request(method, route, headers={"Authorization": "Bearer nope"}, json={"text": "The"})
            assert wrong.status_code == 401 and "the API key is wrong" in wrong.json()["error"]["message"]
        assert guarded.get("/api/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert guarded.get("/health").status_code == 200 and guarded.get("/").status_code == 200


def test_several_runs_are_served_under_their_own_names(trained_run: Path):
    app, models = make_app(trained_run, names=2)
    assert [model.name for model in models] == ["tiny", "tiny-2"]
    with TestClient(app) as both:
        refused = both.post("/api/generate", json={"prompt": "The"})
        assert refused.status_code == 422 and "name one with" in refused.json()["error"]["message"]
        assert both.post("/api/generate", json={"model": "tiny-2", "length": 3, "stream": False}).json()["model"] == "tiny-2"


# -- the sampler: batching, fairness, cancellation ----------------------------------------------------

def wait_for(condition, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_concurrent_requests_are_stepped_as_one_batch_and_a_long_one_stalls_no_other(trained_run: Path):
    loaded = load(trained_run)
    sampler = BatchedSampler(Generator(loaded.model, loaded.vocab))
    try:
        long = sampler.submit(GenerationRequest("The", 1_000_000, seed=1))
        wait_for(lambda: long.steps > 0)
        short = [sampler.submit(GenerationRequest("A cat", 300, SamplingOptions(0.7), num_samples=2, seed=i)) for i in range(6)]
        wait_for(lambda: all(ticket.done for ticket in short))
        assert not long.done  # the short ones finished beside it
        assert all(ticket.outcome.generated_chars == 600 for ticket in short)
        long.cancel()
        wait_for(lambda: long.done)
        assert long.outcome.samples[0].finish_reason == "cancelled" and sampler.live_requests == 0
        # 6 x 300 characters drawn in far fewer steps than one at a time would take: they shared the steps.
        assert sampler.steps_taken < long.steps + 6 * 300
    finally:
        sampler.close()


def test_a_request_draws_the_same_text_whoever_else_is_served(trained_run: Path):
    """Primes of different lengths read together, whole-distribution draws made together, a top-k and a
    greedy request drawing on their own: each text is what Generator.generate gives that request alone."""
    loaded = load(trained_run)
    alone = Generator(loaded.model, loaded.vocab)
    requests = [GenerationRequest("The cat sat", 150, SamplingOptions(0.8), 2, seed=1),
                GenerationRequest("", 150, SamplingOptions(1.3), 1, seed=2),
                GenerationRequest("A dog", 120, SamplingOptions(1.0, top_k=4), 1, seed=3),
                GenerationRequest("Her red ball and we", 100, SamplingOptions(0.0), 1, seed=4),
                GenerationRequest("The cat sat", 90, SamplingOptions(0.5), 3, seed=5)]
    sampler = BatchedSampler(Generator(loaded.model, loaded.vocab))
    try:
        tickets = [sampler.submit(request) for request in requests]
        wait_for(lambda: all(ticket.done for ticket in tickets))
    finally:
        sampler.close()
    for request, ticket in zip(requests, tickets):
        options = request.sampling
        expected = alone.generate(request.prime, request.length, options.temperature, options.top_k, options.top_p,
                                  request.num_samples, request.seed)
        assert [sample.text for sample in ticket.outcome.samples] == expected
    assert sampler.steps_taken < sum(request.length for request in requests)  # they were stepped together


def test_a_long_prime_is_read_beside_the_streams_already_running(trained_run: Path):
    loaded = load(trained_run)
    sampler = BatchedSampler(Generator(loaded.model, loaded.vocab))
    read_once, release = sampler._prime_alone, threading.Event()

    def held_read(ids):  # the long read takes as long as the test wants
        release.wait(10)
        return read_once(ids)

    sampler._prime_alone = held_read
    long_prime = "The cat sat on the mat. " * 200
    try:
        running = sampler.submit(GenerationRequest("The", 1_000_000, seed=1))
        wait_for(lambda: running.steps > 0)
        reading = sampler.submit(GenerationRequest(long_prime, 50, seed=2))
        wait_for(lambda: sampler._reading)
        during = running.steps
        wait_for(lambda: running.steps > during + 100)  # the running stream goes on while the prime is read
        release.set()
        wait_for(lambda: reading.done)
        running.cancel()
    finally:
        sampler.close()
    assert reading.outcome.samples[0].text == Generator(loaded.model, loaded.vocab).generate(long_prime, 50, seed=2)[0]


@contextmanager
def live_server(app) -> Iterator[str]:
    """The app on a real uvicorn, on a free port of 127.0.0.1, in a thread."""
    import uvicorn

    listener = server.bind("127.0.0.1", 0)
    running = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=running.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    wait_for(lambda: running.started)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        running.should_exit = True
        thread.join(timeout=10)


def test_a_real_server_streams_ndjson_and_openai_events_and_a_disconnect_stops_the_work(trained_run: Path):
    app, (model,) = make_app(trained_run, limits=server.ServeLimits(max_length=1_000_000))
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        with http.stream("POST", "/api/generate", json={"prompt": "The", "length": 80, "seed": 4}) as response:
            lines = [json.loads(line) for line in response.iter_lines() if line]
        assert lines[-1]["done"] and "".join(line.get("text", "") for line in lines[:-1]).__len__() == 80

        with http.stream("POST", "/v1/completions", json={"model": "tiny", "prompt": "The", "max_tokens": 40,
                                                          "stream": True}) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(event) for event in events[:-1]]
        assert all(chunk["object"] == "text_completion" for chunk in chunks)
        assert len("".join(chunk["choices"][0]["text"] for chunk in chunks)) == 40
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert http.get("/v1/models").json()["data"][0]["id"] == "tiny"
        completion = http.post("/v1/completions", json={"prompt": "The", "max_tokens": 5}).json()
        assert len(completion["choices"][0]["text"]) == 5

        # A million characters asked for; the client reads a little and goes away.
        with http.stream("POST", "/api/generate", json={"prompt": "The", "length": 1_000_000}) as response:
            next(response.iter_lines())
        wait_for(lambda: http.get("/health").json()["live_requests"] == 0, 10)
        steps = model.sampler.steps_taken
        time.sleep(0.2)
        assert model.sampler.steps_taken == steps  # nothing is stepped for nobody


def test_a_non_streaming_request_whose_client_goes_away_is_cancelled(trained_run: Path):
    app, (model,) = make_app(trained_run, limits=server.ServeLimits(max_length=1_000_000))
    with live_server(app) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/api/generate", json={"prompt": "The", "length": 1_000_000, "stream": False}, timeout=0.5)
        wait_for(lambda: model.sampler.live_requests == 0, 10)


# -- the command ----------------------------------------------------------------------------------

def test_serve_without_the_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    assert main_outcome("serve").error_line == "error: charlstm serve needs the serve extra: pip install 'charlstm[serve]'"


def test_serve_on_a_taken_port_is_one_line(trained_run: Path):
    taken = server.bind("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        line = main_outcome("serve", "-c", str(trained_run), "--port", str(port)).error_line
        assert line.startswith(f"error: cannot listen on 127.0.0.1:{port}") and "pick another --port" in line
    finally:
        taken.close()


def test_serving_beyond_loopback_without_a_key_warns(trained_run: Path, capsys: pytest.CaptureFixture):
    models = server.serve_models([load(trained_run)], "fp32", 4)
    try:
        server.announce(models, "0.0.0.0", 8000, None)
        assert "no API key is set" in capsys.readouterr().err
        server.announce(models, "127.0.0.1", 8000, None)
        server.announce(models, "0.0.0.0", 8000, "key")
        assert "warning" not in capsys.readouterr().err
    finally:
        models[0].sampler.close()


def test_serve_takes_the_precisions_that_sample_takes(trained_run: Path):
    from charlstm.model.stepper import int8_available

    assert "[auto|bf16|fp32|int8]" in " ".join(main_outcome("serve", "--help").stdout.split())
    if not int8_available():
        pytest.skip("this PyTorch has no fbgemm engine")
    models = server.serve_models([load(trained_run)], "int8", 4)
    try:
        assert models[0].sampler.generator.precision == "int8"
    finally:
        models[0].sampler.close()


# -- the page, in a real browser ----------------------------------------------------------------------

@contextmanager
def serve_command(*args: str) -> Iterator[str]:
    """`charlstm serve ARGS --port 0` as a user starts it; yields its URL, read from its announcement."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen([sys.executable, "-m", "charlstm", "serve", *args, "--port", "0"],
                               stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stderr.readline()
        found = re.search(r"at (http://127\.0\.0\.1:\d+)/", line)
        assert found, line + process.stderr.read()
        yield found.group(1)
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_the_page_streams_text_stops_it_on_the_server_and_scores(browser, trained_run: Path, tmp_path: Path):
    with serve_command("-c", str(trained_run), "--max-length", "1000000") as url:
        page = browser.new_page()
        page.goto(url)
        page.wait_for_function("document.querySelector('#model').options.length === 1")
        assert "LSTM 2×48" in page.inner_text("#model-info")
        page.fill("#prompt", "The cat")
        page.fill("#length", "1000000")
        page.locator("#temperature").fill("0.5")  # moves the slider
        assert page.inner_text("#temperature-value") == "0.50"
        page.click("#generate")
        page.wait_for_function("document.querySelector('#generated').textContent.length > 20")
        first = len(page.inner_text("#generated"))
        page.wait_for_function(f"document.querySelector('#generated').textContent.length > {first + 20}")
        assert httpx.get(f"{url}/health").json()["live_requests"] == 1
        page.click("#stop")
        page.wait_for_function("document.querySelector('#status').textContent.startsWith('stopped')")
        wait_for(lambda: httpx.get(f"{url}/health").json()["live_requests"] == 0, 10)  # the server stopped too
        assert page.is_enabled("#generate") and not page.is_enabled("#stop")
        page.screenshot(path=str(tmp_path / "generate.png"))

        page.click("#tab-score")
        page.fill("#score-text", "The cat sat on the mat.\nQ")
        page.click("#score-button")
        page.wait_for_function("document.querySelectorAll('#score-output span').length === 25")
        colours = page.eval_on_selector_all("#score-output span:not(.u)", "spans => spans.map(s => s.style.background)")
        assert len(colours) == 24 and len(set(colours)) > 3  # coloured, and not all alike
        assert page.get_attribute("#score-output span.u", "title") == "not in the vocabulary"
        assert "mean" in page.inner_text("#score-status")
        page.screenshot(path=str(tmp_path / "score.png"))
        page.close()
