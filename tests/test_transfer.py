"""The transfer algorithms (ttv2, c-ttv2, agad) and narrow mixed precision, through the Board API.

Analytic cases on a constant-step device (every pulse moves a weight by exactly dw, no cycle-to-cycle noise) and
near-exact reads (no output noise, a fine ADC): with the fast array A held at known values and no gradient, the
pulses written into the slow array C follow from the buffer arithmetic alone."""

import numpy as np
import pytest

from edgelearn.algorithms import Transfer, TransferConfig, make_algorithm
from edgelearn.board import PeripheryConfig, PulseConfig
from edgelearn.devices import PiecewiseStepModel
from edgelearn.errors import EdgelearnError
from edgelearn.memory import memory_footprint
from edgelearn.network import Network
from edgelearn.train import TrainConfig, train
from test_train import small_mnist  # noqa: F401  (the fixture: 400 MNIST images from ../shared)

DW = 0.01
EXACT = PeripheryConfig(out_noise=0.0, adc_bits=16, out_bound=0.1)  # ADC step 3e-6: reads exact to 1e-3 dw


def constant_device(dw=DW, bound=10.0):
    return PiecewiseStepModel.from_absolute(-bound, bound, np.full(3, dw), np.full(3, dw))


def held_fast_array(name, a, **settings):
    """A one-layer network (1 input + bias -> 2 outputs: a 2 x 2 tile C) with its transfer algorithm attached, A set to
    `a` and C to 0."""
    net = Network((1, 2), card=constant_device(), periphery=EXACT, seed=0)
    settings.setdefault("transfer_lr", 1.0)  # r = a / dw pulses per read at lr 1
    algo = Transfer(name, TransferConfig(**settings))
    algo.attach(net)
    (rs, cs, tile), = net.layers[0].grid()
    t = algo.tiles[tile]
    net.board.set_weights(t.fast, np.asarray(a, float))
    net.board.set_weights(tile, np.zeros((2, 2)))
    return net, algo, tile, t


def run_reads(net, algo, samples, lr=1.0):
    """`samples` training samples with zero deltas: A gets no pulses, the column reads and transfers still run."""
    xs = np.ones((samples, 2))
    return algo.update(net.layers[0], xs, np.zeros((samples, 2)), lr)


@pytest.mark.parametrize("forget", [True, False])
def test_ttv2_transfers_what_the_buffer_arithmetic_predicts(forget):
    # per read of a column, H gains transfer_lr * lr * a / dw pulses: 0.32 and -0.35 here (a = 0.0032, -0.0035)
    a = np.array([[0.0032, -0.0035], [0.0, 0.0012]])
    net, algo, tile, t = held_fast_array("ttv2", a, reference=False, buffer_bits=32, forget_buffer=forget)
    pulses = run_reads(net, algo, 20)  # 20 reads: 10 of each column
    per_read = a / DW
    if forget:  # a transfer fires when |H| reaches 1 and H starts again from 0: one pulse per ceil(1 / r) reads
        expected = np.where(per_read != 0, np.sign(per_read) * (10 // np.ceil(1 / np.abs(np.where(per_read == 0, 1,
                                                                                                  per_read)))), 0)
    else:  # the remainder stays: trunc(10 r) pulses
        expected = np.trunc(10 * per_read)
    expected = expected.astype(int)
    np.testing.assert_allclose(net.board.read_weights(tile), expected * DW, atol=1e-12)
    assert pulses == np.abs(expected).sum()
    np.testing.assert_allclose(net.board.read_weights(t.fast), a, atol=1e-12)  # A untouched: no gradient
    c = net.board.counters(tile).counts
    assert c["pulses_up"] == expected[expected > 0].sum() and c["pulses_down"] == -expected[expected < 0].sum()
    fast = net.board.counters(t.fast).counts
    assert fast["mvm_forward"] == 20 and fast["adc_conversions"] == 20 * 2  # one one-hot read per sample
    assert algo.extra_counts()["accumulator_updates"] == 20 * 2  # H: one column of two rows per read


