"""Federated learning benchmark: five algorithms x three partitions of the digits, in one run, against centralised training.

Runs FedAvg, FedSGD, cyclic, single and stochastic weight transfer (the settings of `comparison_settings`) on
IID, Dirichlet(0.5) and 2-label-shard clients, plus the centralised reference, and measures side by side:
rounds and MB to the target accuracy, final accuracy, FedAvg's speed-up over FedSGD in rounds on IID clients
(at several targets and seeds), cyclic transfer's gap to centralised training, and secure aggregation's error.
`--sweep` adds the learning-rate sweeps that chose FedAvg's and FedSGD's rates. Prints the result as JSON, then
as tables. `LABKIT_FAST=1` (or `--fast`) runs the small configuration used under test.

    python benchmarks/federated.py [--fast] [--sweep] [--seeds 0 1 2] [--target 0.95] [--json out.json]
"""
import argparse, json, os, platform, sys, time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--fast', action='store_true', help='the small configuration used under test (LABKIT_FAST=1)')
    p.add_argument('--sweep', action='store_true', help='also sweep the learning rates of FedAvg and FedSGD on IID clients')
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2], help='seeds of the FedAvg/FedSGD rounds ratio (the first runs the table)')
    p.add_argument('--target', type=float, default=0.95, help='target test accuracy of the table')
    p.add_argument('--alpha', type=float, default=0.5, help='Dirichlet concentration of the label-skew partition')
    p.add_argument('--threads', type=int, default=1, help='torch CPU threads (the model is tiny: 1 is fastest)')
    p.add_argument('--json', default=None, help='also write the JSON result to this file')
    args = p.parse_args(argv)
    if args.fast: os.environ['LABKIT_FAST'] = '1'
    os.environ.setdefault('TQDM_DISABLE', '1')   # no progress bars between the JSON and the tables

    import numpy as np, pandas as pd, torch
    torch.set_num_threads(args.threads)
    from labkit.core import digits_data, fast_mode
    from labkit.federated import (make_partitions, make_federation, compare_algorithms, summarise,
                                  comparison_settings, fedavg, fedsgd, secure_sum, decode_fixed, MaskingClient)
    t_start = time.perf_counter()
    X, X_te, y, y_te = digits_data()
    partitions = make_partitions(y, 10, args.alpha, seed=0)
    settings = comparison_settings()

    # 1. the table: every algorithm on every partition
    results, seconds = {}, {}
    for name, parts in partitions.items():
        t0 = time.perf_counter()
        results[name] = compare_algorithms(make_federation(X, y, parts, X_te, y_te), settings, seed=args.seeds[0])
        seconds[name] = round(time.perf_counter() - t0, 1)
    table = pd.concat({part: summarise(hs, args.target) for part, hs in results.items()}, names=['partition'])

    # 2. FedAvg vs FedSGD on IID clients: rounds to several targets, several seeds
    fed_iid = make_federation(X, y, partitions['IID'], X_te, y_te)
    targets = sorted({0.90, 0.93, args.target})
    ratio_rows = []
    for s in args.seeds:
        ha = results['IID']['FedAvg'] if s == args.seeds[0] else fedavg(fed_iid, seed=s, **settings['FedAvg'])
        hs = results['IID']['FedSGD'] if s == args.seeds[0] else fedsgd(fed_iid, seed=s, **settings['FedSGD'])
        for t in targets:
            ra, rs = ha.rounds_to(t), hs.rounds_to(t)
            ratio_rows.append(dict(seed=s, target=t, fedavg_rounds=ra, fedsgd_rounds=rs,
                                   ratio=None if not (ra and rs) else round(rs / ra, 2),
                                   fedsgd_rounds_run=hs.rows[-1]['round']))
    ratios = pd.DataFrame(ratio_rows)

    # 3. cyclic transfer against centralised training on IID clients
    iid = results['IID']
    cyclic_gap = round(100 * (iid['cyclic'].final_accuracy - iid['centralised'].final_accuracy), 2)   # negative: below

    # 4. secure aggregation: ten clients with model-sized updates; one drop-out
    rng = np.random.default_rng(0)
    n_values = fed_iid.model_bytes // 4
    updates = [rng.normal(0, 0.05, n_values).astype(np.float32) for _ in range(10)]
    plain = np.sum(np.stack(updates).astype(np.float64), axis=0)
    t0 = time.perf_counter(); secure = secure_sum(updates); secagg_s = time.perf_counter() - t0
    dropped = secure_sum(updates, dropped=(3,))
    clients = [MaskingClient(k) for k in range(3)]
    roster = {c.cid: c.public_key for c in clients}
    corr = float(np.corrcoef(decode_fixed(clients[0].mask(updates[0], roster)), updates[0])[0, 1])
    secagg = dict(clients=10, values=n_values, max_abs_error=float(np.abs(secure - plain).max()),
                  max_abs_error_one_dropped=float(np.abs(dropped - (plain - updates[3])).max()),
                  correlation_masked_vs_true=round(corr, 4), seconds_10_clients=round(secagg_s, 3))

    # 5. optional: the learning-rate sweeps behind comparison_settings
    sweep = None
    if args.sweep:
        sweep = {'FedAvg': {}, 'FedSGD': {}}
        for lr in [0.05, 0.1, 0.2]:
            h = fedavg(fed_iid, **{**settings['FedAvg'], 'lr': lr})
            sweep['FedAvg'][lr] = dict(rounds_to_target=h.rounds_to(args.target), final_accuracy=round(h.final_accuracy, 4))
        for lr in [0.1, 0.3, 1.0, 2.0]:
            h = fedsgd(fed_iid, **{**settings['FedSGD'], 'lr': lr})
            sweep['FedSGD'][lr] = dict(rounds_to_target=h.rounds_to(args.target), final_accuracy=round(h.final_accuracy, 4))

    at_target = ratios[ratios.target == args.target]
    goals = {
        'fedavg_10x_fewer_rounds_than_fedsgd_iid': dict(
            target=args.target, ratios=at_target.ratio.tolist(),
            met_all_seeds=bool(at_target.ratio.notna().all() and (at_target.ratio >= 10).all())),
        'cyclic_within_2_points_of_centralised_iid': dict(cyclic_minus_centralised_points=cyclic_gap, met=bool(cyclic_gap >= -2)),
        'table_five_algorithms_three_partitions': dict(rows=len(table), met=len(table) == 3 * 6),
        'secure_aggregation_exact': dict(max_abs_error=secagg['max_abs_error'], met=secagg['max_abs_error'] < 1e-5),
    }
    report = dict(fast_mode=fast_mode(), target=args.target, seeds=args.seeds, settings=settings,
                  table=json.loads(table.reset_index().to_json(orient='records')),
                  fedavg_vs_fedsgd=json.loads(ratios.to_json(orient='records')),
                  cyclic_minus_centralised_points=cyclic_gap, secure_aggregation=secagg, lr_sweep=sweep, goals=goals,
                  seconds_per_partition=seconds, seconds_total=round(time.perf_counter() - t_start, 1),
                  machine=dict(cpu=platform.processor() or platform.machine(), cores=os.cpu_count(),
                               torch_threads=args.threads, torch=torch.__version__, python=platform.python_version()))
    text = json.dumps(report, indent=1, default=str)
    print(text)
    if args.json: Path(args.json).write_text(text)
    with pd.option_context('display.width', 160, 'display.max_columns', 20):
        print(f"\n== five algorithms x three partitions (target {args.target:.0%}) ==")
        print(table.to_string())
        print("\n== FedAvg vs FedSGD on IID clients: rounds to target ==")
        print(ratios.to_string(index=False))
        print(f"\ncyclic transfer minus centralised training, final accuracy (IID): {cyclic_gap:+.2f} points")
        print(f"secure aggregation, 10 clients x {n_values} values: max |masked sum - plain sum| = {secagg['max_abs_error']:.2e}"
              f" (one dropped: {secagg['max_abs_error_one_dropped']:.2e}); corr(masked, true) = {secagg['correlation_masked_vs_true']:+.4f}")
        if sweep:
            print("\n== learning-rate sweeps (IID) ==")
            for algo, res in sweep.items():
                print(algo, {lr: r['rounds_to_target'] for lr, r in res.items()})
        print("\n== goals ==")
        for k, v in goals.items(): print(f"{k}: {v}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
