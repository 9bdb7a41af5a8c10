"""Hardware profiles (bundled and user TOML) and the controller's memory footprint with its verdict."""

import json

import pytest

from edgelearn import load_profile, memory_footprint
from edgelearn.cli import main
from edgelearn.continual import RunConfig
from edgelearn.errors import InputError
from edgelearn.profiles import DEFAULT_PROFILE, bundled_profiles

SMALL = """name = "tiny"
[mcu]
core = "Cortex-M0+"
clock_hz = 16e6
active_current_per_mhz_a = 40e-6
sleep_current_a = 1e-6
sram_bytes = 8192
flash_bytes = 65536
"""


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGELEARN_CACHE_DIR", str(tmp_path / "cache"))


def test_bundled_profiles_load():
    names = set(bundled_profiles())
    assert {"m4f-lowpower", "m33"} <= names and DEFAULT_PROFILE in names
    cores = set()
    for name in names:
        profile = load_profile(name)
        assert profile.name == name and profile.typical
        assert profile.imu is not None and profile.battery is not None and profile.battery.energy_j > 0
        cores.add(profile.mcu.core)
    assert {"Cortex-M4F", "Cortex-M33"} <= cores
    assert load_profile().mcu.sram_bytes == 256 * 1024


def test_profile_from_a_file_and_one_line_errors(tmp_path):
    good = tmp_path / "tiny.toml"
    good.write_text(SMALL)
    assert load_profile(good).mcu.sram_bytes == 8192 and load_profile(str(good)).imu is None
    bad = tmp_path / "bad.toml"
    bad.write_text(SMALL.replace("sram_bytes = 8192", "sram_bytes = -5"))
    with pytest.raises(InputError) as exc:
        load_profile(bad)
    assert exc.value.field == "mcu.sram_bytes" and "\n" not in str(exc.value) and str(bad) in str(exc.value)
    extra = tmp_path / "extra.toml"
    extra.write_text(SMALL + "sram_kib = 8\n")
    with pytest.raises(InputError, match="mcu.sram_kib"):
        load_profile(extra)
    nan = tmp_path / "nan.toml"
    nan.write_text(SMALL.replace("clock_hz = 16e6", "clock_hz = nan"))
    with pytest.raises(InputError, match="mcu.clock_hz.*finite"):
        load_profile(nan)
    with pytest.raises(InputError, match="no bundled profile of that name"):
        load_profile("no-such-profile")


def test_paper_network_accumulator_is_918_kib_and_does_not_fit():
    report = memory_footprint((784, 256, 128, 10), "mp")
    assert report.assumptions["weights"] == 235_146
    assert report.items["accumulator"] == 235_146 * 4
    assert 918 < report.items["accumulator"] / 1024 < 919
    report.check(load_profile("m4f-lowpower"))
    assert not report.fits
    assert report.message == ("mixed precision needs 918.5 KiB of accumulator; the profile m4f-lowpower has 256 KiB "
                              "SRAM")
    assert memory_footprint((784, 256, 128, 10), "sgd").items["accumulator"] == 0
    assert memory_footprint((784, 256, 128, 10), "mp", chi_bits=16).items["accumulator"] == 235_146 * 2


def test_default_stream_network_fits():
    config = RunConfig()
    sizes = (30, config.hidden, 4)  # BasicMotions: 6 channels x 5 features, 4 classes
    report = memory_footprint(sizes, config.algorithm, replay=config.replay, window_samples=26, channels=6,
                              batch=config.replay_batch).check(load_profile())
    assert report.items["accumulator"] == (31 * 32 + 33 * 4) * 4  # 4.4 KiB
    assert report.items["replay"] == config.replay * (30 * 2 + 1)  # int16 Q1.15 inputs + a label byte
    assert report.items["window"] == 26 * 6 * 2
    assert report.total_bytes == sum(report.items.values())
    assert report.fits and report.message.startswith("fits: ") and report.message.endswith("of 256 KiB SRAM")