def test_max_steps_caps_a_transfer_and_momentum_keeps_a_fraction():
    # r = 2.5 pulses per read, at most 1 written: forget drops the rest, so exactly one pulse per read
    a = np.array([[0.025, 0.0], [0.0, 0.0]])
    net, algo, tile, _ = held_fast_array("ttv2", a, reference=False, buffer_bits=32, max_steps=1)
    run_reads(net, algo, 8)
    assert net.board.read_weights(tile)[0, 0] == pytest.approx(4 * DW)  # 4 reads of column 0
    net, algo, tile, _ = held_fast_array("ttv2", a, reference=False, buffer_bits=32, max_steps=3)
    run_reads(net, algo, 8)
    assert net.board.read_weights(tile)[0, 0] == pytest.approx(4 * 2 * DW)  # trunc(2.5) = 2 per read
    # momentum 0.5, forget: after each transfer H keeps half; r = 0.6: H 0.6, 1.2 -> fire, keep 0.6, 1.2 -> fire ...
    a = np.array([[0.006, 0.0], [0.0, 0.0]])
    net, algo, tile, t = held_fast_array("ttv2", a, reference=False, buffer_bits=32, momentum=0.5)
    run_reads(net, algo, 10)  # 5 reads of column 0: fires at reads 2, 3, 4, 5
    assert net.board.read_weights(tile)[0, 0] == pytest.approx(4 * DW)


def test_c_ttv2_chopper_undoes_its_sign_on_read():
    # the chopper of column 0 set to -1: A's value (held) is read back through the sign; with chop_prob 0 it stays
    a = np.array([[0.0032, 0.0], [0.0, 0.0]])
    net, algo, tile, t = held_fast_array("c-ttv2", a, buffer_bits=32, chop_prob=0.0, forget_buffer=False)
    t.chop[0] = -1
    run_reads(net, algo, 20)
    assert net.board.read_weights(tile)[0, 0] == pytest.approx(-3 * DW)  # 10 reads of 0.32: 3 pulses, sign flipped
    # and the gradient written into A carries the same sign: x * chop, so the pair is the identity
    net, algo, tile, t = held_fast_array("c-ttv2", np.zeros((2, 2)), chop_prob=0.0, fast_lr=1.0)
    t.chop[:] = -1
    xs, ds = np.ones((64, 2)), np.full((64, 2), 0.2)
    algo.update(net.layers[0], xs, ds, 1.0)
    assert (net.board.read_weights(t.fast) > 0).all()  # -lr d (-x) > 0: the chopped gradient's sign


def test_c_ttv2_flips_at_the_configured_rate():
    net, algo, tile, t = held_fast_array("c-ttv2", np.zeros((2, 2)), chop_prob=0.25)
    flips, last = 0, t.chop.copy()
    for _ in range(400):
        run_reads(net, algo, 2)
        flips += int((t.chop != last).sum())
        last = t.chop.copy()
    assert abs(flips / 800 - 0.25) < 0.05
    assert algo.extra_counts()["rng_draws"] >= 800  # one draw per read for the chopper (plus H's rounding)


def test_agad_reference_cancels_a_constant_offset_after_one_period():
    """A constant A (an offset such as a symmetry point away from 0) transfers only in the first chopper period; then
    the previous period's mean is the reference and the signal is 0. c-ttv2 keeps transferring it, with alternating
    signs; ttv2 without a reference keeps transferring it one way."""
    a = np.full((2, 2), 0.003125)  # r = 0.3125 pulses per read; 5 units of agad's reference (dw / 16): exact
    results = {}
    for name in ("agad", "c-ttv2", "ttv2"):
        settings = dict(buffer_bits=32, forget_buffer=False, chop_prob=0.25, chop_random=False)
        if name == "ttv2":
            settings["reference"] = False
        net, algo, tile, t = held_fast_array(name, a, **settings)
        run_reads(net, algo, 80)  # 40 reads per column: 10 chopper periods of 4 reads for agad
        results[name] = (net.board.read_weights(tile), net.board.counters(tile).counts)
    w, counts = results["agad"]
    np.testing.assert_allclose(w, np.full((2, 2), 1 * DW))  # the first period: trunc(4 x 0.3125) = 1 pulse, then none
    assert counts["pulses_up"] + counts["pulses_down"] == 4
    np.testing.assert_allclose(results["ttv2"][0], np.full((2, 2), 12 * DW))  # trunc(40 x 0.3125)
    c_counts = results["c-ttv2"][1]
    assert c_counts["pulses_up"] + c_counts["pulses_down"] > 4  # the chopper alone keeps paying for the offset
    # random flips (the default): the reference is the mean of the reads since the previous flip, whatever their
    # number, so the offset still stops feeding H after the first flip of each column
    net, algo, tile, t = held_fast_array("agad", a, buffer_bits=32, forget_buffer=False, chop_prob=0.25)
    run_reads(net, algo, 400)
    first = net.board.counters(tile).counts
    run_reads(net, algo, 400)
    assert net.board.counters(tile).counts == first and (t.chop != 0).all()  # nothing more once references exist


