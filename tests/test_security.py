"""Keys come from the environment, go only to the configured host, and never show up anywhere else."""
from __future__ import annotations

import logging

import httpx
import pytest
from PIL import Image

from comfyui_flux2.cli import main
from comfyui_flux2.flux2.backend import GenerationRequest, run
from comfyui_flux2.flux2.errors import ConfigError, Flux2Error
from comfyui_flux2.flux2.remote.runware import RunwareBackend
from comfyui_flux2.flux2.net.transport import Transport
from comfyui_flux2.flux2.run_context import RunContext


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
RUNWARE_TEST_KEY = "rw-test-key-5f2c9a"   # what the `runware` fixture (conftest.py) serves


def test_key_header_only_goes_to_the_configured_origin():
    seen = []
    mock = httpx.MockTransport(lambda req: seen.append(req) or httpx.Response(200, content=b"x"))
    t = Transport("runware", ["https://api.runware.ai/v1"], lambda: {"Authorization": "Bearer K"}, transport=mock)
    t.submit("https://api.runware.ai/v1", [])
    assert seen[-1].headers["authorization"] == "Bearer K"
    with pytest.raises(ConfigError, match="refusing to send the runware key to evil.example"):
        t.submit("https://evil.example/v1", [])
    with pytest.raises(ConfigError):
        t.get("https://api.runware.ai:8443/v1", keyed=True)     # same host, other port: other origin
    t.download("https://im.runware.ai/image/x.png", "result")
    assert "authorization" not in seen[-1].headers            # result downloads never carry the key


def test_keyed_requests_do_not_follow_redirects():
    seen = []

    def handler(req):
        seen.append(req)
        return httpx.Response(307, headers={"location": "https://evil.example/steal"})

    t = Transport("bfl", ["https://api.bfl.ai"], lambda: {"x-key": "K"}, transport=httpx.MockTransport(handler))
    assert t.submit("https://api.bfl.ai/v1/flux-2-pro", {}).status_code == 307
    assert [r.url.host for r in seen] == ["api.bfl.ai"]


@pytest.mark.parametrize("url", ["http://api.example.com/v1", "ftp://127.0.0.1/v1", "not a url"])
def test_provider_url_must_be_https_except_loopback(monkeypatch, url):
    monkeypatch.setenv("RUNWARE_API_URL", url)
    monkeypatch.setenv("RUNWARE_API_KEY", "k")
    with pytest.raises(ConfigError, match="RUNWARE_API_URL"):
        run(RunwareBackend("FLUX.2 [pro]"), GenerationRequest("x", 512, 512, 1), RunContext())


def test_key_file_is_supported(monkeypatch, tmp_path, runware):
    monkeypatch.delenv("RUNWARE_API_KEY")
    key_file = tmp_path / "key"
    key_file.write_text(RUNWARE_TEST_KEY + "\n")
    monkeypatch.setenv("RUNWARE_API_KEY_FILE", str(key_file))
    run(RunwareBackend("FLUX.2 [pro]"), GenerationRequest("x", 256, 256, 1), RunContext())
    assert runware.requests[0]["auth_ok"]


def test_key_never_in_logs_errors_outputs_or_metadata(runware, tmp_path, caplog, capsys, monkeypatch):
    caplog.set_level(logging.DEBUG)
    wf = ROOT / "workflows" / "flux2_chain_edit.json"
    assert main(["-v", "run", str(wf), "--output-dir", str(tmp_path / "ok")]) == 0
    runware.faults.push(route="submit", status=500, body={"errors": [{"code": "x", "message": f"echo {RUNWARE_TEST_KEY}"}]})
    assert main(["-v", "run", str(wf), "--no-cache", "--output-dir", str(tmp_path / "fail")]) == 1
    monkeypatch.setenv("RUNWARE_API_KEY", "wrong-" + RUNWARE_TEST_KEY)
    assert main(["run", str(wf), "--no-cache", "--output-dir", str(tmp_path / "fail2")]) == 1
    out = capsys.readouterr()
    text = out.out + out.err + caplog.text
    assert "echo ***" in text                    # the provider's message is shown, the key is not
    assert RUNWARE_TEST_KEY not in text
    pngs = list((tmp_path / "ok").rglob("*.png"))
    assert pngs
    for png in pngs:
        assert RUNWARE_TEST_KEY not in png.read_bytes().decode("latin-1")
        with Image.open(png) as img:
            assert all(RUNWARE_TEST_KEY not in v for v in img.text.values())


def test_errors_are_single_line_flux2_errors():
    with pytest.raises(Flux2Error) as err:
        raise Flux2Error("line one\nline two")
    assert str(err.value) == "line one line two"
