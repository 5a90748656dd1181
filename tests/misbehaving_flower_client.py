"A Flower client of the digits federation that misbehaves in one way: python misbehaving_flower_client.py MODE CID ADDRESS CLIENTS"
import os, sys, time
import numpy as np
os.environ.setdefault('FLWR_TELEMETRY_ENABLED', '0')
import flwr as fl
from labkit.federated import digits_federation

MODES = {'shape': 'weights of the wrong shape', 'nan': 'NaN weights', 'claims': 'zero weights claimed for 10**12 examples',
         'raise': 'raises in fit', 'hang': 'never answers fit'}

class Misbehaving(fl.client.NumPyClient):
    def __init__(self, mode:str, cid:int, n:int): self.mode, self.cid, self.n = mode, cid, n
    def get_properties(self, config): return {'cid': self.cid}
    def fit(self, parameters, config):
        w = parameters[0]
        if self.mode == 'raise': raise RuntimeError('this client fails on purpose')
        if self.mode == 'hang': print('fit started, never to answer', flush=True); time.sleep(3600)
        if self.mode == 'shape': return [w[:100]], self.n, {}
        if self.mode == 'nan': return [np.full_like(w, np.nan)], self.n, {}
        if self.mode == 'claims': return [np.zeros_like(w)], 10**12, {}
        raise SystemExit(f'unknown mode {self.mode!r}: choose one of {sorted(MODES)}')

if __name__ == '__main__':
    mode, cid, address, clients = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    n = len(digits_federation(clients).clients[cid])
    fl.client.start_client(server_address=address, client=Misbehaving(mode, cid, n).to_client(), max_wait_time=120)
