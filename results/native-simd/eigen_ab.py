import time, sys, json
import numpy as np
from backdoorlab import native
from backdoorlab.bench.kernels import synthetic_activations
shape = sys.argv[1]
G, m, d = (1283, 412, 160) if shape == "ytaf" else (43, 820, 512)
data = synthetic_activations(G, m, d, seed=0)
out = {}
for lv in sys.argv[2:]:
    native.set_simd_level(lv)
    w0, c0 = time.perf_counter(), time.process_time()
    Y, it = native.fastica(data.X, data.offsets, 10, 1000, 0.005, 0, return_n_iter=True)
    w1, c1 = time.perf_counter(), time.process_time()
    native.fastica(data.X, data.offsets, 10, 1, 0.005, 0, return_n_iter=True)
    w2, c2 = time.perf_counter(), time.process_time()
    native.spectral_scores(data.X, data.offsets)
    w3, c3 = time.perf_counter(), time.process_time()
    out[lv] = dict(ica_wall=w1-w0, ica_cpu=c1-c0, whiten_wall=w2-w1, whiten_cpu=c2-c1, spec_wall=w3-w2, spec_cpu=c3-c2, iters=float(it.mean()))
print(json.dumps(out))
