#!/usr/bin/env python3
"""What one image classification costs social-network's media filter, measured on this machine.

The deployed media-filter-service (Sinan's ML variant of DeathStarBench's Social-Network) decodes
a base64 image with PIL, resizes it to 224x224, and runs a Keras MobileNetV2 (five classes) at
batch one in a Python Thrift threaded server, with TensorFlow's thread pools sized from the
host's cores. This script times the two parts the simulator's model of that call depends on:

* the preprocessing (base64, PNG decoding, resizing, scaling): Python and PIL, which hold the
  GIL, so concurrent requests of one replica run it one at a time;
* one inference at batch one, with TensorFlow's intra-op and inter-op pools of N threads:
  its wall time and the CPU time the whole process used for it (every thread's, spinning
  included).

Not the project's code path (nothing in the workspace imports it): the figures it prints are
quoted in docs/RESULTS.md ("Where social-network's tail comes from"). Needs TensorFlow and
Pillow, e.g.:

    python3 -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu pillow
    /tmp/tfenv/bin/python docs/classifier-cost.py 1 2 32

Weights are random (no download): the cost of a forward pass does not depend on them.
Set TF_ENABLE_ONEDNN_OPTS=0 for TensorFlow's own (Eigen) kernels, as TensorFlow 1.x ran them.
"""

import base64
import io
import os
import resource
import subprocess
import sys
import time


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(threads, n):
    """Prints the preprocessing's and one inference's costs with `threads` TensorFlow threads."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf

    # Thread pools are fixed when TensorFlow first runs anything: one setting per process.
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    import keras
    from PIL import Image

    model = keras.applications.MobileNetV2(
        weights=None, input_shape=(224, 224, 3), classes=5
    )
    infer = tf.function(lambda x: model(x, training=False))

    # Random pixels compress badly: a 96x80 PNG is about 31 KB in base64, near the load's
    # largest images (2.8-48 KB, 23 KB on average).
    rng = np.random.default_rng(1)
    png = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (96, 80, 3), dtype=np.uint8)).save(png, "PNG")
    b64 = base64.b64encode(png.getvalue())

    def prepare():
        raw = base64.b64decode(b64)
        image = Image.open(io.BytesIO(raw)).convert("RGB").resize((224, 224))
        return (np.asarray(image, dtype=np.float32) / 255.0)[None]

    x = prepare()
    for _ in range(10):
        infer(x).numpy()

    wall, cpu = time.perf_counter(), cpu_seconds()
    for _ in range(n):
        prepare()
    prep_wall = (time.perf_counter() - wall) / n
    prep_cpu = (cpu_seconds() - cpu) / n

    walls = []
    cpu = cpu_seconds()
    for _ in range(n):
        start = time.perf_counter()
        infer(x).numpy()
        walls.append(time.perf_counter() - start)
    per_inference_cpu = (cpu_seconds() - cpu) / n
    walls.sort()
    print(
        f"threads {threads:>2}: image {len(b64)} B base64; "
        f"preprocessing wall {prep_wall * 1e3:.2f} ms, CPU {prep_cpu * 1e3:.2f} ms; "
        f"inference wall median {walls[n // 2] * 1e3:.1f} ms, "
        f"90th {walls[int(n * 0.9)] * 1e3:.1f} ms, "
        f"CPU {per_inference_cpu * 1e3:.1f} ms"
    )


def main():
    args = sys.argv[1:]
    if len(args) == 2 and args[0] == "--one":
        measure(int(args[1]), 60)
        return
    counts = [int(a) for a in args] or [1, 2, 32]
    print(f"{os.cpu_count()} CPUs; TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'default')}")
    for threads in counts:
        # A fresh process for each setting (see `measure`).
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(threads)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        print(out.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