def test_budget_warns_or_refuses_a_configuration_that_does_not_fit(tmp_path, capsys):
    tiny = tmp_path / "tiny.toml"
    tiny.write_text(SMALL)
    argv = ["budget", "--card", "ID170ZR5000-2us", "--daily-budget", "1mJ", "--network", "784-256-128-10",
            "--profile", str(tiny)]
    assert main([*argv, "--require-fit"]) == 2  # refused before anything is measured
    err = capsys.readouterr().err.strip()
    assert err == ("edgelearn: error: mixed precision needs 918.5 KiB of accumulator; the profile tiny has 8 KiB "
                   "SRAM")
    # a small network fits; in a smaller SRAM it does not, is only warned about, and the budget still answers
    assert main(["budget", "--card", "ID170ZR5000-2us", "--daily-budget", "1mJ", "--network", "20-8-3",
                 "--profile", str(tiny), "--json"]) == 0
    out = capsys.readouterr()
    memory = json.loads(out.out)["memory"]
    assert memory["fits"] is True and memory["profile"] == "tiny" and out.err == ""
    tinier = tmp_path / "tinier.toml"
    tinier.write_text(SMALL.replace("sram_bytes = 8192", "sram_bytes = 800").replace('"tiny"', '"tinier"'))
    # 20-8-3 mp at batch 1: 780 B of accumulator, 908 B in all
    assert main(["budget", "--card", "ID170ZR5000-2us", "--daily-budget", "1mJ", "--network", "20-8-3",
                 "--batch-size", "1", "--profile", str(tinier)]) == 0
    out = capsys.readouterr()
    assert out.err == ("edgelearn: warning: the configuration needs 908 B (780 B of accumulator); the profile tinier "
                       "has 800 B SRAM\n")
    assert "memory (profile tinier)" in out.out


def test_train_refuses_before_training_with_require_fit(tmp_path, capsys):
    code = main(["train", "--card", "ID170ZR5000-2us", "--network", "paper", "--data-dir", str(tmp_path),
                 "--require-fit", "--quiet"])
    assert code == 2
    assert capsys.readouterr().err.strip() == ("edgelearn: error: mixed precision needs 918.5 KiB of accumulator; the "
                                               "profile m4f-lowpower has 256 KiB SRAM")


def test_train_prints_the_memory_verdict(tmp_path, capsys):
    from test_train import fake_mnist

    (tmp_path / "mnist").mkdir()
    data = fake_mnist(tmp_path / "mnist")
    code = main(["train", "--card", "ID170ZR5000-2us", "--network", "784-8-10", "--epochs", "1", "--batch-size", "8",
                 "--max-train-samples", "64", "--data-dir", str(data), "--out", str(tmp_path / "run"), "--quiet",
                 "--profile", "m33"])
    out = capsys.readouterr()
    # stderr holds only the card's own plausibility warnings (docs/devices.md, "Warnings"), no memory warning
    assert code == 0 and all(line.startswith("edgelearn: warning: ID170ZR5000-2us-") for line in out.err.splitlines())
    row = next(line for line in out.out.splitlines() if line.startswith("memory (profile m33)"))
    assert row.split(None, 3)[-1].startswith("fits: ") and row.endswith("of 512 KiB SRAM")
    memory = json.loads((tmp_path / "run" / "summary.json").read_text())["memory"]
    assert memory["items"]["accumulator"] == (785 * 8 + 9 * 10) * 4 and memory["items"]["activations"] == 8 * 18 * 4


def test_run_prints_the_memory_verdict_and_warns_when_it_does_not_fit(tmp_path, capsys):
    tiny = tmp_path / "tiny.toml"
    tiny.write_text(SMALL)
    assert main(["run", "--quiet", "--profile", str(tiny), "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr()
    message = "the configuration needs 8.8 KiB (4.4 KiB of accumulator); the profile tiny has 8 KiB SRAM"
    assert out.err == f"edgelearn: warning: {message}\n"
    assert any(line.startswith("memory (profile tiny)") and line.endswith(message) for line in out.out.splitlines())
    memory = json.loads((tmp_path / "run" / "summary.json").read_text())["memory"]
    assert memory["fits"] is False and memory["items"]["accumulator"] == 4496 and memory["items"]["window"] == 312


def test_run_with_require_fit_is_refused_before_the_stream(tmp_path, capsys, monkeypatch):
    from edgelearn import continual

    tiny = tmp_path / "tiny.toml"
    tiny.write_text(SMALL)
    monkeypatch.setattr(continual, "_stream_arm", lambda *a, **k: (_ for _ in ()).throw(AssertionError("streamed")))
    assert main(["run", "--quiet", "--profile", str(tiny), "--require-fit", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == ("edgelearn: error: the configuration needs 8.8 KiB (4.4 KiB of accumulator); "
                                       "the profile tiny has 8 KiB SRAM\n")
    assert not (tmp_path / "run" / "summary.json").exists()


def test_list_profiles(capsys):
    assert main(["budget", "--list-profiles"]) == 0
    out = capsys.readouterr().out
    assert "m4f-lowpower  low-power Cortex-M4F" in out and "512 KiB SRAM, typical figures" in out
    assert "m4f-lowpower.toml" in out and "--profile my.toml" in out
