"Package build: everything is read from settings.ini (the one place dependencies are declared)"
from configparser import ConfigParser
import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read('settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']

def _reqs(key): return cfg.get(key, '').split()

extras = {k[len('extras_'):]: _reqs(k) for k in cfg if k.startswith('extras_')}
extras['dev'] = _reqs('dev_requirements')
extras['all'] = sorted({r for k, v in extras.items() if k != 'dev' for r in v})

setuptools.setup(
    name=cfg['lib_name'], version=cfg['version'], description=cfg['description'],
    author=cfg['author'], author_email=cfg['author_email'], license=cfg['license'],
    url=cfg['git_url'], keywords=cfg['keywords'].split(),
    classifiers=['Programming Language :: Python :: 3.11', 'Intended Audience :: Education'],
    packages=setuptools.find_packages(include=[cfg['lib_path'], cfg['lib_path'] + '.*']),
    include_package_data=True, python_requires='>=' + cfg['min_python'],
    install_requires=_reqs('requirements'), extras_require=extras,
    long_description=open('README.md', encoding='utf-8').read(), long_description_content_type='text/markdown',
    entry_points={'console_scripts': _reqs('console_scripts'), 'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
    zip_safe=False)
