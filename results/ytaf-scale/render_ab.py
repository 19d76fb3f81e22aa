"""Render-only paired A/B of synth-faces at 55x47 (issue #14 follow-up (a)): images per CPU-second
of ``SynthFacesSource.load`` in one thread (no poisoning, no file), for the renderer of the tree it
runs from. Run from each tree's root, alternating, e.g.

    for r in 1 2 3; do for t in BASE NEW; do (cd $t && PYTHONPATH=$t/pytools:$t nice -n 19 \\
        python3 $NEW/results/ytaf-scale/render_ab.py $([ $t = NEW ] && echo v1 v2 || echo base)); done; done

Prints one line per renderer: name, images, CPU seconds, images per CPU-second."""
import sys
import time

import numpy as np

from datasets_gen.synthetic.faces import SynthFacesSource

for name in sys.argv[1:]:
    kw = {} if name == "base" else {"renderer": name}
    src = SynthFacesSource(n_identities=16, images_per_identity=100, seed=0, **kw)
    src.n_threads = 1
    rows = np.arange(len(src.tables["train"]))
    src.load("train", rows[:50])  # warm-up
    t = time.process_time()
    src.load("train", rows)
    dt = time.process_time() - t
    print(f"{name},{rows.size},{dt:.3f},{rows.size / dt:.0f}", flush=True)
