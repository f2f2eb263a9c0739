"""HETAL training: parameters, batch plan, Nesterov, early stopping, preprocessing, the
polynomial softmax and its twin, and real encrypted runs (SEAL) against the float64 twin."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from fedhe_cli.hetal_local import run_transfer
from fedhe_client.transfer.owner import DataOwner
from fedhe_client.transfer.preprocess import Preprocessor
from fedhe_common.hetal.numpy_backend import NumpyBackend
from fedhe_common.hetal.params import (
    CkksChain,
    ServerSoftmax,
    SoftmaxMode,
    TransferParams,
    default_chain,
)
from fedhe_common.hetal.plain import train_plain
from fedhe_common.hetal.protocol import OwnerReply, ProtocolError, RequestKind
from fedhe_common.hetal.schedule import (
    EarlyStopping,
    block_assignment,
    epoch_batches,
    nesterov_eta,
    step_at,
)
from fedhe_common.hetal.softmax import PolySoftmax, bound_logits, he_softmax, softmax_exact
from fedhe_common.hetal.trainer import (
    TransferTrainer,
    class_steps,
    kernel_names,
    layout_for,
    rotation_steps,
    softmax_mask,
)

SERVER = SoftmaxMode.SERVER


@dataclasses.dataclass
class Splits:
    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def tiny_digits(n_train: int = 256, n_val: int = 64, n_test: int = 100) -> Splits:
    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(x))
    a, b = n_train, n_train + n_val
    return Splits(x[idx[:a]], y[idx[:a]], x[idx[a:b]], y[idx[a:b]],
                  x[idx[b : b + n_test]], y[idx[b : b + n_test]])  # fmt: skip


def client_params(features: int, **kw: object) -> TransferParams:
    return TransferParams(mode=SoftmaxMode.CLIENT, classes=10, features=features, **kw)  # type: ignore[arg-type]


# -- parameters -------------------------------------------------------------------------------
def test_params_round_trip_json_and_reject_bad_values() -> None:
    p = TransferParams(mode=SERVER, classes=10, features=65, chain=default_chain("server"))
    assert TransferParams.from_json(p.to_json()) == p
    with pytest.raises(ValueError, match="128-bit"):
        CkksChain(16384, (60,) * 8, 40).check()
    with pytest.raises(ValueError, match="levels"):
        TransferParams(mode=SERVER, classes=10, features=65, chain=default_chain("client"))
    with pytest.raises(ValueError, match="multiple"):
        client_params(65, batch=100)
    with pytest.raises(ValueError):
        TransferParams.from_json('{"mode": "client"}')


def test_from_config_reads_the_transfer_section() -> None:
    section = type("S", (), {"mode": "server", "batch": 256, "lr": 2.0, "max_epochs": 7,
                             "patience": 2, "nesterov": False, "seed": 5})()  # fmt: skip
    p = TransferParams.from_config(section, features=33, classes=4)
    assert (p.mode, p.batch, p.lr, p.max_epochs, p.patience, p.nesterov, p.seed) == (
        SoftmaxMode.SERVER, 256, 2.0, 7, 2, False, 5)  # fmt: skip
    assert p.chain == default_chain("server") and p.chain.depth >= p.softmax.depth() + 4


# -- schedule ---------------------------------------------------------------------------------
def test_blocks_cover_every_sample_once_and_epochs_reorder() -> None:
    blocks = block_assignment(1077, 64, seed=3)
    assert sorted(np.concatenate(blocks).tolist()) == list(range(1077))
    assert [len(b) for b in blocks[:-1]] == [64] * 16 and len(blocks[-1]) == 1077 - 16 * 64
    e0, e1 = epoch_batches(17, 2, 3, 0), epoch_batches(17, 2, 3, 1)
    assert e0 == epoch_batches(17, 2, 3, 0) and e0 != e1
    assert sorted(b for batch in e0 for b in batch) == list(range(17)) and len(e0) == 9
    plan = step_at(17, 17, 2, 3)
    assert (plan.epoch, plan.blocks, plan.last_in_epoch) == (1, tuple(e1[8]), True)


def test_nesterov_eta_follows_kim_et_al() -> None:
    lam = [1.0]
    for _ in range(5):
        lam.append((1 + np.sqrt(1 + 4 * lam[-1] ** 2)) / 2)
    assert nesterov_eta(0) == 0.0
    for t in range(4):
        assert nesterov_eta(t) == pytest.approx((1 - lam[t]) / lam[t + 1])
    assert nesterov_eta(3, enabled=False) == 0.0


def test_early_stopping_keeps_the_best_epoch_and_stops_after_patience() -> None:
    es = EarlyStopping(patience=2, max_epochs=10)
    assert es.update(0, 1.0) == (True, False)
    assert es.update(1, 0.5) == (True, False)
    assert es.update(2, 0.6) == (False, False)
    assert es.update(3, 0.7) == (False, True)
    assert es.best_epoch == 1
    assert EarlyStopping(3, 1).update(0, 1.0) == (True, True)


# -- preprocessing ----------------------------------------------------------------------------
def test_preprocessing_unit_rows_bias_and_padding() -> None:
    x = np.random.default_rng(0).normal(size=(50, 6)) * 5
    x[:, 2] = 7.0  # zero variance: dropped
    prep = Preprocessor.fit(x, out_features=9)
    out = prep.transform(x)
    assert out.shape == (50, 9) and np.allclose(np.linalg.norm(out, axis=1), 1.0)
    assert np.all(out[:, 0] > 0) and np.all(out[:, 6:] == 0)
    assert Preprocessor.from_json(prep.to_json()) == prep
    with pytest.raises(ValueError, match="exceed"):
        Preprocessor.fit(x, out_features=4)


# -- the polynomial softmax -------------------------------------------------------------------
def test_bound_logits_keeps_logits_and_class_sums_in_range() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 20))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    w = bound_logits(rng.normal(size=(10, 20)) * 30, x, 6.0, 10)
    z = x @ w.T
    assert np.allclose(w.sum(axis=0), 0) and np.abs(z).max() <= 6.0 + 1e-9
    assert np.exp(z).sum(axis=1).max() <= 9 + np.exp(6.0) + 1e-6


def test_poly_softmax_close_to_exact_in_its_domain() -> None:
    sm = PolySoftmax.build(ServerSoftmax(), 10)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(400, 30))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    z = x @ bound_logits(rng.normal(size=(10, 30)) * 20, x, 6.0, 10).T
    approx = sm(z)
    err = np.abs(approx - softmax_exact(z)).max()
    assert err < 0.25, err  # the 1/S polynomial's relative error (docs/hetal.md)
    assert np.all(approx.argmax(axis=1) == z.argmax(axis=1)) and approx.min() > -1e-3
    assert sm.inverse_error() < 0.25


def test_he_softmax_on_the_slot_twin_equals_the_float64_twin() -> None:
    """The encrypted circuit, run on exact slots, computes PolySoftmax bit for bit (almost)."""
    params = TransferParams(mode=SERVER, classes=10, features=61, chain=default_chain("server"))
    lay = layout_for(params)
    sm = PolySoftmax.build(params.softmax, 10)
    be = NumpyBackend(slots=lay.slots, depth=params.chain.depth)
    rng = np.random.default_rng(3)
    z = rng.uniform(-1, 1, size=(lay.s0, 10)) * 2
    z -= z.mean(axis=1, keepdims=True)
    t = be.encrypt(lay.tile_z(z * params.logit_scale))
    phat = he_softmax(be, t, sm, softmax_mask(lay), class_steps(lay))
    got = np.real(be.decrypt(phat)).reshape(lay.s0, lay.s1)[:, :10]
    assert np.abs(got - sm(z)).max() < 1e-9
    assert be.level(phat) == params.chain.depth - params.softmax.depth()


# -- encrypted runs (real SEAL) ---------------------------------------------------------------
def test_mode_client_run_equals_the_float64_twin() -> None:
    splits = tiny_digits(n_train=192)
    params = client_params(61, max_epochs=2, patience=1, lr=8.0)
    res = run_transfer(params, splits)
    assert res.epochs_run == 2 and res.steps_run == 4 and len(res.val_loss) == 2
    assert res.max_abs_w_diff < 1e-3
    assert abs(res.acc_he - res.acc_plain_same_algo) <= 0.01
    assert res.acc_he > 0.6
    s = res.steps[0]
    assert s.server_cpu_s > 0 and s.client_cpu_s > 0 and s.bytes_down > 0 and s.bytes_up > 0
    assert s.ops["mult"] > 0 and s.ops["rot"] > 0


def test_params_json_before_the_kernel_field_reads_as_kernel_set_1() -> None:
    params = client_params(61)
    assert params.kernels == 2 and params.workers == 1
    assert TransferParams.from_json(params.to_json()) == params
    raw = json.loads(params.to_json())
    del raw["kernels"], raw["workers"]
    old = TransferParams.from_json(json.dumps(raw))
    assert old.kernels == 1 and old.workers == 1
    assert kernel_names(old) == ("abt", "atb")
    assert kernel_names(params) == ("abt_compact", "atb_paired")
    assert set(rotation_steps(params)) != set(rotation_steps(old))
    with pytest.raises(ValueError, match="kernels"):
        client_params(61, kernels=3)
    with pytest.raises(ValueError, match="workers"):
        client_params(61, workers=0)


def test_kernel_sets_and_workers_give_the_same_step_set_2_rotates_less() -> None:
    splits = tiny_digits(n_train=128, n_val=64)
    runs = {
        (k, w): run_transfer(
            client_params(61, max_epochs=1, batch=128, kernels=k, workers=w), splits, compare=False
        )
        for k, w in ((1, 1), (2, 1), (2, 2))
    }
    base = runs[(2, 1)]
    for res in runs.values():
        assert res.steps_run == 1 and len(res.val_loss) == 1
    assert abs(runs[(1, 1)].val_loss[0] - base.val_loss[0]) < 1e-4
    assert abs(runs[(2, 2)].val_loss[0] - base.val_loss[0]) < 1e-4
    rot = {key: r.steps[0].ops["rot"] + r.validations[0].ops["rot"] for key, r in runs.items()}
    assert rot[(2, 1)] < 0.8 * rot[(1, 1)]
    assert runs[(2, 2)].steps[0].ops["mult"] == base.steps[0].ops["mult"]
    s2 = runs[(2, 2)].steps[0]
    assert 0 < s2.server_critical_s < s2.server_cpu_s  # two workers shared the kernels


def test_trainer_resumes_from_state_and_owner_answers_idempotently() -> None:
    splits = tiny_digits(n_train=128, n_val=64)
    params = client_params(61, max_epochs=1)
    owner = DataOwner.create(params, splits.train_x, splits.train_y, splits.val_x, splits.val_y)
    keys, data = owner.eval_keys(), owner.encrypt_dataset()
    trainer = TransferTrainer(params, keys, data)
    first = trainer.pending()
    assert first is not None and first.kind == RequestKind.SOFTMAX
    reply = owner.answer(first)
    assert owner.answer(first) is reply  # same seq: the cached reply
    trainer.apply(reply)
    again = TransferTrainer(params, keys, data, trainer.to_state())
    req, req2 = trainer.pending(), again.pending()
    assert req is not None and req2 is not None
    assert (req.seq, req.kind, req.ciphertexts) == (req2.seq, req2.kind, req2.ciphertexts)
    assert owner.keys.to_bytes() is owner.keys_state()  # serialised once, then cached
    assert len(owner.to_state()) < len(owner.keys_state()) // 10  # per-step state is small
    restored = DataOwner.from_state(owner.to_state(), owner.keys_state(), owner.data_state())
    with pytest.raises(ValueError, match="HOD1"):  # the parts cannot be swapped
        DataOwner.from_state(owner.to_state(), owner.keys_state(), owner.to_state())
    assert restored.answer(first) == reply
    a, b = owner.answer(req), restored.answer(req2)
    assert np.allclose(owner.w, restored.w) and a.kind == b.kind == RequestKind.REFRESH
    with pytest.raises(ProtocolError, match="reply to"):
        again.apply(OwnerReply(req.seq + 5, RequestKind.REFRESH, b.ciphertexts))
    with pytest.raises(ProtocolError, match="kind"):
        again.apply(OwnerReply(req.seq, RequestKind.SOFTMAX, b.ciphertexts))
    with pytest.raises(ProtocolError, match="ciphertexts"):
        again.apply(OwnerReply(req.seq, RequestKind.REFRESH, b.ciphertexts[:1]))
    with pytest.raises(ProtocolError, match="fresh"):  # the server's own output echoed back
        again.apply(OwnerReply(req.seq, RequestKind.REFRESH, (req.ciphertexts[0],) * 3))
    again.apply(b)
    assert again.pending().kind == RequestKind.VALIDATE  # type: ignore[union-attr]


def test_twin_in_mode_server_learns_digits() -> None:
    """The float64 twin of mode server (same polynomial, same bound) on the 256 samples."""
    splits = tiny_digits()
    prep = Preprocessor.fit(splits.train_x)
    p = TransferParams(mode=SERVER, classes=10, features=prep.out_features, max_epochs=4,
                       chain=default_chain("server"))  # fmt: skip
    res = train_plain(p, prep.transform(splits.train_x), splits.train_y,
                      prep.transform(splits.val_x), splits.val_y)  # fmt: skip
    acc = float(np.mean((prep.transform(splits.test_x) @ res.weights.T).argmax(1) == splits.test_y))
    assert acc > 0.8 and res.best_epoch >= 0


@pytest.mark.slow
def test_mode_server_steps_equal_the_float64_twin() -> None:
    """Two encrypted steps with the polynomial softmax on SEAL (keygen ~15 s, ~9 s/step)."""
    splits = tiny_digits(n_train=256)
    params = TransferParams(mode=SERVER, classes=10, features=61, max_epochs=1,
                            chain=default_chain("server"))  # fmt: skip
    res = run_transfer(params, splits, max_steps=2)
    assert res.steps_run == 2 and res.max_abs_w_diff < 5e-3


JOB_YAML = """version: 1
job: {name: digits-hetal, rounds: 1}
participants: {min_clients: 1}
transfer: {mode: client, dataset: digits, max_epochs: 1, max_train_samples: 128}
"""


def test_fedhe_simulate_runs_a_transfer_job_and_prints_he_vs_plaintext(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from fedhe_cli.run_cli import simulate

    job = tmp_path / "job.yaml"
    job.write_text(JOB_YAML)
    result = CliRunner().invoke(simulate, [str(job)])
    assert result.exit_code == 0, result.output
    assert "test accuracy HE" in result.output and "same algorithm" in result.output
    he = float(result.output.split("test accuracy HE ")[1].split()[0])
    plain = float(result.output.split("same algorithm ")[1].split()[0])
    assert abs(he - plain) <= 0.01 and he > 0.5
