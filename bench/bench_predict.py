"""Throughput of the vectorised GLI predictions (100 000 subjects per call).

Run: /work/venv/bin/python bench/bench_predict.py
"""

from __future__ import annotations

import time

import numpy as np

from collector.spirometry import gli

N = 100_000
REPEATS = 5


def main() -> None:
    rng = np.random.default_rng(1)
    sex = np.where(rng.random(N) < 0.5, "female", "male")
    age = rng.uniform(3.0, 95.0, N)
    height = rng.uniform(100.0, 210.0, N)
    fvc = rng.uniform(0.5, 6.0, N)
    fev1 = fvc * rng.uniform(0.4, 0.95, N)
    eth = rng.choice(np.array(gli.ETHNICITIES), N)
    gli.predict_many(sex[:10], age[:10], height[:10])  # load tables once
    for equation, ethnicity in (("gli-global-2022", None), ("gli-2012", eth)):
        best = float("inf")
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            res = gli.predict_many(sex, age, height, equation=equation, ethnicity=ethnicity, fvc_l=fvc, fev1_l=fev1)
            best = min(best, time.perf_counter() - t0)
        assert not res.refused.any()
        print(f"{equation:16s} {N} subjects x 3 outcomes (M, S, L, LLN, ULN, z, %pred): "
              f"{best * 1000:.1f} ms  -> {N / best:,.0f} subjects/s")
    t0 = time.perf_counter()
    for i in range(2000):
        gli.predict(str(sex[i]), float(age[i]), float(height[i]), fvc_l=float(fvc[i]))
    dt = time.perf_counter() - t0
    print(f"scalar predict(): {2000 / dt:,.0f} subjects/s")


if __name__ == "__main__":
    main()
