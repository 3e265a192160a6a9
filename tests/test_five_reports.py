"""Report -> fields extraction: rules on generated and hand-written reports, the LLM extractor on a real local server."""

from __future__ import annotations

import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from wsiscale.config import ConfigError, FiveConfig
from wsiscale.five.extract import LLMExtractor, RuleExtractor, build_extractor, register_extractor
from wsiscale.synth.report import REPORT_FIELDS, compose_report, report_fields

FIELDS = list(REPORT_FIELDS)


def _fractions(rng: np.random.Generator) -> dict[str, float]:
    return {"necrosis": float(rng.choice([0.0, 0.01, 0.08, 0.3])), "lymphocytes": float(rng.choice([0.0, 0.1, 0.3])),
            "fat": float(rng.choice([0.0, 0.1])), "stroma": float(rng.choice([0.2, 0.4]))}


def test_rules_recover_every_stated_field_of_generated_reports():
    rng = np.random.default_rng(0)
    ex = RuleExtractor(FIELDS)
    stated_total = omitted_total = 0
    for i in range(200):
        fr = _fractions(rng)
        text, stated = compose_report(fr, int(rng.integers(0, 3)), rng, omit=0.2, distractors=0.7)
        got = ex.extract(text)
        assert got == stated, f"report {i}: {text!r}"
        stated_total += sum(v is not None for v in stated.values())
        omitted_total += sum(v is None for v in stated.values())
    # The draw exercised both omissions and every necrosis / inflammation level.
    assert omitted_total > 50 and stated_total > 900


def test_compose_report_states_the_ground_truth_fields():
    fr = {"necrosis": 0.3, "lymphocytes": 0.0, "fat": 0.1, "stroma": 0.4}
    text, stated = compose_report(fr, 2, np.random.default_rng(5), omit=0.0, distractors=0.0)
    truth = report_fields(fr, 2, np.random.default_rng(5))
    assert stated == truth
    assert stated["necrosis"] == "extensive necrosis" and stated["inflammation"] == "absent lymphocytic infiltrate"
    assert len([s for s in text.split(". ") if s]) == len(FIELDS)


@pytest.mark.parametrize("report, expected", [
    ("Diagnosis: Adenocarcinoma. No necrosis is identified. Specimen received in formalin.",
     {"tissue type": "adenocarcinoma", "necrosis": "absent necrosis"}),
    ("Clinical history: mass on imaging. The sections show solid carcinoma. Focal necrosis is present. "
     "There is extensive lymphocytic infiltrate.",
     {"tissue type": "solid carcinoma", "necrosis": "focal necrosis",
      "inflammation": "extensive lymphocytic infiltrate"}),
    ("Nuclei: bland round nuclei.\nStroma: moderate fibrous stroma with adipose tissue.\n"
     "Inflammation: absent lymphocytic infiltrate.",
     {"nuclear features": "bland round nuclei", "stroma": "moderate fibrous stroma with adipose tissue",
      "inflammation": "absent lymphocytic infiltrate"}),
    ("Necrosis is not seen. Margins cannot be assessed on this specimen.", {"necrosis": "absent necrosis"}),
    ("", {}),
])
def test_rules_on_hand_written_reports(report, expected):
    got = RuleExtractor(FIELDS).extract(report)
    assert got == {f: expected.get(f) for f in FIELDS}


def test_rules_only_return_configured_fields():
    got = RuleExtractor(["necrosis"]).extract("Diagnosis: adenocarcinoma. There is focal necrosis.")
    assert got == {"necrosis": "focal necrosis"}


class _FakeLLM(BaseHTTPRequestHandler):
    """An OpenAI-compatible ``/v1/chat/completions`` endpoint answering from ``server.answers``."""

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        report = body["messages"][-1]["content"]
        content = self.server.answers(report)
        if content is None:
            self.send_response(500)
            self.end_headers()
            return
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def llm_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeLLM)
    server.requests = []
    server.answers = lambda report: None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _five(url: str, **extractor) -> FiveConfig:
    return FiveConfig.model_validate({"extractor": {"kind": "llm", "llm_base_url": url, "llm_model": "tiny-llm",
                                                    "llm_max_retries": 0, "llm_timeout_s": 10, **extractor}})


