"""The benchmarks behind `python bench.py`: timing harness, speed studies, real tasks, profiles, sampling, batches,
parameter accounting, the baselines we compare against, and the reports they write to results/."""
