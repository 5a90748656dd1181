#!/usr/bin/env python3
"Healthy when this container's Jupyter server answers /api (its version, the one route open without the token)"
import os, sys, urllib.request

ip = os.environ.get('JUPYTER_IP', '0.0.0.0')
host = '127.0.0.1' if ip in ('', '0.0.0.0', '*', '::') else ip
url = f"http://{host}:{os.environ.get('JUPYTER_PORT', '8888')}/api"
try:
    with urllib.request.urlopen(url, timeout=4) as r: print(r.status, r.read(200).decode())
except Exception as e:
    print(f"{url}: {e}")
    sys.exit(1)
