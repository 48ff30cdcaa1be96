"""The page in headless Chromium with its fake microphone fed from a toy-corpus wav, against
the server started by its command line (``python -m espnet2_dualmode.bin.serve``).

Chromium plays the capture file once (``%noloop``), from when the page opens the
microphone, then silence; the page is opened with ``?max_seconds=`` and sends exactly that
much audio, then stops. (A looped file was rotated by the page's start-up delay: CI once
sent the end of the utterance before its start.) The file is an utterance and 0.5 s of
silence, with no silence before it. The page misses the file's first samples: the worklet
starts after the microphone opens (29 and 39 ms seen on loaded machines); the test
measures that delay from the recorded audio and names it when it is over 100 ms. The toy
model, overfitted on clips that start with the speech, misreads some clips after 20 ms of
leading silence or with their first 40 ms lost, so the utterance is the first one that
both the streaming path and the attention head read with up to 100 ms of its start cut
off (:func:`robust_utterance`: a precondition on the toy model, checked). The server records the audio it received, and the
page must show (a) the wav's expected transcript and (b) exactly what the library gives
for the recorded audio: Speech2TextStreaming's final and Speech2Text's attention re-decode.
The screenshot goes to ``$DUALMODE_SERVE_SCREENSHOT`` or the test's tmp dir."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from espnet2_dualmode.bin.dualmode_asr_inference_streaming import recognize
from espnet2_dualmode.inference.offline import Speech2Text
from espnet2_dualmode.inference.streaming import Speech2TextStreaming

BEAM = 4


def chromium_paths():
    """(chromium, chromedriver) of Debian's packages, or a skip naming what is missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("chromium and chromedriver binaries not found (apt-get install chromium "
                    "chromium-driver)")
    return browser, driver


@pytest.fixture
def served(toy_model, tmp_path):
    """The server's command line on a free loopback port, recording streams to tmp_path."""
    record, log = tmp_path / "recorded", tmp_path / "server.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "espnet2_dualmode.bin.serve", "--asr_train_config",
         str(toy_model["config"]), "--asr_model_file", str(toy_model["model"]), "--port", "0",
         "--beam_size", str(BEAM), "--record_dir", str(record)],
        stdout=subprocess.PIPE, stderr=log.open("w"), text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        for line in proc.stdout:  # third-party import notices may come first
            if line.startswith("serving on "):
                break
        else:
            pytest.fail(f"the server exited with {proc.wait()} before serving:\n{log.read_text()[-3000:]}")
        yield line.split()[-1], record
    finally:
        proc.terminate()
        proc.wait(timeout=30)


MAX_DELAY = 1600  # samples of the file the page may miss at its start (100 ms)


def robust_utterance(toy_model, toy_corpus):
    """(wav, transcript) of the first toy utterance that the streaming path and the
    attention head both read with its first 0, 400, ..., MAX_DELAY samples cut off."""
    streaming = Speech2TextStreaming(toy_model["config"], toy_model["model"], beam_size=BEAM)
    attention = Speech2Text(toy_model["config"], toy_model["model"], decode_head="attention",
                            beam_size=BEAM)
    texts = dict(line.split() for line in toy_corpus["text"].read_text().splitlines())
    for line in toy_corpus["wav.scp"].read_text().splitlines():
        key, path = line.split()
        wav = soundfile.read(path, dtype="float32")[0]
        cut = [np.concatenate([wav[c:], np.zeros(8000 + c, np.float32)])
               for c in range(0, MAX_DELAY + 1, 400)]
        if (all(recognize(streaming, x, 0)[0].text == texts[key] for x in cut)
                and all(r[0].text == texts[key] for r in attention(cut))):
            return wav, texts[key]
    pytest.fail(f"the toy model misreads every utterance once up to {MAX_DELAY} samples of "
                "its start are cut off")


def test_page_shows_the_transcript_of_the_fake_microphone(served, toy_model, toy_corpus, tmp_path):
    browser, driver_path = chromium_paths()
    url, record = served
    wav, transcript = robust_utterance(toy_model, toy_corpus)
    played = np.concatenate([wav, np.zeros(8000, np.float32)])
    fake = tmp_path / "fake_mic.wav"
    soundfile.write(fake, played, 16000, subtype="PCM_16")
    seconds = played.size / 16000

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--window-size=1000,700",
                "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={fake}%noloop"):
        options.add_argument(arg)
    chrome = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        chrome.get(f"{url}?max_seconds={seconds}")
        chrome.find_element(By.ID, "mic").click()
        WebDriverWait(chrome, 30).until(
            lambda d: d.execute_script("return document.body.dataset.offline === '1' "
                                       "|| document.getElementById('error').textContent !== ''"))
        shot = Path(os.environ.get("DUALMODE_SERVE_SCREENSHOT", tmp_path / "serve_page.png"))
        chrome.save_screenshot(str(shot))
        error = chrome.find_element(By.ID, "error").text
        final = chrome.find_element(By.ID, "segments").get_attribute("data-text")
        offline = chrome.find_element(By.ID, "offline").get_attribute("data-text")
        segments = chrome.find_element(By.ID, "segments").text
        session = chrome.execute_script("return document.body.dataset.session")
    finally:
        chrome.quit()
    assert error == ""
    sent = soundfile.read(record / f"{session}.wav", dtype="float32")[0]
    assert sent.size == round(seconds * 16000)  # exactly max_seconds of audio
    correlation = np.correlate(sent, played, "full")
    delay = (played.size - 1) - int(np.argmax(correlation))  # samples of the file not captured
    assert 0 <= delay <= MAX_DELAY, f"the page started capturing {delay / 16:.0f} ms into the file"

    streaming = Speech2TextStreaming(toy_model["config"], toy_model["model"], beam_size=BEAM)
    assert final == transcript  # the wav's expected transcript
    assert final == recognize(streaming, sent, 0)[0].text
    assert transcript in segments and f"0.00-{seconds:.2f} s" in segments
    attention = Speech2Text(toy_model["config"], toy_model["model"], decode_head="attention",
                            beam_size=BEAM)
    assert offline == attention([sent])[0][0].text == transcript
