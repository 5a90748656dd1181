"""Privacy lab benchmark: DP-SGD on digits for several ε and without DP.

Prints, as JSON and as a table: test accuracy, the noise multiplier Opacus chose, the ε its RDP accountant
reports, ε recomputed independently from (sampling rate, noise multiplier, steps), the loss-threshold
membership-inference advantage, and per-epoch time with and without DP measured side by side.
Writes privacy.json and the full-size figures to --out.

    python benchmarks/privacy.py                       # five ε, three seeds (a few minutes on 2 cores)
    python benchmarks/privacy.py --seeds 1 --out ''    # one seed, no files
"""
import sys
from fastcore.script import anno_parser
from labkit.privacy import privacy_cli

if __name__ == '__main__':
    args = vars(anno_parser(privacy_cli, prog='benchmarks/privacy.py').parse_args())
    for k in ('pdb', 'xtra'): args.pop(k, None)   # options anno_parser adds
    sys.exit(privacy_cli(**args))