def test_llm_extractor_against_a_local_openai_compatible_server(llm_server, monkeypatch, caplog):
    secret = "sk-test-7f3a9c"
    monkeypatch.setenv("WSISCALE_TEST_LLM_KEY", secret)
    answers = {
        "plain": json.dumps({"tissue type": "Adenocarcinoma", "necrosis": "focal necrosis", "stroma": None}),
        "fenced": "Here you go:\n```json\n{\"Tissue Type\": \"benign tissue\", \"inflammation\": \"\"}\n```",
        "Diagnosis: solid carcinoma. Focal necrosis is present.": "I cannot help with that.",
    }
    llm_server.answers = lambda report: answers.get(report)
    url = f"http://127.0.0.1:{llm_server.server_address[1]}/v1/"
    ex = build_extractor(_five(url, llm_api_key_env="WSISCALE_TEST_LLM_KEY"))
    assert isinstance(ex, LLMExtractor)
    with caplog.at_level(logging.DEBUG, logger="wsiscale"):
        got = ex.extract_many(list(answers))
    none = dict.fromkeys(FIELDS)
    assert got[0] == {**none, "tissue type": "adenocarcinoma", "necrosis": "focal necrosis"}
    assert got[1] == {**none, "tissue type": "benign tissue"}
    # The unparseable answer fell back to the rules, with a warning naming the reason.
    assert got[2] == {**none, "tissue type": "solid carcinoma", "necrosis": "focal necrosis"}
    assert any("no JSON object" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    # Requests: the right path, the key as a bearer token, the fields and the model in the request.
    assert len(llm_server.requests) == 3
    req = llm_server.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == f"Bearer {secret}"
    assert req["body"]["model"] == "tiny-llm" and req["body"]["temperature"] == 0.0
    assert all(f'"{f}"' in req["body"]["messages"][0]["content"] for f in FIELDS)
    assert secret not in caplog.text


def test_llm_extractor_without_fallback_raises_naming_the_endpoint(llm_server):
    llm_server.answers = lambda report: None  # HTTP 500 on every request
    url = f"http://127.0.0.1:{llm_server.server_address[1]}/v1"
    ex = build_extractor(_five(url, fallback_to_rules=False))
    with pytest.raises(ConnectionError, match=r"127\.0\.0\.1.*tiny-llm.*kind=rules"):
        ex.extract("Diagnosis: benign tissue.")
    llm_server.answers = lambda report: "not json"
    with pytest.raises(ValueError, match="no JSON object"):
        ex.extract("Diagnosis: benign tissue.")


def test_llm_extractor_config_errors():
    with pytest.raises(ConfigError, match="llm_base_url"):
        build_extractor(FiveConfig.model_validate({"extractor": {"kind": "llm"}}))
    with pytest.raises(ConfigError, match="http"):
        build_extractor(_five("file:///etc/passwd"))
    with pytest.raises(ConfigError, match="unknown five.extractor.kind 'nope'.*llm.*rules"):
        build_extractor(FiveConfig.model_validate({"extractor": {"kind": "nope"}}))


def test_registered_extractor_is_built_by_name():
    class Upper(RuleExtractor):
        def extract(self, report):
            return {f: v.upper() if v else v for f, v in super().extract(report).items()}

    register_extractor("upper-test", lambda five: Upper(five.fields))
    ex = build_extractor(FiveConfig.model_validate({"extractor": {"kind": "upper-test"}}))
    assert ex.extract("Diagnosis: benign tissue.")["tissue type"] == "BENIGN TISSUE"


def test_no_network_access_without_a_configured_llm(monkeypatch):
    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise AssertionError(f"network access attempted: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: refuse(None, a))
    five = FiveConfig()
    assert five.extractor.kind == "rules"
    rng = np.random.default_rng(1)
    reports = [compose_report(_fractions(rng), i % 3, rng)[0] for i in range(30)]
    got = build_extractor(five).extract_many(reports)
    assert len(got) == 30 and all(g["tissue type"] for g in got)
    assert attempts == []


def test_no_network_access_loading_fives_slides_and_text_encoder(tmp_path, monkeypatch):
    """The whole offline path (reports -> fields, the packaged text encoder) with every socket connect refused."""
    import torch
    from five_cohort import FiveCohortSpec, write_five_cohort

    from wsiscale.config import WsiscaleConfig
    from wsiscale.five.data import five_slides
    from wsiscale.five.text import build_text_encoder

    run, manifest = write_five_cohort(tmp_path, FiveCohortSpec(slides_per_label=3, cells=6), seed=0)
    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"network access attempted: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    cfg = WsiscaleConfig()
    slides, class_names, dim = five_slides(cfg, run, manifest)
    assert len(slides) == 9 and all(s.has_report for s in slides) and dim == 32
    enc = build_text_encoder(cfg.five.text)
    with torch.no_grad():
        z = enc.encode([s.fields["tissue type"] for s in slides])
    assert z.shape == (9, enc.dim) and torch.isfinite(z).all()
    assert attempts == []
