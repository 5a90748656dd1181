"""Deployment types measured side by side in one run, and the runtimes an edge CPU can use.

1. The five types (batch, precalculated, streaming, online, edge) on the same requests: p50/p99 latency, items/s, CPU s
   (`labkit.deployment_types.measure_*`, the notebook's functions, with more requests).
2. Streaming throughput with 1 and 2 consumers (`labkit stream-consume` processes, started before the messages are
   published; timed from the publish to the last result).
3. The course detector (ONNX, 320 px) on one image: ONNX Runtime at each graph optimisation level, and OpenVINO,
   median latency and ratios to ONNX Runtime's default (ORT_ENABLE_ALL).
4. The same detector in headless Chromium with onnxruntime-web (WebAssembly), median latency per image against
   ONNX Runtime in Python on the same scenes (needs chromium, chromedriver, selenium and `labkit web-assets`).

    python benchmarks/deployment_types.py [--requests 2000] [--stream 3000] [--threads 1] [--repeat 50] [--out deploy.json] [--only browser]
"""
import argparse, json, subprocess, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np
import pandas as pd
from labkit.deployment_types import *                          # noqa: E402
from labkit.onnx_deploy import heldout_scenes, letterbox, load_rgb, to_input   # noqa: E402


def five_types(work:Path, n:int) -> pd.DataFrame:
    "The comparison table of the notebook, with `n` requests"
    model, reqs = salary_model(), hiring_requests(int(n * 1.1) + 20, seed=1).iloc[:n]
    measure_batch(reqs, work/'pre', model)
    precalculate(work/'pre'/'out', work/'s.db')
    with redis_service(work/'redis') as broker:
        rows = {'batch': measure_batch(reqs, work/'b', model),
                'precalculated': measure_precalculated(work/'s.db', reqs['id']),
                'streaming': measure_streaming(broker, reqs, model),
                'online': measure_online(reqs),
                'edge': measure_edge(edge_model(), heldout_scenes(work/'scenes', 50))}
    return pd.DataFrame(rows).T


def stream_throughput(work:Path, n:int, consumers:int) -> dict:
    "Messages per second scored by `consumers` consumer processes on a fresh broker"
    with redis_service(work/f'redis-{consumers}') as broker:
        r = redis_client(broker.port); ensure_group(r)
        procs = [subprocess.Popen(labkit_command('stream-consume', '--port', broker.port, '--consumer', f'c{k}', '--idle-exit', 1),
                                  stdout=subprocess.DEVNULL) for k in range(consumers)]
        try:
            end = time.monotonic() + 120
            while len(r.xinfo_consumers(STREAM, GROUP)) < consumers:
                assert time.monotonic() < end, 'the consumers did not join the group within 120 s'
                time.sleep(0.05)
            reqs = hiring_requests(int(n * 1.1) + 20).iloc[:n]
            t0 = time.perf_counter(); publish(r, reqs)
            while r.hlen(RESULTS) < len(reqs):
                assert time.monotonic() < end + 300, 'the stream was not scored within 300 s'
                time.sleep(0.01)
            wall = time.perf_counter() - t0
        finally:
            for p in procs: p.wait(timeout=60)
        assert r.hlen(RESULTS) == len(reqs) and r.xpending(STREAM, GROUP)['pending'] == 0
    return {'consumers': consumers, 'messages': len(reqs), 'seconds': round(wall, 3), 'messages_per_s': round(len(reqs) / wall, 1)}


