"""Privacy-track benchmark: CKKS inference vs plaintext, CKKS vs masked aggregation, DP-FL accuracy vs ε, in one run.

Measures side by side on this machine:
1. the serving lab's salary model on a batch of rows, plaintext and encrypted (client encrypts, server computes
   on ciphertexts, client decrypts): latency and bytes on the wire, and their ratios;
2. one federated round's aggregation of model-sized updates by pairwise masking and by CKKS: seconds per round,
   bytes a client sends;
3. DP-FedAvg (client-level DP, RDP accountant) at ε = 8, 4, 1 against the same FedAvg without DP.
Prints tables; `--json FILE` writes the result. `--fast` (or LABKIT_FAST=1) runs smaller; `--tiny` is the test's.

    python benchmarks/privacy_track.py [--fast|--tiny] [--repeats 5] [--json out.json]
"""
import argparse, json, math, os, statistics, sys, time


def _median_seconds(fn, repeats:int) -> float:
    "Median wall time of `fn()` over `repeats` calls"
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter(); fn(); out.append(time.perf_counter() - t0)
    return statistics.median(out)


def inference(rows:int, repeats:int) -> dict:
    "Plaintext vs encrypted salary predictions on `rows` rows"
    from labkit.serving import make_hiring, split_hiring, clean_hiring, train_salary_model, predict_salary
    from labkit.privacy_track import he_context, encrypted_inference
    train, test = split_hiring(make_hiring(400))
    model = train_salary_model(train, test, 'v1')
    X = clean_hiring(make_hiring(rows, seed=1))[model['features']].to_numpy()
    ctx = he_context()
    runs = [encrypted_inference(model, X, ctx) for _ in range(repeats)]
    enc_s = statistics.median(r['encrypt_s'] + r['server_s'] + r['decrypt_s'] for r in runs)
    plain_s = _median_seconds(lambda: predict_salary(model, X), max(repeats, 20))
    r = runs[0]
    enc_bytes, plain_bytes = r['bytes_up'] + r['bytes_down'], r['plain_bytes']
    return dict(rows=len(X), plain_ms=1e3 * plain_s, encrypted_ms=1e3 * enc_s, encrypted_over_plain_latency=enc_s / plain_s,
                plain_bytes=plain_bytes, encrypted_bytes=enc_bytes, encrypted_over_plain_bytes=enc_bytes / plain_bytes,
                server_context_bytes=r['context_bytes'], max_error=max(x['max_error'] for x in runs))


def aggregation(clients:int, n_params:int, repeats:int) -> list:
    "Pairwise masking vs CKKS on one round of `clients` updates of `n_params` values"
    import numpy as np
    from labkit.privacy_track import aggregation_cost
    ups = [np.random.default_rng(k).normal(0, 0.05, n_params) for k in range(clients)]
    cost = aggregation_cost(ups, repeats=repeats).reset_index()
    cost['clients'], cost['n_params'] = clients, n_params
    return cost.to_dict('records')


def dp_fl(n_clients:int, rounds:int, epsilons=(8, 4, 1), q:float=0.2) -> list:
    "DP-FedAvg at each ε against FedAvg without clipping or noise, same clients, rounds and seeds"
    from labkit.federated import digits_federation
    from labkit.privacy_track import dp_fedavg, noise_for_epsilon
    fed = digits_federation(n_clients, 'iid', hidden=16)
    recipe = dict(q=q, clip_norm=0.5, local_epochs=5, batch_size=None, lr=0.5)
    rows = []
    for eps in (None, *epsilons):
        z = 0.0 if eps is None else noise_for_epsilon(eps, q, rounds)
        t0 = time.perf_counter()
        h = dp_fedavg(fed, rounds, noise_multiplier=z, **(recipe if eps else {**recipe, 'clip_norm': math.inf}))
        rows.append(dict(target_epsilon=eps, epsilon=None if math.isinf(h.meta['epsilon']) else h.meta['epsilon'],
                         noise_multiplier=z, accuracy=h.final_accuracy, clipped=h.meta['clipped'], updates=h.meta['updates'],
                         seconds=time.perf_counter() - t0))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--fast', action='store_true', help='smaller configuration (LABKIT_FAST=1)')
    p.add_argument('--tiny', action='store_true', help='the smallest configuration, used by the tests')
    p.add_argument('--repeats', type=int, default=None, help='timed repetitions (median reported)')
    p.add_argument('--json', default=None, help='also write the result to this file')
    args = p.parse_args(argv)
    if args.fast or args.tiny: os.environ['LABKIT_FAST'] = '1'
    os.environ.setdefault('TQDM_DISABLE', '1')
    import pandas as pd, torch
    torch.set_num_threads(1)
    size = 'tiny' if args.tiny else 'fast' if os.environ.get('LABKIT_FAST') == '1' else 'full'
    cfg = {'full': dict(rows=1000, clients=40, n_params=4810, fl_clients=200, rounds=30, repeats=5),
           'fast': dict(rows=200, clients=20, n_params=4810, fl_clients=100, rounds=10, repeats=3),
           'tiny': dict(rows=50, clients=4, n_params=500, fl_clients=30, rounds=2, repeats=1)}[size]
    repeats = args.repeats or cfg['repeats']
    t0 = time.perf_counter()
    res = dict(config={**cfg, 'size': size, 'repeats': repeats}, inference=inference(cfg['rows'], repeats),
               aggregation=aggregation(cfg['clients'], cfg['n_params'], repeats), dp_fl=dp_fl(cfg['fl_clients'], cfg['rounds']))
    res['seconds'] = time.perf_counter() - t0
    print('Encrypted vs plaintext inference (salary model):')
    print(pd.Series(res['inference']).to_frame('value').to_string(float_format=lambda v: f'{v:,.4g}'))
    print('\nAggregation of one round (median):')
    print(pd.DataFrame(res['aggregation']).to_string(index=False, float_format=lambda v: f'{v:,.4g}'))
    print('\nDP-FL accuracy against ε (FedAvg without DP first):')
    print(pd.DataFrame(res['dp_fl']).to_string(index=False, float_format=lambda v: f'{v:,.4g}'))
    if args.json:
        with open(args.json, 'w') as f: json.dump(res, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
