"""Measured firmware cycles reach the budget: the mapping from a measurement to a profile's [cycles] table, the
profile written with them, and a budget that uses them (no CPU emulator needed: the measurement is given)."""

import pytest

from edgelearn.errors import InputError
from edgelearn.profiles import CycleTable, load_profile, measured_cycles, profile_with_cycles


def fake_measurement():
    ops = {"mvm_per_input": {"cycles": 1500.0}, "mvm_per_output": {"cycles": 1200.0},
           "mp_update_chi_per_cell": {"cycles": 75.0}, "rng_u32_call": {"cycles": 36.0},
           "window_features_per_sample": {"cycles": 48.6}, "normalise_per_feature": {"cycles": 61.0},
           "encode_frame_per_byte": {"cycles": 33.8},
           "mvm_whole_call": {"shape_8x16": {"own_cycles": 16 * 1500.0 + 8 * 1200.0 + 1567.0}},
           "window_features_per_window": {"excluding_samples_cycles": 1148.9}}
    return {"operations": ops, "cpu": "cortex-m4", "compiler": "zig 0.17.1", "source_hash": "abc123"}


def test_measured_cycles_map_onto_the_cycle_table():
    c = measured_cycles(fake_measurement())
    assert (c["dac_code"], c["adc_code"], c["chi_update"], c["rng_draw"]) == (1500.0, 1200.0, 75.0, 36.0)
    assert c["mvm_pass"] == 1567.0  # the forward call's own cycles less 16 DAC and 8 ADC codes
    assert c["feature_channel"] == 1148.9 and c["frame_byte"] == 33.8
    kept = set(CycleTable.model_fields) - set(c)
    assert kept == {"mac", "pulse", "device_read", "update_call", "wake", "sample_read"}
    assert c["source"].startswith("measured: edgelearn firmware measure, cortex-m4") and "sources abc123" in c["source"]
    assert all(k in c["source"] for k in kept)


def test_a_profile_with_measured_cycles_reads_back_and_costs_more(tmp_path):
    path = tmp_path / "m4f-measured.toml"
    path.write_text(profile_with_cycles("m4f-lowpower", measured_cycles(fake_measurement())))
    measured, estimate = load_profile(path), load_profile("m4f-lowpower")
    assert measured.mcu == estimate.mcu and measured.imu == estimate.imu
    assert measured.cycles.dac_code == 1500.0 and measured.cycles.mac == estimate.cycles.mac
    assert measured.cycles.source.startswith("measured")
    # replacing an existing [cycles] table leaves one
    again = profile_with_cycles(path, {"dac_code": 7.0, "source": "x"})
    assert again.count("[cycles]") == 1 and "adc_code" not in again
    with pytest.raises(InputError, match="no bundled profile of that name"):
        profile_with_cycles("no-such-profile", {})


def test_cli_firmware_measure_writes_the_profile_and_the_table(tmp_path):
    """`edgelearn firmware measure --profile-out` on the Cortex-M4 in unicorn (pip install ".[firmware]")."""
    pytest.importorskip("unicorn", reason="the firmware extra (unicorn, pyelftools, ziglang) is not installed")
    pytest.importorskip("elftools", reason="the firmware extra is not installed")
    pytest.importorskip("ziglang", reason="the firmware extra is not installed")
    import subprocess
    import sys

    out = tmp_path / "m4f-measured.toml"
    run = subprocess.run([sys.executable, "-m", "edgelearn.cli", "firmware", "measure", "--profile-out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "| mp_update_chi_per_cell | cell |" in run.stdout and "| flash |" in run.stdout
    profile = load_profile(out)
    assert profile.name == "m4f-measured" and profile.cycles.source.startswith("measured: edgelearn firmware measure")
    assert 20 <= profile.cycles.chi_update <= 200 and profile.cycles.dac_code > profile.cycles.chi_update


def test_a_marked_block_is_replaced_whole_and_missing_markers_are_one_line():
    from edgelearn.errors import EdgelearnError
    from edgelearn.report import replace_marked_block

    text = "a\n<!-- t:start -->\nold\nlines\n<!-- t:end -->\nb\n"
    assert replace_marked_block(text, "t", "new") == "a\n<!-- t:start -->\nnew\n<!-- t:end -->\nb\n"
    with pytest.raises(EdgelearnError, match=r"^docs/x.md: the markers <!-- u:start --> / <!-- u:end --> are missing$"):
        replace_marked_block(text, "u", "new", "docs/x.md")


@pytest.mark.parametrize("name,cpu", [("m4f-lowpower", "cortex-m4"), ("m33", "cortex-m33")])
def test_bundled_profiles_carry_cycles_measured_on_the_current_firmware(name, cpu):
    """The bundled profiles' [cycles] come from `python tools/firmware_tables.py` on today's C sources: a change to the
    measured kernels without regenerating them fails here (the hash needs no CPU emulator)."""
    from firmware_model.measure import source_hash

    cycles = load_profile(name).cycles
    assert cycles.source.startswith(f"measured: edgelearn firmware measure, {cpu},"), cycles.source
    assert f"sources {source_hash()} " in cycles.source, (
        f"{name}: its cycles were measured on other firmware sources; run python tools/firmware_tables.py")
    estimate = CycleTable()
    assert cycles.chi_update > estimate.chi_update and cycles.dac_code > 100 * estimate.dac_code
    assert cycles.mac == estimate.mac and cycles.wake == estimate.wake  # the platform's, still estimated