def test_ttv2_calibrates_its_fast_array_and_counts_it():
    net = Network((4, 3), card="ID170ZR5000-20ns", seed=1)
    algo = make_algorithm("ttv2")
    algo.attach(net)
    report = algo.prepare(net)
    cal = net.board.counters().counts
    assert report["calibration_pulses"] == cal["calibration_pulses_up"] + cal["calibration_pulses_down"] > 0
    fast = next(iter(algo.tiles.values())).fast
    assert np.abs(net.board.read_weights(fast)).max() < 0.2  # A read against references at its symmetry points
    algo = make_algorithm("c-ttv2")
    net = Network((4, 3), card="ID170ZR5000-20ns", seed=1)
    algo.attach(net)
    assert algo.prepare(net) == {}


def test_transfer_settings_are_refused_where_they_do_not_apply():
    with pytest.raises(EdgelearnError, match="transfer settings are for ttv2, c-ttv2, agad, not 'mp'"):
        from edgelearn.train import build
        build(TrainConfig(card="ID170ZR5000-20ns", algorithm="mp", network="784-8-10", data_dir="x",
                          transfer=TransferConfig()))
    with pytest.raises(EdgelearnError, match="keeps no chi"):
        from edgelearn.train import build
        build(TrainConfig(card="ID170ZR5000-20ns", algorithm="sgd", network="784-8-10", data_dir="x",
                          pulses=PulseConfig(chi_bits=8)))
    with pytest.raises(ValueError, match="buffer_bits"):
        TransferConfig(buffer_bits=12)


def test_memory_of_the_memory_light_methods():
    sizes = [784, 256, 128, 10]
    weights = 785 * 256 + 257 * 128 + 129 * 10
    mp = memory_footprint(sizes, "mp", batch=8).items
    assert mp["accumulator"] == 4 * weights
    assert memory_footprint(sizes, "mp", chi_bits=8, batch=8).items["accumulator"] == weights
    assert memory_footprint(sizes, "mp", chi_bits=16, batch=8).items["accumulator"] == 2 * weights
    ttv2 = memory_footprint(sizes, "ttv2", batch=8).items
    assert ttv2["buffer"] == weights and ttv2["accumulator"] == 0 and ttv2["transfer_state"] == 3 * 8
    chopped = memory_footprint(sizes, "c-ttv2", batch=8).items
    assert chopped["transfer_state"] == 3 * 8 + (785 + 257 + 129)  # one chopper byte per input column
    agad = memory_footprint(sizes, "agad", batch=8, buffer_bits=16).items
    assert agad["buffer"] == 2 * weights and agad["transfer_state"] == 24 + 3 * (785 + 257 + 129) + 4 * weights


@pytest.mark.parametrize("algorithm, settings, floor", [
    ("mp", dict(pulses=PulseConfig(chi_bits=8)), 0.55),  # measured 0.701 (int32: 0.701)
    ("c-ttv2", {}, 0.4),  # 0.539
    ("agad", {}, 0.4),  # 0.549
    ("ttv2", dict(transfer=TransferConfig(fast_lr=10.0)), 0.4),  # 0.523
])
def test_memory_light_methods_learn_from_a_few_hundred_samples(small_mnist, algorithm, settings, floor):
    config = TrainConfig(card="ID170ZR5000-20ns", algorithm=algorithm, epochs=3, lr=0.5, batch_size=8,
                         network="784-32-10", data_dir="unused", max_train_samples=400, **settings)
    result = train(config, progress=False, data=small_mnist)
    assert result.test_accuracy > floor  # chance is 0.1
    c = result.counters
    assert c["pulses_up"] > 0 and c["pulses_down"] > 0 and c["accumulator_updates"] > 0
    assert c["coincidences"] > 0 if algorithm != "mp" else c["coincidences"] == 0


