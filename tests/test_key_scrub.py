"""Key material never shown (issue 21.6): a provider that echoes part of the key, the key in another case,
or a key shorter than 8 characters. Against the loopback Runware server echoing them in its error text."""
from __future__ import annotations

import pytest

from comfyui_flux2.flux2.backend import GenerationRequest, run
from comfyui_flux2.flux2.errors import ProviderError
from comfyui_flux2.flux2.redaction import scrub
from comfyui_flux2.flux2.remote.options import RemoteOptions
from comfyui_flux2.flux2.remote.runware import RunwareBackend
from comfyui_flux2.flux2.run_context import RunContext
from comfyui_flux2.loopback.runware_server import RunwareLoopback

LONG_KEY = "Rk7Qm2Xp9Lw4Vt6Zb1Nc8Hd3Jf5Gs0Ay"      # Runware keys: 32 letters and digits


def echoed_error(monkeypatch, key: str, echo: str) -> str:
    """The error text of a Runware call whose provider answers 400 quoting `echo`."""
    with RunwareLoopback(api_key=key) as server:
        monkeypatch.setenv("RUNWARE_API_URL", server.api_url)
        monkeypatch.setenv("RUNWARE_API_KEY", key)
        server.faults.push(route="submit", status=400,
                           body={"errors": [{"code": "invalidParameter", "message": f"bad key {echo} (check it)"}]})
        with pytest.raises(ProviderError) as info:
            run(RunwareBackend("FLUX.2 [pro]", RemoteOptions()), GenerationRequest("x", 256, 256, 1), RunContext())
    return str(info.value)


@pytest.mark.parametrize("echo", [LONG_KEY[:20], LONG_KEY.upper(), LONG_KEY.lower(), LONG_KEY[5:13],
                                  LONG_KEY[-8:].swapcase()])
def test_a_provider_echoing_part_of_the_key_or_the_key_in_another_case_shows_none_of_it(monkeypatch, echo):
    """Before: the first 20 characters, and the upper-cased key, were printed as they came."""
    text = echoed_error(monkeypatch, LONG_KEY, echo)
    assert "bad key *** (check it)" in text
    assert not any(LONG_KEY[i:i + 8].lower() in text.lower() for i in range(len(LONG_KEY) - 7))


def test_a_seven_character_key_is_scrubbed(monkeypatch):
    """Before: keys under 8 characters were never scrubbed."""
    text = echoed_error(monkeypatch, "k3Y-7ch", "K3Y-7CH")
    assert "bad key *** (check it)" in text and "7ch" not in text.lower()


@pytest.mark.parametrize("cut", range(0, len(LONG_KEY) - 7))
def test_every_run_of_eight_key_characters_is_scrubbed_wherever_it_starts(monkeypatch, cut):
    monkeypatch.setenv("RUNWARE_API_KEY", LONG_KEY)
    for piece in (LONG_KEY[cut:cut + 8], LONG_KEY[cut:], LONG_KEY[:cut + 8]):
        assert scrub(f"<{piece}>") == "<***>"
        assert scrub(f"<{piece.upper()}>", limit=300) == "<***>"


def test_runs_shorter_than_eight_and_other_text_are_left_alone(monkeypatch):
    """The false positives chosen against: 7 characters of a key, and words that merely share letters."""
    monkeypatch.setenv("RUNWARE_API_KEY", LONG_KEY)
    text = f"task 3f2a9c1e-0b4d-4e6f-8a7b-1c2d3e4f5a6b: {LONG_KEY[3:10]} Rk7Q fine"
    assert scrub(text) == text


def test_a_short_key_is_scrubbed_where_it_stands_alone_in_any_case(monkeypatch):
    monkeypatch.setenv("BFL_API_KEY", "ab12")
    assert scrub("x-key: ab12, AB12. [Ab12]") == "x-key: ***, ***. [***]"
    assert scrub("tab123 and ab12c and ab12-x stay") == "tab123 and ab12c and ab12-x stay"   # inside a word


def test_a_key_cut_at_the_limit_leaves_no_piece_behind(monkeypatch):
    """Redaction comes before the cut, also when the text is searched only as far as the cut needs."""
    monkeypatch.setenv("RUNWARE_API_KEY", LONG_KEY)
    for pad in range(180, 205):
        shown = scrub("p" * pad + LONG_KEY + " " + LONG_KEY * 3 + "q" * 10_000, limit=200)
        assert len(shown) <= 200 and ("***" in shown or pad > 196)
        assert not any(LONG_KEY[i:i + 4] in shown for i in range(len(LONG_KEY) - 3))


BFL_STYLE_KEY = "3f2a9c1e-0b4d-4e6f-8a7b-1c2d3e4f5a6b"   # BFL keys are UUIDs


@pytest.mark.parametrize("reformat", [lambda k: k.replace("-", ""), lambda k: k.replace("-", "").upper(),
                                      lambda k: k.replace("-", "_")])
def test_a_key_echoed_with_its_separators_dropped_or_changed_shows_none_of_it(monkeypatch, reformat):
    """Before: 32 bare hex digits of a UUID key kept every 8-character run that straddled a hyphen."""
    monkeypatch.setenv("BFL_API_KEY", BFL_STYLE_KEY)
    echo = reformat(BFL_STYLE_KEY)
    bare = BFL_STYLE_KEY.replace("-", "")
    text = scrub(f"bad key {echo} (check it)")
    assert text == "bad key *** (check it)"
    assert not any(bare[i:i + 8] in text.lower() for i in range(len(bare) - 7))
