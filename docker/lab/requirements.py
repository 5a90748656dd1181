"""Print, one a line, the requirements that setup.py (reading settings.ini) declares for the given extras.

    python requirements.py all > requirements.txt
    python requirements.py all --only torch torchvision tensorflow > frameworks.txt

The image installs exactly these before it copies the code, so its dependency layers stay cached while only
the code or the version changes. setup.py is read as it is: never a second hand-kept list."""
import re, sys, types

def requirements(extras, setup_py='setup.py') -> list:
    "Core requirements plus those of `extras`, as setup.py declares them"
    seen = {}
    stub = types.ModuleType('setuptools')            # capture setup()'s arguments instead of building anything
    stub.setup = lambda **kw: seen.update(kw)
    stub.find_packages = lambda *a, **kw: []
    sys.modules['setuptools'] = stub
    exec(compile(open(setup_py, encoding='utf-8').read(), setup_py, 'exec'), {'__name__': '__main__'})
    reqs = list(seen['install_requires'])
    for e in extras:
        if e not in seen['extras_require']: raise SystemExit(f"unknown extra {e!r}; known: {sorted(seen['extras_require'])}")
        reqs += seen['extras_require'][e]
    return list(dict.fromkeys(reqs))

def requirement_name(req:str) -> str:
    "The normalized distribution name of a requirement line"
    return re.sub(r'[-_.]+', '-', re.match(r'\s*([A-Za-z0-9][A-Za-z0-9._-]*)', req).group(1)).lower()

def only(reqs:list, names:list) -> list:
    "The requirements whose distribution is one of `names` (each must be declared)"
    wanted = {requirement_name(n) for n in names}
    out = [r for r in reqs if requirement_name(r) in wanted]
    if missing := wanted - {requirement_name(r) for r in out}: raise SystemExit(f"not declared in setup.py: {sorted(missing)}")
    return out

if __name__ == '__main__':
    args = sys.argv[1:]
    extras, names = (args[:args.index('--only')], args[args.index('--only') + 1:]) if '--only' in args else (args, None)
    reqs = requirements(extras or ['all'])
    print('\n'.join(only(reqs, names) if names else reqs))