def test_transfer_run_resumes_to_the_same_result(tmp_path, small_mnist):
    config = TrainConfig(card="ID170ZR5000-20ns", algorithm="agad", epochs=2, lr=0.5, batch_size=8,
                         network="784-16-10", data_dir="unused", max_train_samples=120,
                         transfer=TransferConfig(buffer_bits=16))
    whole = train(config, progress=False, data=small_mnist)
    first = train(config.model_copy(update={"epochs": 1}), out=tmp_path, progress=False, data=small_mnist)
    assert first.epochs[0] == whole.epochs[0] or first.epochs[0].validation_accuracy == \
        whole.epochs[0].validation_accuracy
    resumed = train(config, out=tmp_path, resume=True, progress=False, data=small_mnist)
    assert resumed.test_accuracy == whole.test_accuracy
    assert resumed.counters == whole.counters


def test_train_cli_transfer_flags_are_checked_in_one_line(capsys, tmp_path):
    from edgelearn.cli import main

    code = main(["train", "--card", "ID170ZR5000-20ns", "--algorithm", "mp", "--fast-lr", "5", "--data-dir",
                 str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err == "edgelearn: error: --fast-lr: a transfer-algorithm setting; --algorithm is mp\n"
    code = main(["train", "--card", "ID170ZR5000-20ns", "--algorithm", "c-ttv2", "--momentum", "1.5", "--data-dir",
                 str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("edgelearn: error: --momentum: ") and "less than 1" in err
    assert err.count("\n") == 1


def test_c_ttv2_runs_over_the_serial_link_through_the_board_api():
    """The same policy against a test board (the emulator over a pty): the fast array is a second row band, column
    reads are FORWARD commands with one-hot inputs, transfers are UPDATE commands. A constant negative delta with
    positive inputs must raise the weights of C (-lr d x > 0), with the chopper held (chop_prob 0)."""
    from edgelearn.devices import load_card
    from edgelearn.hil import SerialBoard
    from edgelearn.hil.emulator import BoardEmulator, BoardFirmware

    card = load_card("ID170ZR5000-20ns")
    with BoardEmulator(BoardFirmware([card], 4, 4, seed=2, ideal=True)) as emu:
        with SerialBoard(emu.url) as board:
            net = Network((3, 2), card=card, seed=0, board=board)
            algo = Transfer("c-ttv2", TransferConfig(chop_prob=0.0, fast_lr=20.0, transfer_lr=1.0))
            algo.attach(net)
            algo.prepare(net)
            (_, _, tile), = net.layers[0].grid()
            before = board.read_weights(tile)
            xs, ds = np.full((8, 4), 0.5), np.full((8, 2), -0.05)
            pulses = sum(algo.update(net.layers[0], xs, ds, 1.0) for _ in range(12))
            after = board.read_weights(tile)
            fast = board.read_weights(algo.tiles[tile].fast)
    assert pulses > 0 and (fast > 0.1).all()  # A took the gradient
    assert (after > before).sum() >= 6 and (after - before).mean() > 0  # and H moved it into C, upward


def test_one_hot_reads_take_a_shortcut_equal_to_the_full_sum():
    """controller.mvm sums a single nonzero input's column (or row) only: the transfer algorithms' column reads. The
    full sum adds signed zeros to that product, so both agree (up to the sign of a zero product)."""
    from firmware_model import controller as ctl

    rng = np.random.default_rng(0)
    for use_ref in (False, True):
        for transpose in (False, True):
            state, ref = rng.normal(0, 0.5, (37, 53)), rng.normal(0, 0.1, (37, 53))
            state[3, 5] = ref[3, 5]  # a zero weight
            n_in = 37 if transpose else 53
            assert ctl._single_input(np.zeros(n_in)) == -1
            for k in range(n_in):
                u = np.zeros(n_in)
                u[k] = rng.choice([0.3, -0.7, 1.0])
                assert ctl._single_input(u) == k
                full, one = np.empty(53 if transpose else 37), np.empty(53 if transpose else 37)
                ctl._analog_mvm(state, ref, use_ref, u, transpose, full)
                ctl._analog_mvm_one(state, ref, use_ref, u, transpose, k, one)
                np.testing.assert_array_equal(np.abs(full), np.abs(one))
                np.testing.assert_array_equal(full[full != 0], one[one != 0])
            u = np.zeros(n_in)
            u[[1, 4]] = 0.5
            assert ctl._single_input(u) == -1