def runtimes(model_path:Path, image, threads:int, repeat:int) -> pd.DataFrame:
    "Median latency of one detector inference in ONNX Runtime (each optimisation level) and OpenVINO"
    import onnxruntime as ort
    x = to_input(letterbox(load_rgb(image), (320, 320))[0])
    def timed(fn):
        for _ in range(5): fn()
        ts = []
        for _ in range(repeat): t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
        return 1000 * float(np.median(ts))
    out, ref = {}, None
    for level in ('ORT_DISABLE_ALL', 'ORT_ENABLE_BASIC', 'ORT_ENABLE_EXTENDED', 'ORT_ENABLE_ALL'):
        so = ort.SessionOptions(); so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        s = ort.InferenceSession(str(model_path), so, providers=['CPUExecutionProvider'])
        name = s.get_inputs()[0].name
        y = s.run(None, {name: x})[0]; ref = y if ref is None else ref
        out[f'onnxruntime {level}'] = {'ms': timed(lambda: s.run(None, {name: x})), 'max_abs_diff': float(np.abs(y - ref).max())}
    try:
        import openvino as ov
        compiled = ov.Core().compile_model(str(model_path), 'CPU', {'INFERENCE_NUM_THREADS': threads})
        req = compiled.create_infer_request()
        y = req.infer({0: x})[compiled.output(0)]
        out['openvino CPU'] = {'ms': timed(lambda: req.infer({0: x})), 'max_abs_diff': float(np.abs(y - ref).max())}
    except ImportError as e: print('openvino not installed:', e)
    df = pd.DataFrame(out).T
    df['ratio_to_ort_all'] = (df['ms'] / df.loc['onnxruntime ORT_ENABLE_ALL', 'ms']).round(3)
    return df.round(4)


def browser_ratio(work:Path, n:int=10) -> dict:
    "Median inference latency per image in the browser page (WASM) and in ONNX Runtime (Python, default threads)"
    import shutil
    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait
    from labkit.onnx_deploy import EdgeDetector
    pngs = []
    for p in heldout_scenes(work/'page', n): Image.open(p).save(p.with_suffix('.png')); pngs.append(p.with_suffix('.png'))
    opts = webdriver.ChromeOptions(); opts.binary_location = shutil.which('chromium') or shutil.which('chromium-browser')
    for flag in ('--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', f'--user-data-dir={work/"profile"}'): opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which('chromedriver')), options=opts)
    try:
        with BrowserPage(edge_model(), pngs) as page:
            driver.get(page.url)
            WebDriverWait(driver, 300).until(lambda b: b.execute_script('return window.labkitResults || window.labkitError'))
            got = driver.execute_script('return window.labkitResults || {error: window.labkitError}')
    finally: driver.quit()
    det = EdgeDetector(edge_model(), device='cpu'); det(pngs[0])
    x = [to_input(load_rgb(p)) for p in pngs]
    ts = []
    for xi in x: t = time.perf_counter(); det.session.run(None, {det.input_name: xi}); ts.append(time.perf_counter() - t)
    native = 1000 * float(np.median(ts))
    return {'browser_ms': round(got['median_ms'], 2), 'browser_threads': got['threads'], 'onnxruntime_ms': round(native, 2),
            'ratio_browser_to_native': round(got['median_ms'] / native, 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--requests', type=int, default=2000); ap.add_argument('--stream', type=int, default=3000)
    ap.add_argument('--threads', type=int, default=1); ap.add_argument('--repeat', type=int, default=50)
    ap.add_argument('--out', default=None); ap.add_argument('--only', choices=['browser'], default=None)
    a = ap.parse_args(argv)
    if a.only == 'browser':
        with tempfile.TemporaryDirectory(prefix='labkit-deploy-bench-') as tmp: print(browser_ratio(Path(tmp)))
        return 0
    with tempfile.TemporaryDirectory(prefix='labkit-deploy-bench-') as tmp:
        work = Path(tmp)
        table = five_types(work, a.requests); print(table.to_string(), '\n')
        stream = [stream_throughput(work, a.stream, k) for k in (1, 2)]
        stream[1]['speedup'] = round(stream[1]['messages_per_s'] / stream[0]['messages_per_s'], 2)
        print(pd.DataFrame(stream).to_string(index=False), '\n')
        rt = runtimes(edge_model(), heldout_scenes(work/'rt', 1)[0], a.threads, a.repeat); print(rt.to_string(), '\n')
        try: browser = browser_ratio(work); print(browser)
        except Exception as e: browser = {'skipped': f'{type(e).__name__}: {e}'}; print('browser part skipped:', browser['skipped'])
    result = {'types': table.to_dict('index'), 'streaming': stream, 'runtimes': rt.to_dict('index'), 'browser': browser}
    if a.out: Path(a.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == '__main__': sys.exit(main())
