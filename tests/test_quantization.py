"""labkit.quantization's arithmetic against PyTorch's conventions on many random ranges, and the benchmark script.

Exact ties (x/scale ending in .5) are rounded differently by libraries (NumPy and PyTorch: half to even in
float32 or float64; TensorFlow Lite: half away from zero), so integers within 1e-3 of a tie may differ by one.
"""
import json, os, subprocess, sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip('torch')
from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

from labkit.quantization import qparams, qrange, quantize, dequantize, tensor_qparams

ROOT = Path(__file__).resolve().parents[1]
TIE = 1e-3        # |frac(x/scale) - 0.5| below this counts as a tie
DTYPES = {'uint8': (torch.quint8, False), 'int8': (torch.qint8, True)}

pytestmark = pytest.mark.filterwarnings('ignore::UserWarning')   # torch: quantized tensors are deprecated in favour of torchao


def random_ranges(n:int, seed:int):
    "n (lo, hi) ranges, float32-representable, magnitudes from 1e-4 to 1e3, any signs (some exclude 0)"
    rng = np.random.default_rng(seed)
    ends = (10.0 ** rng.uniform(-4, 3, (n, 2)) * rng.choice([-1.0, 1.0], (n, 2))).astype(np.float32)
    ends[: n // 10, 0] = 0.0                                    # some ranges start exactly at 0
    return ends.min(axis=1).astype(np.float64), ends.max(axis=1).astype(np.float64)


def near_tie(t) -> np.ndarray:
    t = np.abs(np.asarray(t, dtype=np.float64))
    return np.abs(t - np.floor(t) - 0.5) < TIE


def torch_qparams(lo, hi, dtype, qscheme=torch.per_tensor_affine, **kw):
    obs = MinMaxObserver(dtype=dtype, qscheme=qscheme, **kw)
    obs(torch.tensor([lo, hi], dtype=torch.float32))
    scale, zp = obs.calculate_qparams()
    return scale.item(), int(zp.item())


@pytest.mark.parametrize('name', DTYPES)
def test_qparams_match_torch_observer(name):
    dtype, signed = DTYPES[name]
    lo, hi = random_ranges(400, seed=1)
    ties = 0
    for l, h in zip(lo, hi):
        t_scale, t_zp = torch_qparams(l, h, dtype)
        scale, zp = qparams(l, h, signed=signed)
        assert scale == pytest.approx(t_scale, rel=1e-6), (l, h)
        if near_tie(min(l, 0.0) / scale): ties += 1; assert abs(zp - t_zp) <= 1, (l, h)
        else: assert zp == t_zp, (l, h, zp, t_zp)
        qmin, qmax = qrange(signed=signed)
        assert qmin <= zp <= qmax
    assert ties < 10


def test_symmetric_int8_matches_torch_observer():
    lo, hi = random_ranges(400, seed=2)
    for l, h in zip(lo, hi):
        t_scale, t_zp = torch_qparams(l, h, torch.qint8, torch.per_tensor_symmetric, quant_min=-127, quant_max=127)
        scale, zp = qparams(l, h, signed=True, symmetric=True)
        assert scale == pytest.approx(t_scale, rel=1e-6) and zp == t_zp == 0, (l, h)


@pytest.mark.parametrize('name, qscheme', [('uint8', torch.per_channel_affine), ('int8', torch.per_channel_affine),
                                           ('int8', torch.per_channel_symmetric)])   # symmetric: int8 weights
def test_per_channel_qparams_match_torch(name, qscheme):
    dtype, signed = DTYPES[name]
    symmetric = qscheme == torch.per_channel_symmetric
    rng = np.random.default_rng(3)
    W = (rng.normal(0, 1, (64, 3, 3, 16)) * np.geomspace(1e-3, 10, 64)[:, None, None, None]
         + rng.normal(0, 0.5, (64, 1, 1, 1))).astype(np.float32)             # 64 channels, varied sizes and offsets
    kw = dict(quant_min=-127, quant_max=127) if symmetric else {}
    obs = PerChannelMinMaxObserver(ch_axis=0, dtype=dtype, qscheme=qscheme, **kw)
    obs(torch.from_numpy(W))
    t_scale, t_zp = (v.numpy() for v in obs.calculate_qparams())
    scale, zp = tensor_qparams(W, axis=0, signed=signed, symmetric=symmetric)
    np.testing.assert_allclose(scale, t_scale, rtol=1e-6)
    lo = np.minimum(W.min(axis=(1, 2, 3)), 0)
    ok = (zp == t_zp) | (near_tie(lo / scale) & (np.abs(zp - t_zp) <= 1))
    assert ok.all(), np.flatnonzero(~ok)


@pytest.mark.parametrize('name', DTYPES)
def test_quantize_dequantize_match_torch_per_tensor(name):
    dtype, signed = DTYPES[name]
    rng = np.random.default_rng(4)
    lo, hi = random_ranges(200, seed=5)
    for l, h in zip(lo, hi):
        t_scale, t_zp = torch_qparams(l, h, dtype)
        width = max(h - l, 1e-3)
        x = rng.uniform(l - 0.2 * width, h + 0.2 * width, 500).astype(np.float32)   # some values saturate
        tq = torch.quantize_per_tensor(torch.from_numpy(x), t_scale, t_zp, dtype)
        q = quantize(x, t_scale, t_zp, signed=signed)
        assert q.dtype == (np.int8 if signed else np.uint8)
        t_int = tq.int_repr().numpy()
        same = (q == t_int) | (near_tie(x.astype(np.float64) / t_scale) & (np.abs(q.astype(int) - t_int) <= 1))
        assert same.all(), (l, h, x[~same], q[~same], t_int[~same])
        np.testing.assert_allclose(dequantize(t_int, t_scale, t_zp), tq.dequantize().numpy(), rtol=1e-6, atol=1e-6 * t_scale)


@pytest.mark.parametrize('name', DTYPES)
def test_quantize_matches_torch_per_channel(name):
    dtype, signed = DTYPES[name]
    rng = np.random.default_rng(6)
    X = (rng.normal(0, 1, (5, 32, 7)) * np.geomspace(1e-2, 1e2, 32)[None, :, None]).astype(np.float32)   # channels on axis 1
    scale, zp = tensor_qparams(X, axis=1, signed=signed)
    tq = torch.quantize_per_channel(torch.from_numpy(X), torch.from_numpy(scale), torch.from_numpy(zp), 1, dtype)
    q = quantize(X, scale, zp, signed=signed, axis=1)
    t_int = tq.int_repr().numpy()
    same = (q == t_int) | (near_tie(X / scale[None, :, None]) & (np.abs(q.astype(int) - t_int) <= 1))
    assert same.all()
    np.testing.assert_allclose(dequantize(q, scale, zp, axis=1), tq.dequantize().numpy(), rtol=1e-5, atol=1e-6)


def test_zero_exact_and_error_within_half_a_step():
    rng = np.random.default_rng(7)
    lo, hi = random_ranges(300, seed=8)
    for signed in (False, True):
        for l, h in zip(lo, hi):
            scale, zp = qparams(l, h, signed=signed)
            assert dequantize(quantize(0.0, scale, zp, signed=signed), scale, zp) == 0.0
            x = rng.uniform(min(l, 0), max(h, 0), 100)
            err = np.abs(dequantize(quantize(x, scale, zp, signed=signed), scale, zp) - x)
            # nudging the zero point to an integer shifts the grid by up to half a step: the ends may lose that much more
            assert (err <= scale + 1e-9 * max(abs(l), abs(h), 1)).all()


@pytest.mark.timeout(960)   # trains float32 and QAT models in a subprocess bounded at 900 s
def test_benchmark_script_prints_json_and_table(tmp_path):
    out = tmp_path/'quantization.json'
    env = {**os.environ, 'LABKIT_FAST': '1', 'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')])}
    r = subprocess.run([sys.executable, str(ROOT/'benchmarks'/'quantization.py'), '--epochs', '2', '--qat-epochs', '1',
                        '--json', str(out), '--save-dir', str(tmp_path/'tflite')],
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [m['model'] for m in report['models']] == ['float32', 'dynamic range', 'float16', 'int8 PTQ', 'int8 QAT']
    assert report['goals']['met']['int8 >= 3.5x smaller']
    assert all(m['accuracy'] > 50 and m['cpu_us'] > 0 for m in report['models'])
    assert 'smaller_x' in r.stdout and 'int8 QAT' in r.stdout.split('\n\n', 1)[1]      # the table follows the JSON
    assert sorted(p.name for p in (tmp_path/'tflite').iterdir()) == sorted(
        ['float32.tflite', 'dynamic_range.tflite', 'float16.tflite', 'int8_PTQ.tflite', 'int8_QAT.tflite'])
